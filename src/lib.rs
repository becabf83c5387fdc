//! postback-relay: advertiser postbacks in, Scaleo conversions out.
//!
//! How a postback flows through the modules:
//!
//! 1. [`ingest`] (hyper) accepts `GET|POST|HEAD /postback/{source}` and `/pixel/{source}`,
//!    checks the source's token and IP allow list, and decodes the parameters.
//! 2. [`rules`] maps them with the source's compiled rule file into Scaleo's body
//!    (or a skip or a reject with a reason); pure, no I/O.
//! 3. [`store`] commits the record (raw postback, body, state, dedupe key) durably before
//!    ingest answers 200: to the embedded SQLite file with group commit, or to a PostgreSQL
//!    database shared by several instances (`store.url`).
//! 4. [`forward`] claims due records with a lease, waits for the rate limiter, POSTs them to
//!    Scaleo, classifies the answer and settles the record (delivered, retry, paused, dead).
//!
//! Ingest and replay share [`mapping`] (rule outcome -> record state); ingest, the admin
//! API and the sandbox share [`listener`] (the accept loop with graceful drain). Rules,
//! forward and the sandbox share [`scaleo`], Scaleo's API contract: endpoints, conversion
//! fields and their types, the answer envelope.
//!
//! Around them: [`config`] (service config; it and [`rules`] share the small parsers of
//! [`parse`]), [`reload`] (hot rule reload), [`admin`] (the
//! operator API, `/readyz`, `/metrics`), [`console`] (the operator's pages in the browser, on
//! the admin listener), [`replay`] (re-map and requeue stored records),
//! [`metrics`] (every Prometheus metric), [`sandbox`] (a local stand-in for Scaleo),
//! [`network`] (which Scaleo network a SQLite store belongs to), [`sync`] (the one policy
//! for poisoned locks), and
//! [`cli`] (the `postback-relay` commands, one error type and one exit-code map).

pub mod admin;
pub mod cli;
pub mod config;
pub mod console;

pub mod forward;
#[doc(hidden)]
pub mod fuzz;
pub mod ingest;
pub mod lifecycle;
pub mod listener;
pub mod mapping;
pub mod metrics;
pub mod network;
pub mod parse;

pub mod reload;
pub mod replay;
pub mod request_line;
pub mod rules;
pub mod sandbox;
pub mod scaleo;
pub mod serve;
pub mod store;
pub mod sync;
pub mod toml_check;
