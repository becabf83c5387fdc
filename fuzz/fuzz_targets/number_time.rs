//! Fuzz target `number_time`: see `postback_relay::fuzz::number_time`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postback_relay::fuzz::number_time(data));
