//! The conversion lifecycle as the stores keep it, on either backend: the conversion's
//! memory in its dedupe row (`tracked`, `settled`, `lead_id`), what a later postback became,
//! and the texts of the reasons. The decisions are [`crate::lifecycle`]'s; the SQL is each
//! backend's (`sqlite::change`, `pg::change`).
//!
//! # What the memory says
//!
//! `tracked` is what later postbacks are compared with (duplicate, update or stale): the
//! state Scaleo accepted, with the changes on their way to it set over it, in arrival order.
//! A change is on its way while it is queued (or retrying, paused, in flight), or folded into
//! an original that is not sent yet. A change that is `dead` is not: Scaleo never took it, so
//! the memory must not claim its state (a resend of it must be an `update` again, not a
//! `duplicate`, and a later change is decided against what Scaleo really holds).
//!
//! So the memory keeps a second state, `settled`: `tracked` without the changes on their way
//! (for an original not delivered yet: its own state as it arrived, before any fold). `NULL`
//! means nothing is on its way (`tracked` is settled), and also stands for rows written before
//! this column existed, whose changes cannot be taken back. It moves with each record of the
//! conversion (see [`memory_after`]):
//! - a change folded or queued: `settled` keeps the state before it (set if `NULL`);
//! - a change dead at once (its original's `lead_id` is unknown): neither moves;
//! - the original delivered: `settled` is what it sent (its own state with the folds), or
//!   `NULL` when nothing waits;
//! - a change delivered: it is set over `settled`;
//! - a change refused (`dead` or `duplicate_upstream`): `tracked` goes back to `settled` with
//!   the changes still on their way; the changes that were collapsed into it die with it,
//!   each with a reason naming it (they are replayable, as it is);
//! - the original refused (`duplicate_upstream` or `dead`, so no `lead_id`): the changes
//!   folded into it, or waiting for it, are `dead` with a reason naming it (replayable once it
//!   is fixed) and `tracked` goes back to the original's own state, as if the changes had
//!   arrived after it failed. (Which of the sends Scaleo took, if any, is not known: its own
//!   state is what the relay first sent.)
//!
//! A replayed change keeps its record id, so it is older than the changes that arrived after
//! it: the fields those set (and Scaleo took, or will) are left out of it ([`superseded`]), so
//! a replay never overwrites a newer status or amount. A dead change replayed then sends the
//! tracked fields left, not only those that differ from the memory ([`resend`]): the memory
//! of a conversion written before dead changes were taken back out of it may still claim them.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::StoreError;
use super::ops::body_text;
use super::types::{ChangeRoute, Inserted, NewRecord, State};
use crate::lifecycle::{self, Decision, Lookup, Original, Route, Transitions};

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
    /// A postback whose dedupe key the live record `original` holds, on a source that does
    /// not track changes: a `duplicate`.
    pub(crate) fn duplicate_of(original: i64) -> Preview {
        Preview {
            original: Some(original),
            outcome: "duplicate",
            change: None,
            reason: None,
        }
    }

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

/// The reason of a change collapsed into the change `into`, which Scaleo refused.
pub(crate) fn collapsed_dead_reason(into: i64) -> String {
    format!(
        "collapsed into the later change {into}, which is dead: this change was not sent; replay it with (or after) change {into}"
    )
}

/// The reason of a change folded into (or waiting for) the original `id`, which ended in
/// `state` (`duplicate_upstream` or `dead`) without a Scaleo `lead_id`.
pub(crate) fn refused_original_reason(id: i64, state: &str) -> String {
    let original = Original {
        id,
        state: Some(state),
        in_flight: false,
        has_lead: false,
    };
    match lifecycle::route(original) {
        Route::Dead(reason) => reason,
        // Not reached: an original in these states has no lead_id.
        _ => format!("original record {id} is {state}: the change cannot be sent"),
    }
}

/// How a sent record of a conversion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Scaleo took it.
    Delivered,
    /// Scaleo did not (`dead`, `duplicate_upstream`).
    Refused,
}

