//! The conversion lifecycle: how a later postback of a stored conversion changes it.
//!
//! Pure functions, no I/O, shared by both stores and by the rule-file tests. A conversion is
//! identified by its dedupe key; the store keeps its *tracked* state (`conv_status` and the
//! money fields, as last accepted) and Scaleo's `lead_id`. For a later postback with the same
//! key, [`decide`] says whether it is a plain resend ([`Decision::Duplicate`]), a change to
//! send ([`Decision::Update`], carrying only the fields that change) or one that would move
//! the conversion back ([`Decision::Stale`]); [`route`] then says where a change goes given
//! the original record's state: folded into the unsent original, queued as a
//! `leads/update`, or dead because Scaleo's `lead_id` is unknown.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::scaleo;

/// The fields a change of a conversion compares and sends: the status and the money.
pub const TRACKED: [&str; 4] = ["conv_status", "revenue", "payout", "amount"];

/// The money fields among [`TRACKED`].
const MONEY: [&str; 3] = ["revenue", "payout", "amount"];

/// Which status may follow which (`[updates] transitions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transitions(BTreeMap<String, Vec<String>>);

impl Default for Transitions {
    /// `pending -> approved | rejected | hold`, `hold -> approved | rejected | pending`,
    /// `approved -> rejected`; `rejected` is final.
    fn default() -> Self {
        let table = [
            ("pending", &["approved", "rejected", "hold"][..]),
            ("hold", &["approved", "rejected", "pending"][..]),
            ("approved", &["rejected"][..]),
        ];
        Transitions(
            table
                .iter()
                .map(|(from, to)| (from.to_string(), to.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    }
}

impl Transitions {
    /// A table from `(from, [to...])` pairs; statuses must be Scaleo's (checked by the caller).
    pub fn new(table: impl IntoIterator<Item = (String, Vec<String>)>) -> Transitions {
        Transitions(table.into_iter().collect())
    }

    /// Whether `to` may follow `from`.
    pub fn allows(&self, from: &str, to: &str) -> bool {
        self.0
            .get(from)
            .is_some_and(|next| next.iter().any(|n| n == to))
    }

    /// The statuses that may follow `from` (empty: `from` is final).
    pub fn after(&self, from: &str) -> &[String] {
        self.0.get(from).map_or(&[], Vec::as_slice)
    }

    /// Every `(from, to)` status named in the table, for load-time checks.
    pub fn statuses(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flat_map(|(from, to)| {
            std::iter::once(from.as_str()).chain(to.iter().map(String::as_str))
        })
    }
}

/// `[updates]` of a rule file, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updates {
    /// `false`: every repeat of a conversion is a `duplicate`.
    pub enabled: bool,
    pub transitions: Arc<Transitions>,
    /// `only = true`: this source only changes conversions, never creates one.
    pub only: Option<OnlyUpdates>,
}

impl Default for Updates {
    fn default() -> Self {
        Updates {
            enabled: true,
            transitions: Arc::new(Transitions::default()),
            only: None,
        }
    }
}

/// An update-only source: whose conversions it changes and the fields that find one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlyUpdates {
    /// The source whose conversions this one changes (its own id by default).
    pub of: String,
    /// A non-empty subset of [`LOOKUP_FIELDS`].
    pub key: Vec<&'static str>,
}

/// The mapped fields an update-only source can find a conversion by.
pub const LOOKUP_FIELDS: [&str; 2] = ["adv_order_id", "click_id"];

/// What an update-only source looks conversions up by: the conversions of `source`, by one
/// of [`LOOKUP_FIELDS`]. A store may keep an index for each one the rules need, so that only
/// the sources a refund or chargeback URL points at pay for it on every insert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupIndex {
    pub source: String,
    /// `adv_order_id` or `click_id`.
    pub field: &'static str,
}

impl OnlyUpdates {
    /// The index that serves this source's lookups: by order id when its key has one (the
    /// more selective field), else by click id.
    pub fn index(&self) -> LookupIndex {
        let field = if self.key.contains(&"adv_order_id") {
            "adv_order_id"
        } else {
            "click_id"
        };
        LookupIndex {
            source: self.of.clone(),
            field,
        }
    }
}

/// How an update-only postback finds its conversion: the source and the key fields' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub of: String,
    pub click_id: Option<String>,
    pub order_id: Option<String>,
}

