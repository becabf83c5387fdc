//! Fuzz target `query_form`: see `postback_relay::fuzz::query_form`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postback_relay::fuzz::query_form(data));
