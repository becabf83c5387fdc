//! What the read side returns on either backend: the records, attempts and conversions as
//! the admin API, the CLI and the metrics see them. The queries are each backend's.

use std::time::Duration;

use jiff::Timestamp;

use super::types::{RawPostback, State};

/// Which records [`super::Store::list`] returns; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub source: Option<String>,
    pub state: Option<State>,
    pub click_id: Option<String>,
    /// The records of one conversion: the record that created it and its later postbacks.
    pub conversion: Option<i64>,
    /// Received at or after.
    pub since: Option<Timestamp>,
    /// Received before.
    pub until: Option<Timestamp>,
}

/// Where the next page of [`super::Store::list`] starts (an opaque record id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub i64);

/// One line of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub id: i64,
    pub source: String,
    pub state: State,
    pub click_id: Option<String>,
    pub received_at: Timestamp,
}

/// One attempt as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptView {
    pub at: Timestamp,
    pub status: Option<u16>,
    pub answer: String,
    pub duration: Duration,
    /// `delivered`, `duplicate_upstream`, `retry`, `dead` or `paused`.
    pub outcome: String,
}

/// A whole record.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordView {
    pub summary: Summary,
    pub raw: RawPostback,
    /// The mapped body; absent for rejected and skipped records.
    pub body: Option<serde_json::Map<String, serde_json::Value>>,
    pub reason: Option<String>,
    pub transaction_id: Option<String>,
    /// For a `duplicate`: the record it repeats.
    pub original_id: Option<i64>,
    /// Attempts counted by the retry schedule.
    pub attempt_count: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub attempts: Vec<AttemptView>,
    /// A change of a conversion (`leads/update`), not a create.
    pub is_change: bool,
    /// Scaleo's `lead_id` from this record's delivery (JSON text as Scaleo gave it).
    pub lead_id: Option<String>,
    /// The conversion this record created or belongs to, when its changes are tracked.
    pub conversion: Option<ConversionView>,
    /// For a `rejected` record: how many repeats of it were counted instead of stored.
    pub repeats: u32,
}

/// A conversion as the store remembers it, with its chain of later postbacks.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionView {
    /// The record that created it.
    pub original: i64,
    /// The current `conv_status` and money as last accepted.
    pub current: serde_json::Map<String, serde_json::Value>,
    /// Scaleo's `lead_id` (JSON text as Scaleo gave it) once the create is delivered.
    pub lead_id: Option<String>,
    pub transaction_id: Option<String>,
    /// When the conversion is forgotten (the dedupe window).
    pub expires_at: Timestamp,
    /// Its later postbacks (changes, stale ones, resends), oldest first.
    pub chain: Vec<Summary>,
}

/// How many later postbacks of a conversion a record view lists at most.
pub const CHAIN_MAX: usize = 200;
