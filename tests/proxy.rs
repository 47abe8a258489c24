//! The proxy end to end: real TLS, a real upstream, the shipped demo rules over real
//! databases. Allow and deny for every kind of requirement, identity headers and their
//! signature, HTTP/2, the redirect listener, streaming, upgrades, upstream failures,
//! hot reload and graceful shutdown.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::common::*;

/// (who, method, path, JSON body, expected status). `who` is a demo user's email
/// prefix, or "" for no token.
type Case = (&'static str, &'static str, &'static str, Option<Value>, u16);

fn cases() -> Vec<Case> {
    vec![
        // public
        ("", "GET", "/api/v3_0/health/ready", None, 200),
        ("", "GET", "/api/ops/ping", None, 200),
        // authentication required
        ("", "GET", "/api/v3_0/accounts", None, 401),
        ("prosumer", "GET", "/api/v3_0/accounts", None, 200),
        // roles_required without admin bypass (FlexMeasures' task-runner endpoint)
        (
            "task-runner",
            "POST",
            "/api/ops/postLatestTaskRun",
            None,
            200,
        ),
        ("admin", "POST", "/api/ops/postLatestTaskRun", None, 403),
        ("prosumer", "POST", "/api/ops/postLatestTaskRun", None, 403),
        // path ids
        ("prosumer", "GET", "/api/v3_0/assets/1", None, 200),
        ("prosumer", "GET", "/api/v3_0/assets/3", None, 403),
        ("prosumer", "GET", "/api/v3_0/assets/4", None, 200),
        ("prosumer", "PATCH", "/api/v3_0/assets/4", None, 403),
        ("prosumer", "DELETE", "/api/v3_0/assets/1", None, 403),
        ("prosumer-admin", "DELETE", "/api/v3_0/assets/1", None, 200),
        ("consultant", "DELETE", "/api/v3_0/assets/2", None, 200),
        ("supplier", "GET", "/api/v3_0/assets/1", None, 403),
        ("reader", "GET", "/api/v3_0/assets/3", None, 200),
        ("reader", "PATCH", "/api/v3_0/assets/3", None, 403),
        ("admin", "DELETE", "/api/v3_0/assets/3", None, 200),
        ("prosumer", "GET", "/api/v3_0/sensors/1", None, 200),
        ("prosumer", "PATCH", "/api/v3_0/sensors/1", None, 403),
        ("prosumer-admin", "PATCH", "/api/v3_0/sensors/1", None, 200),
        ("prosumer", "GET", "/api/v3_0/users/5", None, 200),
        ("prosumer", "PATCH", "/api/v3_0/users/5", None, 200),
        ("prosumer", "PATCH", "/api/v3_0/users/4", None, 403),
        ("prosumer-admin", "PATCH", "/api/v3_0/users/5", None, 200),
        // missing and malformed ids: 404 or 422, as FlexMeasures answers them
        ("prosumer", "GET", "/api/v3_0/assets/99", None, 404),
        ("admin", "GET", "/api/v3_0/assets/99", None, 404),
        ("prosumer", "GET", "/api/v3_0/sensors/99", None, 422),
        ("prosumer", "GET", "/api/v3_0/sensors/99/data", None, 404),
        ("prosumer", "GET", "/api/v3_0/assets/abc", None, 422),
        (
            "prosumer",
            "GET",
            "/api/v3_0/assets/99999999999999999999",
            None,
            404,
        ),
        // static segments win over parameters
        ("prosumer", "GET", "/api/v3_0/assets/public", None, 200),
        // query ids (optional filter)
        ("prosumer", "GET", "/api/v3_0/users?account=3", None, 200),
        ("prosumer", "GET", "/api/v3_0/users?account_id=4", None, 403),
        ("prosumer", "GET", "/api/v3_0/users", None, 200),
        (
            "prosumer",
            "GET",
            "/api/v3_0/users?account=3&account=4",
            None,
            400,
        ),
        (
            "prosumer",
            "GET",
            "/api/v3_0/users?account=3&account_id=3",
            None,
            400,
        ),
        ("prosumer", "GET", "/api/v3_0/sensors?asset=3", None, 403),
        ("prosumer", "GET", "/api/v3_0/sensors?asset=1", None, 200),
        // JSON body ids
        (
            "prosumer-admin",
            "POST",
            "/api/v3_0/users",
            Some(json!({"account_id": 3, "email": "x@y"})),
            200,
        ),
        (
            "prosumer",
            "POST",
            "/api/v3_0/users",
            Some(json!({"account_id": 3})),
            403,
        ),
        (
            "prosumer-admin",
            "POST",
            "/api/v3_0/users",
            Some(json!({"account_id": 4})),
            403,
        ),
        (
            "prosumer-admin",
            "POST",
            "/api/v3_0/users",
            Some(json!({"account_id": "3"})),
            200,
        ),
        (
            "prosumer-admin",
            "POST",
            "/api/v3_0/users",
            Some(json!({"account_id": 3.0})),
            422,
        ),
        (
            "prosumer-admin",
            "POST",
            "/api/v3_0/users",
            Some(json!({"email": "x@y"})),
            422,
        ),
        (
            "prosumer-admin",
            "POST",
            "/api/v3_0/users",
            Some(json!({"account_id": 99})),
            404,
        ),
        // first_of: parent asset, else account, else admins only
        (
            "prosumer",
            "POST",
            "/api/v3_0/assets",
            Some(json!({"parent_asset_id": 1, "account_id": 4})),
            200,
        ),
        (
            "prosumer",
            "POST",
            "/api/v3_0/assets",
            Some(json!({"account_id": 3})),
            403,
        ),
        (
            "prosumer-admin",
            "POST",
            "/api/v3_0/assets",
            Some(json!({"account_id": 3})),
            200,
        ),
        (
            "prosumer",
            "POST",
            "/api/v3_0/assets",
            Some(json!({"account_id": 4})),
            403,
        ),
        (
            "prosumer",
            "POST",
            "/api/v3_0/assets",
            Some(json!({"name": "x"})),
            403,
        ),
        (
            "admin",
            "POST",
            "/api/v3_0/assets",
            Some(json!({"name": "x"})),
            200,
        ),
        // singleton kind (the platform)
        (
            "consultant",
            "POST",
            "/api/v3_0/accounts",
            Some(json!({"name": "New"})),
            200,
        ),
        (
            "prosumer-admin",
            "POST",
            "/api/v3_0/accounts",
            Some(json!({"name": "New"})),
            403,
        ),
        // ids nested in lists (the schedule trigger's flex-model)
        (
            "prosumer",
            "POST",
            "/api/v3_0/sensors/1/schedules/trigger",
            Some(json!({"flex-model": [{"sensor": 2}]})),
            200,
        ),
        (
            "prosumer",
            "POST",
            "/api/v3_0/sensors/1/schedules/trigger",
            Some(json!({"flex-model": [{"sensor": 2}, {"soc": {"sensor": 3}}]})),
            403,
        ),
        (
            "prosumer",
            "POST",
            "/api/v3_0/sensors/1/schedules/trigger",
            Some(json!({"flex-context": {"price": {"sensor": 4}}})),
            200,
        ),
        // deny by default
        ("prosumer", "GET", "/api/v3_0/unknown", None, 404),
        ("prosumer", "PUT", "/api/v3_0/assets/1", None, 404),
        ("", "GET", "/", None, 404),
        // inactive users never authenticate
        ("inactive", "GET", "/api/v3_0/accounts", None, 401),
    ]
}

both_backends_async! {
    async fn every_requirement_type_allows_and_denies(db) {
        let upstream = Upstream::start().await;
        let gw = GatewayBuilder::new(db, &upstream).demo().start().await;
        let mut tokens = std::collections::HashMap::new();
        for (who, ..) in cases() {
            if !who.is_empty() && who != "inactive" && !tokens.contains_key(who) {
                tokens.insert(who, gw.demo_token(&format!("{who}@flexgate.demo")).await);
            }
        }
        // A token issued while active, used after deactivation.
        let inactive = flexgate::auth::token::encode(
            &flexgate::auth::token::TokenKey::derive(&secret(SECRET_KEY)),
            7, "$5$x$y", "whatever", flexgate::auth::unix_now(),
        );
        tokens.insert("inactive", inactive);
        let mut failures = Vec::new();
        for (who, method, path, body, expected) in cases() {
            let before = upstream.count();
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(t) = tokens.get(who) {
                headers.push(("authorization", t.as_str()));
            }
            let text = body.as_ref().map(Value::to_string).unwrap_or_default();
            if body.is_some() {
                headers.push(("content-type", "application/json"));
            }
            let answer = gw.send(method, path, &headers, &text).await;
            let forwarded = upstream.count() > before;
            if answer.status != expected || forwarded != (expected == 200) {
                failures.push(format!(
                    "{who:>14} {method} {path} {text}: got {} (forwarded: {forwarded}), expected {expected}: {}",
                    answer.status,
                    answer.text()
                ));
            }
        }
        assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases().len(), failures.join("\n"));
        gw.stop().await;
    }
}

