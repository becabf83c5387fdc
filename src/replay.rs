//! Replay: re-map stored `rejected` or `dead` records from their raw postback with the rules
//! in force now, and queue them again (dedupe still applies). Shared by the admin API
//! (`POST /admin/replay`) and the CLI (`postback-relay replay`).
//!
//! Re-mapping rebuilds exactly what ingest gave the rule: the stored query (the token already
//! redacted, a POST body's parameters appended, the JSON numbers among them marked) decoded
//! with [`decode_stored`], minus the token
//! parameter, and the stored caller IP, user agent, referer and receive time.
//!
//! A filtered replay walks the matching records newest first in pages of [`BATCH`], with a
//! few requeues in flight at once so they share group commits, and yields between pages, so
//! live ingest always gets the store's writer in between.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::mapping;
use crate::rules::{Input, LiveRules, Rule, decode_stored};
use crate::store::{
    ChangeRoute, Cursor, Filter, NewState, RecordView, Requeued, State, Store, StoreError,
};

/// Records read and replayed per page of a filtered replay.
pub const BATCH: usize = 500;
/// Requeues in flight at once within a page.
const IN_FLIGHT: usize = 32;
/// Pause between pages, so a long replay leaves the writer to live traffic.
const BETWEEN_BATCHES: Duration = Duration::from_millis(10);
/// Distinct reasons listed in a report (the rest are only counted).
pub const MAX_REASONS: usize = 50;
/// Record ids listed per reason.
pub const IDS_PER_REASON: usize = 20;

/// Errors that stop a replay (a record that cannot be replayed is counted, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A filter names a state other than `rejected` or `dead`.
    #[error("state {0} cannot be replayed: only rejected or dead records can")]
    State(State),
    /// The store failed; what was replayed before stays replayed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which records to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<i64>),
    /// `state` must be `rejected`, `dead` or unset (both).
    Filter {
        source: Option<String>,
        state: Option<State>,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    },
}

/// Records that gave the same answer for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonGroup {
    /// `rejected` (the current rules still reject it), `skipped`, or `not_replayed`
    /// (unknown id, wrong state, no rule file for its source).
    pub outcome: &'static str,
    pub reason: String,
    pub count: u64,
    /// The first few record ids.
    pub ids: Vec<i64>,
}

/// The answer to a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub queued: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub not_replayed: u64,
    /// Grouped by reason, largest first; at most [`MAX_REASONS`].
    pub reasons: Vec<ReasonGroup>,
    /// Distinct reasons left out of `reasons`.
    pub reasons_omitted: u64,
}

#[derive(Default)]
struct Tally {
    report: Report,
    groups: BTreeMap<(&'static str, String), (u64, Vec<i64>)>,
}

impl Tally {
    fn note(&mut self, id: i64, outcome: &'static str, reason: String) {
        let g = self.groups.entry((outcome, reason)).or_default();
        g.0 += 1;
        if g.1.len() < IDS_PER_REASON {
            g.1.push(id);
        }
    }

    fn add(&mut self, id: i64, one: One) {
        let r = &mut self.report;
        match one {
            One::Queued => r.queued += 1,
            One::Duplicate => r.duplicate += 1,
            One::Rejected(reason) => {
                r.rejected += 1;
                self.note(id, "rejected", reason);
            }
            One::Skipped(reason) => {
                r.skipped += 1;
                self.note(id, "skipped", reason);
            }
            One::NotReplayed(reason) => {
                r.not_replayed += 1;
                self.note(id, "not_replayed", reason);
            }
        }
    }

    fn finish(self) -> Report {
        let mut report = self.report;
        let mut groups: Vec<ReasonGroup> = self
            .groups
            .into_iter()
            .map(|((outcome, reason), (count, ids))| ReasonGroup {
                outcome,
                reason,
                count,
                ids,
            })
            .collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.count));
        report.reasons_omitted = groups.len().saturating_sub(MAX_REASONS) as u64;
        groups.truncate(MAX_REASONS);
        report.reasons = groups;
        report
    }
}

/// What happened to one record.
enum One {
    Queued,
    Duplicate,
    Rejected(String),
    Skipped(String),
    NotReplayed(String),
}

/// Replays with the store, the live rules and the network's time zone.
#[derive(Clone)]
pub struct Replayer {
    pub store: Store,
    pub rules: std::sync::Arc<LiveRules>,
    pub zone: TimeZone,
}

