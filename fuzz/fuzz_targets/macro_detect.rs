//! Fuzz target `macro_detect`: see `postback_relay::fuzz::macro_detect`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postback_relay::fuzz::macro_detect(data));
