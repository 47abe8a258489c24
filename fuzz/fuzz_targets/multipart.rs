//! Fuzz target: asserts `flexgate::properties::multipart_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexgate::properties::multipart_headers(data));
