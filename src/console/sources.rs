//! Sources: each rule file's description, auth summary, dedupe, updates and forwarding
//! limits, its pause state with pause and resume buttons, and "try a postback": a pasted URL
//! or query explained field by field with the rules in force (the same answer as
//! `/admin/explain`), storing and forwarding nothing.

use askama::Template;
use hyper::StatusCode;
use jiff::Timestamp;

use super::layout::{Page, when};
use super::{Answer, ConsoleError, Ctx, field, html, redirect};
use crate::admin::view;
use crate::rules::{Origin, Rule};
use crate::store::{PauseReason, PauseScope, Paused};

struct PauseLine {
    reason: &'static str,
    since: String,
}

fn pause_lines(pauses: &[Paused], scope: &PauseScope) -> Vec<PauseLine> {
    pauses
        .iter()
        .filter(|p| &p.scope == scope)
        .map(|p| PauseLine {
            reason: match p.reason {
                PauseReason::Operator => "paused by an operator",
                PauseReason::UpstreamAuth => "paused: Scaleo refused the API key (401/403)",
                PauseReason::MissingRule => "paused: its rule file was missing",
                PauseReason::Outage => "held: Scaleo is not answering (outage mode)",
            },
            since: when(p.since),
        })
        .collect()
}

struct SourceBox {
    source: String,
    description: String,
    token: String,
    allow: String,
    dedupe: String,
    updates: String,
    rate: String,
    target: String,
    silent_after: String,
    pauses: Vec<PauseLine>,
}

fn source_box(rule: &Rule, pauses: &[Paused]) -> SourceBox {
    let f = &rule.forward;
    let rate = match (f.rate_per_second, f.burst) {
        (None, None) => "the global [forward] rate".to_string(),
        (r, b) => format!(
            "{} per second, burst {}",
            r.map_or("global".into(), |r| r.to_string()),
            b.map_or("global".into(), |b| b.to_string())
        ),
    };
    let target = match (&f.base_url, &f.api_key) {
        (None, None) => "the global [scaleo] network".to_string(),
        (url, key) => format!(
            "{}{}",
            url.as_deref().unwrap_or("the global base_url"),
            if key.is_some() {
                " with its own API key"
            } else {
                " with the global API key"
            }
        ),
    };
    let dedupe = if rule.dedupe.fields.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} for {}",
            rule.dedupe.fields.join(" + "),
            super::layout::age(rule.dedupe.window)
        )
    };
    let updates = match (&rule.updates.only, rule.updates.enabled) {
        (Some(_), _) => "only changes conversions of another source".to_string(),
        (None, true) => "later postbacks of a conversion update it".to_string(),
        (None, false) => "a repeat of a conversion is a duplicate".to_string(),
    };
    SourceBox {
        source: rule.source.clone(),
        description: rule.description.clone().unwrap_or_default(),
        token: match &rule.auth.token {
            Some(_) => format!("required (parameter {}, value set)", rule.auth.token_param),
            None => "none: anyone who knows the URL can post".to_string(),
        },
        allow: if rule.auth.allow_ips.is_empty() {
            "any caller".to_string()
        } else {
            rule.auth
                .allow_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
        dedupe,
        updates,
        rate,
        target,
        silent_after: match rule.alerts.silent_after {
            Some(d) => format!("warn when no postback comes for {}", super::layout::age(d)),
            None => "not set ([alerts] silent_after)".to_string(),
        },
        pauses: pause_lines(pauses, &PauseScope::Source(rule.source.clone())),
    }
}

#[derive(Template)]
#[template(path = "console/sources.html")]
struct SourcesPage {
    page: Page,
    all_pauses: Vec<PauseLine>,
    sources: Vec<SourceBox>,
}

/// `GET /console/sources`.
pub(super) async fn page(ctx: &Ctx<'_>) -> Result<Answer, ConsoleError> {
    let pauses = ctx.admin.store.paused().await?;
    let rules = ctx.admin.replayer.rules.current();
    let page = SourcesPage {
        page: Page::new(ctx, "Sources", "sources"),
        all_pauses: pause_lines(&pauses, &PauseScope::All),
        sources: rules.iter().map(|r| source_box(r, &pauses)).collect(),
    };
    Ok(html(StatusCode::OK, &page, &[]))
}

/// `POST /console/sources/pause|resume` with `source` (empty: all forwarding).
pub(super) async fn pause(
    ctx: &Ctx<'_>,
    form: &[(String, String)],
    pause: bool,
) -> Result<Answer, ConsoleError> {
    let source = field(form, "source").filter(|s| !s.is_empty());
    let scope = view::pause_scope(source)?;
    let what = match &scope {
        PauseScope::All => "all forwarding".to_string(),
        PauseScope::Source(s) => format!("forwarding of {s}"),
    };
    if pause {
        ctx.admin
            .store
            .pause(scope.clone(), PauseReason::Operator)
            .await?;
        tracing::warn!(scope = %scope, "forwarding paused by an operator (console)");
        ctx.flash(format!(
            "Paused {what}: postbacks are still accepted and stored."
        ));
    } else {
        let removed = ctx.admin.store.resume(scope.clone()).await?;
        tracing::warn!(scope = %scope, removed, "forwarding resumed by an operator (console)");
        ctx.flash(format!("Resumed {what} ({removed} pause(s) lifted)."));
    }
    Ok(redirect("/console/sources", &[]))
}

