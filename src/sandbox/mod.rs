//! A local stand-in for Scaleo's conversion API, for newcomers and for integration tests.
//!
//! [`Sandbox::start`] serves Scaleo's two calls on a local address and answers like Scaleo
//! (as its API docs describe it), with Scaleo's envelope
//! `{"status", "code", "name", "message", "info"}`:
//!
//! - `POST /api/v2/network/tracking/conv-click-id?api-key=KEY` ([`CONVERSION_PATH`]) creates
//!   a conversion;
//! - `PUT /api/v2/network/leads/update?api-key=KEY` ([`UPDATE_PATH`]) changes one, named by
//!   the `lead_id` its create answer gave.
//!
//! With no scripted step pending, a call to either path is checked in this order:
//!
//! | check | create (`POST conv-click-id`) | update (`PUT leads/update`) |
//! |---|---|---|
//! | body over 1 MiB | 413 | 413 |
//! | another method | 405 (`Allow: POST`) | 405 (`Allow: PUT`) |
//! | `api-key` missing or wrong (the last one counts when repeated, as in PHP) | 401 | 401 |
//! | `Content-Type` not `application/json` | 400 | 400 |
//! | body not JSON, or not an object | 400 `bad JSON` | 400 `bad JSON` |
//! | a field outside the endpoint's list | 400 naming every unknown parameter (list: Scaleo's body fields) | 400 naming every unknown parameter (list: `lead_id`, `conv_status`, `revenue`, `payout`, `amount`, `adv_order_id`, `custom1`..`custom10`, `public_notes`, `private_notes`) |
//! | wrong values | 422, `info.errors` = `{field: [messages]}`: wrong JSON type (`revenue`/`payout`/`amount` numbers, `goal_id` integer, the rest strings), `goal_id` with `goal_alias`, `conv_status` or `deliver_lead` outside their sets, `timestamp`/`click_timestamp` not `Y-m-d H:i:s`, missing or blank `click_id` | 422, `info.errors`: wrong JSON type (money numbers, the rest strings, `lead_id` a string or a number), `conv_status` outside `pending`, `approved`, `rejected`, `hold`, missing or blank `lead_id` |
//! | the endpoint's own check | same `click_id` and goal (`goal_id`, else `goal_alias`, else the default goal) as an accepted conversion: 400 "Multiple Conversions are not Allowed" | no kept conversion has this `lead_id` (compared by its text: `"17"` and `17` are the same): 404 naming it |
//! | otherwise | 200, `info` with `lead_id` (a string, unique per conversion), `transaction_id` (a UUID v4), `conv_status`, `goal_id` | 200, `info` with the conversion's `lead_id` and `transaction_id` and its `conv_status` after the change; the sent fields (all but `lead_id`) are applied to the conversion and the update is appended to its history |
//!
//! A conversion's status is `approved` when neither its create nor a change sent one.
//! Lead ids are decimal text counting up from a random start, so that ids an earlier
//! sandbox gave do not name this one's conversions.
//!
//! **Multiple conversions.** The sandbox emulates a goal that does not allow a second
//! conversion per click, which is what makes a retry after a lost answer visible. Scaleo's
//! docs name the message but not its HTTP status; the sandbox answers it with HTTP 400 in
//! an error envelope (`message` and `info.message`). The relay must treat the phrase as
//! "already delivered" whatever the status: [`Step::multiple_conversions_in_200`] scripts
//! the 200 reading. [`Sandbox::allow_multiple_conversions`] switches the check off.
//!
//! **Scripts.** [`Sandbox::script`] queues [`Step`]s; each call to either Scaleo path (create
//! or update, in call order, one step per call) takes the next one *before* the method, key
//! and body are checked (only the 413 comes first). A success step ([`Step::Success`],
//! [`Step::Hang`]) accepts whatever was sent: on the create path as a new conversion, on the
//! update path as an update, applied to the conversion its `lead_id` names when there is one
//! (otherwise the answer's `transaction_id` is `null`). Other paths answer a 404 envelope
//! and never take a step.
//!
//! **Recording.** Every call to the Scaleo side (any path except the sandbox's own
//! `/healthz` and `/sandbox/conversions`) is logged with `tracing::info!` (method, path,
//! query with `api-key=***`, status, click id, lead id, body size: never the body, which
//! holds lead data) and kept for [`Sandbox::received`]. Accepted conversions are kept for
//! [`Sandbox::accepted`] and [`Sandbox::conversions`], accepted updates for
//! [`Sandbox::updates`]. At most [`CAPACITY`] entries are kept per list, each list also
//! within 64 MiB of body text (a conversion counts with its changes); the oldest go first,
//! and a forgotten conversion no longer counts as a duplicate nor answers an update.
//!
//! **For people.** `GET /sandbox/conversions` lists the accepted conversions (newest last),
//! each with `at`, `lead_id`, `transaction_id`, `body` (as created), `current` (`body` with
//! every accepted change applied) and `changes` (`[{"at", "body"}]`, the update bodies as
//! sent, oldest first); `GET /healthz` answers 200.

mod query;
mod server;
mod state;
mod step;
mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

pub use crate::scaleo::envelope::MULTIPLE_CONVERSIONS;
pub use server::MAX_BODY_BYTES;
pub use state::CAPACITY;
pub use step::Step;

use state::State;

/// The path of Scaleo's conversion endpoint, as served by the sandbox.
pub const CONVERSION_PATH: &str = crate::scaleo::CONV_PATH;

