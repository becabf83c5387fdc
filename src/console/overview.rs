//! Overview: one row per source (time since its last postback, what it sent in the last hour
//! and day by outcome, forward success rate, paused or not), the queue by state, the age of
//! the oldest waiting record, the pauses (an operator's, or Scaleo refusing the API key) and
//! the readiness checks, with every rule reload problem.

use askama::Template;
use hyper::StatusCode;
use jiff::ToSpan;

use super::layout::{Page, age, ago, plain_times, plural, when};
use super::{Answer, ConsoleError, Ctx, html};
use crate::store::{PauseReason, PauseScope, State};

struct SourceRow {
    source: String,
    last: String,
    last_ago: String,
    hour: Vec<(&'static str, u64)>,
    day: Vec<(&'static str, u64)>,
    success: String,
    paused: bool,
    /// Set while the source is silent beyond its `[alerts] silent_after`.
    silent: Option<String>,
}

struct CheckRow {
    name: &'static str,
    ok: bool,
    detail: String,
    problems: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct Overview {
    page: Page,
    ready: bool,
    /// `(source, what)` for every silent source.
    silent: Vec<(String, String)>,
    /// `(source, what)` for every source whose recent forwards all fail.
    failing: Vec<(String, String)>,
    sources: Vec<SourceRow>,
    queue: Vec<(&'static str, u64)>,
    oldest: String,
    pauses: Vec<String>,
    checks: Vec<CheckRow>,
}

/// `delivered / (delivered + dead)` among the records of the day, as a percentage.
fn success_rate(day: &[(State, u64)]) -> String {
    let n = |s: State| day.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
    let ok = n(State::Delivered) + n(State::DuplicateUpstream);
    let failed = n(State::Dead);
    if ok + failed == 0 {
        return String::new();
    }
    format!("{:.0}%", ok as f64 * 100.0 / (ok + failed) as f64)
}

/// Set when the records a source sent in the last hour went dead or are retrying and none
/// was delivered: forwarding to Scaleo fails for it (a wrong base_url, key or field).
fn failing(hour: &[(State, u64)]) -> Option<String> {
    let n = |s: State| hour.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
    let delivered = n(State::Delivered) + n(State::DuplicateUpstream);
    let (dead, retrying) = (n(State::Dead), n(State::Retrying));
    (delivered == 0 && dead + retrying > 0).then(|| {
        format!(
            "of its postbacks of the last hour {dead} went dead and {} retrying, none was delivered",
            plural(retrying, "is", "are")
        )
    })
}

fn named(counts: &[(State, u64)]) -> Vec<(&'static str, u64)> {
    counts.iter().map(|(s, n)| (s.as_str(), *n)).collect()
}

/// `GET /`.
pub(super) async fn page(ctx: &Ctx<'_>) -> Result<Answer, ConsoleError> {
    let admin = ctx.admin;
    let rules = admin.replayer.rules.current();
    let sources: Vec<String> = rules.iter().map(|r| r.source.clone()).collect();
    let hour = ctx.now - 1.hour();
    let day = ctx.now - 24.hours();
    let store = &admin.store;
    let (activity, counts, oldest, pauses, readiness) = tokio::join!(
        store.activity(sources, hour, day),
        store.counts_by_state(),
        store.oldest_queued(),
        store.paused(),
        admin.probes.readiness(),
    );
    let (activity, counts, oldest, pauses) = (activity?, counts?, oldest?, pauses?);
    let paused_all = pauses.iter().any(|p| p.scope == PauseScope::All);
    let silence = |a: &crate::store::SourceActivity| {
        let rule = rules.get(&a.source)?;
        let (last, after) = (a.last?, rule.alerts.silent_after?);
        rule.alerts.is_silent(Some(last), ctx.now).then(|| {
            format!(
                "no postback for {} (its rule expects one at least every {})",
                age(ctx.now.duration_since(last).unsigned_abs()),
                age(after)
            )
        })
    };
    let rows: Vec<SourceRow> = activity
        .iter()
        .map(|a| SourceRow {
            silent: silence(a),
            source: a.source.clone(),
            last: a.last.map(when).unwrap_or_default(),
            last_ago: a
                .last
                .map(|t| ago(t, ctx.now))
                .unwrap_or_else(|| "never (no stored record)".into()),
            hour: named(&a.hour),
            day: named(&a.day),
            success: success_rate(&a.day),
            paused: paused_all
                || pauses
                    .iter()
                    .any(|p| p.scope == PauseScope::Source(a.source.clone())),
        })
        .collect();
    let pause_lines = pauses
        .iter()
        .map(|p| {
            let what = match &p.scope {
                PauseScope::All => "All forwarding".to_string(),
                PauseScope::Source(s) => format!("Source {s}"),
            };
            let why = match p.reason {
                PauseReason::Operator => "paused by an operator",
                PauseReason::UpstreamAuth => {
                    "paused: Scaleo refused the API key or the base URL (401/403)"
                }
                PauseReason::MissingRule => "paused: its rule file is missing",
                PauseReason::Outage => {
                    "held: Scaleo is not answering (outage mode, one record is tried every forward.pause_probe)"
                }
            };
            format!("{what} {why} since {}", when(p.since))
        })
        .collect();
    let check = |name, c: &crate::admin::health::Check| CheckRow {
        name,
        ok: c.ok,
        detail: plain_times(&c.detail),
        problems: c.problems.iter().map(|p| plain_times(p)).collect(),
    };
    let page = Overview {
        page: Page::new(ctx, "Overview", "overview"),
        ready: readiness.ready,
        failing: activity
            .iter()
            .filter_map(|a| Some((a.source.clone(), failing(&a.hour)?)))
            .collect(),
        silent: rows
            .iter()
            .filter_map(|r| Some((r.source.clone(), r.silent.clone()?)))
            .collect(),
        sources: rows,
        queue: counts
            .iter()
            .filter(|(s, _)| s.is_pending() || *s == State::Dead || *s == State::Rejected)
            .map(|(s, n)| (s.as_str(), *n))
            .collect(),
        oldest: oldest
            .map(|t| age(ctx.now.duration_since(t).unsigned_abs()))
            .unwrap_or_default(),
        pauses: pause_lines,
        checks: vec![
            check("rules", &readiness.rules),
            check("forwarding", &readiness.forwarding),
            check("progress", &readiness.progress),
            check("deliveries", &readiness.deliveries),
            check("store", &readiness.store),
        ],
    };
    Ok(html(StatusCode::OK, &page, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_fails_when_its_recent_records_die_or_retry_and_none_is_delivered() {
        assert_eq!(failing(&[]), None);
        assert_eq!(
            failing(&[(State::Rejected, 3)]),
            None,
            "rejects are the rule's"
        );
        let f = failing(&[(State::Retrying, 1), (State::Dead, 2)]).unwrap();
        assert!(f.contains("2 went dead and 1 is retrying"), "{f}");
        let f = failing(&[(State::Retrying, 3)]).unwrap();
        assert!(f.contains("0 went dead and 3 are retrying"), "{f}");
        assert_eq!(failing(&[(State::Delivered, 1), (State::Dead, 5)]), None);
    }

    #[test]
    fn the_success_rate_counts_delivered_against_dead() {
        assert_eq!(success_rate(&[]), "");
        assert_eq!(
            success_rate(&[
                (State::Delivered, 3),
                (State::Dead, 1),
                (State::Rejected, 9)
            ]),
            "75%"
        );
    }
}
