//! Group commit on PostgreSQL: concurrent operations of one kind share one transaction.
//!
//! A [`Batcher`] owns a collector task. It waits for one request, takes whatever else is
//! already waiting (up to `store.commit_batch`), and hands the group to a task of its own
//! that runs it in one transaction on one pooled connection ([`Group::run`]); while up to
//! [`IN_FLIGHT`] groups run, new requests wait and form the next group. No timer is
//! involved: a lone request is a group of one at once, groups grow only from requests that
//! arrived while earlier groups were committing.
//!
//! Every caller is answered after its group's COMMIT returned, with its own result. When a
//! statement of the group fails, the group is rolled back and each caller is told to redo
//! its request alone ([`Reply::Alone`]), in a transaction of its own: a bad request fails
//! alone and its neighbours are stored. A group rolled back by a deadlock (SQLSTATE 40P01) or
//! a serialization failure (40001) failed for no fault of its own: the transactions it met
//! have usually ended a moment later, so it is first run once more as a whole, after a short
//! jittered pause ([`AGAIN_PAUSE_MS`]), and only then redone one request at a time. A group
//! (its second run included) is bounded by `store.timeout`: one that hangs answers its
//! callers [`StoreError::Timeout`] (they gave up by then anyway).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::error::SqlState;

use super::super::StoreError;

/// Most groups of one kind running at once on one instance (each holds one connection):
/// enough to overlap one group's statements with another's commit. Measured against 4 in
/// alternating runs (64 connections of ingest, server on the same two cores): 5-15 % more
/// postbacks per second and 15-25 % less server CPU per postback, because fewer groups at
/// once means bigger ones, and a transaction's fixed cost is shared by more postbacks.
pub(super) const IN_FLIGHT: usize = 2;

/// The pause, in milliseconds (drawn at random in this range so that the groups that
/// deadlocked together do not meet again), before a group rolled back by a conflict runs
/// again.
const AGAIN_PAUSE_MS: std::ops::RangeInclusive<u64> = 5..=25;

/// What a group did for one of its requests.
pub(super) enum Outcome<T> {
    /// Committed with the group; or the error of a commit whose outcome is unknown.
    Done(Result<T, StoreError>),
    /// The group was rolled back: the request must be redone alone.
    Alone,
    /// The group was rolled back by a conflict with another transaction (a deadlock, a
    /// serialization failure): worth running again as a whole.
    Again,
}

/// The answer a caller gets.
pub(super) enum Reply<R, T> {
    /// Its own result, committed.
    Done(Result<T, StoreError>),
    /// Its group failed and nothing of it was committed: redo `R` alone.
    Alone(R),
}

/// One kind of operation that can be grouped.
pub(super) trait Group: Send + Sync + 'static {
    type Req: Send + Sync + 'static;
    type Out: Send + 'static;
    /// Whether a request whose caller gave up (timed out) before its group formed is
    /// dropped rather than run: true for inserts (answered 503, so never stored behind the
    /// sender's back), false for settles (an attempt's outcome is recorded even late).
    const CANCELLABLE: bool;
    /// Runs `reqs` in one transaction on a connection of `pool`; one outcome per request,
    /// in order.
    fn run(pool: &Pool, reqs: &[Self::Req])
    -> impl Future<Output = Vec<Outcome<Self::Out>>> + Send;
}

type Job<G> = (
    <G as Group>::Req,
    oneshot::Sender<Reply<<G as Group>::Req, <G as Group>::Out>>,
);

/// The handle callers send their requests through; the collector ends when it is dropped.
pub(super) struct Batcher<G: Group> {
    tx: mpsc::Sender<Job<G>>,
}

impl<G: Group> Batcher<G> {
    /// Starts the collector on the current tokio runtime: groups of at most `max` requests,
    /// at most `in_flight` groups at once, each bounded by `limit`.
    pub fn start(pool: Pool, max: usize, in_flight: usize, limit: Duration) -> Batcher<G> {
        let max = max.max(1);
        let (tx, rx) = mpsc::channel(max * 4);
        tokio::spawn(collect::<G>(rx, pool, max, in_flight.max(1), limit));
        Batcher { tx }
    }

    /// Queues `req` for the next group and waits for its answer.
    pub async fn call(&self, req: G::Req) -> Result<Reply<G::Req, G::Out>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((req, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }
}

async fn collect<G: Group>(
    mut rx: mpsc::Receiver<Job<G>>,
    pool: Pool,
    max: usize,
    in_flight: usize,
    limit: Duration,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if G::CANCELLABLE {
            jobs.retain(|(_, reply)| !reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let (reqs, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
            let outcomes = tokio::time::timeout(limit, run_group::<G>(&pool, &reqs)).await;
            drop(slot);
            match outcomes {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    for (req, reply) in reqs.into_iter().zip(replies) {
                        // The caller may have given up (its own bound); nothing to do then.
                        let _ = reply.send(match outcomes.next() {
                            Some(Outcome::Done(result)) => Reply::Done(result),
                            Some(Outcome::Alone | Outcome::Again) | None => Reply::Alone(req),
                        });
                    }
                }
                Err(_) => {
                    for reply in replies {
                        let _ = reply.send(Reply::Done(Err(StoreError::Timeout(limit))));
                    }
                }
            }
        });
    }
}

