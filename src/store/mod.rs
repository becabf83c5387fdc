//! The durable store: records, states, attempts, dedupe keys, pauses and claims.
//!
//! [`Store`] is a cheap handle over one of two backends, chosen once by [`Store::connect`]:
//! the embedded SQLite file (the default, [`sqlite`]) or a shared PostgreSQL database
//! (`store.url`, [`pg`]) for several instances. Both keep the same tables and answer every
//! method the same way; callers (ingest, forward, admin, CLI) never know which one they have.
//!
//! The layout: what both backends share sits at this level (the types in `types`, a new
//! record's columns and the claim policy in `ops`, the conversion's memory in `change`,
//! claimed work and settles in `claim`, the views of the read side in `read` and `stats`);
//! each backend's SQL lives in its own directory (`sqlite/`, `pg/`), and neither reaches into
//! the other.
//!
//! SQLite: one file (`{store.path}/relay.db`, WAL,
//! `synchronous=FULL`). Every write goes through one writer thread that does **group commit**:
//! it takes every operation waiting on a bounded channel (up to `store.commit_batch`), runs
//! them in one transaction (redone with a savepoint per operation when one fails, so a bad
//! operation fails alone and leaves nothing behind), commits, and only then answers each
//! caller. `Ok` therefore always means "committed".
//! Reads ([`Store::get`], [`Store::list`], ...) use their own connections.
//! [`Store::close`] (the relay's graceful stop) stops taking writes, lets the writer commit
//! what it was given, and waits for it to close the file (the WAL checkpointed and removed).
//!
//! Forwarding takes work with [`Store::claim`]: each [`Claimed`] carries a lease and is
//! settled exactly once by a method that consumes it. Nothing of the queue is kept in memory:
//! due work is found through the `(state, next_attempt_at)` index.

mod change;
mod claim;
mod config;
mod lookup;
mod ops;
#[cfg(feature = "postgres")]
mod pg;
mod read;
mod redact;
mod sqlite;
mod stats;
mod types;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, mpsc, oneshot};

pub use change::Preview;
pub use claim::{ANSWER_EXCERPT_BYTES, Attempt, ChangeOf, Claimed, excerpt, redact_api_key};
pub use config::StoreConfig;
#[cfg(feature = "postgres")]
pub use pg::SharedLimit;
pub use read::{AttemptView, CHAIN_MAX, ConversionView, Cursor, Filter, RecordView, Summary};
pub use redact::redact_url;
pub use stats::{ReasonCount, SourceActivity};
pub use types::{
    ChangeRoute, DedupeKey, Inserted, NewRecord, NewState, PauseReason, PauseScope, Paused,
    RawPostback, Requeued, State,
};

pub use lookup::LookupSync;
use sqlite::{Op, ReadPool, Run, Writer};

/// The longest [`Store::close`] waits for the SQLite writer to commit what it was given and
/// close the file.
pub const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Why a config with `store.url` is refused by a relay built without PostgreSQL support.
pub const NO_POSTGRES: &str = "this relay was built without PostgreSQL support: rebuild it with \
     `--features postgres` (on by default), or remove store.url to use the embedded SQLite store";

/// Checks what can be known of a `postgres://` `store.url` before connecting: that this
/// binary supports PostgreSQL, and the TLS settings of the URL and `store.ca_file` (the CA
/// file read). The config validation and `check` report it.
pub fn check_url(url: &str, ca_file: Option<&std::path::Path>) -> Result<(), String> {
    #[cfg(feature = "postgres")]
    return pg::check_tls(url, ca_file);
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (url, ca_file);
        Err(NO_POSTGRES.into())
    }
}

/// Without PostgreSQL no limit is shared between instances: this type has no value, and
/// [`Store::shared_limit`] is always `None`.
#[cfg(not(feature = "postgres"))]
#[derive(Debug, Clone)]
pub enum SharedLimit {}

#[cfg(not(feature = "postgres"))]
impl SharedLimit {
    /// Never called: there is no shared limit to wait for.
    pub async fn acquire(&self) -> Result<Duration, StoreError> {
        match *self {}
    }
}

