//! The SQLite backend: the group-commit writer thread and the pool of read connections.
//!
//! The writer owns the only write connection. It blocks for one [`Op`], then takes whatever
//! else is already waiting (up to `commit_batch`), applies each inside its own savepoint of a
//! single `BEGIN IMMEDIATE` transaction, commits, and answers every caller after COMMIT
//! returned: with its own result, or with the commit error if the commit failed. No timer is
//! involved: batches form from whatever arrived while the previous commit was syncing.
//! The SQL of each operation is in [`super::ops`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::claim::{ClaimRow, SettleRequest};
use super::ops::{self, ClaimRequest};
use super::types::{Inserted, NewRecord, NewState, PauseReason, PauseScope, Requeued};
use super::{StoreError, schema};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write operation for the writer thread.
pub(crate) enum Op {
    Insert(NewRecord, Reply<Inserted>),
    Claim(ClaimRequest, Reply<Vec<ClaimRow>>),
    Settle(SettleRequest, Reply<bool>),
    Pause(PauseScope, PauseReason, Reply<()>),
    Resume(PauseScope, Option<PauseReason>, Reply<u64>),
    Purge(Timestamp, Reply<u64>),
    Requeue(i64, NewState, Reply<Requeued>),
}

/// A result waiting for the commit before it may be sent.
trait Finish {
    fn finish(self: Box<Self>, commit: &Result<(), StoreError>);
}

struct Pending<T> {
    reply: Reply<T>,
    result: Result<T, StoreError>,
}

impl<T: Send> Finish for Pending<T> {
    fn finish(self: Box<Self>, commit: &Result<(), StoreError>) {
        let answer = match commit {
            Ok(()) => self.result,
            Err(e) => Err(e.clone()),
        };
        // The caller may have given up (dropped its future); nothing to do then.
        let _ = self.reply.send(answer);
    }
}

fn pending<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Box<dyn Finish> {
    Box::new(Pending { reply, result })
}

/// The writer thread's state.
pub(crate) struct Writer {
    conn: Connection,
    batch: usize,
    notify: Arc<Notify>,
}

impl Writer {
    /// Opens the write connection and migrates the schema.
    pub fn open(path: &Path, batch: usize, notify: Arc<Notify>) -> Result<Writer, StoreError> {
        let mut conn = Connection::open(path)?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)?;
        Ok(Writer {
            conn,
            batch,
            notify,
        })
    }

    /// Runs until every [`super::Store`] handle is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut ops = Vec::with_capacity(self.batch);
        while let Some(op) = rx.blocking_recv() {
            ops.push(op);
            while ops.len() < self.batch {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut ops);
        }
    }

    fn commit_group(&mut self, ops: &mut Vec<Op>) {
        let now = Timestamp::now();
        let mut wakes = false;
        let mut done = Vec::with_capacity(ops.len());
        let commit = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(mut tx) => {
                for op in ops.drain(..) {
                    // After SQLITE_FULL or an I/O error SQLite may roll back the whole
                    // transaction: the rest of the group must fail, not commit piecemeal.
                    if tx.is_autocommit() {
                        done.push(apply_failed(op, rolled_back()));
                    } else {
                        done.push(apply(&mut tx, op, now, &mut wakes));
                    }
                }
                if tx.is_autocommit() {
                    Err(rolled_back())
                } else {
                    tx.commit().map_err(StoreError::from)
                }
            }
            Err(e) => {
                let err = StoreError::from(e);
                for op in ops.drain(..) {
                    done.push(apply_failed(op, err.clone()));
                }
                Err(err)
            }
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, ops = done.len(), "store commit failed");
        } else if wakes {
            self.notify.notify_one();
        }
        for d in done {
            d.finish(&commit);
        }
    }
}

/// The error of a group whose transaction SQLite rolled back on its own.
fn rolled_back() -> StoreError {
    StoreError::Db(std::sync::Arc::new(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("the transaction was rolled back after an earlier error in the group".into()),
    )))
}

/// Runs `f` inside a savepoint: its writes stay only if it succeeds.
fn in_savepoint<T>(
    tx: &mut rusqlite::Transaction<'_>,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let sp = tx.savepoint()?;
    let out = f(&sp)?;
    sp.commit()?;
    Ok(out)
}

fn apply(
    tx: &mut rusqlite::Transaction<'_>,
    op: Op,
    now: Timestamp,
    wakes: &mut bool,
) -> Box<dyn Finish> {
    match op {
        Op::Insert(rec, reply) => pending(reply, in_savepoint(tx, |c| ops::insert(c, &rec, wakes))),
        Op::Claim(req, reply) => pending(reply, in_savepoint(tx, |c| ops::claim(c, &req, now))),
        Op::Settle(req, reply) => pending(reply, in_savepoint(tx, |c| req.apply(c, now, wakes))),
        Op::Pause(scope, reason, reply) => pending(
            reply,
            in_savepoint(tx, |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO paused (scope, reason, since) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![
                    scope.key(),
                    reason.as_str(),
                    now.as_millisecond()
                ])?;
                Ok(())
            }),
        ),
        Op::Resume(scope, reason, reply) => pending(
            reply,
            in_savepoint(tx, |c| {
                let n = match reason {
                    Some(r) => c.execute(
                        "DELETE FROM paused WHERE scope = ?1 AND reason = ?2",
                        params![scope.key(), r.as_str()],
                    )?,
                    None => c.execute("DELETE FROM paused WHERE scope = ?1", [scope.key()])?,
                };
                *wakes |= n > 0;
                Ok(n as u64)
            }),
        ),
        Op::Purge(cutoff, reply) => {
            pending(reply, in_savepoint(tx, |c| ops::purge(c, cutoff, now)))
        }
        Op::Requeue(id, state, reply) => pending(
            reply,
            in_savepoint(tx, |c| ops::requeue(c, id, &state, now, wakes)),
        ),
    }
}

fn apply_failed(op: Op, err: StoreError) -> Box<dyn Finish> {
    match op {
        Op::Insert(_, r) => pending(r, Err(err)),
        Op::Claim(_, r) => pending(r, Err(err)),
        Op::Settle(_, r) => pending(r, Err(err)),
        Op::Pause(_, _, r) => pending(r, Err(err)),
        Op::Resume(_, _, r) => pending(r, Err(err)),
        Op::Purge(_, r) => pending(r, Err(err)),
        Op::Requeue(_, _, r) => pending(r, Err(err)),
    }
}

/// Read connections, opened on demand and kept (a few) for reuse.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    const KEEP: usize = 4;

    pub fn new(path: PathBuf) -> ReadPool {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read-only connection.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                schema::configure(&c)?;
                c
            }
        };
        let out = f(&conn);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < Self::KEEP
        {
            idle.push(conn);
        }
        out
    }
}
