//! The SQLite backend: the group-commit writer thread and the pool of read connections.
//!
//! The writer owns the only write connection. It blocks for one [`Op`], then takes whatever
//! else is already waiting (up to `commit_batch`), applies them all in a single
//! `BEGIN IMMEDIATE` transaction (redone with a savepoint per operation if one of them
//! fails), commits, and answers every caller after COMMIT returned: with its own result, or
//! with the commit error if the commit failed. No timer is
//! involved: batches form from whatever arrived while the previous commit was syncing.
//! The SQL of each operation is in [`ops`] (writes), [`change`] (a conversion's later
//! postbacks), [`claim`] (claims and settles), [`read`] and [`stats`] (the read side), and
//! the schema and its migrations in [`schema`].

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{Notify, mpsc, oneshot};

use super::StoreError;

pub(crate) mod change;
pub(crate) mod claim;
pub(crate) mod lookup;
pub(crate) mod ops;
pub(crate) mod read;
pub(crate) mod schema;
pub(crate) mod stats;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The SQL of one write operation: its request, the connection (inside the group's
/// transaction), the group's clock, and a flag to set when it made forwarding work due.
pub(crate) type Run<R, T> = fn(&R, &Connection, Timestamp, &mut bool) -> Result<T, StoreError>;

/// One write operation for the writer thread.
pub(crate) type Op = Box<dyn Work>;

/// An operation as the writer sees it: run it (again, if the group is redone), fail it, and
/// answer its caller once the commit is known.
pub(crate) trait Work: Send {
    /// Runs the SQL and keeps the result; `false` when it failed.
    fn run(&mut self, c: &Connection, now: Timestamp, wakes: &mut bool) -> bool;
    /// Records a failure that happened outside the operation's own SQL.
    fn fail(&mut self, err: StoreError);
    /// Answers the caller: its own result if the commit succeeded, else the commit's error.
    fn finish(self: Box<Self>, commit: &Result<(), StoreError>);
    /// Whether the operation is to be left undone: its caller gave up waiting (it was
    /// answered `store.timeout`, a 503 for an insert) and the operation may be dropped.
    fn abandoned(&self) -> bool;
}

struct Job<R, T> {
    req: R,
    run: Run<R, T>,
    reply: Reply<T>,
    result: Option<Result<T, StoreError>>,
    /// Dropped, not run, once its caller gave up (see [`Work::abandoned`]).
    cancellable: bool,
}

/// Packs a request and its SQL into an [`Op`] answered through `reply`. A `cancellable`
/// operation is left undone when its caller gave up before the writer reached it (an
/// insert answered 503 must not be stored later); the others (a settle, a claim's release)
/// are still committed, late.
pub(crate) fn op<R, T>(req: R, run: Run<R, T>, reply: Reply<T>, cancellable: bool) -> Op
where
    R: Send + 'static,
    T: Send + 'static,
{
    Box::new(Job {
        req,
        run,
        reply,
        result: None,
        cancellable,
    })
}

impl<R: Send, T: Send> Work for Job<R, T> {
    fn run(&mut self, c: &Connection, now: Timestamp, wakes: &mut bool) -> bool {
        let result = (self.run)(&self.req, c, now, wakes);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, err: StoreError) {
        self.result = Some(Err(err));
    }

    fn finish(self: Box<Self>, commit: &Result<(), StoreError>) {
        let answer = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(rolled_back()),
            (Err(e), _) => Err(e.clone()),
        };
        // The caller may have given up (dropped its future); nothing to do then.
        let _ = self.reply.send(answer);
    }

    fn abandoned(&self) -> bool {
        self.cancellable && self.reply.is_closed()
    }
}

/// How a group is run: all operations straight in one transaction (the fast path), or each
/// inside its own savepoint so a failing one leaves no partial writes (the careful path,
/// taken only to redo a group in which an operation failed).
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Straight,
    Savepoints,
}

/// Why a group did not commit.
enum GroupError {
    /// An operation failed on the straight path: the group was rolled back, redo it.
    Redo,
    /// The transaction failed as a whole; every operation gets this error.
    Failed(StoreError),
}

