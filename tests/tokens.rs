//! Authentication through HTTP: the token endpoint, every way a token is refused,
//! revocation reaching a running gateway, login throttling and the query-token switch.

use std::time::{Duration, Instant};

use serde_json::json;

use flexgate::auth::token::{self, TokenKey};
use flexgate::auth::unix_now;
use flexgate::store::UserRef;

use crate::common::*;

const UNAUTHORIZED: &str =
    "You could not be properly authenticated for this content or functionality.";

fn key() -> TokenKey {
    TokenKey::derive(&secret(SECRET_KEY))
}

both_backends_async! {
    async fn the_token_endpoint_answers_like_flexmeasures(db) {
        let upstream = Upstream::start().await;
        let gw = GatewayBuilder::new(db, &upstream).demo().start().await;
        let login = |body: String, ct: &'static str| {
            let gw = &gw;
            async move { gw.send("POST", "/api/requestAuthToken", &[("content-type", ct)], &body).await }
        };
        let ok = login(json!({"email": "Prosumer@FlexGate.demo", "password": "flexgate-demo"}).to_string(), "application/json").await;
        assert_eq!(ok.status, 200, "{}", ok.text());
        let body = ok.json();
        assert_eq!(body["user_id"], 5);
        assert_eq!(body["status"], 200);
        let token = body["auth_token"].as_str().unwrap().to_owned();
        assert_eq!(gw.get("/api/v3_0/assets/1", Some(&token)).await.status, 200);
        assert_eq!(gw.get("/api/v3_0/assets/1", Some(&format!("Bearer {token}"))).await.status, 200);

        // Wrong password, unknown email and inactive user: one answer.
        for (email, password) in [
            ("prosumer@flexgate.demo", "wrong-password"),
            ("nobody@flexgate.demo", "flexgate-demo"),
            ("inactive@flexgate.demo", "flexgate-demo"),
        ] {
            let answer = login(json!({"email": email, "password": password}).to_string(), "application/json").await;
            assert_eq!(answer.status, 401, "{email}");
            assert_eq!(answer.json(), json!({"message": UNAUTHORIZED, "status": "UNAUTHORIZED"}), "{email}");
        }
        // Schema errors name the field.
        let cases = [
            (json!({"email": "a@b"}).to_string(), "application/json", 422, "password"),
            (json!({"password": "x"}).to_string(), "application/json", 422, "email"),
            (json!({"email": "a@b", "password": "x", "remember": true}).to_string(), "application/json", 422, "remember"),
            (json!({"email": 5, "password": "x"}).to_string(), "application/json", 422, "email"),
            (json!(["a@b", "x"]).to_string(), "application/json", 422, "_schema"),
            ("email=a@b&password=x".to_owned(), "application/x-www-form-urlencoded", 422, "_schema"),
        ];
        for (body, ct, status, field) in cases {
            let answer = login(body.clone(), ct).await;
            assert_eq!(answer.status, status, "{body}: {}", answer.text());
            assert!(answer.json()["message"]["json"][field].is_array(), "{body}: {}", answer.text());
            assert_eq!(answer.json()["status"], "UNPROCESSABLE_ENTITY");
        }
        assert_eq!(login("{not json".into(), "application/json").await.status, 400);
        assert_eq!(login(format!("{{\"email\": \"{}\"}}", "a".repeat(10_000)), "application/json").await.status, 413);
        assert_eq!(gw.get("/api/requestAuthToken", None).await.status, 405);
        assert_eq!(upstream.count(), 1 + 1, "only the two allowed reads reached the upstream");
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_emails_cost_the_same_as_wrong_passwords() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    // A realistic cost, so the difference would show if the dummy hash were skipped.
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .env("FLEXGATE_BCRYPT_COST", "10")
        .start()
        .await;
    // The demo users were hashed at cost 4 by the harness; give one a cost-10 hash.
    let hasher = flexgate::auth::PasswordHasher::new(10, 1).unwrap();
    let hash = hasher.hash("a-long-password".into()).await.unwrap();
    gw.store.set_password(&UserRef::Id(5), &hash).await.unwrap();
    let time = |email: &'static str| {
        let gw = &gw;
        async move {
            let started = Instant::now();
            let answer = gw
                .send(
                    "POST",
                    "/api/requestAuthToken",
                    &[("content-type", "application/json")],
                    &json!({"email": email, "password": "not-it"}).to_string(),
                )
                .await;
            assert_eq!(answer.status, 401);
            started.elapsed()
        }
    };
    time("prosumer@flexgate.demo").await; // warm the dummy hash
    time("nobody@flexgate.demo").await;
    let (mut known, mut unknown) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        known += time("prosumer@flexgate.demo").await;
        unknown += time("nobody@flexgate.demo").await;
    }
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown {unknown:?} vs known {known:?}"
    );
    gw.stop().await;
}

