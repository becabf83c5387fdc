//! What the sandbox remembers: calls, accepted conversions with their changes, accepted
//! updates, duplicate keys and the script.
//!
//! Everything lives behind one `std` mutex that is never held across an `.await`. Memory is
//! bounded by [`CAPACITY`] entries per list and by a byte budget per list: bodies are kept
//! as text and parsed on read, so a small but deeply structured body cannot grow in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::step::Step;
use super::validate::DuplicateKey;
use super::{Change, Conversion, Received};

/// At most this many calls, accepted conversions and accepted updates are kept (oldest go
/// first).
pub const CAPACITY: usize = 10_000;

/// At most this many bytes of body text are kept per list (calls, accepted conversions with
/// their changes, accepted updates); the newest entry is always kept.
const BYTES_BUDGET: usize = 64 << 20;

/// The status a conversion has when neither its create nor a change set one.
pub(crate) const DEFAULT_CONV_STATUS: &str = "approved";

/// A conversion the sandbox answered success for, with the changes applied to it since.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) at: Timestamp,
    /// Decimal text, as Scaleo's docs show `lead_id`: a string.
    pub(crate) lead_id: String,
    pub(crate) transaction_id: String,
    /// The create body as JSON text.
    body_json: String,
    /// Accepted updates of this conversion, oldest first.
    changes: Vec<Logged>,
    key: Option<DuplicateKey>,
}

/// A body kept as JSON text, with when it was accepted.
#[derive(Debug, Clone)]
struct Logged {
    at: Timestamp,
    body_json: String,
}

impl Logged {
    fn new(body: &Value) -> Logged {
        Logged {
            at: Timestamp::now(),
            body_json: body.to_string(),
        }
    }

    fn body(&self) -> Value {
        // The text was serialized from a `Value`, so it always parses back.
        serde_json::from_str(&self.body_json).unwrap_or(Value::Null)
    }
}

impl Accepted {
    /// The create body.
    pub(crate) fn body(&self) -> Value {
        serde_json::from_str(&self.body_json).unwrap_or(Value::Null)
    }

    /// The create body with every accepted change applied in order (every field of an
    /// update except `lead_id` replaces the field of the same name).
    pub(crate) fn current(&self) -> Value {
        let mut current = self.body();
        for change in &self.changes {
            let Value::Object(fields) = change.body() else {
                continue;
            };
            if !current.is_object() {
                current = Value::Object(Map::new());
            }
            if let Value::Object(target) = &mut current {
                target.extend(fields.into_iter().filter(|(name, _)| name != "lead_id"));
            }
        }
        current
    }

    /// The current `conv_status`, [`DEFAULT_CONV_STATUS`] when none was ever sent.
    pub(crate) fn conv_status(&self) -> Value {
        self.current()
            .get("conv_status")
            .cloned()
            .unwrap_or_else(|| json!(DEFAULT_CONV_STATUS))
    }

    /// Body text kept for this conversion, changes included.
    fn bytes(&self) -> usize {
        self.body_json.len()
            + self
                .changes
                .iter()
                .map(|change| change.body_json.len())
                .sum::<usize>()
    }

    /// The public view.
    pub(crate) fn view(&self) -> Conversion {
        Conversion {
            at: self.at,
            lead_id: self.lead_id.clone(),
            transaction_id: self.transaction_id.clone(),
            body: self.body(),
            current: self.current(),
            changes: self
                .changes
                .iter()
                .map(|change| Change {
                    at: change.at,
                    body: change.body(),
                })
                .collect(),
        }
    }

    /// The entry of `GET /sandbox/conversions`.
    pub(crate) fn listing_entry(&self) -> Value {
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|change| json!({"at": change.at.to_string(), "body": change.body()}))
            .collect();
        json!({
            "at": self.at.to_string(),
            "lead_id": self.lead_id,
            "transaction_id": self.transaction_id,
            "body": self.body(),
            "current": self.current(),
            "changes": changes,
        })
    }
}

/// The second conversion for a click and goal that already has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Multiple Conversions are not Allowed")]
pub(crate) struct Duplicate;