/// The writer thread's state.
pub(crate) struct Writer {
    conn: Connection,
    batch: usize,
    notify: Arc<Notify>,
    /// The store file's path and its (device, inode) when it was opened.
    path: PathBuf,
    identity: (u64, u64),
    /// Set while the path no longer names the file we write into (logged once per change).
    gone: Option<StoreError>,
}

/// The (device, inode) of the file at `path`.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl Writer {
    /// Opens the write connection and migrates the schema.
    pub fn open(path: &Path, batch: usize, notify: Arc<Notify>) -> Result<Writer, StoreError> {
        let mut conn = Connection::open(path)?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)?;
        let identity = identity(path).map_err(|e| StoreError::Dir {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Writer {
            conn,
            batch,
            notify,
            path: path.to_path_buf(),
            identity,
            gone: None,
        })
    }

    /// Whether the path still names the file this writer opened. A deleted or replaced file
    /// must never be written into again: what is committed there is lost at the next
    /// restart. Costs one `stat` per group commit.
    fn check_file(&mut self) -> Result<(), StoreError> {
        let problem = match identity(&self.path) {
            Ok(id) if id == self.identity => None,
            Ok(_) => Some("was replaced by another file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("was deleted"),
            // Cannot tell (a permission change, an I/O error): SQLite itself will say.
            Err(_) => None,
        };
        match problem {
            None => {
                if self.gone.take().is_some() {
                    tracing::warn!(path = %self.path.display(), "the store file is back: writing again");
                }
                Ok(())
            }
            Some(what) => {
                if self.gone.is_none() {
                    let err = StoreError::FileGone {
                        path: self.path.clone(),
                        what: what.into(),
                    };
                    tracing::error!(error = %err, "the store file is no longer the store's: refusing every write (restore the file or restart)");
                    self.gone = Some(err);
                }
                Err(self.gone.clone().expect("set above"))
            }
        }
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

    /// Runs every operation of the group in one transaction, commits, and answers each
    /// caller after COMMIT returned. An operation that fails must not leave half its
    /// writes in the commit: the group is then rolled back and redone with a savepoint per
    /// operation (savepoints cost about a tenth of the writer's time, so only then).
    fn commit_group(&mut self, ops: &mut Vec<Op>) {
        if let Err(e) = self.check_file() {
            let failed = Err(e);
            for op in ops.drain(..) {
                op.finish(&failed);
            }
            return;
        }
        let now = Timestamp::now();
        let mut wakes = false;
        let mut commit = self.try_group(ops, now, &mut wakes, Mode::Straight);
        if let Err(GroupError::Redo) = commit {
            wakes = false;
            commit = self.try_group(ops, now, &mut wakes, Mode::Savepoints);
        }
        let commit = commit.map_err(|e| match e {
            GroupError::Failed(e) => e,
            GroupError::Redo => rolled_back(),
        });
        if let Err(e) = &commit {
            tracing::error!(error = %e, ops = ops.len(), "store commit failed");
        } else if wakes {
            self.notify.notify_one();
        }
        for op in ops.drain(..) {
            op.finish(&commit);
        }
    }

    fn try_group(
        &mut self,
        ops: &mut [Op],
        now: Timestamp,
        wakes: &mut bool,
        mode: Mode,
    ) -> Result<(), GroupError> {
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| GroupError::Failed(e.into()))?;
        for op in ops.iter_mut() {
            // After SQLITE_FULL or an I/O error SQLite may roll back the whole
            // transaction: the rest of the group must fail, not commit piecemeal.
            if tx.is_autocommit() {
                return Err(GroupError::Failed(rolled_back()));
            }
            // Checked once the transaction is ours (a stalled disk or a lock may have held
            // the writer until now): an insert whose sender was already answered 503 is not
            // stored behind its back.
            if op.abandoned() {
                tracing::warn!(
                    "an operation given up by its caller (store.timeout) was left undone"
                );
                continue;
            }
            match mode {
                Mode::Straight => {
                    if !op.run(&tx, now, wakes) {
                        return Err(GroupError::Redo);
                    }
                }
                Mode::Savepoints => match tx.savepoint() {
                    // Dropping the savepoint of a failed operation rolls back its writes.
                    Ok(sp) => {
                        if op.run(&sp, now, wakes)
                            && let Err(e) = sp.commit()
                        {
                            op.fail(e.into());
                        }
                    }
                    Err(e) => op.fail(e.into()),
                },
            }
        }
        if tx.is_autocommit() {
            return Err(GroupError::Failed(rolled_back()));
        }
        tx.commit().map_err(|e| GroupError::Failed(e.into()))
    }
}

