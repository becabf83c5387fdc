//! The integration tests, one binary (one link instead of one per file):
//! - `e2e`: the real relay over loopback HTTP, a real SQLite store in a temp dir or a real
//!   PostgreSQL started by the harness, the scripted Scaleo sandbox, kill -9, faults caused
//!   for real, the console in a headless Chromium;
//! - `rules`: the rule engine through the public API and the binary, the shipped rules;
//! - `store_sqlite`, `store_postgres`: the store behaviours on both backends; `store_timeout`:
//!   an insert answered timeout is never stored later; `pg_network`:
//!   PostgreSQL behind a proxy that drops its connections silently;
//! - `forward_scaleo`: the forwarder against a scripted upstream (`tests/forward_redaction.rs`
//!   is a binary of its own: it captures every log line of its process);
//! - `config`, `sandbox`: the service config and the local Scaleo stand-in;
//! - `fuzz_corpus`: every fuzz corpus and regression input replayed on stable.
//!
//! The PostgreSQL tests are compiled only with the `postgres` feature (on by default).
//!
//! Run one area with `cargo test --test it e2e::` (or `rules::`, `store_postgres::`, ...).

mod config;
mod e2e;
mod forward_scaleo;
mod fuzz_corpus;
#[cfg(feature = "postgres")]
mod pg_network;
mod rules;
mod sandbox;
#[cfg(feature = "postgres")]
mod store_postgres;
mod store_sqlite;
mod store_timeout;
mod support;