impl Lookup {
    /// The lookup of `body` under `only`; `Err` names a key field the body lacks.
    pub fn of_body(only: &OnlyUpdates, body: &Map<String, Value>) -> Result<Lookup, String> {
        let mut lookup = Lookup {
            of: only.of.clone(),
            click_id: None,
            order_id: None,
        };
        for field in &only.key {
            let Some(Value::String(v)) = body.get(*field) else {
                return Err(format!(
                    "{field}: required to find the conversion ([updates] key), but the rule gives it no value"
                ));
            };
            match *field {
                "click_id" => lookup.click_id = Some(v.clone()),
                _ => lookup.order_id = Some(v.clone()),
            }
        }
        Ok(lookup)
    }
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source {}", self.of)?;
        if let Some(o) = &self.order_id {
            write!(f, " with adv_order_id {o:?}")?;
        }
        if let Some(c) = &self.click_id {
            let and = if self.order_id.is_some() {
                " and"
            } else {
                " with"
            };
            write!(f, "{and} click_id {c:?}")?;
        }
        Ok(())
    }
}

/// What a later postback of a known conversion is.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Same status and money (or it omits them): not forwarded.
    Duplicate,
    /// A change to send: only the tracked fields that change.
    Update { change: Map<String, Value> },
    /// It would move the conversion back: stored, never sent.
    Stale { reason: String },
}

/// The tracked fields of a mapped body (status and money), as the conversion remembers them.
pub fn tracked(body: &Map<String, Value>) -> Map<String, Value> {
    TRACKED
        .iter()
        .filter_map(|f| body.get(*f).map(|v| (f.to_string(), v.clone())))
        .collect()
}

/// Decides what `incoming` (a mapped body) does to a conversion whose tracked state is
/// `current`. A status change must follow `transitions` (a conversion without a status takes
/// any); money fields compare as decimals (`25` equals `25.00`); absent fields stay as they are.
pub fn decide(
    current: &Map<String, Value>,
    incoming: &Map<String, Value>,
    transitions: &Transitions,
) -> Decision {
    let mut change = Map::new();
    let now = current.get("conv_status").and_then(Value::as_str);
    if let Some(next) = incoming.get("conv_status").and_then(Value::as_str)
        && now != Some(next)
    {
        if let Some(now) = now
            && !transitions.allows(now, next)
        {
            let allowed = transitions.after(now);
            let allowed = if allowed.is_empty() {
                format!("{now} is final")
            } else {
                format!("from {now} only {} may follow", allowed.join(", "))
            };
            return Decision::Stale {
                reason: format!(
                    "conv_status {next} would move the conversion back from {now} ({allowed}); not sent"
                ),
            };
        }
        change.insert("conv_status".into(), Value::String(next.to_string()));
    }
    for field in MONEY {
        let Some(new) = incoming.get(field) else {
            continue;
        };
        if !same_money(current.get(field), new) {
            change.insert(field.to_string(), new.clone());
        }
    }
    if change.is_empty() {
        Decision::Duplicate
    } else {
        Decision::Update { change }
    }
}

fn same_money(old: Option<&Value>, new: &Value) -> bool {
    let dec = |v: &Value| Decimal::from_str(&v.to_string()).ok();
    match (old.and_then(dec), dec(new)) {
        (Some(a), Some(b)) => a == b,
        _ => old == Some(new),
    }
}

