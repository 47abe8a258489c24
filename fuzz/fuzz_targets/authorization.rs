//! Fuzz target: asserts `flexgate::properties::authorization_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::authorization_header(data));
