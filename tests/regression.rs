//! One test per bug found, named for the behaviour it protects, with the story.

use flexgate::rules::extract::{IdType, ResourceId};
use flexgate::store::owner::{describe_owner_query, fetch_owner};
use flexgate::store::{ConnectOptions, Store};

use crate::common::*;

/// `serve` checks each owner query by preparing it. PostgreSQL inferred `$1` as
/// `integer` from an `int4` id column, the connection cached that statement, and the
/// first request on the same connection bound an 8-byte id: "incorrect binary data
/// format in bind parameter 1", a 503 for a valid request. Found as a flaky replica test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_owner_query_accepts_the_ids_requests_bind() {
    let Some(db) = TestDb::postgres() else { return };
    let one_connection = ConnectOptions {
        max_connections: 1,
        ..ConnectOptions::default()
    };
    let store = Store::connect(&db.url, &one_connection).await.unwrap();
    store
        .execute_script("CREATE TABLE thing (id INTEGER PRIMARY KEY, account_id INTEGER); INSERT INTO thing VALUES (7, 3);")
        .await
        .unwrap();
    let query: std::sync::Arc<str> = "SELECT account_id FROM thing WHERE id = $1".into();
    let columns = vec!["account_id".to_owned()];
    describe_owner_query(&store, &query, &columns, IdType::Integer)
        .await
        .unwrap();
    let row = fetch_owner(&store, &query, &columns, &ResourceId::Int(7))
        .await
        .unwrap();
    assert_eq!(row.as_deref(), Some(&[flexgate::policy::Value::Int(3)][..]));
    store.close().await;
}

/// The `rules` fuzz target found that a NUL byte in a rule file (here in a comment)
/// made `config check` print `error:` with no words: toml's message for it is empty.
#[test]
fn a_control_character_in_a_rule_file_is_named() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, "# before\n# a NUL \0 here\n[[route]]\n").unwrap();
    let out = crate::common::run(&db, &["config", "check", file.to_str().unwrap()], None);
    out.fails_with(
        "rules.toml:2: error: control character U+0000 is not allowed in a TOML file; remove it",
    );
}