/// `base` with every field of each of `changes` set over it, in order.
pub fn overlay<'a>(
    base: &Map<String, Value>,
    changes: impl IntoIterator<Item = &'a Map<String, Value>>,
) -> Map<String, Value> {
    let mut out = base.clone();
    for change in changes {
        for (k, v) in change {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// What the store knows of a change's original when the change arrives (or is replayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original<'a> {
    pub id: i64,
    /// `None`: the record is gone (retention), only the conversion's memory is left.
    pub state: Option<&'a str>,
    /// Its lease is live: an attempt is in flight.
    pub in_flight: bool,
    /// Scaleo's `lead_id` is stored.
    pub has_lead: bool,
}

/// Where a change goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The original was not sent yet: fold the change into its body (the change is `merged`).
    Fold,
    /// Queue it as a `leads/update` (it waits while an earlier record of the conversion is
    /// pending or in flight).
    Queue,
    /// Scaleo's `lead_id` is unknown and cannot come: `dead` with this reason.
    Dead(String),
}

/// Routes a change of `original`.
pub fn route(original: Original<'_>) -> Route {
    let pending = matches!(original.state, Some("queued" | "retrying" | "paused"));
    if pending && !original.in_flight {
        return Route::Fold;
    }
    if pending || original.has_lead {
        return Route::Queue;
    }
    let id = original.id;
    Route::Dead(match original.state {
        Some("delivered") => format!(
            "original record {id} was delivered without a Scaleo lead_id: the change cannot be sent"
        ),
        Some(state) => format!(
            "original record {id} is {state}: Scaleo's lead_id is not known, so the change cannot be sent; replay it after the original is delivered"
        ),
        None => format!(
            "original record {id} is gone and no Scaleo lead_id was stored: the change cannot be sent"
        ),
    })
}

/// The body of `PUT leads/update`: `lead_id` (as Scaleo gave it, JSON text) and the change.
pub fn update_body(lead_id: &str, change: &str) -> Result<String, String> {
    let lead: Value =
        serde_json::from_str(lead_id).map_err(|e| format!("stored lead_id {lead_id:?}: {e}"))?;
    let mut body: Map<String, Value> =
        serde_json::from_str(change).map_err(|e| format!("stored change: {e}"))?;
    body.insert("lead_id".into(), lead);
    serde_json::to_string(&body).map_err(|e| e.to_string())
}

/// The statuses Scaleo knows (`[updates] transitions` may name only these).
pub fn known_status(status: &str) -> bool {
    scaleo::allowed_values("conv_status").is_none_or(|set| set.contains(&status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn decide_json(current: Value, incoming: Value) -> Decision {
        decide(&map(current), &map(incoming), &Transitions::default())
    }

    #[test]
    fn plain_resend_is_duplicate() {
        let d = decide_json(
            json!({"conv_status": "pending", "revenue": 0}),
            json!({"click_id": "c", "conv_status": "pending", "revenue": 0}),
        );
        assert_eq!(d, Decision::Duplicate);
    }

    #[test]
    fn omitting_money_is_not_a_change() {
        let d = decide_json(
            json!({"conv_status": "approved", "revenue": 25}),
            json!({"conv_status": "approved"}),
        );
        assert_eq!(d, Decision::Duplicate);
    }

    #[test]
    fn money_compares_as_decimals() {
        let d = decide_json(json!({"revenue": 25}), json!({"revenue": 25.00}));
        assert_eq!(d, Decision::Duplicate);
    }

    #[test]
    fn allowed_transition_sends_only_what_changes() {
        let d = decide_json(
            json!({"conv_status": "pending", "revenue": 0, "payout": 5}),
            json!({"conv_status": "approved", "revenue": 25, "payout": 5}),
        );
        assert_eq!(
            d,
            Decision::Update {
                change: map(json!({"conv_status": "approved", "revenue": 25}))
            }
        );
    }

    #[test]
    fn money_only_change_without_status() {
        let d = decide_json(
            json!({"conv_status": "approved", "revenue": 25}),
            json!({"revenue": -25}),
        );
        assert_eq!(
            d,
            Decision::Update {
                change: map(json!({"revenue": -25}))
            }
        );
    }

    #[test]
    fn moving_back_is_stale_naming_both_statuses() {
        let Decision::Stale { reason } = decide_json(
            json!({"conv_status": "approved"}),
            json!({"conv_status": "pending"}),
        ) else {
            panic!("not stale")
        };
        assert!(
            reason.contains("pending") && reason.contains("approved"),
            "{reason}"
        );
    }

    #[test]
    fn rejected_is_final() {
        let d = decide_json(
            json!({"conv_status": "rejected"}),
            json!({"conv_status": "approved", "revenue": 25}),
        );
        let Decision::Stale { reason } = d else {
            panic!("not stale")
        };
        assert!(reason.contains("rejected is final"), "{reason}");
    }

    #[test]
    fn a_conversion_without_status_takes_any() {
        let d = decide_json(json!({"revenue": 1}), json!({"conv_status": "rejected"}));
        assert_eq!(
            d,
            Decision::Update {
                change: map(json!({"conv_status": "rejected"}))
            }
        );
    }

    #[test]
    fn routes_follow_the_original() {
        let o = |state, in_flight, has_lead| Original {
            id: 7,
            state,
            in_flight,
            has_lead,
        };
        assert_eq!(route(o(Some("queued"), false, false)), Route::Fold);
        assert_eq!(route(o(Some("retrying"), false, false)), Route::Fold);
        assert_eq!(route(o(Some("queued"), true, false)), Route::Queue);
        assert_eq!(route(o(Some("delivered"), false, true)), Route::Queue);
        assert_eq!(route(o(None, false, true)), Route::Queue);
        for dead in [
            Some("dead"),
            Some("duplicate_upstream"),
            Some("delivered"),
            None,
        ] {
            let Route::Dead(reason) = route(o(dead, false, false)) else {
                panic!("{dead:?} not dead")
            };
            assert!(reason.contains("record 7"), "{reason}");
        }
    }

    #[test]
    fn update_body_keeps_lead_id_as_given() {
        let b = update_body("\"L-1\"", r#"{"conv_status":"approved"}"#).unwrap();
        assert_eq!(b, r#"{"conv_status":"approved","lead_id":"L-1"}"#);
        let b = update_body("123", r#"{"revenue":25.50}"#).unwrap();
        assert_eq!(b, r#"{"lead_id":123,"revenue":25.50}"#);
    }
}