#[derive(Default)]
struct Inner {
    received: VecDeque<Received>,
    received_bytes: usize,
    accepted: VecDeque<Accepted>,
    accepted_bytes: usize,
    /// Bodies of the updates answered with success (scripted ones included).
    updates: VecDeque<Logged>,
    updates_bytes: usize,
    /// Duplicate keys of the kept accepted conversions, with how many carry each.
    seen: HashMap<DuplicateKey, usize>,
    script: VecDeque<Step>,
    last_lead_id: u64,
    allow_multiple: bool,
}

/// The state shared by the handle and the server tasks.
pub(crate) struct State {
    pub(crate) api_key: String,
    inner: Mutex<Inner>,
    accepted_total: watch::Sender<usize>,
    updates_total: watch::Sender<usize>,
    shutdown: watch::Sender<bool>,
}

impl State {
    pub(crate) fn new(api_key: String) -> State {
        // Lead ids continue from a random start, so that the ids an earlier sandbox gave (to
        // a relay that kept them in its database) do not name this sandbox's conversions.
        let inner = Inner {
            last_lead_id: fastrand::u64(100_000_000..900_000_000),
            ..Inner::default()
        };
        State {
            api_key,
            inner: Mutex::new(inner),
            accepted_total: watch::Sender::new(0),
            updates_total: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
        }
    }

    /// A panic in another thread while holding the lock leaves data that is still usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    pub(crate) fn push_steps(&self, steps: impl IntoIterator<Item = Step>) {
        self.lock().script.extend(steps);
    }

    pub(crate) fn clear_script(&self) {
        self.lock().script.clear();
    }

    pub(crate) fn pending_steps(&self) -> usize {
        self.lock().script.len()
    }

    pub(crate) fn next_step(&self) -> Option<Step> {
        self.lock().script.pop_front()
    }

    pub(crate) fn set_allow_multiple(&self, allow: bool) {
        self.lock().allow_multiple = allow;
    }

    /// Keeps a call (its `body` is derived from `raw_body` on read), dropping the oldest
    /// ones beyond the count and byte bounds.
    pub(crate) fn record(&self, call: Received) {
        let mut inner = self.lock();
        inner.received_bytes += call.raw_body.len();
        inner.received.push_back(Received { body: None, ..call });
        while over_bounds(inner.received.len(), inner.received_bytes) {
            if let Some(old) = inner.received.pop_front() {
                inner.received_bytes -= old.raw_body.len();
            }
        }
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        let kept: Vec<Received> = self.lock().received.iter().cloned().collect();
        kept.into_iter()
            .map(|call| Received {
                body: serde_json::from_str(&call.raw_body).ok(),
                ..call
            })
            .collect()
    }

    pub(crate) fn accepted(&self) -> Vec<Accepted> {
        self.lock().accepted.iter().cloned().collect()
    }

    /// Accepts a validated conversion unless its key was accepted before (and the goal
    /// does not allow multiple conversions).
    pub(crate) fn try_accept(
        &self,
        body: &Value,
        key: DuplicateKey,
    ) -> Result<Accepted, Duplicate> {
        let mut inner = self.lock();
        if !inner.allow_multiple && inner.seen.contains_key(&key) {
            return Err(Duplicate);
        }
        let accepted = inner.accept(body, Some(key));
        drop(inner);
        self.accepted_total.send_modify(|total| *total += 1);
        Ok(accepted)
    }

    /// Accepts whatever was sent (scripted success), remembering its key when it has one.
    pub(crate) fn force_accept(&self, body: &Value, key: Option<DuplicateKey>) -> Accepted {
        let accepted = self.lock().accept(body, key);
        self.accepted_total.send_modify(|total| *total += 1);
        accepted
    }

    pub(crate) fn accepted_total(&self) -> watch::Receiver<usize> {
        self.accepted_total.subscribe()
    }

    /// Applies a validated update to the conversion with this `lead_id`, recording it; the
    /// conversion after the change, or `None` (nothing recorded) when no kept conversion has
    /// that id.
    pub(crate) fn try_update(&self, lead_id: &str, body: &Value) -> Option<Accepted> {
        let mut inner = self.lock();
        inner.find(lead_id)?;
        let updated = inner.update(Some(lead_id), body);
        drop(inner);
        self.updates_total.send_modify(|total| *total += 1);
        updated
    }

    /// Records whatever was sent as an accepted update (scripted success), applying it to
    /// the conversion its `lead_id` names when there is one.
    pub(crate) fn force_update(&self, lead_id: Option<&str>, body: &Value) -> Option<Accepted> {
        let updated = self.lock().update(lead_id, body);
        self.updates_total.send_modify(|total| *total += 1);
        updated
    }

    /// The kept accepted update bodies, oldest first.
    pub(crate) fn updates(&self) -> Vec<Value> {
        let kept: Vec<Logged> = self.lock().updates.iter().cloned().collect();
        kept.iter().map(Logged::body).collect()
    }

    pub(crate) fn updates_total(&self) -> watch::Receiver<usize> {
        self.updates_total.subscribe()
    }

    pub(crate) fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