both_backends_async! {
    async fn every_bad_token_is_refused_before_the_upstream(db) {
        let upstream = Upstream::start().await;
        let gw = GatewayBuilder::new(db, &upstream).demo().start().await;
        let good = gw.demo_token("prosumer@flexgate.demo").await;
        let record = gw.store.principal(5).await.unwrap().unwrap();
        let binding = token::bind_password(&record.password_hash);
        let now = unix_now();
        let max_age = gw.settings.token_max_age.as_secs();
        let parts: Vec<&str> = good.split('.').collect();
        let other_key = TokenKey::derive(&secret("another-secret-another-secret-another"));
        let flip = |s: &str| {
            let mut c: Vec<char> = s.chars().collect();
            c[2] = if c[2] == 'A' { 'B' } else { 'A' };
            c.into_iter().collect::<String>()
        };
        let cases: Vec<(&str, String)> = vec![
            ("expired", token::encode(&key(), 5, &binding, &record.uniquifier, now - max_age - 5)),
            ("future-dated", token::encode(&key(), 5, &binding, &record.uniquifier, now + 3600)),
            ("other key", token::encode(&other_key, 5, &binding, &record.uniquifier, now)),
            ("tampered payload", format!("{}.{}.{}", flip(parts[0]), parts[1], parts[2])),
            ("tampered time", format!("{}.{}.{}", parts[0], flip(parts[1]), parts[2])),
            ("tampered signature", format!("{}.{}.{}", parts[0], parts[1], flip(parts[2]))),
            ("truncated", good[..good.len() - 5].to_owned()),
            ("not base64", "!!!.###.$$$".to_owned()),
            ("garbage", "hello".to_owned()),
            ("wrong user", token::encode(&key(), 4, &binding, &record.uniquifier, now)),
            ("unknown user", token::encode(&key(), 999, &binding, &record.uniquifier, now)),
            ("old uniquifier", token::encode(&key(), 5, &binding, "rotated-away", now)),
            ("other password", token::encode(&key(), 5, &token::bind_password("$2b$04$other"), &record.uniquifier, now)),
            ("basic auth", "Basic cHJvc3VtZXI6eA==".to_owned()),
            ("another user's payload under this signature", {
                let theirs = token::encode(&key(), 4, &binding, &record.uniquifier, now);
                format!("{}.{}.{}", theirs.split('.').next().unwrap(), parts[1], parts[2])
            }),
        ];
        // The good token is known to every worker first: a text that claims its signature
        // must still be verified in full, not served from what the worker remembers.
        for _ in 0..8 {
            assert_eq!(gw.get("/api/v3_0/assets/1", Some(&good)).await.status, 200);
        }
        let warmed = upstream.count();
        for _ in 0..4 {
            for (name, bad) in &cases {
                let answer = gw.get("/api/v3_0/assets/1", Some(bad)).await;
                assert_eq!(answer.status, 401, "{name}: {}", answer.text());
                assert_eq!(answer.json()["status"], "UNAUTHORIZED", "{name}");
            }
        }
        // Two Authorization headers are refused, even if one is good.
        let answer = gw.send("GET", "/api/v3_0/assets/1", &[("authorization", &good), ("authorization", &good)], "").await;
        assert_eq!(answer.status, 401);
        // The query token is off by default.
        assert_eq!(gw.get(&format!("/api/v3_0/assets/1?auth_token={good}"), None).await.status, 401);
        assert_eq!(upstream.count(), warmed, "a refused token reached the upstream");
        // The good one still works.
        assert_eq!(gw.get("/api/v3_0/assets/1", Some(&good)).await.status, 200);
        let metrics = gw.metrics().await;
        assert!(metric(&metrics, "flexgate_token_validations_total{outcome=\"expired\"}") >= 1.0, "{metrics}");
        assert!(metric(&metrics, "flexgate_token_validations_total{outcome=\"bad_signature\"}") >= 20.0, "five cases, four rounds: {metrics}");
        assert!(metric(&metrics, "flexgate_token_validations_total{outcome=\"revoked\"}") >= 1.0, "{metrics}");
        assert!(metric(&metrics, "flexgate_token_validations_total{outcome=\"password_changed\"}") >= 1.0, "{metrics}");
        gw.stop().await;
    }
}