/// The conversion's memory `(tracked, settled)` after one of its records ended (see the
/// module doc), given the ended record (a change or its original) and its body as sent, the
/// memory before, and the changes still on their way (`pending`, oldest first, without the
/// ended one). `None`: the memory stays as it is.
pub(crate) fn memory_after(
    ended: Ended,
    is_change: bool,
    body: Option<&str>,
    tracked: &str,
    settled: Option<&str>,
    pending: &[(i64, String)],
) -> Result<Option<(String, Option<String>)>, StoreError> {
    Ok(match (ended, is_change) {
        // The original was taken with its folds: that is what Scaleo holds now.
        (Ended::Delivered, false) => {
            let now = match pending {
                [] => None,
                _ => Some(body_text(&lifecycle::tracked(&parse_map(
                    body.unwrap_or("{}"),
                    "body",
                )?))?),
            };
            (now.as_deref() != settled).then(|| (tracked.to_string(), now))
        }
        (Ended::Delivered, true) => match (settled, pending) {
            (None, _) => None,
            (Some(_), []) => Some((tracked.to_string(), None)),
            (Some(s), _) => {
                let change = parse_map(body.unwrap_or("{}"), "change body")?;
                let now = lifecycle::overlay(&parse_map(s, "conversion state")?, [&change]);
                Some((tracked.to_string(), Some(body_text(&now)?)))
            }
        },
        // Everything on its way dies with the original (the caller marks it dead).
        (Ended::Refused, false) => settled.map(|s| (s.to_string(), None)),
        (Ended::Refused, true) => match settled {
            None => None,
            Some(s) => {
                let base = parse_map(s, "conversion state")?;
                let now = lifecycle::overlay(&base, &bodies(pending)?);
                let keep = (!pending.is_empty()).then(|| s.to_string());
                Some((body_text(&now)?, keep))
            }
        },
    })
}

/// The tracked fields set by the changes of a conversion that arrived after the one being
/// replayed (their bodies), which Scaleo took or will take.
pub(crate) fn superseded(later: &[String]) -> Result<BTreeSet<String>, StoreError> {
    let mut fields = BTreeSet::new();
    for body in later {
        fields.extend(parse_map(body, "change body")?.keys().cloned());
    }
    Ok(fields)
}

/// What a replayed dead change sends again: the tracked fields of its re-mapped `body` (already
/// without those later changes set), unless nothing is left or it would move `conv` back
/// (`None`: it is decided like a new postback, a duplicate or stale). A replayed reject is
/// always decided like a new postback.
pub(crate) fn resend(
    current: State,
    conv: &Conversion,
    body: &Map<String, Value>,
    transitions: &Transitions,
) -> Option<Map<String, Value>> {
    let change = lifecycle::tracked(body);
    let stale = matches!(
        lifecycle::decide(&conv.tracked, body, transitions),
        Decision::Stale { .. }
    );
    (current == State::Dead && !change.is_empty() && !stale).then_some(change)
}

