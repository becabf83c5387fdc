//! `[store]` of the service config: where records live and how the store behaves. Read and
//! validated by [`crate::config`]; defined here, with the store that uses it.

use std::path::PathBuf;
use std::time::Duration;

/// `[store]`: the embedded SQLite directory, or the PostgreSQL database shared by several
/// instances (`url`, which wins when set).
#[derive(Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub url: Option<String>,
    pub retention: Duration,
    /// Most records one group commit may hold.
    pub commit_batch: usize,
    /// The longest a store operation may take before it fails (ingest answers 503).
    pub timeout: Duration,
    /// PostgreSQL: most connections one instance holds.
    pub pool_size: usize,
    /// PostgreSQL: the longest opening one connection (TCP, TLS, authentication) may take.
    pub connect_timeout: Duration,
    /// PostgreSQL: `SET statement_timeout` on every connection, so the server stops work
    /// the relay gave up on (`store.timeout`) instead of holding its locks.
    pub statement_timeout: Duration,
    /// PostgreSQL: the CA file checking the server's certificate (`sslrootcert` in
    /// `store.url` wins).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(super::redact_url))
            .field("retention", &self.retention)
            .field("commit_batch", &self.commit_batch)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}
