//! API keys end to end: created with the real binary, used through the real proxy over
//! TLS, narrowed (read-only, fewer roles), stopped by revocation, expiry and a
//! deactivated user, refused before any lookup when mistyped, their last use recorded
//! off the request path, and in FlexMeasures mode swapped upstream for a FlexMeasures
//! token that the real FlexMeasures accepts.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::fm::*;
use crate::common::*;

fn key_cmd(db: &TestDb, args: &[&str]) -> Value {
    let out = run_env(db, args, &[("SECRET_KEY", SECRET_KEY)]);
    assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn create(db: &TestDb, user: &str, name: &str, extra: &[&str]) -> (String, i64) {
    let mut args = vec!["apikey", "create", "--user", user, "--name", name, "--json"];
    args.extend_from_slice(extra);
    let made = key_cmd(db, &args);
    (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_i64().unwrap(),
    )
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

both_backends_async! {
    async fn an_api_key_acts_for_its_user_until_revoked(db) {
        let upstream = Upstream::start().await;
        let gw = GatewayBuilder::new(db, &upstream).demo().start().await;
        let (key, id) = create(db, "prosumer-admin@flexgate.demo", "meter-1", &[]);
        assert!(key.starts_with("fgk_") && key.len() == 53, "{key}");
        let answer = gw.get("/api/v3_0/assets/1", Some(&bearer(&key))).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let seen = upstream.last();
        assert_eq!(seen.headers["x-flexgate-user-id"], "4");
        assert!(seen.headers.get("authorization").is_none(), "the key reached the upstream");
        // Same ACLs as the user: another tenant's asset is refused.
        assert_eq!(gw.get("/api/v3_0/assets/3", Some(&bearer(&key))).await.status, 403);
        // A typo is refused before any lookup.
        let mut typo = key.clone().into_bytes();
        typo[20] = if typo[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(gw.get("/api/v3_0/assets/1", Some(&bearer(std::str::from_utf8(&typo).unwrap()))).await.status, 401);
        let metrics = gw.metrics().await;
        assert_eq!(metric(&metrics, "flexgate_api_key_validations_total{outcome=\"bad_checksum\"}"), 1.0);
        assert!(metric(&metrics, "flexgate_api_key_validations_total{outcome=\"valid\"}") >= 2.0);
        // Only in the header: a key in the query would reach the upstream.
        assert_eq!(gw.get(&format!("/api/v3_0/assets/1?auth_token={key}"), None).await.status, 401);
        // Last use is written in the background, and listings never show the key.
        let keys = gw.gateway().auth.api_keys();
        // (The background task flushes too; whichever comes first writes the first use.)
        keys.flush_uses().await.unwrap();
        assert_eq!(gw.get("/api/v3_0/assets/1", Some(&bearer(&key))).await.status, 200);
        assert_eq!(keys.flush_uses().await.unwrap(), 0, "written again within a minute");
        let listed = key_cmd(db, &["apikey", "list", "--json"]);
        let row = listed.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap().clone();
        assert!(row["last_used_at"].as_i64().is_some(), "{row}");
        assert_eq!(row["user_email"], "prosumer-admin@flexgate.demo");
        assert!(!listed.to_string().contains(&key[4..40]), "a listing shows the key");
        // Revoked: refused within the key cache's 2 s.
        key_cmd(db, &["apikey", "revoke", &id.to_string(), "--json"]);
        assert!(eventually(Duration::from_secs(5), || async {
            gw.get("/api/v3_0/assets/1", Some(&bearer(&key))).await.status == 401
        }).await, "a revoked key still works after 5 s");
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_narrow_and_die_with_their_user() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream).demo().start().await;
    // Read-only: safe methods on read checks only.
    let (ro, _) = create(
        &db,
        "prosumer-admin@flexgate.demo",
        "dashboard",
        &["--read-only"],
    );
    assert_eq!(
        gw.get("/api/v3_0/assets/1", Some(&bearer(&ro)))
            .await
            .status,
        200
    );
    let patch = gw
        .call(
            "PATCH",
            "/api/v3_0/assets/1",
            &bearer(&ro),
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(patch.status, 403, "{}", patch.text());
    assert_eq!(
        gw.call("DELETE", "/api/v3_0/assets/1", &bearer(&ro), None)
            .await
            .status,
        403
    );
    // Fewer roles: an admin's key without the admin role is an ordinary user's.
    let (plain, _) = create(&db, "admin@flexgate.demo", "no-roles", &["--roles", ""]);
    let (full, _) = create(&db, "admin@flexgate.demo", "all-roles", &[]);
    assert_eq!(
        gw.call("DELETE", "/api/v3_0/assets/3", &bearer(&plain), None)
            .await
            .status,
        403
    );
    assert_eq!(
        gw.call("DELETE", "/api/v3_0/assets/3", &bearer(&full), None)
            .await
            .status,
        200
    );
    assert_eq!(upstream.last().headers["x-flexgate-user-roles"], "admin");
    // A key cannot widen: roles the user lacks are refused at creation.
    let out = run_env(
        &db,
        &[
            "apikey",
            "create",
            "--user",
            "prosumer@flexgate.demo",
            "--name",
            "x",
            "--roles",
            "admin",
        ],
        &[("SECRET_KEY", SECRET_KEY)],
    );
    out.fails_with("does not have that role");
    // Expired keys stop.
    let (short, _) = create(&db, "prosumer@flexgate.demo", "short", &["--expires", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        gw.get("/api/v3_0/assets/1", Some(&bearer(&short)))
            .await
            .status,
        401
    );
    // A deactivated user's keys stop.
    let (mine, _) = create(&db, "prosumer@flexgate.demo", "phone", &[]);
    assert_eq!(
        gw.get("/api/v3_0/assets/1", Some(&bearer(&mine)))
            .await
            .status,
        200
    );
    run(
        &db,
        &["deactivate", "user", "--user", "prosumer@flexgate.demo"],
        None,
    )
    .ok();
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.get("/api/v3_0/assets/1", Some(&bearer(&mine)))
                .await
                .status
                == 401
        })
        .await,
        "a deactivated user's key still works"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_on_every_replica_within_5s() {
    let Some(db) = TestDb::postgres() else { return };
    let upstream = Upstream::start().await;
    let a = GatewayBuilder::new(&db, &upstream).demo().start().await;
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let b = GatewayBuilder::new(&db, &upstream)
        .rules(&demo)
        .start()
        .await;
    let (key, id) = create(&db, "prosumer@flexgate.demo", "shared", &[]);
    for gw in [&a, &b] {
        assert_eq!(
            gw.get("/api/v3_0/assets/1", Some(&bearer(&key)))
                .await
                .status,
            200
        );
    }
    key_cmd(&db, &["apikey", "revoke", &id.to_string(), "--json"]);
    // One window of 5 s from the revocation for both replicas together.
    let revoked = std::time::Instant::now();
    let both = eventually(Duration::from_secs(5), || async {
        let mut refused = true;
        for gw in [&a, &b] {
            refused &= gw
                .get("/api/v3_0/assets/1", Some(&bearer(&key)))
                .await
                .status
                == 401;
        }
        refused
    })
    .await;
    assert!(
        both && revoked.elapsed() <= Duration::from_secs(5),
        "a revoked key still worked on a replica {:?} after the revocation",
        revoked.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flexmeasures_mode_a_key_reaches_flexmeasures_as_its_own_token() {
    let Some(fm) = real_flexmeasures() else {
        return;
    };
    let Some(state) = TestDb::postgres() else {
        return;
    };
    let users = TestDb::external(&fm.readonly_url);
    let placeholder = Upstream::start().await;
    let gw = GatewayBuilder::new(&users, &placeholder)
        .upstream_url(&fm.base())
        .rules(&crate::flexmeasures::flexmeasures_preset())
        .server("preserve_host = true\n")
        .env("FLEXMEASURES_SECRET_KEY", FM_SECRET_KEY)
        .env("FLEXMEASURES_SECURITY_PASSWORD_SALT", FM_PASSWORD_SALT)
        .state(&state.url)
        .start()
        .await;
    let email = fm.user("prosumer_member")["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_env(
        &users,
        &[
            "apikey", "create", "--user", &email, "--name", "meter", "--json",
        ],
        &[
            ("SECRET_KEY", SECRET_KEY),
            ("FLEXGATE_STATE_URL", &state.url),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let made: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let key = made["key"].as_str().unwrap();
    let id = fm.user("prosumer_member")["id"].as_i64().unwrap();
    let answer = gw
        .get(&format!("/api/v3_0/users/{id}"), Some(&bearer(key)))
        .await;
    assert_eq!(
        answer.status,
        200,
        "FlexMeasures did not take the stand-in token: {}",
        answer.text()
    );
    assert_eq!(answer.json()["email"], email.as_str());
    assert!(
        !answer.text().contains("eyJ"),
        "a FlexMeasures token leaked to the client"
    );
    let other = fm.user("tenant_b_member")["id"].as_i64().unwrap();
    assert_eq!(
        gw.get(&format!("/api/v3_0/users/{other}"), Some(&bearer(key)))
            .await
            .status,
        403
    );
    // FlexMeasures acts with the user's own roles: a key cannot be narrowed here.
    let admin = fm.user("prosumer_admin")["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_env(
        &users,
        &[
            "apikey", "create", "--user", &admin, "--name", "narrow", "--roles", "",
        ],
        &[
            ("SECRET_KEY", SECRET_KEY),
            ("FLEXGATE_STATE_URL", &state.url),
        ],
    );
    assert_ne!(out.code, 0, "a narrowed key was made in FlexMeasures mode");
    assert!(
        out.stderr
            .contains("cannot drop the user's role \"account-admin\""),
        "{}",
        out.stderr
    );
    gw.stop().await;
}