/// `body` without the tracked `fields` a later change set.
pub(crate) fn without(body: &Map<String, Value>, fields: &BTreeSet<String>) -> Map<String, Value> {
    body.iter()
        .filter(|(k, _)| !(lifecycle::TRACKED.contains(&k.as_str()) && fields.contains(*k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(v: Value) -> String {
        v.to_string()
    }

    fn map(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn a_refused_change_leaves_what_scaleo_holds_and_what_is_still_on_its_way() {
        let settled = text(json!({"conv_status": "approved", "revenue": 10}));
        let tracked = text(json!({"conv_status": "rejected", "revenue": -5}));
        // Nothing else waits: back to what Scaleo took, nothing on its way any more.
        let (t, s) = memory_after(Ended::Refused, true, None, &tracked, Some(&settled), &[])
            .unwrap()
            .unwrap();
        assert_eq!(map(&t), json!({"conv_status": "approved", "revenue": 10}));
        assert_eq!(s, None);
        // A later change waits: it stays in the memory, over what Scaleo took.
        let pending = [(9, text(json!({"revenue": -5})))];
        let (t, s) = memory_after(
            Ended::Refused,
            true,
            None,
            &tracked,
            Some(&settled),
            &pending,
        )
        .unwrap()
        .unwrap();
        assert_eq!(map(&t), json!({"conv_status": "approved", "revenue": -5}));
        assert_eq!(s.as_deref(), Some(settled.as_str()));
        // A row from before `settled` existed: nothing to go back to.
        assert!(
            memory_after(Ended::Refused, true, None, &tracked, None, &[])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_refused_original_goes_back_to_its_own_state() {
        let settled = text(json!({"conv_status": "pending", "revenue": 1}));
        let tracked = text(json!({"conv_status": "approved", "revenue": 50}));
        let (t, s) = memory_after(Ended::Refused, false, None, &tracked, Some(&settled), &[])
            .unwrap()
            .unwrap();
        assert_eq!(map(&t), json!({"conv_status": "pending", "revenue": 1}));
        assert_eq!(s, None);
    }

    #[test]
    fn deliveries_move_what_is_settled() {
        let tracked = text(json!({"conv_status": "rejected", "revenue": 0}));
        let settled = text(json!({"conv_status": "pending", "revenue": 1}));
        let sent = text(json!({"click_id": "c", "conv_status": "approved", "revenue": 50}));
        let pending = [(7, text(json!({"conv_status": "rejected", "revenue": 0})))];
        // The original with its folds, a change still waiting: settled is what was sent.
        let (t, s) = memory_after(
            Ended::Delivered,
            false,
            Some(&sent),
            &tracked,
            Some(&settled),
            &pending,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t, tracked);
        assert_eq!(
            map(&s.unwrap()),
            json!({"conv_status": "approved", "revenue": 50})
        );
        // Nothing waits: tracked is all settled.
        let (_, s) = memory_after(
            Ended::Delivered,
            false,
            Some(&sent),
            &tracked,
            Some(&settled),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s, None);
        // A change taken while another waits: set over what was settled.
        let change = text(json!({"revenue": 7}));
        let (_, s) = memory_after(
            Ended::Delivered,
            true,
            Some(&change),
            &tracked,
            Some(&settled),
            &pending,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            map(&s.unwrap()),
            json!({"conv_status": "pending", "revenue": 7})
        );
    }

    #[test]
    fn a_dead_change_is_sent_again_unless_nothing_is_left_or_it_moves_back() {
        let conv = |tracked: Value| Conversion {
            key: "k".into(),
            record_id: 1,
            tracked: tracked.as_object().unwrap().clone(),
            lead_id: Some("1".into()),
        };
        let body = |v: Value| v.as_object().unwrap().clone();
        let t = Transitions::default();
        let rejected = body(json!({"click_id": "c", "conv_status": "rejected"}));
        // Even when the memory (written before the fix) still claims it.
        let claims = conv(json!({"conv_status": "rejected"}));
        assert_eq!(
            resend(State::Dead, &claims, &rejected, &t),
            Some(body(json!({"conv_status": "rejected"})))
        );
        // A replayed reject is decided like a new postback.
        assert_eq!(resend(State::Rejected, &claims, &rejected, &t), None);
        // Nothing left after the later changes: a duplicate.
        let empty = body(json!({"click_id": "c"}));
        assert_eq!(resend(State::Dead, &claims, &empty, &t), None);
        // It would move the conversion back: stale.
        let pending = body(json!({"conv_status": "pending"}));
        let approved = conv(json!({"conv_status": "approved"}));
        assert_eq!(resend(State::Dead, &approved, &pending, &t), None);
    }

    #[test]
    fn a_replay_leaves_out_what_later_changes_set() {
        let later = [text(json!({"revenue": -5})), text(json!({"payout": 1}))];
        let fields = superseded(&later).unwrap();
        let body = json!({"click_id": "c", "conv_status": "rejected", "revenue": 0});
        let Value::Object(body) = body else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(without(&body, &fields)),
            json!({"click_id": "c", "conv_status": "rejected"})
        );
    }
}
