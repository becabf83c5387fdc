//! The values that go into and come out of the store: new records, states, pauses.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use jiff::Timestamp;

use crate::lifecycle::{Lookup, Transitions};

/// The postback as it arrived, kept with every stored record so it can be re-mapped later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPostback {
    pub method: String,
    pub path: String,
    /// The query string (or form body), with the source's token already redacted by ingest.
    pub query: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub received_at: Timestamp,
}

/// What the mapping made of a postback.
#[derive(Debug, Clone, PartialEq)]
pub enum NewState {
    /// Forward `body` to Scaleo (unless `dedupe` finds a live original).
    Queued {
        body: serde_json::Map<String, serde_json::Value>,
        click_id: String,
        dedupe: Option<DedupeKey>,
        /// The transition table when later postbacks of this conversion change it
        /// (`[updates]` enabled and a dedupe key); `None`: every repeat is a duplicate.
        updates: Option<Arc<Transitions>>,
    },
    /// A postback of an update-only source: it changes the conversion `lookup` finds (kept
    /// for the dedupe window of that source) and never creates one.
    Change {
        body: serde_json::Map<String, serde_json::Value>,
        click_id: Option<String>,
        lookup: Lookup,
        transitions: Arc<Transitions>,
    },
    /// The rule could not produce a valid body; kept raw for a replay.
    Rejected {
        reason: String,
        click_id: Option<String>,
    },
    /// A `[[skip]]` rule matched.
    Skipped { reason: String },
}

/// A dedupe key and how long it is remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeKey {
    /// The key text; it already includes the source.
    pub key: String,
    pub window: Duration,
}

/// A record to store.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub source: String,
    pub raw: RawPostback,
    pub state: NewState,
    /// For a rejected postback: when a rejected record of the same source with the same raw
    /// query was received within this window, the postback is counted on that record
    /// (`repeats`) instead of being stored again (senders that retry a reject for days).
    pub repeat_window: Option<std::time::Duration>,
}

/// The answer to an insert (committed either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored as its own record (queued, rejected or skipped).
    Stored { id: i64 },
    /// Stored as `duplicate` of the live record `original`; it will not be forwarded.
    Duplicate { id: i64, original: i64 },
    /// A change of the conversion created by record `original`; `route` says where it went.
    Update {
        id: i64,
        original: i64,
        route: ChangeRoute,
    },
    /// It would move the conversion of `original` back: stored as `stale`, never sent.
    Stale {
        id: i64,
        original: i64,
        reason: String,
    },
    /// An update-only postback that finds no conversion: stored as `rejected` (replayable).
    Unmatched { id: i64, reason: String },
    /// A repeat of the rejected record `id` (see [`NewRecord::repeat_window`]): not stored,
    /// counted on that record, which now has `repeats` repeats.
    Repeat {
        id: i64,
        reason: String,
        repeats: i64,
    },
}

/// Where a stored change went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeRoute {
    /// Folded into the original, which was not sent yet (the change is `merged`).
    Merged,
    /// Queued as a `leads/update` of the conversion.
    Queued,
    /// `dead`: Scaleo's `lead_id` is not known (the reason names the original).
    Dead(String),
}

/// The answer to a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeued {
    /// Queued for forwarding again.
    Queued,
    /// Its dedupe key belongs to the live record `original`: stored as `duplicate`.
    Duplicate { original: i64 },
    /// The current rules still reject it (the new reason is stored).
    Rejected { reason: String },
    /// The current rules skip it.
    Skipped,
    /// A change of the conversion of `original`, gone where `route` says.
    Update { original: i64, route: ChangeRoute },
    /// A change that would move the conversion of `original` back: `stale`.
    Stale { original: i64, reason: String },
}

/// The state of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Rejected,
    Skipped,
    Queued,
    Delivered,
    Duplicate,
    DuplicateUpstream,
    Retrying,
    Paused,
    Dead,
    /// A change that would move its conversion back; never sent.
    Stale,
    /// A change folded into an unsent record of its conversion.
    Merged,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 11] = [
        State::Rejected,
        State::Skipped,
        State::Queued,
        State::Delivered,
        State::Duplicate,
        State::DuplicateUpstream,
        State::Retrying,
        State::Paused,
        State::Dead,
        State::Stale,
        State::Merged,
    ];

    /// The stored (and API) name: `rejected`, ..., `duplicate_upstream`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Rejected => "rejected",
            State::Skipped => "skipped",
            State::Queued => "queued",
            State::Delivered => "delivered",
            State::Duplicate => "duplicate",
            State::DuplicateUpstream => "duplicate_upstream",
            State::Retrying => "retrying",
            State::Paused => "paused",
            State::Dead => "dead",
            State::Stale => "stale",
            State::Merged => "merged",
        }
    }

    /// The state named `name` (as [`State::as_str`] spells it).
    pub fn parse(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Waiting to be forwarded.
    pub fn is_pending(self) -> bool {
        matches!(self, State::Queued | State::Retrying | State::Paused)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pause covers: all forwarding, or one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PauseScope {
    All,
    Source(String),
}

impl PauseScope {
    /// Stored as `*` for all (a source id can never be `*`), else the source id.
    pub(crate) fn key(&self) -> &str {
        match self {
            PauseScope::All => "*",
            PauseScope::Source(s) => s,
        }
    }

    pub(crate) fn from_key(key: &str) -> PauseScope {
        if key == "*" {
            PauseScope::All
        } else {
            PauseScope::Source(key.to_string())
        }
    }
}

impl fmt::Display for PauseScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseScope::All => f.write_str("all"),
            PauseScope::Source(s) => write!(f, "source {s}"),
        }
    }
}

/// Why forwarding is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseReason {
    /// An operator paused it (admin API or CLI).
    Operator,
    /// Scaleo answered 401/403 (or redirected): the API key or the base URL is wrong.
    UpstreamAuth,
    /// Scaleo stopped answering as Scaleo (`forward.outage_after` attempts in a row without
    /// an answer, a 5xx, or a 2xx that is not its JSON): all sending is held and probed.
    Outage,
    /// Records of a source whose rule file was missing at start: its `[forward]` target is
    /// unknown, so nothing is sent until the file returns or an operator resumes it.
    MissingRule,
}

impl PauseReason {
    /// The stored name: `operator` or `upstream_auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Operator => "operator",
            PauseReason::UpstreamAuth => "upstream_auth",
            PauseReason::MissingRule => "missing_rule",
            PauseReason::Outage => "outage",
        }
    }

    /// A pause that one probe per `forward.pause_probe` may try to end (Scaleo refused the
    /// key, or stopped answering); the others wait for an operator or a rule file.
    pub fn is_probed(self) -> bool {
        matches!(self, PauseReason::UpstreamAuth | PauseReason::Outage)
    }

    pub(crate) fn parse(name: &str) -> Option<PauseReason> {
        match name {
            "operator" => Some(PauseReason::Operator),
            "upstream_auth" => Some(PauseReason::UpstreamAuth),
            "missing_rule" => Some(PauseReason::MissingRule),
            "outage" => Some(PauseReason::Outage),
            _ => None,
        }
    }
}

/// One persisted pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    pub scope: PauseScope,
    pub reason: PauseReason,
    pub since: Timestamp,
}