impl Inner {
    fn accept(&mut self, body: &Value, key: Option<DuplicateKey>) -> Accepted {
        self.last_lead_id += 1;
        if let Some(key) = &key {
            *self.seen.entry(key.clone()).or_default() += 1;
        }
        let accepted = Accepted {
            at: Timestamp::now(),
            lead_id: self.last_lead_id.to_string(),
            transaction_id: uuid_v4(),
            body_json: body.to_string(),
            changes: Vec::new(),
            key,
        };
        self.accepted_bytes += accepted.bytes();
        self.accepted.push_back(accepted.clone());
        self.evict_accepted();
        accepted
    }

    /// The kept conversion with this `lead_id` (newest first: updates usually follow soon).
    fn find(&mut self, lead_id: &str) -> Option<&mut Accepted> {
        self.accepted
            .iter_mut()
            .rev()
            .find(|accepted| accepted.lead_id == lead_id)
    }

    /// Records an accepted update and applies it to the conversion `lead_id` names, if
    /// kept; returns that conversion after the change.
    fn update(&mut self, lead_id: Option<&str>, body: &Value) -> Option<Accepted> {
        let logged = Logged::new(body);
        self.updates_bytes += logged.body_json.len();
        self.updates.push_back(logged.clone());
        while over_bounds(self.updates.len(), self.updates_bytes) {
            if let Some(old) = self.updates.pop_front() {
                self.updates_bytes -= old.body_json.len();
            }
        }
        let bytes = logged.body_json.len();
        let conversion = self.find(lead_id?)?;
        conversion.changes.push(logged);
        let updated = conversion.clone();
        self.accepted_bytes += bytes;
        self.evict_accepted();
        Some(updated)
    }

    fn evict_accepted(&mut self) {
        while over_bounds(self.accepted.len(), self.accepted_bytes) {
            if let Some(old) = self.accepted.pop_front() {
                self.accepted_bytes -= old.bytes();
                self.forget(old.key);
            }
        }
    }

    fn forget(&mut self, key: Option<DuplicateKey>) {
        let Some(key) = key else { return };
        if let Some(count) = self.seen.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.seen.remove(&key);
            }
        }
    }
}

/// Whether a list of `len` entries holding `bytes` of text must drop its oldest entry.
fn over_bounds(len: usize, bytes: usize) -> bool {
    len > CAPACITY || (bytes > BYTES_BUDGET && len > 1)
}

/// Waits until the shutdown flag is raised (or its sender is gone).
pub(crate) async fn shutdown_raised(mut signal: watch::Receiver<bool>) {
    // An error means the state was dropped: nothing is left to serve either.
    let _ = signal.wait_for(|&raised| raised).await;
}