/// Errors of the store. Any of them means "not persisted": ingest answers 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation (disk full, I/O error, corruption, ...).
    #[error("database error: {0}")]
    Db(Arc<rusqlite::Error>),
    /// The data directory could not be created.
    #[error("cannot create store directory {path}: {message}")]
    Dir { path: PathBuf, message: String },
    /// The SQLite file was deleted or replaced while the relay ran: nothing more is written
    /// (it would be lost), every write fails until the file is back or the relay restarts.
    #[error("the store file {} {what} while the relay was running: nothing is acknowledged until it is restored or the relay restarts", path.display())]
    FileGone { path: PathBuf, what: String },
    /// The writer thread is gone (the store is shutting down or it crashed).
    #[error("the store writer has stopped")]
    Closed,
    /// `store.url` is set: the PostgreSQL store is opened with [`Store::connect`].
    #[error("store.url is set: open the PostgreSQL store with Store::connect")]
    NeedsConnect,
    /// `store.url` is set but this binary was built without the `postgres` feature.
    #[error("store.url is set: {NO_POSTGRES}")]
    NoPostgres,
    /// PostgreSQL refused an operation (or the connection broke); its own message is shown
    /// (tokio-postgres alone says only "db error").
    #[cfg(feature = "postgres")]
    #[error("database error: {}", pg_message(.0))]
    Pg(Arc<tokio_postgres::Error>),
    /// No PostgreSQL connection could be had from the pool.
    #[cfg(feature = "postgres")]
    #[error("database pool: {}", error_chain(.0.as_ref()))]
    Pool(Arc<deadpool_postgres::PoolError>),
    /// `store.url` is not a usable PostgreSQL URL (the password, if any, is redacted).
    #[error("store.url {url}: {message}")]
    Url { url: String, message: String },
    /// The store did not finish an operation within `store.timeout` (a stalled disk, a hung
    /// or unreachable database): nothing is acknowledged.
    #[error("the store did not answer within {0:?} (store.timeout)")]
    Timeout(Duration),
    /// A settle came after the lease ran out and another claim took the record; the attempt
    /// itself was still recorded.
    #[error("record {0}: lease lost before settling (the attempt was recorded)")]
    LeaseLost(i64),
    /// No record with this id.
    #[error("record {0} not found")]
    NotFound(i64),
    /// Only `rejected` and `dead` records can be replayed.
    #[error("record {id} is {state}: only rejected or dead records can be replayed")]
    NotReplayable { id: i64, state: State },
    /// A stored value could not be read back (a corrupt row or a bug).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

#[cfg(feature = "postgres")]
/// `e` and its causes, each once: tokio-postgres' errors show only their kind ("db error",
/// "error performing TLS handshake") and keep the reason in their source.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

/// The server's message and code for an error PostgreSQL reported, else the error itself.
#[cfg(feature = "postgres")]
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error_chain(e),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(Arc::new(e))
    }
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Pg(Arc::new(e))
    }
}

#[cfg(feature = "postgres")]
impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(Arc::new(e))
    }
}

/// A cheap, clonable handle on the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Signalled after a local commit that made work due.
    notify: Arc<Notify>,
    /// `store.timeout`: the longest any operation may take (a stalled disk or database).
    timeout: Duration,
    /// Random per process, so claims by a previous process (crashed) never match ours.
    instance: u64,
    claim_seq: AtomicU64,
}

/// Where the records live.
enum Backend {
    /// The embedded file: the group-commit writer and the read connections.
    Sqlite {
        /// Taken out by [`Store::close`]: the writer ends once no sender is left.
        tx: Mutex<Option<mpsc::Sender<Op>>>,
        reader: ReadPool,
        /// Answered by the writer thread once it has ended and closed its connection;
        /// taken by the first [`Store::close`].
        stopped: Mutex<Option<oneshot::Receiver<()>>>,
    },
    /// The shared database of several instances.
    #[cfg(feature = "postgres")]
    Postgres(pg::PgStore),
}

