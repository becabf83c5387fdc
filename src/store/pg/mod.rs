//! The PostgreSQL backend: one database shared by several relay instances (`store.url`).
//!
//! Same tables and semantics as the SQLite store. Inserts and settles, the hot paths, use
//! **group commit** as SQLite does (see [`batch`]): concurrent calls share one transaction
//! on one pooled connection, whatever is waiting (up to `store.commit_batch`, no timer),
//! and each caller is answered only after that COMMIT returned; the common cases are a few
//! set-based statements for the whole group: new postbacks whose dedupe key is free
//! ([`bulk`]; a postback whose key is held, or a change, is decided alone after its group
//! committed), settles ([`settles`]). When a statement of a group fails, the group is rolled
//! back and each of its operations redone alone in a transaction of its own, so a bad one
//! fails alone; a group rolled back by a deadlock or a serialization failure is first run
//! once more as a whole. Every other operation is one transaction of its own. What makes several
//! instances safe together:
//! - dedupe keys are a primary key: an insert takes the key with `ON CONFLICT DO NOTHING`
//!   and, when another record holds it, locks that row to decide (see [`write`]);
//! - the later postbacks of one conversion (changes, stale, resends) are decided one at a
//!   time under a lock of its dedupe row, with the original and its waiting changes locked
//!   in a fixed order after it (see [`change`]);
//! - claims take rows with `FOR UPDATE SKIP LOCKED` and a lease, compared with the
//!   database clock, so no two instances get the same record and a crashed instance's
//!   claims come back when their lease ends (see [`claim`]);
//! - the global Scaleo rate limit is a GCRA row updated atomically (see [`limit`]).
//!
//! A record stored by another instance is found by the forwarder's idle tick (100 ms), not
//! by LISTEN/NOTIFY: a NOTIFY in every insert would take PostgreSQL's global notify lock at
//! each commit and serialise ingest. Local writes wake the local forwarder at once.
//!
//! Due times (`next_attempt_at`) come from the instances' clocks, leases from the database
//! clock: keep the instances' clocks in sync (NTP) as for any service.
//!
//! Connections ([`PgStore::connect`]): a pool of up to `store.pool_size` per instance, TLS
//! as libpq's `sslmode` says (see [`tls`]), each connection opened within
//! `store.connect_timeout` and given `SET statement_timeout` (`store.statement_timeout`), and
//! checked with an empty query before its use (`RecyclingMethod::Verified`, bounded by
//! [`RECYCLE_WAIT`]) unless it was handed out within [`VERIFY_AFTER`] and is not known closed
//! ([`Recycler`]): a connection broken by a database restart or a network that dropped it is
//! replaced, so the relay recovers by itself.

mod batch;
mod bulk;
mod change;
mod claim;
mod limit;
mod lookup;
mod read;
mod schema;
mod settles;
mod stats;
mod tls;
mod write;

use std::time::Duration;

use deadpool::managed::{self, Hook, HookError, Metrics, RecycleResult};
use deadpool_postgres::{
    ClientWrapper, Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime,
};
use jiff::Timestamp;

use super::{StoreError, redact_url};
use crate::config::StoreConfig;

use batch::Batcher;

pub use limit::SharedLimit;

/// The longest the check of a pooled connection before its use may take; a connection that
/// does not answer in time (a half-open TCP connection) is dropped and another one used.
const RECYCLE_WAIT: Duration = Duration::from_secs(1);

/// A connection checked out less than this long ago (and less than half of `store.timeout`)
/// is handed out again without the check of [`RecyclingMethod::Verified`] (an empty query,
/// one round trip): under load every connection is in use every few milliseconds, and the
/// check cost a round trip per group commit. Measured in alternating runs of the bench's
/// ingest: 5-11 % more postbacks per second and 9-13 % less relay CPU per postback. Every
/// use of a connection is bounded (by `store.timeout`, or the readiness probe's 900 ms), so
/// one whose last use hung (a network that dropped it silently) was checked out longer ago
/// than this and is checked before its next use; one the server closed is never handed out.
const VERIFY_AFTER: Duration = Duration::from_millis(500);

/// deadpool-postgres' manager, whose check before reuse is skipped for a connection handed
/// out within `fresh` ([`VERIFY_AFTER`] at most).
pub(crate) struct Recycler {
    manager: Manager,
    fresh: Duration,
}

impl managed::Manager for Recycler {
    type Type = ClientWrapper;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<ClientWrapper, tokio_postgres::Error> {
        self.manager.create().await
    }

    async fn recycle(
        &self,
        client: &mut ClientWrapper,
        metrics: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if !client.is_closed() && metrics.last_used() < self.fresh {
            return Ok(());
        }
        self.manager.recycle(client, metrics).await
    }

    fn detach(&self, client: &mut ClientWrapper) {
        self.manager.detach(client);
    }
}

