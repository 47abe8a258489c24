//! Fuzz target: asserts `flexgate::properties::h2_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::h2_frames(data));
