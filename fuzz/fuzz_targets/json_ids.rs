//! Fuzz target: asserts `flexgate::properties::json_ids`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::json_ids(data));
