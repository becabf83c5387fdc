//! What the sandbox remembers: calls, accepted conversions, duplicate keys and the script.
//!
//! Everything lives behind one `std` mutex that is never held across an `.await`. Memory is
//! bounded by [`CAPACITY`] entries per list and by a byte budget per list: bodies are kept
//! as text and parsed on read, so a small but deeply structured body cannot grow in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Received;
use super::step::Step;
use super::validate::DuplicateKey;

/// At most this many calls and this many accepted conversions are kept (oldest go first).
pub const CAPACITY: usize = 10_000;

/// At most this many bytes of body text are kept per list (calls, accepted conversions);
/// the newest entry is always kept.
const BYTES_BUDGET: usize = 64 << 20;

/// A conversion the sandbox answered success for.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) at: Timestamp,
    pub(crate) lead_id: u64,
    pub(crate) transaction_id: String,
    /// The body as JSON text.
    body_json: String,
    key: Option<DuplicateKey>,
}

impl Accepted {
    /// The accepted body.
    pub(crate) fn body(&self) -> Value {
        // The text was serialized from a `Value`, so it always parses back.
        serde_json::from_str(&self.body_json).unwrap_or(Value::Null)
    }

    /// The entry of `GET /sandbox/conversions`.
    pub(crate) fn listing_entry(&self) -> Value {
        json!({
            "at": self.at.to_string(),
            "lead_id": self.lead_id,
            "transaction_id": self.transaction_id,
            "body": self.body(),
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
    shutdown: watch::Sender<bool>,
}

impl State {
    pub(crate) fn new(api_key: String) -> State {
        State {
            api_key,
            inner: Mutex::default(),
            accepted_total: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
        }
    }

    /// A panic in another thread while holding the lock leaves data that is still usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
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
            lead_id: self.last_lead_id,
            transaction_id: super::envelope::uuid_v4(),
            body_json: body.to_string(),
            key,
        };
        self.accepted_bytes += accepted.body_json.len();
        self.accepted.push_back(accepted.clone());
        while over_bounds(self.accepted.len(), self.accepted_bytes) {
            if let Some(old) = self.accepted.pop_front() {
                self.accepted_bytes -= old.body_json.len();
                self.forget(old.key);
            }
        }
        accepted
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

#[cfg(test)]
mod tests {
    use super::*;
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
    fn counts_every_acceptance_for_waiters() {
        let state = State::new("k".into());
        state.force_accept(&Value::Null, None);
        state.force_accept(&Value::Null, None);
        assert_eq!(*state.accepted_total().borrow(), 2);
    }
}