/// A random RFC 4122 version-4 UUID in its usual lowercase text form.
pub(crate) fn uuid_v4() -> String {
    let mut bits = fastrand::u128(..);
    bits &= !(0xf << 76); // version nibble
    bits |= 0x4 << 76;
    bits &= !(0x3 << 62); // variant bits
    bits |= 0x2 << 62;
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v4_has_the_version_and_variant_of_rfc_4122() {
        for _ in 0..100 {
            let id = uuid_v4();
            let groups: Vec<&str> = id.split('-').collect();
            let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(matches!(groups[3].as_bytes()[0], b'8'..=b'b'), "{id}");
        }
    }

    use crate::sandbox::validate::GoalKey;

    fn call(n: usize) -> Received {
        Received {
            at: Timestamp::UNIX_EPOCH,
            method: "POST".into(),
            path: "/".into(),
            query_redacted: String::new(),
            body: None,
            raw_body: format!("{{\"n\": {n}}}"),
            status: 200,
        }
    }

    fn key(click_id: usize) -> DuplicateKey {
        DuplicateKey {
            click_id: click_id.to_string(),
            goal: GoalKey::Default,
        }
    }

    #[test]
    fn keeps_only_the_newest_calls_and_parses_their_bodies_on_read() {
        let state = State::new("k".into());
        for n in 0..CAPACITY + 5 {
            state.record(call(n));
        }
        let received = state.received();
        assert_eq!(received.len(), CAPACITY);
        assert_eq!(received[0].body, Some(json!({"n": 5})));
    }

    #[test]
    fn forgets_the_duplicate_key_of_an_evicted_conversion() {
        let state = State::new("k".into());
        assert!(state.try_accept(&json!({}), key(0)).is_ok());
        assert_eq!(state.try_accept(&json!({}), key(0)).unwrap_err(), Duplicate);
        for n in 1..=CAPACITY {
            assert!(state.try_accept(&json!({}), key(n)).is_ok());
        }
        assert!(state.try_accept(&json!({}), key(0)).is_ok());
        assert_eq!(state.accepted().len(), CAPACITY);
    }

    #[test]
    fn gives_unique_string_lead_ids() {
        let state = State::new("k".into());
        let ids: std::collections::HashSet<String> = (0..100)
            .map(|_| state.force_accept(&Value::Null, None).lead_id)
            .collect();
        assert_eq!(ids.len(), 100);
        assert!(ids.iter().all(|id| id.parse::<u64>().is_ok()));
    }

    #[test]
    fn applies_changes_in_order_and_keeps_the_create_body() {
        let state = State::new("k".into());
        let created = state.try_accept(
            &json!({"click_id": "a", "conv_status": "pending",
                                               "revenue": 1}),
            key(1),
        );
        let lead_id = created.expect("accepted").lead_id;
        let first = json!({"lead_id": lead_id, "conv_status": "hold"});
        let second = json!({"lead_id": lead_id, "conv_status": "approved", "revenue": 25});
        state.try_update(&lead_id, &first).expect("known");
        let updated = state.try_update(&lead_id, &second).expect("known");

        assert_eq!(updated.conv_status(), json!("approved"));
        assert_eq!(
            updated.current(),
            json!({"click_id": "a", "conv_status": "approved", "revenue": 25})
        );
        assert_eq!(updated.body()["conv_status"], "pending");
        let view = updated.view();
        let changes: Vec<Value> = view.changes.into_iter().map(|c| c.body).collect();
        assert_eq!(changes, [first.clone(), second.clone()]);
        assert_eq!(state.updates(), [first, second]);
        assert!(state.try_update("no-such-lead", &json!({})).is_none());
        assert_eq!(state.updates().len(), 2, "an unknown lead is not recorded");
        assert_eq!(*state.updates_total().borrow(), 2);
    }

    #[test]
    fn a_forced_update_is_recorded_even_for_an_unknown_lead() {
        let state = State::new("k".into());
        assert!(state.force_update(None, &Value::Null).is_none());
        assert!(
            state
                .force_update(Some("x"), &json!({"lead_id": "x"}))
                .is_none()
        );
        assert_eq!(state.updates(), [Value::Null, json!({"lead_id": "x"})]);
    }

    #[test]
    fn counts_every_acceptance_for_waiters() {
        let state = State::new("k".into());
        state.force_accept(&Value::Null, None);
        state.force_accept(&Value::Null, None);
        assert_eq!(*state.accepted_total().borrow(), 2);
    }
}