both_backends_async! {
    async fn deny_bodies_are_flexmeasures_shaped(db) {
        let upstream = Upstream::start().await;
        let gw = GatewayBuilder::new(db, &upstream).demo().start().await;
        let token = gw.demo_token("prosumer@flexgate.demo").await;
        assert_eq!(
            gw.get("/api/v3_0/assets/1", None).await.json(),
            json!({"message": "You could not be properly authenticated for this content or functionality.", "status": "UNAUTHORIZED"})
        );
        assert_eq!(
            gw.get("/api/v3_0/assets/3", Some(&token)).await.json(),
            json!({"result": "Rejected", "status": "INVALID_SENDER", "message": "You cannot be authorized for this content or functionality."})
        );
        assert_eq!(
            gw.get("/api/v3_0/assets/99", Some(&token)).await.json(),
            json!({"message": "No asset found with ID 99.", "status": 404})
        );
        assert_eq!(
            gw.get("/api/v3_0/sensors/99", Some(&token)).await.json(),
            json!({"message": {"path": {"id": ["Sensor 99 not found"]}}, "result": "Rejected", "status": "UNPROCESSABLE_ENTITY"})
        );
        let admin = gw.demo_token("admin@flexgate.demo").await;
        let answer = gw.send("POST", "/api/ops/postLatestTaskRun", &[("authorization", &admin)], "").await;
        assert_eq!(answer.json()["message"], "You cannot be authorized for this content or functionality. It requires task-runner permission(s).");
        // Every answer is JSON, the reason never leaks.
        for answer in [gw.get("/nope", Some(&token)).await, gw.get("/api/v3_0/assets/3", Some(&token)).await] {
            assert_eq!(answer.headers["content-type"], "application/json");
            assert!(!answer.text().contains("acl"), "{}", answer.text());
        }
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_signed_and_client_copies_never_reach_the_upstream() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream).demo().start().await;
    let token = gw.demo_token("prosumer-admin@flexgate.demo").await;
    let spoofed = [
        ("authorization", token.as_str()),
        ("X-Flexgate-User-Id", "1"),
        ("x-flexgate-user-roles", "admin"),
        ("X_Flexgate_Account_Id", "1"),
        ("X-FLEXGATE-SIGNATURE", "v1=forged"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X_Forwarded_User", "admin"),
        ("X-Original-URL", "/api/v3_0/assets/3"),
        ("Connection", "keep-alive, X-Forwarded-Proto"),
    ];
    let answer = gw.send("GET", "/api/v3_0/assets/1?x=1", &spoofed, "").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.last();
    let h = &seen.headers;
    assert_eq!(h["x-flexgate-user-id"], "4");
    assert_eq!(h["x-flexgate-user-email"], "prosumer-admin@flexgate.demo");
    assert_eq!(h["x-flexgate-account-id"], "3");
    assert_eq!(h["x-flexgate-user-roles"], "account-admin");
    assert_eq!(h["x-flexgate-account-roles"], "Prosumer");
    assert_eq!(h.get_all("x-flexgate-user-id").iter().count(), 1);
    assert!(h.get("x_flexgate_account_id").is_none());
    assert!(h.get("x_forwarded_user").is_none());
    assert!(h.get("x-original-url").is_none());
    assert!(
        h.get("authorization").is_none(),
        "the token is not passed upstream by default"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(seen.path, "/api/v3_0/assets/1");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    // The signature, recomputed independently from the README's recipe.
    let signature = h["x-flexgate-signature"].to_str().unwrap();
    assert_eq!(
        signature,
        expected_signature(h, "GET", "/api/v3_0/assets/1")
    );
    let ts: u64 = h["x-flexgate-timestamp"].to_str().unwrap().parse().unwrap();
    assert!(ts.abs_diff(flexgate::auth::unix_now()) < 5);
    // And with the library's verifier, which refuses any change.
    let verify = |headers: &http::HeaderMap, path: &str| {
        flexgate::proxy::headers::verify_signature(
            &secret(UPSTREAM_SECRET),
            headers,
            "X-Flexgate-",
            &http::Method::GET,
            path,
            flexgate::auth::unix_now(),
            60,
        )
    };
    assert!(verify(h, "/api/v3_0/assets/1").is_ok());
    assert!(verify(h, "/api/v3_0/assets/3").is_err());
    let mut tampered = h.clone();
    tampered.insert("x-flexgate-user-roles", header("admin"));
    assert!(verify(&tampered, "/api/v3_0/assets/1").is_err());

    // Public routes get no identity, and client copies are stripped there too.
    gw.send("GET", "/api/ops/ping", &[("X-Flexgate-User-Id", "1")], "")
        .await;
    let seen = upstream.last();
    assert!(
        seen.headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-flexgate")),
        "{:?}",
        seen.headers
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_http2_redirect_and_hsts() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream).demo().start().await;
    // HTTPS answers carry HSTS.
    let answer = gw.get("/api/ops/ping", None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    // Plain HTTP is only a redirect, for every path and method.
    let (status, body, headers) = plain_get(gw.http.unwrap(), "/api/v3_0/assets/1?x=1").await;
    assert_eq!(status, 308);
    assert_eq!(
        headers["location"],
        format!(
            "https://localhost:{}/api/v3_0/assets/1?x=1",
            gw.https.port()
        )
        .as_str()
    );
    assert!(body.contains("Use HTTPS"));
    assert_eq!(
        upstream.count(),
        1,
        "the redirect listener forwards nothing"
    );
    // HTTP/2 by ALPN.
    let mut config = (*gw.tls.client).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let tls = connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            http::Request::get(gw.url("/api/ops/ping"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    // TLS 1.2 works; TLS 1.1 is refused (checked with openssl when it is installed).
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(gw.tls.roots.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    if let Ok(out) = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &gw.https.to_string(), "-tls1_1"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                || text.contains("no protocols available")
                || text.contains("alert"),
            "TLS 1.1 accepted: {text}"
        );
    }
    gw.stop().await;
}
