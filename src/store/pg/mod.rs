//! The PostgreSQL backend: one database shared by several relay instances (`store.url`).
//!
//! Same tables and semantics as the SQLite store, with plain commits instead of group commit
//! (each operation is one transaction on a pooled connection; PostgreSQL batches the WAL
//! flushes of concurrent commits itself). What makes several instances safe together:
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
//! Connections are plain TCP (`NoTls`): TLS is not supported yet, so the database must be
//! reached over a trusted network (loopback, a private network or a tunnel).

mod change;
mod claim;
mod limit;
mod read;
mod schema;
mod write;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use jiff::Timestamp;
use tokio_postgres::NoTls;

use super::StoreError;

pub use limit::SharedLimit;

/// Most connections one instance holds.
const POOL_SIZE: usize = 16;
/// How long an operation waits for a connection (or to open one) before it fails.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// A pool of connections to the shared database.
pub(crate) struct PgStore {
    pool: Pool,
}

impl PgStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db`) and brings the schema
    /// up to date.
    pub(crate) async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let bad = |message: String| StoreError::Url {
            url: redact_url(url),
            message,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("not a postgres:// URL".into()));
        }
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
        config.connect_timeout(POOL_WAIT);
        if config.get_application_name().is_none() {
            config.application_name("postback-relay");
        }
        let user = config.get_user().unwrap_or("(none)").to_string();
        let host = where_of(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| bad(format!("{e}")))?;
        let store = PgStore { pool };
        let mut client = store.pool.get().await.map_err(|e| {
            let auth = match &e {
                deadpool_postgres::PoolError::Backend(pg) => auth_failure(
                    pg.as_db_error().map(|d| (d.code(), d.message())),
                    &pg.to_string(),
                    &user,
                    &host,
                ),
                _ => None,
            };
            bad(auth.unwrap_or_else(|| {
                format!(
                    "cannot connect: {}",
                    StoreError::Pool(std::sync::Arc::new(e))
                )
            }))
        })?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }
}

/// `host:port` (each of them, for several hosts) of a connection config, for errors.
fn where_of(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Says "authentication failed" with the user and host when that is why a connection was
/// refused (a wrong password, a missing one, a role that may not log in); `None` for any
/// other failure. Never includes the password: PostgreSQL's message names only the user.
fn auth_failure(
    db: Option<(&tokio_postgres::error::SqlState, &str)>,
    text: &str,
    user: &str,
    host: &str,
) -> Option<String> {
    use tokio_postgres::error::SqlState;
    match db {
        Some((code, message))
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            Some(format!(
                "authentication failed for user {user:?} at {host}: {message} (check the password in store.url or RELAY__STORE__URL, and pg_hba.conf)"
            ))
        }
        None if text.contains("password missing") => Some(format!(
            "authentication failed for user {user:?} at {host}: the server asks for a password and store.url has none"
        )),
        _ => None,
    }
}

/// `url` with its password replaced by `***`, for errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[not a URL]".into();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    let Some((userinfo, host)) = auth.rsplit_once('@') else {
        return url.to_string();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_string(),
    };
    let tail = redact_query_password(tail);
    format!("{scheme}://{user}@{host}{tail}")
}

/// Hides a `password=` query parameter too (libpq accepts one there).
fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Unix milliseconds of a stored time.
fn ts(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("time {ms}: {e}")))
}

/// The database clock in unix milliseconds (one instance's clock never decides a lease).
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

#[cfg(test)]
mod tests {
    use super::{auth_failure, redact_url};
    use tokio_postgres::error::SqlState;

    #[test]
    fn a_refused_password_says_authentication_failed_for_which_user_and_host() {
        let msg = auth_failure(
            Some((
                &SqlState::INVALID_PASSWORD,
                "password authentication failed for user \"relay\"",
            )),
            "db error",
            "relay",
            "db.internal:5432",
        )
        .unwrap();
        assert!(
            msg.starts_with("authentication failed for user \"relay\" at db.internal:5432"),
            "{msg}"
        );
        let missing = auth_failure(
            None,
            "invalid configuration: password missing",
            "relay",
            "127.0.0.1:5432",
        )
        .unwrap();
        assert!(
            missing.contains("authentication failed") && missing.contains("127.0.0.1:5432"),
            "{missing}"
        );
        assert_eq!(
            auth_failure(
                Some((&SqlState::UNDEFINED_TABLE, "x")),
                "db error",
                "relay",
                "h:1"
            ),
            None
        );
    }

    #[test]
    fn the_password_never_shows() {
        assert_eq!(
            redact_url("postgres://relay:s3cret@db.internal:5432/relay"),
            "postgres://relay:***@db.internal:5432/relay"
        );
        assert_eq!(
            redact_url("postgres://relay@127.0.0.1/relay?password=s3cret&sslmode=disable"),
            "postgres://relay@127.0.0.1/relay?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://relay@127.0.0.1/relay"),
            "postgres://relay@127.0.0.1/relay"
        );
        assert!(!redact_url("postgres://a:p@ss@h/db").contains("p@ss"));
    }
}
