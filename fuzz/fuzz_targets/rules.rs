//! Fuzz target: asserts `flexgate::properties::rules_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::rules_config(data));
