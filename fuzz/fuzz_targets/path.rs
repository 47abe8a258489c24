//! Fuzz target: asserts `flexgate::properties::path_and_matcher`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::path_and_matcher(data));
