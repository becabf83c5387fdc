//! What several test modules share: a throwaway PostgreSQL server (`pg`), a scripted upstream
//! (`relay_mock`), records to insert (`relay_records`), the store behaviours both backends
//! must show (`store_suite`) and a bounded wait (`wait`).

#[cfg(feature = "postgres")]
pub mod pg;
// Some replies and scripts are only used by `tests/forward_redaction.rs`, which includes
// this file too.
#[allow(dead_code)]
pub mod relay_mock;
pub mod relay_records;
pub mod store_suite;
pub mod wait;
