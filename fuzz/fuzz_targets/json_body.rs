//! Fuzz target `json_body`: see `postback_relay::fuzz::json_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postback_relay::fuzz::json_body(data));
