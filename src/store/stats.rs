//! Aggregates for the operator console and the metrics, on either backend: what each source
//! sent recently, and why records were rejected or went dead, grouped by reason.

use jiff::Timestamp;

use super::types::State;

/// What one source sent recently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceActivity {
    pub source: String,
    /// Receive time of its newest record (any state), if it has any.
    pub last: Option<Timestamp>,
    /// Records received since the `hour` start, by state (states with none left out).
    pub hour: StateCounts,
    /// Records received since the `day` start, by state.
    pub day: StateCounts,
}

/// Records of one state, source and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonCount {
    pub source: String,
    /// The stored reason (empty when the record has none).
    pub reason: String,
    pub count: u64,
}

/// Record counts by state.
pub type StateCounts = Vec<(State, u64)>;

/// Collects `(state, in_hour, in_day)` rows into the two lists.
pub(crate) fn split_counts(
    rows: impl IntoIterator<Item = (State, u64, u64)>,
) -> (StateCounts, StateCounts) {
    let (mut hour, mut day) = (Vec::new(), Vec::new());
    for (s, h, d) in rows {
        if h > 0 {
            hour.push((s, h));
        }
        if d > 0 {
            day.push((s, d));
        }
    }
    hour.sort();
    day.sort();
    (hour, day)
}
