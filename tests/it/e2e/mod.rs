//! End-to-end tests: the real relay over loopback HTTP, a real SQLite store in a temp dir (or
//! a real PostgreSQL server started by the harness), and the scripted Scaleo sandbox.

mod admin;
mod admin_client;
mod bad_input;
mod browser;
mod console;
mod crash;
mod faults;
mod forwarding;
mod ingest;
mod lifecycle;
mod metrics;
mod networks;
mod ops_cli;
mod outage;
mod process;
mod raw_request;
mod reload;
#[cfg(feature = "postgres")]
mod scale_out;
mod shutdown;
mod stall;
mod support;

// Only the PostgreSQL tests use them.
#[cfg(feature = "postgres")]
pub(crate) use crate::support::{pg, wait};