/// The pool of connections to the shared database.
pub(crate) type Pool = managed::Pool<Recycler>;
/// A connection of the [`Pool`].
pub(crate) type Object = managed::Object<Recycler>;

/// A pool of connections to the shared database, and the group commits of inserts and
/// settles running on it.
pub(crate) struct PgStore {
    pool: Pool,
    inserts: Batcher<bulk::Inserts>,
    settles: Batcher<settles::Settles>,
}

/// Checks the TLS settings of `url` and `store.ca_file` (the CA file read): `check` and the
/// config validation report them before a connection is tried.
pub fn check_tls(url: &str, ca_file: Option<&std::path::Path>) -> Result<(), String> {
    tls::check(url, ca_file)
}

impl PgStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db[?sslmode=...]`) with the
    /// pool and timeouts of `cfg`, and brings the schema up to date.
    pub(crate) async fn connect(url: &str, cfg: &StoreConfig) -> Result<PgStore, StoreError> {
        let bad = |message: String| StoreError::Url {
            url: redact_url(url),
            message,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("not a postgres:// URL".into()));
        }
        let (plain_url, settings) = tls::split_url(url, cfg.ca_file.as_deref()).map_err(bad)?;
        let tls = tls::MakeRustls::new(&settings).map_err(bad)?;
        let mut config: tokio_postgres::Config =
            plain_url.parse().map_err(|e| bad(format!("{e}")))?;
        config.ssl_mode(settings.mode.for_postgres());
        config.connect_timeout(cfg.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("postback-relay");
        }
        let target = Target::of(&config);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let set_timeout = format!(
            "SET statement_timeout = {}",
            cfg.statement_timeout.as_millis().min(i32::MAX as u128)
        );
        let recycler = Recycler {
            manager,
            fresh: VERIFY_AFTER.min(cfg.timeout / 2),
        };
        let pool = Pool::builder(recycler)
            .max_size(cfg.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(RECYCLE_WAIT.min(cfg.connect_timeout)))
            .post_create(Hook::async_fn(move |client: &mut ClientWrapper, _| {
                let sql = set_timeout.clone();
                Box::pin(async move {
                    client
                        .simple_query(&sql)
                        .await
                        .map(|_| ())
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| bad(format!("{e}")))?;
        let in_flight = batch::IN_FLIGHT.min(cfg.pool_size.max(2) / 2);
        let store = PgStore {
            inserts: Batcher::start(pool.clone(), cfg.commit_batch, in_flight, cfg.timeout),
            settles: Batcher::start(pool.clone(), cfg.commit_batch, in_flight, cfg.timeout),
            pool,
        };
        let mut client = store.pool.get().await.map_err(|e| {
            bad(format!(
                "cannot connect: {}",
                target.explain(&e, cfg.connect_timeout)
            ))
        })?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }
}

/// Who connects where, for errors (never the password).
struct Target {
    user: String,
    hosts: String,
}

impl Target {
    fn of(config: &tokio_postgres::Config) -> Target {
        let ports = config.get_ports();
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match h {
                    tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    tokio_postgres::config::Host::Unix(path) => {
                        format!("{} (port {port})", path.display())
                    }
                }
            })
            .collect();
        Target {
            user: config.get_user().unwrap_or("(none)").to_string(),
            hosts: if hosts.is_empty() {
                "localhost:5432".into()
            } else {
                hosts.join(", ")
            },
        }
    }

    /// A failure to connect, saying what to look at.
    fn explain(&self, e: &PoolError, connect_timeout: Duration) -> String {
        let Target { user, hosts } = self;
        match e {
            PoolError::Backend(pe) | PoolError::PostCreateHook(HookError::Backend(pe)) => {
                if let Some(db) = pe.as_db_error() {
                    use tokio_postgres::error::SqlState;
                    if *db.code() == SqlState::INVALID_PASSWORD
                        || *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    {
                        return format!(
                            "authentication failed for user {user} at {hosts}: {} (check the \
                             user and password in store.url, and the server's pg_hba.conf)",
                            db.message()
                        );
                    }
                }
                let text = super::error_chain(pe);
                if text.contains("password missing") {
                    return format!(
                        "authentication failed for user {user} at {hosts}: the server asks for \
                         a password and store.url has none"
                    );
                }
                if text.contains("server does not support TLS") {
                    return format!(
                        "{text}: the server at {hosts} does not offer TLS, and the sslmode in \
                         store.url requires it (turn ssl on in the server, or use \
                         sslmode=disable only on a trusted network)"
                    );
                }
                format!("{text} (user {user} at {hosts})")
            }
            PoolError::Timeout(_) => format!(
                "no connection to {hosts} within store.connect_timeout ({connect_timeout:?})"
            ),
            other => format!(
                "database pool: {} (user {user} at {hosts})",
                super::error_chain(other)
            ),
        }
    }
}

/// Unix milliseconds of a stored time.
fn ts(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("time {ms}: {e}")))
}

/// The database clock in unix milliseconds (one instance's clock never decides a lease).
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
