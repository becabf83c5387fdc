//! The shared layout of every console page (`templates/console/layout.html`): the page
//! title, the navigation, the sign-out form with its CSRF token, a one-time message, and the
//! one stylesheet, allowed by its SHA-256 hash in the Content-Security-Policy.
//!
//! Long advertiser values (a 600-character click id) wrap anywhere in value cells, so no
//! page is wider than the window; times and counts keep one line.
//!
//! Also the few formatting helpers the views share (times, ages, counts, times in texts).

use std::sync::LazyLock;
use std::time::Duration;

use askama::Template;
use base64::Engine;
use jiff::Timestamp;
use regex::Regex;

use super::Ctx;

/// The console's only stylesheet, inlined in every page.
pub(crate) const CSS: &str = r#"
:root { --fg:#1d2330; --muted:#5d6678; --line:#d8dde6; --bg:#f6f7f9; --card:#fff;
  --ok:#1a7f37; --warn:#9a6700; --bad:#cf222e; --info:#0969da; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:0 20px; display:flex; align-items:center; gap:20px; height:48px; }
header .brand { font-weight:600; margin-right:12px; }
header nav a { color:#c9d1e0; text-decoration:none; padding:14px 10px; display:inline-block; }
header nav a.on { color:#fff; border-bottom:3px solid #58a6ff; }
header form { margin-left:auto; }
header button { background:transparent; color:#c9d1e0; border:1px solid #59627a; border-radius:4px; padding:4px 10px; cursor:pointer; }
main { padding:20px; max-width:1280px; }
h1 { font-size:20px; margin:4px 0 16px; }
h2 { font-size:16px; margin:24px 0 8px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:14px 16px; margin-bottom:16px; }
.card > h2:first-child, .card > h1:first-child { margin-top:0; }
table { border-collapse:collapse; width:100%; background:var(--card); }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-weight:600; color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.03em; }
table.kv th { width:180px; text-transform:none; font-size:13px; letter-spacing:0; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.num, td.when, .nowrap { white-space:nowrap; }
td.mono, td.wrap, table.kv td, .wrap, .flash, .alert, .note { overflow-wrap:anywhere; }
code, pre, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
pre { background:#f0f2f5; border:1px solid var(--line); border-radius:4px; padding:10px; overflow:auto; white-space:pre-wrap; word-break:break-all; margin:0; }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; background:#eaeef2; color:var(--fg); white-space:nowrap; }
.s-delivered, .s-forward, .ok { background:#dafbe1; color:var(--ok); }
.s-rejected, .s-dead, .s-reject, .bad { background:#ffebe9; color:var(--bad); }
.s-retrying, .s-paused, .s-stale, .s-duplicate, .s-skip, .s-skipped, .warn { background:#fff8c5; color:var(--warn); }
.err { color:var(--bad); font-weight:600; }
.s-queued, .s-update { background:#ddf4ff; color:var(--info); }
.flash { background:#ddf4ff; border:1px solid #54aeff; border-radius:6px; padding:10px 14px; margin-bottom:16px; }
.alert { background:#ffebe9; border:1px solid #ff8182; border-radius:6px; padding:10px 14px; margin-bottom:16px; }
.note { background:#fff8c5; border:1px solid #d4a72c; border-radius:6px; padding:10px 14px; margin-bottom:16px; }
form.inline { display:inline; }
form.filters { display:flex; flex-wrap:wrap; gap:10px; align-items:flex-end; }
form.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
input[type=text], input[type=password], input[type=datetime-local], select, textarea { font:inherit; padding:5px 8px; border:1px solid #b8c0cc; border-radius:4px; background:#fff; }
textarea { width:100%; font-family:ui-monospace,Menlo,Consolas,monospace; }
button { font:inherit; padding:5px 12px; border-radius:4px; border:1px solid #b8c0cc; background:#f6f8fa; cursor:pointer; }
button.primary { background:#1f6feb; border-color:#1f6feb; color:#fff; }
button.danger { background:#cf222e; border-color:#cf222e; color:#fff; }
a { color:var(--info); }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(360px,1fr)); gap:16px; }
.grid > * { min-width:0; }
.signin { max-width:380px; margin:80px auto; }
.signin input { width:100%; margin:6px 0 12px; }
.pager { margin-top:10px; display:flex; gap:16px; }
"#;

static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = ring::digest::digest(&ring::digest::SHA256, CSS.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
    format!(
        "default-src 'none'; style-src 'sha256-{b64}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
});

/// The Content-Security-Policy of every console answer.
pub(crate) fn csp() -> &'static str {
    &CSP
}

/// What the layout shows around every page.
pub(crate) struct Page {
    pub title: String,
    /// Which navigation entry is current (`overview`, `records`, `sources`, `problems`).
    pub nav: &'static str,
    /// Empty when signed out (no navigation then).
    pub csrf: String,
    pub flash: Option<String>,
}

impl Page {
    pub fn new(ctx: &Ctx<'_>, title: impl Into<String>, nav: &'static str) -> Page {
        Page {
            title: title.into(),
            nav,
            csrf: ctx.session.csrf.clone(),
            flash: ctx.session.flash.clone(),
        }
    }

    pub fn signed_out(title: impl Into<String>) -> Page {
        Page {
            title: title.into(),
            nav: "",
            csrf: String::new(),
            flash: None,
        }
    }

    pub fn css(&self) -> &'static str {
        CSS
    }

    pub fn signed_in(&self) -> bool {
        !self.csrf.is_empty()
    }

    /// The class of navigation entry `name`.
    pub fn on(&self, name: &str) -> &'static str {
        if self.nav == name { "on" } else { "" }
    }
}

/// A page that says what went wrong.
#[derive(Template)]
#[template(path = "console/error.html")]
pub(crate) struct ErrorPage {
    pub page: Page,
    pub status: u16,
    pub message: String,
}

/// `2026-11-30 18:46:46 UTC`.
pub(crate) fn when(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A duration in words: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub(crate) fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// How long before `now` `t` was: `12 min ago` (`just now` for the future or a second).
pub(crate) fn ago(t: Timestamp, now: Timestamp) -> String {
    let d = now.duration_since(t);
    if d.is_negative() || d.as_secs() < 1 {
        return "just now".into();
    }
    format!("{} ago", age(d.unsigned_abs()))
}

/// `1 record`, `2 records`.
pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `a`, `a and b`, `a, b and c`.
pub(crate) fn and_list(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// `text` with each RFC 3339 time in it (`2026-12-06T10:26:21.677982204Z`, as the health
/// checks print them) written as [`when`] writes times.
pub(crate) fn plain_times(text: &str) -> String {
    static TIME: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
            .expect("a valid pattern")
    });
    TIME.replace_all(text, |c: &regex::Captures<'_>| {
        c[0].parse::<Timestamp>()
            .map_or_else(|_| c[0].to_string(), when)
    })
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_a_text_read_like_the_other_times() {
        assert_eq!(
            plain_times(
                "the rules in /etc/r do not load since 2026-12-06T10:26:21.677982204Z (the previous 2 stay)"
            ),
            "the rules in /etc/r do not load since 2026-12-06 10:26:21 UTC (the previous 2 stay)"
        );
        assert_eq!(
            plain_times("held since 2026-12-06T12:26:21+02:00; and 2026-12-06T10:00:00Z"),
            "held since 2026-12-06 10:26:21 UTC; and 2026-12-06 10:00:00 UTC"
        );
        assert_eq!(plain_times("no time: 2026-12-06"), "no time: 2026-12-06");
    }

    #[test]
    fn counts_and_lists_read_as_words() {
        assert_eq!(plural(1, "record", "records"), "1 record");
        assert_eq!(plural(0, "record", "records"), "0 records");
        let l = |v: &[&str]| and_list(&v.iter().map(ToString::to_string).collect::<Vec<_>>());
        assert_eq!(l(&["a"]), "a");
        assert_eq!(l(&["a", "b"]), "a and b");
        assert_eq!(l(&["a", "b", "c"]), "a, b and c");
    }

    #[test]
    fn ages_read_as_words() {
        assert_eq!(age(Duration::from_secs(5)), "5 s");
        assert_eq!(age(Duration::from_secs(125)), "2 min");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 300)), "3 h 5 min");
        assert_eq!(age(Duration::from_secs(2 * 86400 + 4 * 3600)), "2 d 4 h");
    }

    #[test]
    fn the_policy_allows_only_the_inline_stylesheet() {
        let p = csp();
        assert!(
            p.starts_with("default-src 'none'; style-src 'sha256-"),
            "{p}"
        );
        assert!(!p.contains("unsafe") && !p.contains("script-src"), "{p}");
        assert!(p.contains("form-action 'self'") && p.contains("frame-ancestors 'none'"));
    }
}
