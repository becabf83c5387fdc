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
//! alone and its neighbours are stored. A group is bounded by `store.timeout`: one that
//! hangs answers its callers [`StoreError::Timeout`] (they gave up by then anyway).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::super::StoreError;

/// Most groups of one kind running at once on one instance (each holds one connection):
/// enough to overlap one group's statements with another's commit.
pub(super) const IN_FLIGHT: usize = 4;

/// What a group did for one of its requests.
pub(super) enum Outcome<T> {
    /// Committed with the group; or the error of a commit whose outcome is unknown.
    Done(Result<T, StoreError>),
    /// The group was rolled back: the request must be redone alone.
    Alone,
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
        let pool = pool.clone();
        tokio::spawn(async move {
            let (reqs, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
            let outcomes = tokio::time::timeout(limit, G::run(&pool, &reqs)).await;
            drop(slot);
            match outcomes {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    for (req, reply) in reqs.into_iter().zip(replies) {
                        // The caller may have given up (its own bound); nothing to do then.
                        let _ = reply.send(match outcomes.next() {
                            Some(Outcome::Done(result)) => Reply::Done(result),
                            Some(Outcome::Alone) | None => Reply::Alone(req),
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

/// How a group's transaction failed.
pub(super) enum Failed {
    /// Before COMMIT, or COMMIT refused by the server: nothing was committed.
    RolledBack,
    /// The connection failed during COMMIT: whether it committed is unknown, so nobody may
    /// be answered as stored, nor redone (that could store a postback twice).
    Unknown(StoreError),
}

impl Failed {
    /// The failure of a COMMIT.
    pub fn of_commit(e: tokio_postgres::Error) -> Failed {
        if e.as_db_error().is_some() {
            Failed::RolledBack
        } else {
            Failed::Unknown(e.into())
        }
    }

    /// The outcome of every request of a group of `n` that failed so.
    pub fn outcomes<T>(self, n: usize) -> Vec<Outcome<T>> {
        (0..n)
            .map(|_| match &self {
                Failed::RolledBack => Outcome::Alone,
                Failed::Unknown(e) => Outcome::Done(Err(e.clone())),
            })
            .collect()
    }
}

/// A statement before COMMIT failed (the transaction is rolled back when dropped).
impl From<StoreError> for Failed {
    fn from(_: StoreError) -> Failed {
        Failed::RolledBack
    }
}

impl From<tokio_postgres::Error> for Failed {
    fn from(_: tokio_postgres::Error) -> Failed {
        Failed::RolledBack
    }
}

impl From<deadpool_postgres::PoolError> for Failed {
    fn from(_: deadpool_postgres::PoolError) -> Failed {
        Failed::RolledBack
    }
}
