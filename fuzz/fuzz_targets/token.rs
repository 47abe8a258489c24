//! Fuzz target: asserts `flexgate::properties::token_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::token_decoder(data));