/// The path of Scaleo's endpoint that changes a conversion (`PUT`), as served by the sandbox.
pub const UPDATE_PATH: &str = crate::scaleo::UPDATE_PATH;

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The only `api-key` the sandbox accepts; must not be empty.
    pub api_key: String,
}

/// One call the sandbox received, with the answer status it gave.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the call was read.
    pub at: jiff::Timestamp,
    /// HTTP method (`POST`, `PUT`, ...).
    pub method: String,
    /// Request path, without the query.
    pub path: String,
    /// The query string with every `api-key` value replaced by `***`.
    pub query_redacted: String,
    /// `raw_body` parsed as JSON, when it is JSON.
    pub body: Option<Value>,
    /// The body as text (invalid UTF-8 replaced); empty when it was over 1 MiB.
    pub raw_body: String,
    /// The HTTP status answered; 0 when the connection was dropped without an answer.
    pub status: u16,
}

/// A conversion the sandbox accepted, with the changes accepted for it since.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    /// When the create was accepted.
    pub at: jiff::Timestamp,
    /// The `info.lead_id` of the create answer (decimal text).
    pub lead_id: String,
    /// The `info.transaction_id` of the create answer.
    pub transaction_id: String,
    /// The create body as sent.
    pub body: Value,
    /// `body` with every accepted change applied in order (the fields of each update,
    /// `lead_id` aside, replace the fields of the same name).
    pub current: Value,
    /// The accepted updates of this conversion, oldest first.
    pub changes: Vec<Change>,
}

impl Conversion {
    /// The current `conv_status`: the last one sent by the create or a change, `approved`
    /// when none was (as the create answer says).
    pub fn conv_status(&self) -> &str {
        self.current
            .get("conv_status")
            .and_then(Value::as_str)
            .unwrap_or(state::DEFAULT_CONV_STATUS)
    }
}

/// One accepted update of a conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// When it was accepted.
    pub at: jiff::Timestamp,
    /// The update body as sent, `lead_id` included.
    pub body: Value,
}

/// A running sandbox. Dropping the handle shuts the server down.
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Sandbox {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and serves on the current tokio
    /// runtime until [`Sandbox::shutdown`] or drop.
    ///
    /// Fails when the address cannot be bound, or with `InvalidInput` for an empty key.
    pub async fn start(addr: SocketAddr, cfg: SandboxConfig) -> std::io::Result<Sandbox> {
        if cfg.api_key.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the sandbox api_key must not be empty",
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(cfg.api_key));
        tokio::spawn(server::serve(listener, Arc::clone(&state)));
        tracing::info!(%addr, "sandbox listening");
        Ok(Sandbox { addr, state })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, the `scaleo.base_url` that points the relay at this sandbox.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every kept call, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state.received()
    }

    /// The bodies of the kept conversions answered with success, oldest first.
    pub fn accepted(&self) -> Vec<Value> {
        self.state
            .accepted()
            .into_iter()
            .map(|accepted| accepted.body())
            .collect()
    }

    /// The kept conversions answered with success (scripted ones included), oldest first,
    /// each with its current state and its changes.
    pub fn conversions(&self) -> Vec<Conversion> {
        self.state
            .accepted()
            .iter()
            .map(|accepted| accepted.view())
            .collect()
    }

    /// The kept conversion whose `lead_id` is this text.
    pub fn conversion(&self, lead_id: &str) -> Option<Conversion> {
        self.state
            .accepted()
            .iter()
            .find(|accepted| accepted.lead_id == lead_id)
            .map(|accepted| accepted.view())
    }

    /// The bodies of the kept updates answered with success (scripted ones included, also
    /// those for an unknown `lead_id`), oldest first, exactly as sent.
    pub fn updates(&self) -> Vec<Value> {
        self.state.updates()
    }

    /// Queues answers for the next calls to the Scaleo endpoints (create or update, in call
    /// order), after those already queued, one per call.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.state.push_steps(steps);
    }

    /// Replaces the queued answers with these.
    pub fn set_script(&self, steps: impl IntoIterator<Item = Step>) {
        self.state.clear_script();
        self.state.push_steps(steps);
    }

    /// How many scripted answers are still queued.
    pub fn pending_steps(&self) -> usize {
        self.state.pending_steps()
    }

    /// Whether a second conversion for the same click and goal is accepted (default: no,
    /// it answers "Multiple Conversions are not Allowed").
    pub fn allow_multiple_conversions(&self, allow: bool) {
        self.state.set_allow_multiple(allow);
    }

    /// Waits until at least `n` conversions were accepted since the start (scripted
    /// successes included), or `timeout` passes. Returns whether `n` was reached.
    pub async fn wait_for_accepted(&self, n: usize, timeout: Duration) -> bool {
        let mut total = self.state.accepted_total();
        let reached = tokio::time::timeout(timeout, total.wait_for(|&count| count >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Waits until at least `n` updates were accepted since the start (scripted successes
    /// included), or `timeout` passes. Returns whether `n` was reached.
    pub async fn wait_for_updates(&self, n: usize, timeout: Duration) -> bool {
        let mut total = self.state.updates_total();
        let reached = tokio::time::timeout(timeout, total.wait_for(|&count| count >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Stops accepting connections and closes the open ones (in-flight answers are lost).
    /// Returns at once; the port is released shortly after.
    pub fn shutdown(&self) {
        self.state.shutdown();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
