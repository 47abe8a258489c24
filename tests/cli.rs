//! The admin CLI, run as the real binary against SQLite and PostgreSQL: accounts with
//! consultancy and roles, users with roles, role edits, activation, passwords, and every
//! bad input (exit code, message, and the database left unchanged).

use crate::common::{self, TestDb, run};
use serde_json::{Value, json};

/// Everything the CLI can observe, plus what it cannot (uniquifiers, hashes, the change
/// feed), so "nothing changed" is checked for real.
fn snapshot(db: &TestDb) -> Value {
    let accounts = run(db, &["list", "accounts", "--json"], None).json();
    let users = run(db, &["list", "users", "--json"], None).json();
    let url = db.url.clone();
    let secrets = common::on_own_runtime(async move {
        let store = flexgate::store::Store::connect(&url, &Default::default())
            .await
            .unwrap();
        let mut out = Vec::new();
        for user in store.list_users(None).await.unwrap() {
            let p = store.principal(user.id).await.unwrap().unwrap();
            out.push(json!([p.user_id, p.uniquifier, p.password_hash]));
        }
        let feed = store.latest_change().await.unwrap();
        store.close().await;
        json!({"principals": out, "feed": feed})
    });
    json!({"accounts": accounts, "users": users, "secrets": secrets})
}

fn uniquifier(db: &TestDb, user_id: i64) -> String {
    let url = db.url.clone();
    common::on_own_runtime(async move {
        let store = flexgate::store::Store::connect(&url, &Default::default())
            .await
            .unwrap();
        let p = store.principal(user_id).await.unwrap().unwrap();
        store.close().await;
        p.uniquifier
    })
}

/// Two accounts (1 is a consultancy for 2) and one account-admin user in account 2.
fn seed(db: &TestDb) {
    run(
        db,
        &[
            "add",
            "account",
            "--name",
            "Consultancy",
            "--roles",
            "Consultancy",
        ],
        None,
    )
    .ok();
    run(
        db,
        &[
            "add",
            "account",
            "--name",
            "Account2",
            "--consultancy",
            "1",
            "--roles",
            "MDC,Prosumer",
        ],
        None,
    )
    .ok();
    run(
        db,
        &[
            "add",
            "user",
            "--email",
            "Alice@Example.com",
            "--account",
            "2",
            "--roles",
            "account-admin",
            "--password-stdin",
        ],
        Some("alice-password\n"),
    )
    .ok();
}

both_backends! {
    fn accounts_and_users_are_created_with_consultancy_and_roles(db) {
        seed(db);
        let accounts = run(db, &["list", "accounts", "--json"], None).json();
        assert_eq!(accounts, json!([
            {"id": 1, "name": "Consultancy", "consultancy_account_id": null, "roles": ["Consultancy"]},
            {"id": 2, "name": "Account2", "consultancy_account_id": 1, "roles": ["MDC", "Prosumer"]},
        ]));
        let users = run(db, &["list", "users", "--json"], None).json();
        assert_eq!(users, json!([
            {"id": 1, "email": "alice@example.com", "active": true, "account_id": 2, "roles": ["account-admin"]},
        ]));
        // Filtering by account, and the text table.
        assert_eq!(run(db, &["list", "users", "--account", "1", "--json"], None).json(), json!([]));
        let table = run(db, &["list", "accounts"], None);
        assert!(table.ok().contains("Account2"), "{}", table.stdout);
        // The stored password is a bcrypt hash, never the password itself.
        let url = db.url.clone();
        let hash = common::on_own_runtime(async move {
            let store = flexgate::store::Store::connect(&url, &Default::default()).await.unwrap();
            store.principal(1).await.unwrap().unwrap().password_hash
        });
        assert!(hash.starts_with("$2b$04$"), "{hash}");
        assert!(!hash.contains("alice-password"));
    }
}

both_backends! {
    fn add_prints_json_a_script_can_read(db) {
        let out = run(db, &["add", "account", "--name", "Solo", "--json"], None).json();
        assert_eq!(out, json!({"id": 1, "name": "Solo", "consultancy_account_id": null, "roles": []}));
    }
}

both_backends! {
    fn roles_and_consultancy_are_edited(db) {
        seed(db);
        let user = run(db, &["roles", "add", "--user", "alice@example.com", "consultant", "admin-reader", "--json"], None).json();
        assert_eq!(user["roles"], json!(["account-admin", "admin-reader", "consultant"]));
        // Adding a role the user already has changes nothing and is not an error.
        let user = run(db, &["roles", "add", "--user", "1", "consultant", "--json"], None).json();
        assert_eq!(user["roles"], json!(["account-admin", "admin-reader", "consultant"]));
        let user = run(db, &["roles", "remove", "--user", "1", "account-admin,admin-reader", "--json"], None).json();
        assert_eq!(user["roles"], json!(["consultant"]));

        let account = run(db, &["roles", "add", "--account", "2", "Supplier", "--json"], None).json();
        assert_eq!(account["roles"], json!(["MDC", "Prosumer", "Supplier"]));
        let account = run(db, &["roles", "remove", "--account", "2", "MDC", "--json"], None).json();
        assert_eq!(account["roles"], json!(["Prosumer", "Supplier"]));

        let account = run(db, &["consultancy", "clear", "--account", "2", "--json"], None).json();
        assert_eq!(account["consultancy_account_id"], Value::Null);
        let account = run(db, &["consultancy", "set", "--account", "1", "--consultancy", "2", "--json"], None).json();
        assert_eq!(account["consultancy_account_id"], json!(2));
    }
}

