//! Forwarding to Scaleo: claim, rate-limit, POST, classify, settle.

pub mod retry;
