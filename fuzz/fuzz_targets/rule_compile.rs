//! Fuzz target `rule_compile`: see `postback_relay::fuzz::rule_compile`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postback_relay::fuzz::rule_compile(data));