both_backends_async! {
    async fn revocation_deactivation_and_password_changes_reach_a_running_gateway(db) {
        let upstream = Upstream::start().await;
        let gw = GatewayBuilder::new(db, &upstream).demo().start().await;
        let cases: [(&str, i64); 3] = [("revoke", 5), ("deactivate", 4), ("passwd", 3)];
        for (change, user) in cases {
            let email = flexgate::demo::USERS.iter().find(|u| u.0 == user).unwrap().1;
            let token = gw.demo_token(email).await;
            assert_eq!(gw.get("/api/v3_0/accounts", Some(&token)).await.status, 200, "{change}: warm the caches");
            let who = UserRef::Id(user);
            let started = Instant::now();
            match change {
                "revoke" => drop(gw.store.revoke_tokens(&who).await.unwrap()),
                "deactivate" => drop(gw.store.set_active(&who, false).await.unwrap()),
                _ => drop(gw.store.set_password(&who, "$2b$04$abcdefghijklmnopqrstuu5tY2GAbyTgtm0eA5P3B1qBE9Lh8.UDu").await.unwrap()),
            }
            let refused = eventually(Duration::from_secs(5), || async {
                gw.get("/api/v3_0/accounts", Some(&token)).await.status == 401
            })
            .await;
            assert!(refused, "{change}: the token still worked after 5 s");
            println!("{change}: refused after {:?}", started.elapsed());
        }
        // Role changes reach the cache too: account-admin taken away -> 403.
        let token = gw.demo_token("supplier@flexgate.demo").await;
        assert_eq!(gw.call("DELETE", "/api/v3_0/assets/3", &token, None).await.status, 200);
        gw.store.edit_user_roles(&UserRef::Id(6), &[], &["account-admin".into()]).await.unwrap();
        assert!(eventually(Duration::from_secs(5), || async {
            gw.call("DELETE", "/api/v3_0/assets/3", &token, None).await.status == 403
        }).await, "role removal did not reach the cache");
        gw.stop().await;
    }
}

both_backends_async! {
    async fn guesses_sent_all_at_once_get_no_more_than_the_limit(db) {
        let upstream = Upstream::start().await;
        let gw = std::sync::Arc::new(
            GatewayBuilder::new(db, &upstream)
                .demo()
                .server("[auth.throttle]\nfailures_per_email = 3\nfailures_per_client = 1000\nwindow_secs = 60")
                .start()
                .await,
        );
        // Each guess is counted before its password is checked: 24 at once cannot all
        // pass a count none of them has added to yet.
        let mut guesses = tokio::task::JoinSet::new();
        for i in 0..24 {
            let gw = std::sync::Arc::clone(&gw);
            guesses.spawn(async move {
                gw.send(
                    "POST",
                    "/api/requestAuthToken",
                    &[("content-type", "application/json")],
                    &json!({"email": "consultant@flexgate.demo", "password": format!("guess-{i}")}).to_string(),
                )
                .await
                .status
            });
        }
        let statuses = guesses.join_all().await;
        let checked = statuses.iter().filter(|s| **s == 401).count();
        let throttled = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!((checked, throttled), (3, 21), "{statuses:?}");
        if let Ok(gw) = std::sync::Arc::try_unwrap(gw) {
            gw.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_throttled_and_successes_are_not() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server(
            "[auth.throttle]\nfailures_per_email = 3\nfailures_per_client = 6\nwindow_secs = 60",
        )
        .start()
        .await;
    let attempt = |email: &'static str, password: &'static str| {
        let gw = &gw;
        async move {
            gw.send(
                "POST",
                "/api/requestAuthToken",
                &[("content-type", "application/json")],
                &json!({"email": email, "password": password}).to_string(),
            )
            .await
        }
    };
    // Successes are never slowed.
    for _ in 0..5 {
        assert_eq!(
            attempt("prosumer@flexgate.demo", "flexgate-demo")
                .await
                .status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            attempt("consultant@flexgate.demo", "guess").await.status,
            401
        );
    }
    // The fourth guess for that email is throttled, even with the right password.
    for password in ["guess", "flexgate-demo"] {
        let answer = attempt("consultant@flexgate.demo", password).await;
        assert_eq!(answer.status, 429, "{}", answer.text());
        let retry: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // Per client address: three more failures on other emails reach the address limit.
    for email in ["a@x", "b@x", "c@x"] {
        assert_eq!(attempt(email, "guess").await.status, 401);
    }
    assert_eq!(
        attempt("supplier@flexgate.demo", "flexgate-demo")
            .await
            .status,
        429
    );
    let metrics = gw.metrics().await;
    assert!(
        metric(&metrics, "flexgate_logins_total{outcome=\"throttled\"}") >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "flexgate_logins_total{outcome=\"success\"}"),
        5.0
    );
    assert_eq!(metric(&metrics, "flexgate_tokens_issued_total"), 5.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_token_is_accepted_only_when_switched_on() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .rules(&format!("[auth]\nquery_token = true\n{rules}"))
        .start()
        .await;
    let token = gw.demo_token("prosumer@flexgate.demo").await;
    assert_eq!(
        gw.get(&format!("/api/v3_0/assets/1?auth_token={token}"), None)
            .await
            .status,
        200
    );
    // Header and query both: ambiguous, refused.
    assert_eq!(
        gw.get(
            &format!("/api/v3_0/assets/1?auth_token={token}"),
            Some(&token)
        )
        .await
        .status,
        401
    );
    assert_eq!(
        gw.get(
            &format!("/api/v3_0/assets/1?auth_token={token}&auth_token={token}"),
            None
        )
        .await
        .status,
        401
    );
    gw.stop().await;
}
