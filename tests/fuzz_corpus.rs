//! The fuzz targets' seed corpora (fuzz/corpus/<target>/), run through the same
//! properties the fuzzers assert, so `cargo test` catches a regression without a fuzzer.
//! Inputs a fuzzer found interesting can be copied into a corpus directory and stay
//! checked from then on.

use flexgate::properties;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = format!("{}/fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|f| {
            (
                f.file_name().to_string_lossy().into_owned(),
                std::fs::read(f.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{dir} is empty");
    files
}

fn run(target: &str, property: fn(&[u8])) {
    for (name, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| property(&data));
        assert!(outcome.is_ok(), "{target}/{name} violates its property");
    }
}

#[test]
fn token_corpus() {
    run("token", properties::token_decoder);
}

#[test]
fn path_corpus() {
    run("path", properties::path_and_matcher);
}

#[test]
fn rules_corpus() {
    run("rules", properties::rules_config);
}

#[test]
fn json_ids_corpus() {
    run("json_ids", properties::json_ids);
}

#[test]
fn authorization_corpus() {
    run("authorization", properties::authorization_header);
}

#[test]
fn a_seed_token_really_decodes() {
    // The seeds include tokens signed with the property key: the decoder's round-trip
    // property is exercised on real tokens, not only on garbage.
    let token = std::fs::read_to_string(format!(
        "{}/fuzz/corpus/token/seed-00",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let claims = flexgate::auth::token::decode(
        &properties::token_key(),
        &token,
        properties::NOW,
        properties::MAX_AGE,
    )
    .unwrap();
    assert_eq!(claims.user_id, 5);
}

#[test]
fn upstream_response_corpus() {
    run("upstream_response", properties::upstream_response);
}

#[test]
fn host_corpus() {
    run("host", properties::host_authority);
}

#[test]
fn h2_frames_corpus() {
    run("h2_frames", properties::h2_frames);
}

#[test]
fn multipart_corpus() {
    run("multipart", properties::multipart_headers);
}
