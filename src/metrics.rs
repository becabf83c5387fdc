//! Every Prometheus metric of the relay, defined here and nowhere else, behind small functions
//! (`metrics::postback(source, outcome)`, `metrics::forward_attempt(outcome)`, ...).
//!
//! The registry is process-global (one relay per process in production). Counters and the
//! latency histogram move as events happen; the queue gauges are snapshots that the `/metrics`
//! handler refreshes from the store just before it renders ([`set_queue`]).
//! Label values are bounded: `source` is only ever a source with a rule file, the other
//! labels are fixed enums.
//!
//! Names follow Prometheus conventions: the `postback_relay_` prefix, `_total` on counters,
//! base units (`_seconds`).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::store::{Paused, State};

/// The content type of [`render`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceOutcome {
    source: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PauseLabel {
    scope: String,
    reason: &'static str,
}

struct Metrics {
    registry: Registry,
    postbacks: Family<SourceOutcome, Counter>,
    forward_attempts: Family<OutcomeLabel, Counter>,
    rate_limit_waits: Counter,
    delivery_latency: Histogram,
    rule_reloads: Family<ResultLabel, Counter>,
    rules_loaded: Gauge,
    rules_reload_failing: Gauge,
    queue_depth: Family<StateLabel, Gauge>,
    oldest_queued_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    dead_letter_depth: Gauge,
    paused: Family<PauseLabel, Gauge>,
    source_last_postback: Family<SourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    source_silent: Family<SourceLabel, Gauge>,
}

/// Latency buckets from 50 ms to about 14 h: a delivery can wait out retries for hours.
const LATENCY_BUCKETS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 10800.0, 21600.0,
    50400.0,
];

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("postback_relay");
        let m = Metrics {
            registry: Registry::default(),
            postbacks: Family::default(),
            forward_attempts: Family::default(),
            rate_limit_waits: Counter::default(),
            delivery_latency: Histogram::new(LATENCY_BUCKETS),
            rule_reloads: Family::default(),
            rules_loaded: Gauge::default(),
            rules_reload_failing: Gauge::default(),
            queue_depth: Family::default(),
            oldest_queued_age: Gauge::default(),
            dead_letter_depth: Gauge::default(),
            paused: Family::default(),
            source_last_postback: Family::default(),
            source_silent: Family::default(),
        };
        registry.register(
            "postbacks",
            "Postbacks answered by ingest, by source and outcome (accepted, duplicate, skipped, rejected, unauthorized, forbidden, unavailable); their sum is the postbacks received",
            m.postbacks.clone(),
        );
        registry.register(
            "forward_attempts",
            "Forward attempts to Scaleo by outcome class (delivered, duplicate_upstream, retry, paused, dead)",
            m.forward_attempts.clone(),
        );
        registry.register(
            "rate_limit_waits",
            "Times a forward had to wait for the rate limiter (never counted as a retry)",
            m.rate_limit_waits.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "Time from receiving a postback to Scaleo confirming it",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        registry.register(
            "rule_reloads",
            "Rule reloads by result (ok, error); an error keeps the previous rules in force",
            m.rule_reloads.clone(),
        );
        registry.register(
            "rules_loaded",
            "Rule files (sources) in force",
            m.rules_loaded.clone(),
        );
        registry.register(
            "rules_reload_failing",
            "1 while the rules directory holds a set that does not load (the previous rules stay in force), else 0",
            m.rules_reload_failing.clone(),
        );
        registry.register(
            "queue_depth",
            "Stored records by state",
            m.queue_depth.clone(),
        );
        registry.register_with_unit(
            "oldest_queued_age",
            "Age of the oldest record waiting to be forwarded (queued, retrying or paused); 0 when none",
            Unit::Seconds,
            m.oldest_queued_age.clone(),
        );
        registry.register(
            "dead_letter_depth",
            "Records in state dead (forwarding gave up; replayable)",
            m.dead_letter_depth.clone(),
        );
        registry.register(
            "forwarding_paused",
            "1 for each persisted pause of forwarding, by scope (all or a source) and reason (operator, upstream_auth)",
            m.paused.clone(),
        );
        registry.register_with_unit(
            "source_last_postback_timestamp",
            "Unix time of the newest stored postback of each source (absent while it has none)",
            Unit::Seconds,
            m.source_last_postback.clone(),
        );
        registry.register(
            "source_silent",
            "1 while a source has sent no postback for longer than its rule's [alerts] silent_after, else 0",
            m.source_silent.clone(),
        );
        // Fixed label values start at 0 so that rate() and alerts see them from the start.
        for outcome in FORWARD_OUTCOMES {
            let _ = m.forward_attempts.get_or_create(&OutcomeLabel { outcome });
        }
        for result in ["ok", "error"] {
            let _ = m.rule_reloads.get_or_create(&ResultLabel { result });
        }
        Metrics { registry, ..m }
    })
}