both_backends! {
    fn deactivation_and_password_change_rotate_the_uniquifier(db) {
        seed(db);
        let before = uniquifier(db, 1);
        let user = run(db, &["deactivate", "user", "--user", "alice@example.com", "--json"], None).json();
        assert_eq!(user["active"], json!(false));
        let after_deactivate = uniquifier(db, 1);
        assert_ne!(before, after_deactivate);

        let user = run(db, &["activate", "user", "--user", "1", "--json"], None).json();
        assert_eq!(user["active"], json!(true));
        assert_ne!(uniquifier(db, 1), after_deactivate, "activation must not revive old tokens");

        let before = uniquifier(db, 1);
        run(db, &["passwd", "--user", "1", "--password-stdin"], Some("a-new-password\n")).ok();
        assert_ne!(uniquifier(db, 1), before);
    }
}

both_backends! {
    fn bad_input_is_refused_and_changes_nothing(db) {
        seed(db);
        let cases: &[(&[&str], Option<&str>, &str)] = &[
            (&["add", "user", "--email", "bob@example.com", "--account", "99", "--password-stdin"],
             Some("bob-password\n"), "account 99 does not exist"),
            (&["add", "user", "--email", "ALICE@example.com", "--account", "2", "--password-stdin"],
             Some("alice-password\n"), "a user with email \"alice@example.com\" already exists"),
            (&["add", "user", "--email", "bob@example.com", "--account", "2", "--password-stdin"],
             Some("short\n"), "password must be at least 8 characters"),
            (&["add", "user", "--email", "not-an-email", "--account", "2", "--password-stdin"],
             Some("bob-password\n"), "is not an email address"),
            (&["add", "user", "--email", "bob@example.com", "--account", "2", "--roles", "ok,", "--password-stdin"],
             Some("bob-password\n"), "role name must not be empty"),
            (&["add", "user", "--email", "bob@example.com", "--account", "2", "--password-stdin"],
             None, "no password on stdin"),
            (&["add", "account", "--name", "Account2"], None, "an account named \"Account2\" already exists"),
            (&["add", "account", "--name", "  "], None, "account name must not be empty"),
            (&["add", "account", "--name", "New", "--consultancy", "42"], None, "consultancy account 42 does not exist"),
            (&["add", "account", "--name", "New", "--roles", "good,"], None, "role name must not be empty"),
            (&["consultancy", "set", "--account", "2", "--consultancy", "2"], None, "account 2 cannot be its own consultancy"),
            (&["consultancy", "set", "--account", "2", "--consultancy", "77"], None, "consultancy account 77 does not exist"),
            (&["consultancy", "clear", "--account", "77"], None, "account 77 does not exist"),
            (&["roles", "add", "--user", "1", ""], None, "role name must not be empty"),
            (&["roles", "add", "--user", "1", "two words"], None, "without spaces or commas"),
            (&["roles", "remove", "--user", "1", "admn"], None, "user 1 does not have role \"admn\" (it has: account-admin)"),
            (&["roles", "remove", "--user", "1", "account-admin,admn"], None, "does not have role \"admn\""),
            (&["roles", "add", "--user", "nobody@example.com", "admin"], None, "user \"nobody@example.com\" does not exist"),
            (&["roles", "add", "--account", "9", "MDC"], None, "account 9 does not exist"),
            (&["deactivate", "user", "--user", "9"], None, "user 9 does not exist"),
            (&["passwd", "--user", "1", "--password-stdin"], Some("tiny\n"), "password must be at least 8 characters"),
            (&["passwd", "--user", "9", "--password-stdin"], Some("long-enough\n"), "user 9 does not exist"),
        ];
        let before = snapshot(db);
        for (args, stdin, message) in cases {
            let out = run(db, args, *stdin);
            assert_eq!(out.code, 1, "{args:?} should fail: {}{}", out.stdout, out.stderr);
            assert!(out.stderr.contains(message), "{args:?}: stderr lacks {message:?}: {}", out.stderr);
            assert!(out.stderr.starts_with("error: "), "{args:?}: {}", out.stderr);
            assert_eq!(snapshot(db), before, "{args:?} changed the database");
        }
    }
}

#[test]
fn usage_errors_exit_with_two() {
    let db = TestDb::sqlite();
    let out = run(&db, &["roles", "add", "admin"], None);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--user"), "{}", out.stderr);
}

#[test]
fn bad_environment_names_every_variable() {
    let db = TestDb::sqlite();
    let out = common::flexgate(&db)
        .args(["list", "accounts"])
        .env("SECURITY_TOKEN_MAX_AGE", "soon")
        .env("SECRET_KEY", "too-short")
        .output()
        .unwrap();
    let out = common::Run::from(out);
    out.fails_with("SECURITY_TOKEN_MAX_AGE: expected whole seconds");
    assert!(out.stderr.contains("SECRET_KEY: must be at least 32 bytes"));
    assert!(
        !out.stderr.contains("too-short"),
        "secret echoed: {}",
        out.stderr
    );
}

#[test]
fn db_migrate_is_repeatable() {
    let db = TestDb::sqlite();
    assert!(
        run(&db, &["db", "migrate"], None)
            .ok()
            .contains("sqlite database is up to date")
    );
    assert!(
        run(&db, &["db", "migrate"], None)
            .ok()
            .contains("up to date")
    );
}