impl Store {
    /// Opens the store of `cfg`: PostgreSQL when `store.url` is set (connecting and migrating
    /// the schema), else the embedded SQLite store as [`Store::open`] does.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        match &cfg.url {
            #[cfg(feature = "postgres")]
            Some(url) => {
                let pg = pg::PgStore::connect(url, cfg).await?;
                Ok(Store::with_backend(
                    Backend::Postgres(pg),
                    Arc::new(Notify::new()),
                    cfg.timeout,
                ))
            }
            #[cfg(not(feature = "postgres"))]
            Some(_) => Err(StoreError::NoPostgres),
            None => Store::open(cfg),
        }
    }

    fn with_backend(backend: Backend, notify: Arc<Notify>, timeout: Duration) -> Store {
        Store {
            inner: Arc::new(Inner {
                backend,
                notify,
                timeout,
                instance: fastrand::u64(..),
                claim_seq: AtomicU64::new(0),
            }),
        }
    }

    /// Opens (creating the directory, the file and the schema if needed) the embedded SQLite
    /// store; refuses a config with `store.url` (use [`Store::connect`]).
    pub fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        if cfg.url.is_some() {
            return Err(StoreError::NeedsConnect);
        }
        std::fs::create_dir_all(&cfg.path).map_err(|e| StoreError::Dir {
            path: cfg.path.clone(),
            message: e.to_string(),
        })?;
        let file = cfg.path.join("relay.db");
        let notify = Arc::new(Notify::new());
        let batch = cfg.commit_batch.max(1);
        let (tx, rx) = mpsc::channel(batch * 4);
        let writer = Writer::open(&file, batch, notify.clone())?;
        // The writer ends when the channel closes (after [`Store::close`], or when the last
        // handle drops) after committing what is pending; an unanswered caller was never
        // acknowledged. `run` consumes it: its connection is closed before `stopped` answers.
        let (stopped_tx, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer.run(rx);
                let _ = stopped_tx.send(());
            })
            .map_err(|e| StoreError::Dir {
                path: file.clone(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        let reader = ReadPool::new(file);
        let backend = Backend::Sqlite {
            tx: Mutex::new(Some(tx)),
            reader,
            stopped: Mutex::new(Some(stopped)),
        };
        Ok(Store::with_backend(backend, notify, cfg.timeout))
    }

    /// Closes the store for a clean stop: no write is taken from now on (they fail with
    /// [`StoreError::Closed`]); the SQLite writer commits and answers what it was already
    /// given, then closes the file, which checkpoints the WAL and removes it. Waits for that
    /// at most [`CLOSE_WAIT`] (a stalled disk): [`StoreError::Timeout`] then, and the writer
    /// is left to finish on its own. Reads still work, each on a connection of its own. Only
    /// the first call waits; PostgreSQL has nothing to wait for (its commits answered).
    pub async fn close(&self) -> Result<(), StoreError> {
        #[cfg_attr(not(feature = "postgres"), allow(irrefutable_let_patterns))]
        let Backend::Sqlite {
            tx,
            reader,
            stopped,
        } = &self.inner.backend
        else {
            return Ok(());
        };
        let stopped = stopped.lock().ok().and_then(|mut s| s.take());
        // Readers first: the last connection to close is the one that removes the WAL.
        reader.close();
        drop(tx.lock().ok().and_then(|mut tx| tx.take()));
        let Some(stopped) = stopped else {
            return Ok(());
        };
        match tokio::time::timeout(CLOSE_WAIT, stopped).await {
            Ok(Ok(())) => Ok(()),
            // The writer thread panicked: it is gone all the same.
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout(CLOSE_WAIT)),
        }
    }

    /// The PostgreSQL backend, if this store is one. Each method matches on it, its
    /// `Some(pg)` arm compiled only with the `postgres` feature.
    #[cfg(feature = "postgres")]
    fn pg(&self) -> Option<&pg::PgStore> {
        match &self.inner.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Without the `postgres` feature the store is always SQLite: nothing to match but `None`.
    #[cfg(not(feature = "postgres"))]
    fn pg(&self) -> Option<std::convert::Infallible> {
        None
    }

    /// Runs `op` within `store.timeout`: a store that stalls (a frozen disk, a hung or
    /// unreachable database) fails the operation with [`StoreError::Timeout`] instead of
    /// hanging its caller. An insert given up on is dropped if the store had not started it
    /// (the SQLite writer, the PostgreSQL group collector); one already in the transaction
    /// that was stalled may still commit later: it was never acknowledged, and a sender's
    /// retry meets the dedupe key.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.inner.timeout;
        tokio::time::timeout(limit, op)
            .await
            .unwrap_or(Err(StoreError::Timeout(limit)))
    }

    /// Wakes the forwarder after a PostgreSQL commit that made work due.
    #[cfg(feature = "postgres")]
    fn woke(&self, wakes: bool) {
        if wakes {
            self.inner.notify.notify_one();
        }
    }

    /// The limit `name` shared by every instance on the same database (PostgreSQL only):
    /// `None` for the embedded store, whose limits live in the process.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn shared_limit(&self, name: &str, per_second: u32, burst: u32) -> Option<SharedLimit> {
        match self.pg() {
            #[cfg(feature = "postgres")]
            Some(pg) => pg.shared_limit(name, per_second, burst),
            None => None,
        }
    }

    /// Stores a new record durably; `Ok` only after COMMIT returned.
    pub async fn insert(&self, rec: NewRecord) -> Result<Inserted, StoreError> {
        self.bounded(async {
            #[cfg(feature = "postgres")]
            if let Some(pg) = self.pg() {
                let (inserted, wakes) = pg.insert(rec).await?;
                self.woke(wakes);
                return Ok(inserted);
            }
            // Cancellable: an insert answered 503 (store.timeout) before the writer reached it
            // is not stored afterwards.
            self.call_with(
                rec,
                |rec, c, _, wakes| sqlite::ops::insert(c, rec, wakes),
                true,
            )
            .await
        })
        .await
    }

    /// A notifier signalled after each commit that made work due (new queued records,
    /// requeues, releases, resumes). Uses `notify_one`, so a wake-up is never lost.
    pub fn subscribe(&self) -> Arc<Notify> {
        self.inner.notify.clone()
    }

    /// Claims up to `limit` due records for `lease`.
    ///
    /// Due: state `queued`, `paused` (given back by an upstream pause) or `retrying`, with
    /// `next_attempt_at <= now`, no live lease, and no pause covering its source; `exclude`
    /// lists further sources to skip (for example ones waiting on their rate limit).
    ///
    /// Fairness: a quarter of the limit (rounded up, at least 1) is offered to due retries
    /// first; the rest goes to fresh records (`queued`, then `paused`), oldest first; any room
    /// left is filled with more retries. So fresh postbacks get most of every claim and retries
    /// are never starved. With `limit == 1` every fourth claim prefers a retry.
    pub async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        exclude: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        self.claim_inner(limit, lease, exclude.to_vec(), None).await
    }

    /// Claims one due record of `scope` ignoring the upstream-auth pause of that scope (the
    /// probe sent while paused by a 401/403). Operator pauses still hold.
    pub async fn claim_probe(
        &self,
        scope: PauseScope,
        lease: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        let mut v = self.claim_inner(1, lease, Vec::new(), Some(scope)).await?;
        Ok(v.pop())
    }

    async fn claim_inner(
        &self,
        limit: usize,
        lease: Duration,
        exclude: Vec<String>,
        probe: Option<PauseScope>,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.bounded(async {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let seq = self.inner.claim_seq.fetch_add(1, Ordering::Relaxed);
            let owner = format!("{:016x}-{seq}", self.inner.instance);
            let req = ops::ClaimRequest {
                limit,
                lease,
                owner: owner.clone(),
                exclude,
                probe,
                prefer_retry: seq % 4 == 3,
            };
            let rows = match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.claim(&req).await?,
                None => {
                    self.call(req, |req, c, now, _| sqlite::ops::claim(c, req, now))
                        .await?
                }
            };
            Ok(rows
                .into_iter()
                .map(|row| Claimed::new(self.clone(), owner.clone(), row))
                .collect())
        })
        .await
    }

    /// Builds the lookup indexes `wanted` (the update-only sources' needs, from
    /// [`crate::rules::RuleSet::lookup_indexes`]) that are missing. Neither is bounded by
    /// `store.timeout`: on SQLite a build reads every conversion of the store while other
    /// writes wait, and the indexes no rule wants are dropped; on PostgreSQL a build runs
    /// `CONCURRENTLY` (writes go on) and may take minutes on a big table, and unwanted
    /// indexes are kept, since other instances may still use them (see [`Store::is_shared`]).
    pub async fn sync_lookup_indexes(
        &self,
        wanted: Vec<crate::lifecycle::LookupIndex>,
    ) -> Result<LookupSync, StoreError> {
        match self.pg() {
            #[cfg(feature = "postgres")]
            Some(pg) => pg.sync_lookups(&wanted).await,
            None => self.call(wanted, sqlite::lookup::sync).await,
        }
    }

    /// Whether this store is a PostgreSQL database that several instances may share (its
    /// index builds do not hold up writes; see [`Store::sync_lookup_indexes`]).
    pub fn is_shared(&self) -> bool {
        self.pg().is_some()
    }

    /// Persists a pause of `scope` for `reason` (idempotent).
    pub async fn pause(&self, scope: PauseScope, reason: PauseReason) -> Result<(), StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.pause(&scope, reason).await,
                None => self.call((scope, reason), sqlite::ops::pause).await,
            }
        })
        .await
    }

    /// Makes retrying record `id` due now (the console's "send now"): the next claim takes
    /// it without waiting for its backoff. `false` when the record is not `retrying`.
    pub async fn send_now(&self, id: i64) -> Result<bool, StoreError> {
        match self.pg() {
            #[cfg(feature = "postgres")]
            Some(pg) => {
                let due = pg.send_now(id).await?;
                self.woke(due);
                Ok(due)
            }
            None => self.call(id, sqlite::ops::send_now).await,
        }
    }

    /// Removes every pause of `scope` (an operator's resume). Returns how many were removed.
    /// Resuming all forwarding also lifts the pauses the relay itself set on single sources
    /// for their network (a refused key, an outage: with several networks they are stored per
    /// source); an operator's pause of one source and a missing rule file's stay.
    pub async fn resume(&self, scope: PauseScope) -> Result<u64, StoreError> {
        self.resume_inner(scope, None).await
    }

    async fn resume_inner(
        &self,
        scope: PauseScope,
        reason: Option<PauseReason>,
    ) -> Result<u64, StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => {
                    let n = pg.resume(&scope, reason).await?;
                    self.woke(n > 0);
                    Ok(n)
                }
                None => self.call((scope, reason), sqlite::ops::resume).await,
            }
        })
        .await
    }

    /// Removes only the pause of `scope` with `reason` (a successful probe, a config reload).
    pub async fn resume_reason(
        &self,
        scope: PauseScope,
        reason: PauseReason,
    ) -> Result<u64, StoreError> {
        self.resume_inner(scope, Some(reason)).await
    }

    /// Rewrites the readiness probe row: a committed write that really changes the database
    /// (so a full or read-only disk, a deleted file, a database refusing writes fail it).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let now = Timestamp::now().as_millisecond();
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.probe_write(now).await,
                None => {
                    self.call(now, |now, c, _, _| sqlite::ops::probe_write(c, *now))
                        .await
                }
            }
        })
        .await
    }

    /// Moves the start of the age bound of every waiting record (`queued`, `retrying`,
    /// `paused`) `by` later, of the `sources` given (`None`: of every source): the time an
    /// outage of their network lasted does not count toward `forward.max_age`. Returns how
    /// many records moved.
    pub async fn extend_age(
        &self,
        by: Duration,
        sources: Option<Vec<String>>,
    ) -> Result<u64, StoreError> {
        self.bounded(async {
            let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.extend_age(ms, sources.as_deref()).await,
                None => {
                    self.call((ms, sources), |(ms, sources), c, _, _| {
                        sqlite::ops::extend_age(c, *ms, sources.as_deref())
                    })
                    .await
                }
            }
        })
        .await
    }

    /// The persisted pauses.
    pub async fn paused(&self) -> Result<Vec<Paused>, StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.paused().await,
                None => self.read(sqlite::read::paused).await,
            }
        })
        .await
    }

    /// Deletes `delivered`, `duplicate`, `duplicate_upstream` and `skipped` records received
    /// more than `older_than` ago (with their attempts), and expired dedupe keys. Works in
    /// chunks so the writer never stalls ingest for long. Returns the records deleted.
    pub async fn purge_delivered(&self, older_than: Duration) -> Result<u64, StoreError> {
        let cutoff = ts_minus(Timestamp::now(), older_than);
        let mut total = 0;
        loop {
            let n = match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.purge(cutoff).await?,
                None => {
                    self.call(cutoff, |cutoff, c, now, _| {
                        sqlite::ops::purge(c, *cutoff, now)
                    })
                    .await?
                }
            };
            total += n;
            if n < ops::PURGE_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Runs [`Store::purge_delivered`] with `retention` now and then every `every` until
    /// `shutdown`; failures are logged and tried again at the next round.
    pub fn spawn_retention(
        &self,
        retention: Duration,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                match store.purge_delivered(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "retention: old records deleted"),
                    Err(e) => tracing::error!(error = %e, "retention purge failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }

    /// Replays record `id` (`rejected` or `dead`) with a freshly mapped state: queued again
    /// (dedupe applies; the age bound and the retry schedule restart), rejected again, or
    /// skipped. The attempt history is kept.
    pub async fn requeue(&self, id: i64, state: NewState) -> Result<Requeued, StoreError> {
        self.bounded(async {
            #[cfg(feature = "postgres")]
            if let Some(pg) = self.pg() {
                let (requeued, wakes) = pg.requeue(id, &state).await?;
                self.woke(wakes);
                return Ok(requeued);
            }
            self.call((id, state), |(id, state), c, now, wakes| {
                sqlite::ops::requeue(c, *id, state, now, wakes)
            })
            .await
        })
        .await
    }

    /// What `state` (a freshly mapped postback) would be to the conversions stored now:
    /// `None` when it would create a new one. Stores nothing.
    pub async fn preview(&self, state: NewState) -> Result<Option<Preview>, StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.preview(&state).await,
                None => self.read(move |c| sqlite::change::preview(c, &state)).await,
            }
        })
        .await
    }

    /// One record with its attempts.
    pub async fn get(&self, id: i64) -> Result<Option<RecordView>, StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.get(id).await,
                None => self.read(move |c| sqlite::read::get(c, id)).await,
            }
        })
        .await
    }

    /// Summaries matching `filter`, newest first, at most `limit`, continuing after `cursor`;
    /// the second value is the cursor of the next page (None at the end).
    pub async fn list(
        &self,
        filter: Filter,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Summary>, Option<Cursor>), StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.list(&filter, limit, cursor).await,
                None => {
                    self.read(move |c| sqlite::read::list(c, &filter, limit, cursor))
                        .await
                }
            }
        })
        .await
    }

    /// How many records are in each state (states with none are left out).
    pub async fn counts_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.counts_by_state().await,
                None => self.read(sqlite::read::counts_by_state).await,
            }
        })
        .await
    }

    /// The sources that have records waiting to be forwarded.
    pub async fn pending_sources(&self) -> Result<Vec<String>, StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.pending_sources().await,
                None => self.read(sqlite::read::pending_sources).await,
            }
        })
        .await
    }

    /// The receive time of the oldest record waiting to be forwarded
    /// (`queued`, `retrying` or `paused`).
    pub async fn oldest_queued(&self) -> Result<Option<Timestamp>, StoreError> {
        self.bounded(async {
            match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.oldest_queued().await,
                None => self.read(sqlite::read::oldest_queued).await,
            }
        })
        .await
    }

    /// For each of `sources`: the time of its last postback and its records received since
    /// `hour` and since `day`, by state (index range reads, no table scan).
    pub async fn activity(
        &self,
        sources: Vec<String>,
        hour: Timestamp,
        day: Timestamp,
    ) -> Result<Vec<SourceActivity>, StoreError> {
        match self.pg() {
            #[cfg(feature = "postgres")]
            Some(pg) => pg.activity(&sources, hour, day).await,
            None => {
                self.read(move |c| sqlite::stats::activity(c, &sources, hour, day))
                    .await
            }
        }
    }

    /// The newest `scan` records in state `of`, counted by source and reason, largest first.
    pub async fn reason_groups(
        &self,
        of: State,
        scan: usize,
    ) -> Result<Vec<ReasonCount>, StoreError> {
        match self.pg() {
            #[cfg(feature = "postgres")]
            Some(pg) => pg.reason_groups(of, scan).await,
            None => {
                self.read(move |c| sqlite::stats::reason_groups(c, of, scan))
                    .await
            }
        }
    }

    /// The ids, newest first, of the records of one [`Store::reason_groups`] group (the
    /// same `scan` bound).
    pub async fn reason_ids(
        &self,
        of: State,
        source: String,
        reason: String,
        scan: usize,
    ) -> Result<Vec<i64>, StoreError> {
        match self.pg() {
            #[cfg(feature = "postgres")]
            Some(pg) => pg.reason_ids(of, &source, &reason, scan).await,
            None => {
                self.read(move |c| sqlite::stats::reason_ids(c, of, &source, &reason, scan))
                    .await
            }
        }
    }

    /// Settles a claim (records the attempt, moves the record); `false` when the lease was
    /// lost. Committed before it returns.
    pub(crate) async fn settle(&self, req: claim::SettleRequest) -> Result<bool, StoreError> {
        self.bounded(async {
            #[cfg(feature = "postgres")]
            if let Some(pg) = self.pg() {
                let (applied, wakes) = pg.settle(req).await?;
                self.woke(wakes);
                return Ok(applied);
            }
            self.call(req, |req, c, now, wakes| req.apply(c, now, wakes))
                .await
        })
        .await
    }

    /// Has the SQLite writer run `run` on `req` in its next group commit; answers after
    /// COMMIT. Only called on the SQLite backend.
    async fn call<R: Send + 'static, T: Send + 'static>(
        &self,
        req: R,
        run: Run<R, T>,
    ) -> Result<T, StoreError> {
        self.call_with(req, run, false).await
    }

    /// [`Store::call`]; a `cancellable` operation is left undone when its caller gave up
    /// (timed out) before the writer reached it.
    async fn call_with<R: Send + 'static, T: Send + 'static>(
        &self,
        req: R,
        run: Run<R, T>,
        cancellable: bool,
    ) -> Result<T, StoreError> {
        #[cfg_attr(not(feature = "postgres"), allow(irrefutable_let_patterns))]
        let Backend::Sqlite { tx, .. } = &self.inner.backend else {
            return Err(StoreError::Closed);
        };
        // A clone per call, dropped once sent: after `close` took the original the writer
        // ends as soon as the calls already under way have handed over their operation.
        let tx = tx
            .lock()
            .ok()
            .and_then(|tx| tx.clone())
            .ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(sqlite::op(req, run, reply, cancellable))
            .await
            .map_err(|_| StoreError::Closed)?;
        drop(tx);
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || match &inner.backend {
            Backend::Sqlite { reader, .. } => reader.with(f),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(StoreError::Closed),
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// `t - d`, saturating at the smallest timestamp.
pub(crate) fn ts_minus(t: Timestamp, d: Duration) -> Timestamp {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    Timestamp::from_millisecond(t.as_millisecond().saturating_sub(ms)).unwrap_or(Timestamp::MIN)
}

/// `t + d`, saturating at the largest timestamp.
pub(crate) fn ts_plus(t: Timestamp, d: Duration) -> Timestamp {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    Timestamp::from_millisecond(t.as_millisecond().saturating_add(ms)).unwrap_or(Timestamp::MAX)
}