/// Runs a group; when a conflict rolled all of it back ([`Outcome::Again`]), runs it once
/// more after a jittered pause, and after a second conflict leaves each request to be
/// redone alone.
async fn run_group<G: Group>(pool: &Pool, reqs: &[G::Req]) -> Vec<Outcome<G::Out>> {
    let outcomes = G::run(pool, reqs).await;
    if !outcomes.iter().all(|o| matches!(o, Outcome::Again)) {
        return outcomes;
    }
    tracing::debug!(
        requests = reqs.len(),
        "a group commit met a deadlock or a serialization failure: running it again"
    );
    tokio::time::sleep(Duration::from_millis(fastrand::u64(AGAIN_PAUSE_MS))).await;
    G::run(pool, reqs)
        .await
        .into_iter()
        .map(|o| match o {
            Outcome::Again => Outcome::Alone,
            o => o,
        })
        .collect()
}

/// Whether PostgreSQL rolled a transaction back for meeting others rather than for what it
/// did: a deadlock (40P01) or a serialization failure (40001). The same work may pass when
/// run again.
fn is_conflict(code: &SqlState) -> bool {
    *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
}

/// How a group's transaction failed.
pub(super) enum Failed {
    /// Before COMMIT, or COMMIT refused by the server: nothing was committed.
    RolledBack,
    /// Rolled back by a deadlock or a serialization failure: nothing was committed, and the
    /// same group may pass when run again.
    Conflict,
    /// The connection failed during COMMIT: whether it committed is unknown, so nobody may
    /// be answered as stored, nor redone (that could store a postback twice).
    Unknown(StoreError),
}

impl Failed {
    /// The failure of a COMMIT.
    pub fn of_commit(e: tokio_postgres::Error) -> Failed {
        if e.as_db_error().is_some() {
            Failed::of(&e)
        } else {
            Failed::Unknown(e.into())
        }
    }

    /// A statement that failed before COMMIT (the transaction is rolled back when dropped).
    fn of(e: &tokio_postgres::Error) -> Failed {
        match e.code() {
            Some(code) if is_conflict(code) => Failed::Conflict,
            _ => Failed::RolledBack,
        }
    }

    /// The outcome of every request of a group of `n` that failed so.
    pub fn outcomes<T>(self, n: usize) -> Vec<Outcome<T>> {
        (0..n)
            .map(|_| match &self {
                Failed::RolledBack => Outcome::Alone,
                Failed::Conflict => Outcome::Again,
                Failed::Unknown(e) => Outcome::Done(Err(e.clone())),
            })
            .collect()
    }
}

/// A statement before COMMIT failed (the transaction is rolled back when dropped).
impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        match e {
            StoreError::Pg(e) => Failed::of(&e),
            _ => Failed::RolledBack,
        }
    }
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Failed {
        Failed::of(&e)
    }
}

impl From<deadpool_postgres::PoolError> for Failed {
    fn from(_: deadpool_postgres::PoolError) -> Failed {
        Failed::RolledBack
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A group whose first `conflicts` runs are rolled back by a conflict, then either
    /// commit or (`fails`) are rolled back for an ordinary error; counts its runs.
    struct Script {
        conflicts: usize,
        fails: bool,
        runs: AtomicUsize,
    }

    struct Scripted;

    impl Group for Scripted {
        type Req = Arc<Script>;
        type Out = ();
        const CANCELLABLE: bool = false;

        async fn run(_: &Pool, reqs: &[Arc<Script>]) -> Vec<Outcome<()>> {
            let script = &reqs[0];
            let run = script.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let failed = if run <= script.conflicts {
                Failed::Conflict
            } else if script.fails {
                Failed::RolledBack
            } else {
                return reqs.iter().map(|_| Outcome::Done(Ok(()))).collect();
            };
            failed.outcomes(reqs.len())
        }
    }

    /// Runs a group of three requests of `script`: how many runs it took, and how many
    /// requests were committed and left to be redone alone.
    async fn group(conflicts: usize, fails: bool) -> (usize, usize, usize) {
        let script = Arc::new(Script {
            conflicts,
            fails,
            runs: AtomicUsize::new(0),
        });
        let manager =
            deadpool_postgres::Manager::new(tokio_postgres::Config::new(), tokio_postgres::NoTls);
        // Never connected: the scripted group does not use it.
        let recycler = super::super::Recycler {
            manager,
            fresh: Duration::ZERO,
        };
        let pool = Pool::builder(recycler).build().expect("pool");
        let reqs = vec![script.clone(); 3];
        let outcomes = run_group::<Scripted>(&pool, &reqs).await;
        let done = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Done(Ok(()))))
            .count();
        let alone = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Alone))
            .count();
        (script.runs.load(Ordering::SeqCst), done, alone)
    }

    #[tokio::test]
    async fn a_group_that_met_a_deadlock_commits_whole_on_its_second_run() {
        assert_eq!(group(1, false).await, (2, 3, 0));
    }

    #[tokio::test]
    async fn a_second_conflict_leaves_each_request_to_be_redone_alone() {
        assert_eq!(group(2, false).await, (2, 0, 3));
    }

    #[tokio::test]
    async fn a_group_failed_by_its_own_error_is_not_run_again() {
        assert_eq!(group(0, true).await, (1, 0, 3));
        assert_eq!(group(0, false).await, (1, 3, 0));
    }

    #[test]
    fn only_deadlocks_and_serialization_failures_count_as_conflicts() {
        assert!(is_conflict(&SqlState::from_code("40P01")));
        assert!(is_conflict(&SqlState::from_code("40001")));
        for other in ["23505", "57014", "40002", "08006"] {
            assert!(!is_conflict(&SqlState::from_code(other)), "{other}");
        }
    }
}
