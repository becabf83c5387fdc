//! The conversion lifecycle as the stores keep it, on either backend: the conversion's
//! memory in its dedupe row (`tracked`, `lead_id`), what a later postback became, and the
//! texts of the reasons. The decisions are [`crate::lifecycle`]'s; the SQL is each
//! backend's (`sqlite::change`, `pg::change`).

use serde_json::{Map, Value};

use super::StoreError;
use super::ops::body_text;
use super::types::{ChangeRoute, Inserted, NewRecord, State};
use crate::lifecycle::{self, Decision, Lookup, Transitions};

/// What a postback would be to a stored conversion (`explain`).
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// The record that created the conversion (`None`: none found).
    pub original: Option<i64>,
    /// `duplicate`, `update`, `stale`, or `rejected` (an update-only postback that finds none).
    pub outcome: &'static str,
    /// For an update: the fields the change would send.
    pub change: Option<Map<String, Value>>,
    pub reason: Option<String>,
}

impl Preview {
    /// An update-only postback that finds no conversion.
    pub(crate) fn unmatched(lookup: &Lookup) -> Preview {
        Preview {
            original: None,
            outcome: "rejected",
            change: None,
            reason: Some(unmatched(lookup)),
        }
    }

    pub(crate) fn of(
        conv: &Conversion,
        body: &Map<String, Value>,
        transitions: &Transitions,
    ) -> Preview {
        let (outcome, change, reason) = match lifecycle::decide(&conv.tracked, body, transitions) {
            Decision::Duplicate => ("duplicate", None, None),
            Decision::Update { change } => ("update", Some(change), None),
            Decision::Stale { reason } => ("stale", None, Some(reason)),
        };
        Preview {
            original: Some(conv.record_id),
            outcome,
            change,
            reason,
        }
    }
}

/// A conversion as its dedupe row remembers it.
pub(crate) struct Conversion {
    pub key: String,
    /// The record that created it.
    pub record_id: i64,
    pub tracked: Map<String, Value>,
    pub lead_id: Option<String>,
}

/// The conversion columns of a dedupe row taken by a new create.
pub(crate) struct Memory<'a> {
    pub source: &'a str,
    pub click_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
    /// `None` when changes are not tracked for this source.
    pub tracked: Option<String>,
}

impl<'a> Memory<'a> {
    pub fn of(
        source: &'a str,
        body: &'a Map<String, Value>,
        tracks: bool,
    ) -> Result<Memory<'a>, StoreError> {
        let text = |f: &str| body.get(f).and_then(Value::as_str);
        Ok(Memory {
            source,
            click_id: text("click_id"),
            order_id: text("adv_order_id"),
            tracked: tracks
                .then(|| body_text(&lifecycle::tracked(body)))
                .transpose()?,
        })
    }
}

impl Conversion {
    /// The conversion of dedupe row `key` (held by `record_id`) when its changes are tracked
    /// (`tracked` is set); the caller has checked that its window is open.
    pub fn of(
        key: &str,
        record_id: i64,
        tracked: Option<&str>,
        lead_id: Option<String>,
    ) -> Result<Option<Conversion>, StoreError> {
        let Some(tracked) = tracked else {
            return Ok(None);
        };
        Ok(Some(Conversion {
            key: key.to_string(),
            record_id,
            tracked: parse_map(tracked, "conversion state")?,
            lead_id,
        }))
    }
}

pub(crate) fn parse_map(text: &str, what: &str) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The reason of a change folded into its original, which was not sent yet.
pub(crate) fn merged_reason(original: i64) -> String {
    format!("merged into record {original}, which was not sent yet")
}

/// The reason of a waiting change collapsed into the later change `into`.
pub(crate) fn collapsed_reason(into: i64) -> String {
    format!("collapsed into the later change {into}")
}

/// The bodies of waiting changes `(id, body)`, in their order.
pub(crate) fn bodies(waiting: &[(i64, String)]) -> Result<Vec<Map<String, Value>>, StoreError> {
    waiting
        .iter()
        .map(|(_, b)| parse_map(b, "change body"))
        .collect()
}

/// The body of a queued change: the waiting changes (oldest first) with `change` set over
/// them, so one `leads/update` carries the latest state.
pub(crate) fn collapsed(
    waiting: &[(i64, String)],
    change: &Map<String, Value>,
) -> Result<String, StoreError> {
    let mut all = bodies(waiting)?;
    all.push(change.clone());
    body_text(&lifecycle::overlay(&Map::new(), &all))
}

/// `body` (an unsent record's, `None`: empty) with `changes` set over it, in order.
pub(crate) fn folded(
    body: Option<&str>,
    changes: &[Map<String, Value>],
) -> Result<String, StoreError> {
    let body = parse_map(body.unwrap_or("{}"), "body")?;
    body_text(&lifecycle::overlay(&body, changes))
}

/// Which record a change is written to: a new one for `rec`, or a replayed one.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    New(&'a NewRecord),
    Existing(i64),
}

/// The columns of a change's record.
pub(crate) struct Row<'a> {
    pub state: State,
    pub body: &'a str,
    pub click_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub key: &'a str,
    pub original: i64,
}

/// What [`later`] did.
pub(crate) enum Later {
    /// A plain resend: the caller stores it as a duplicate.
    Duplicate,
    Stale {
        id: i64,
        reason: String,
    },
    Update {
        id: i64,
        route: ChangeRoute,
    },
}

impl Later {
    pub fn inserted(self, original: i64) -> Option<Inserted> {
        match self {
            Later::Duplicate => None,
            Later::Stale { id, reason } => Some(Inserted::Stale {
                id,
                original,
                reason,
            }),
            Later::Update { id, route } => Some(Inserted::Update {
                id,
                original,
                route,
            }),
        }
    }
}

pub(crate) fn unmatched(lookup: &Lookup) -> String {
    format!(
        "no conversion of {lookup} is known: this source only changes conversions; replay this postback once the original exists"
    )
}

/// Why a replayed change finds no conversion by its dedupe key `key`.
pub(crate) fn key_gone(key: &str) -> String {
    format!("the conversion of dedupe key {key:?} is no longer known (its window ended)")
}

/// Why a replayed change without a dedupe key finds no conversion.
pub(crate) const NO_KEY: &str = "the record has no dedupe key";