struct FieldLine {
    field: &'static str,
    when: String,
    value: String,
    origin: String,
    ignored: Vec<String>,
    error: String,
}

#[derive(Template)]
#[template(path = "console/try.html")]
struct TryPage {
    page: Page,
    source: String,
    input: String,
    /// `None` until something was submitted.
    result: Option<TryResult>,
}

struct TryResult {
    outcome: &'static str,
    reason: String,
    body: Option<String>,
    skip_matched: String,
    when_matched: String,
    fields: Vec<FieldLine>,
    /// What the postback would be to a stored conversion.
    conversion: Option<(&'static str, String)>,
}

/// The query part of a pasted URL, query string or `?query`.
fn query_of(input: &str) -> &str {
    let input = input.trim();
    match input.split_once('?') {
        Some((_, q)) => q,
        None if input.contains("://") || input.starts_with('/') => "",
        None => input,
    }
}

/// `GET /console/sources/{source}/try?q=...`.
pub(super) async fn try_page(
    ctx: &Ctx<'_>,
    source: &str,
    query: &str,
) -> Result<Answer, ConsoleError> {
    let rules = ctx.admin.replayer.rules.current();
    let Some(rule) = rules.get(source) else {
        return Err(ConsoleError::NotFound(format!(
            "there is no rule file for source {source}"
        )));
    };
    let pairs = crate::rules::decode_form(query.as_bytes());
    let input = field(&pairs, "q").unwrap_or("").to_string();
    let result = if input.trim().is_empty() {
        None
    } else {
        let mut ex = view::explain(
            rule,
            query_of(&input),
            &ctx.admin.replayer.zone,
            Timestamp::now(),
        );
        let preview = match ex.state.take() {
            Some(state) => ctx.admin.store.preview(state).await?,
            None => None,
        };
        Some(TryResult {
            outcome: ex.outcome,
            reason: ex.reason.clone().unwrap_or_default(),
            body: ex
                .body
                .as_ref()
                .map(|b| serde_json::to_string_pretty(b).unwrap_or_default()),
            skip_matched: ex
                .skip_matched
                .map(|i| format!("[[skip]] number {}", i + 1))
                .unwrap_or_default(),
            when_matched: ex
                .when_matched
                .iter()
                .map(|i| format!("[[when]] number {}", i + 1))
                .collect::<Vec<_>>()
                .join(", "),
            fields: ex
                .fields
                .iter()
                .map(|f| FieldLine {
                    field: f.field,
                    when: f
                        .when
                        .map(|i| format!("[[when]] {}", i + 1))
                        .unwrap_or_default(),
                    value: f
                        .value
                        .as_ref()
                        .map(|v| match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .unwrap_or_default(),
                    origin: match &f.origin {
                        Some(Origin::Param { name }) => format!("parameter {name}"),
                        Some(Origin::Template) => "template".into(),
                        Some(Origin::Constant) => "constant".into(),
                        Some(Origin::Default) => "default".into(),
                        None => "no value".into(),
                    },
                    ignored: f
                        .ignored
                        .iter()
                        .map(|i| format!("{}={:?}: {}", i.param, i.value, i.why))
                        .collect(),
                    error: f.error.clone().unwrap_or_default(),
                })
                .collect(),
            conversion: preview.map(|p| {
                let mut text = String::new();
                if let Some(o) = p.original {
                    text.push_str(&format!("of the conversion created by record {o}"));
                }
                if let Some(c) = &p.change {
                    text.push_str(&format!(
                        "; would send {}",
                        serde_json::to_string(c).unwrap_or_default()
                    ));
                }
                if let Some(r) = &p.reason {
                    text.push_str(&format!("; {r}"));
                }
                (p.outcome, text)
            }),
        })
    };
    let page = TryPage {
        page: Page::new(ctx, format!("Try a postback: {source}"), "sources"),
        source: source.to_string(),
        input,
        result,
    };
    Ok(html(StatusCode::OK, &page, &[]))
}

#[cfg(test)]
mod tests {
    use super::query_of;

    #[test]
    fn a_pasted_url_query_or_bare_query_all_give_the_query() {
        assert_eq!(
            query_of(" https://relay.example/postback/shop?cid=1&amt=5 "),
            "cid=1&amt=5"
        );
        assert_eq!(query_of("?cid=1"), "cid=1");
        assert_eq!(query_of("cid=1&amt=5"), "cid=1&amt=5");
        assert_eq!(query_of("https://relay.example/postback/shop"), "");
    }
}