/// One postback answered by ingest, with its outcome's stable name (`accepted`, ...).
pub fn postback(source: &str, outcome: &'static str) {
    metrics()
        .postbacks
        .get_or_create(&SourceOutcome {
            source: source.to_string(),
            outcome,
        })
        .inc();
}

/// The `outcome` label values of `postback_relay_forward_attempts_total`, counted from 0.
pub const FORWARD_OUTCOMES: [&str; 5] =
    ["delivered", "duplicate_upstream", "retry", "paused", "dead"];

/// One forward attempt, with its outcome's label (one of [`FORWARD_OUTCOMES`]).
pub fn forward_attempt(outcome: &'static str) {
    metrics()
        .forward_attempts
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

/// A forward had to wait for the global or a source's rate limit.
pub fn rate_limit_wait() {
    metrics().rate_limit_waits.inc();
}

/// A record was confirmed by Scaleo `seconds` after it was received.
pub fn delivered_latency(seconds: f64) {
    metrics().delivery_latency.observe(seconds.max(0.0));
}

/// A rule reload ended: `Ok(sources in force)` or an error (the old rules stay).
pub fn reload(result: Result<usize, ()>) {
    let m = metrics();
    let label = match result {
        Ok(n) => {
            m.rules_loaded.set(i64::try_from(n).unwrap_or(i64::MAX));
            m.rules_reload_failing.set(0);
            "ok"
        }
        Err(()) => {
            m.rules_reload_failing.set(1);
            "error"
        }
    };
    m.rule_reloads
        .get_or_create(&ResultLabel { result: label })
        .inc();
}

/// The rules in force at startup (no reload counted).
pub fn rules_loaded(n: usize) {
    let m = metrics();
    m.rules_loaded.set(i64::try_from(n).unwrap_or(i64::MAX));
    m.rules_reload_failing.set(0);
}

/// Refreshes the queue gauges from a store snapshot: records per state (missing states are
/// 0), the age of the oldest waiting record, and the persisted pauses.
/// One source's signals for [`set_sources`].
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSignal {
    pub source: String,
    /// Unix seconds of its newest stored postback.
    pub last: Option<f64>,
    pub silent: bool,
}

/// Replaces the per-source gauges (last postback time, silent) with `sources`: a source
/// whose rule file is gone loses its series.
pub fn set_sources(sources: &[SourceSignal]) {
    let m = metrics();
    m.source_last_postback.clear();
    m.source_silent.clear();
    for s in sources {
        let label = SourceLabel {
            source: s.source.clone(),
        };
        if let Some(t) = s.last {
            m.source_last_postback.get_or_create(&label).set(t);
        }
        m.source_silent
            .get_or_create(&label)
            .set(i64::from(s.silent));
    }
}

pub fn set_queue(counts: &[(State, u64)], oldest_age_seconds: Option<f64>, pauses: &[Paused]) {
    let m = metrics();
    let count = |s: State| {
        counts
            .iter()
            .find(|(st, _)| *st == s)
            .map_or(0, |(_, n)| i64::try_from(*n).unwrap_or(i64::MAX))
    };
    for s in State::ALL {
        m.queue_depth
            .get_or_create(&StateLabel { state: s.as_str() })
            .set(count(s));
    }
    m.dead_letter_depth.set(count(State::Dead));
    m.oldest_queued_age
        .set(oldest_age_seconds.unwrap_or(0.0).max(0.0));
    m.paused.clear();
    for p in pauses {
        let scope = match &p.scope {
            crate::store::PauseScope::All => "all".to_string(),
            crate::store::PauseScope::Source(s) => s.clone(),
        };
        m.paused
            .get_or_create(&PauseLabel {
                scope,
                reason: p.reason.as_str(),
            })
            .set(1);
    }
}

/// The whole registry in the text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn postback_counter_is_named_and_labelled_by_convention() {
        postback("unit_metrics_src", "rejected");
        postback("unit_metrics_src", "rejected");
        let text = render();
        assert_eq!(
            value(
                &text,
                r#"postback_relay_postbacks_total{source="unit_metrics_src",outcome="rejected"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert!(text.contains("# TYPE postback_relay_delivery_latency_seconds histogram"));
    }

    #[test]
    fn queue_gauges_cover_every_state_and_drop_lifted_pauses() {
        set_queue(&[(State::Dead, 3)], Some(12.5), &[]);
        let text = render();
        assert_eq!(
            value(&text, r#"postback_relay_queue_depth{state="queued"}"#),
            Some(0.0)
        );
        assert_eq!(value(&text, "postback_relay_dead_letter_depth"), Some(3.0));
        assert_eq!(
            value(&text, "postback_relay_oldest_queued_age_seconds"),
            Some(12.5)
        );
        assert!(!text.contains("postback_relay_forwarding_paused{"));
    }
}
