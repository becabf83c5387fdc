//! Fuzz target `ingest_request`: see `postback_relay::fuzz::ingest_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postback_relay::fuzz::ingest_request(data));
