//! Fuzz target: asserts `flexgate::properties::upstream_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::upstream_response(data));