/// The error of a group whose transaction SQLite rolled back on its own.
fn rolled_back() -> StoreError {
    StoreError::Db(std::sync::Arc::new(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("the transaction was rolled back after an earlier error in the group".into()),
    )))
}

/// Read connections, opened on demand and kept (a few) for reuse.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Set by [`ReadPool::close`]: reads still work, on a connection closed after each.
    closed: AtomicBool,
}

impl ReadPool {
    const KEEP: usize = 4;

    pub fn new(path: PathBuf) -> ReadPool {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Closes the idle connections and keeps none from now on, so that the writer's is the
    /// last one open on the file (the last to close checkpoints the WAL and removes it).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
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
        if !self.closed.load(Ordering::Acquire)
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < Self::KEEP
        {
            idle.push(conn);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Scope = &'static str;

    /// Writes one `paused` row for its scope.
    fn write(scope: &Scope, c: &Connection, _: Timestamp, _: &mut bool) -> Result<(), StoreError> {
        insert_pause(c, scope)
    }

    fn insert_pause(c: &Connection, scope: &str) -> Result<(), StoreError> {
        c.execute(
            "INSERT INTO paused (scope, reason, since) VALUES (?1, 'operator', 0)",
            [scope],
        )?;
        Ok(())
    }

    /// Writes a row, then fails: none of its writes may be committed.
    fn half_then_fail(
        scope: &Scope,
        c: &Connection,
        _: Timestamp,
        _: &mut bool,
    ) -> Result<(), StoreError> {
        insert_pause(c, scope)?;
        Err(StoreError::Corrupt(
            "failing on purpose after a write".into(),
        ))
    }

    fn scopes(path: &Path) -> Vec<String> {
        let c = Connection::open(path).unwrap();
        let mut stmt = c
            .prepare("SELECT scope FROM paused ORDER BY scope")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Runs `ops` as one group (all queued before the writer starts) and returns the answers.
    fn run_group(path: &Path, ops: Vec<(Scope, Run<Scope, ()>)>) -> Vec<Result<(), StoreError>> {
        let writer = Writer::open(path, 64, Arc::new(Notify::new())).unwrap();
        let (tx, rx) = mpsc::channel(64);
        let mut answers = Vec::new();
        for (scope, run) in ops {
            let (reply, answer) = oneshot::channel();
            tx.try_send(op(scope, run, reply, false)).ok().unwrap();
            answers.push(answer);
        }
        drop(tx);
        std::thread::spawn(move || writer.run(rx)).join().unwrap();
        answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap())
            .collect()
    }

    #[test]
    fn a_failing_operation_leaves_nothing_and_the_rest_of_its_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let answers = run_group(
            &path,
            vec![
                ("a", write),
                ("half", half_then_fail),
                ("b", write),
                ("c", write),
            ],
        );
        assert!(answers[0].is_ok() && answers[2].is_ok() && answers[3].is_ok());
        let err = answers[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("failing on purpose"), "{err}");
        assert_eq!(scopes(&path), ["a", "b", "c"]);
    }

    #[test]
    fn a_group_without_failures_commits_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let answers = run_group(&path, vec![("a", write), ("b", write)]);
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(scopes(&path), ["a", "b"]);
    }

    #[test]
    fn an_operation_failing_alone_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let answers = run_group(&path, vec![("half", half_then_fail)]);
        assert!(answers[0].is_err());
        assert!(scopes(&path).is_empty());
    }
}