impl Replayer {
    /// Replays the selected records and reports what became of them.
    pub async fn run(&self, selection: Selection) -> Result<Report, ReplayError> {
        let mut tally = Tally::default();
        match selection {
            Selection::Ids(ids) => {
                for chunk in ids.chunks(IN_FLIGHT) {
                    self.replay_ids(chunk.iter().copied(), &mut tally).await?;
                }
            }
            Selection::Filter {
                source,
                state,
                since,
                until,
            } => {
                let states = match state {
                    None => vec![State::Rejected, State::Dead],
                    Some(s @ (State::Rejected | State::Dead)) => vec![s],
                    Some(other) => return Err(ReplayError::State(other)),
                };
                for state in states {
                    let filter = Filter {
                        source: source.clone(),
                        state: Some(state),
                        click_id: None,
                        conversion: None,
                        since,
                        until,
                    };
                    self.replay_filter(filter, &mut tally).await?;
                }
            }
        }
        Ok(tally.finish())
    }

    async fn replay_filter(&self, filter: Filter, tally: &mut Tally) -> Result<(), ReplayError> {
        let mut cursor: Option<Cursor> = None;
        loop {
            let (page, next) = self.store.list(filter.clone(), BATCH, cursor).await?;
            for chunk in page.chunks(IN_FLIGHT) {
                self.replay_ids(chunk.iter().map(|s| s.id), tally).await?;
            }
            match next {
                Some(c) => cursor = Some(c),
                None => return Ok(()),
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
    }

    /// Replays a few records concurrently (their requeues share group commits).
    async fn replay_ids(
        &self,
        ids: impl Iterator<Item = i64>,
        tally: &mut Tally,
    ) -> Result<(), ReplayError> {
        let mut set = JoinSet::new();
        for id in ids {
            let me = self.clone();
            set.spawn(async move { (id, me.replay_one(id).await) });
        }
        let mut failure = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((id, Ok(one))) => tally.add(id, one),
                Ok((_, Err(e))) => failure = Some(e),
                Err(e) => failure = Some(StoreError::Corrupt(format!("replay task failed: {e}"))),
            }
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn replay_one(&self, id: i64) -> Result<One, StoreError> {
        let Some(rec) = self.store.get(id).await? else {
            return Ok(One::NotReplayed(format!("no record {id}")));
        };
        let state = rec.summary.state;
        if !matches!(state, State::Rejected | State::Dead) {
            return Ok(One::NotReplayed(format!(
                "state {state}: only rejected or dead records can be replayed"
            )));
        }
        let rules = self.rules.current();
        let source = &rec.summary.source;
        let Some(rule) = rules.get(source) else {
            return Ok(One::NotReplayed(format!(
                "source {source} has no rule file any more ({source}.toml); restore it to replay"
            )));
        };
        let new_state = remap(rule, &rec, &self.zone);
        match self.store.requeue(id, new_state).await {
            Ok(Requeued::Queued) => Ok(One::Queued),
            Ok(Requeued::Duplicate { .. }) => Ok(One::Duplicate),
            Ok(Requeued::Rejected { reason }) => Ok(One::Rejected(reason)),
            Ok(Requeued::Skipped) => Ok(One::Skipped("a [[skip]] rule matched".into())),
            Ok(Requeued::Update {
                route: ChangeRoute::Queued | ChangeRoute::Merged,
                ..
            }) => Ok(One::Queued),
            Ok(Requeued::Update {
                route: ChangeRoute::Dead(reason),
                ..
            }) => Ok(One::NotReplayed(reason)),
            Ok(Requeued::Stale { reason, .. }) => Ok(One::NotReplayed(reason)),
            // Settled by someone else since we read it (another replay, the CLI).
            Err(StoreError::NotReplayable { state, .. }) => Ok(One::NotReplayed(format!(
                "state {state}: only rejected or dead records can be replayed"
            ))),
            Err(StoreError::NotFound(_)) => Ok(One::NotReplayed(format!("no record {id}"))),
            Err(e) => Err(e),
        }
    }
}

/// Maps a stored record's raw postback with `rule` into the state a replay stores.
pub fn remap(rule: &Rule, rec: &RecordView, zone: &TimeZone) -> NewState {
    let raw = &rec.raw;
    let stored = decode_stored(&raw.query);
    let (params, json_numbers) = mapping::without_token_marked(rule, stored.pairs, &stored.numbers);
    let input = Input {
        params: &params,
        json_numbers: &json_numbers,
        client_ip: raw.client_ip.as_deref(),
        user_agent: raw.user_agent.as_deref(),
        referer: raw.referer.as_deref(),
        received_at: Some(raw.received_at),
    };
    let outcome = rule.apply(&input, zone);
    mapping::new_state(rule, &input, outcome)
}
