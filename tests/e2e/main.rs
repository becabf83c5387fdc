//! End-to-end tests: the real relay over loopback HTTP, a real SQLite store in a temp dir, and
//! the scripted Scaleo sandbox.

mod bad_input;
mod crash;
mod forwarding;
mod ingest;
mod support;
