//! Fuzz target: asserts `flexgate::properties::host_authority`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::host_authority(data));
