//! Observability of a running gateway: exact metric changes for allowed, denied,
//! throttled and failing requests, `promtool check metrics` on the real output,
//! readiness flipping with the database, and JSON audit lines without secrets.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{self, *};

/// Every sample line of a /metrics text, by series.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// How much each listed series grew between two scrapes.
fn growth(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome_exactly() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server(
            "[auth.throttle]\nfailures_per_email = 1\nfailures_per_client = 100\nwindow_secs = 60",
        )
        .start()
        .await;
    let token = gw.demo_token("prosumer@flexgate.demo").await;
    let before = samples(&gw.metrics().await);

    for _ in 0..3 {
        assert_eq!(gw.get("/api/v3_0/assets/1", Some(&token)).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            gw.call("DELETE", "/api/v3_0/assets/1", &token, None)
                .await
                .status,
            403
        );
    }
    assert_eq!(gw.get("/api/v3_0/assets/1", None).await.status, 401);
    assert_eq!(gw.get("/nowhere", Some(&token)).await.status, 404);
    assert_eq!(
        gw.get("/api/v3_0/assets/1/../3", Some(&token)).await.status,
        400
    );
    let login = |password: &'static str| {
        let gw = &gw;
        async move {
            gw.send(
                "POST",
                "/api/requestAuthToken",
                &[("content-type", "application/json")],
                &json!({"email": "reader@flexgate.demo", "password": password}).to_string(),
            )
            .await
            .status
        }
    };
    assert_eq!(login("flexgate-demo").await, 200);
    assert_eq!(login("wrong").await, 401);
    assert_eq!(login("wrong").await, 429);
    // An owner lookup that fails: 503, counted as an error.
    gw.store
        .execute_script("ALTER TABLE demo_asset RENAME TO demo_asset_away")
        .await
        .unwrap();
    assert_eq!(gw.get("/api/v3_0/assets/2", Some(&token)).await.status, 503);
    gw.store
        .execute_script("ALTER TABLE demo_asset_away RENAME TO demo_asset")
        .await
        .unwrap();

    let after = samples(&gw.metrics().await);
    let expect = [
        (
            "flexgate_requests_total{decision=\"allow\",method=\"read\",route=\"asset-read\",status=\"2xx\"}",
            3.0,
        ),
        (
            "flexgate_requests_total{decision=\"forbidden\",method=\"write\",route=\"asset-delete\",status=\"4xx\"}",
            2.0,
        ),
        (
            "flexgate_requests_total{decision=\"unauthenticated\",method=\"read\",route=\"asset-read\",status=\"4xx\"}",
            1.0,
        ),
        (
            "flexgate_requests_total{decision=\"not_found\",method=\"read\",route=\"-\",status=\"4xx\"}",
            1.0,
        ),
        (
            "flexgate_requests_total{decision=\"bad_request\",method=\"read\",route=\"-\",status=\"4xx\"}",
            1.0,
        ),
        (
            "flexgate_requests_total{decision=\"error\",method=\"read\",route=\"asset-read\",status=\"5xx\"}",
            1.0,
        ),
        (
            "flexgate_requests_total{decision=\"allow\",method=\"write\",route=\"token_endpoint\",status=\"2xx\"}",
            1.0,
        ),
        (
            "flexgate_requests_total{decision=\"unauthenticated\",method=\"write\",route=\"token_endpoint\",status=\"4xx\"}",
            1.0,
        ),
        (
            "flexgate_requests_total{decision=\"throttled\",method=\"write\",route=\"token_endpoint\",status=\"4xx\"}",
            1.0,
        ),
        ("flexgate_logins_total{outcome=\"success\"}", 1.0),
        ("flexgate_logins_total{outcome=\"bad_credentials\"}", 1.0),
        ("flexgate_logins_total{outcome=\"throttled\"}", 1.0),
        ("flexgate_tokens_issued_total", 1.0),
        ("flexgate_token_validations_total{outcome=\"valid\"}", 6.0),
        (
            "flexgate_token_validations_total{outcome=\"no_token\"}",
            1.0,
        ),
        ("flexgate_owner_query_errors_total{kind=\"asset\"}", 1.0),
        (
            "flexgate_request_duration_seconds_count{route=\"asset-read\"}",
            5.0,
        ),
        (
            "flexgate_upstream_duration_seconds_count{route=\"asset-read\"}",
            3.0,
        ),
    ];
    let mut wrong = Vec::new();
    for (series, delta) in expect {
        let got = growth(&before, &after, series);
        if got != delta {
            wrong.push(format!("{series}: expected +{delta}, got +{got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Cache gauges and the fixed series are there; no label carries a path, id, email
    // or token.
    assert!(after["flexgate_cache_entries{cache=\"owners\"}"] >= 1.0);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("flexgate_build_info{version="))
    );
    assert!(after.contains_key("process_resident_memory_bytes"));
    assert!(after.contains_key("flexgate_rules_loaded"));
    for series in after.keys() {
        for secret_or_variable in ["/api", "assets/1", "flexgate.demo", &token[..20], "../"] {
            assert!(
                !series.contains(secret_or_variable),
                "label leaks {secret_or_variable:?}: {series}"
            );
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream).demo().start().await;
    let token = gw.demo_token("prosumer@flexgate.demo").await;
    gw.get("/api/v3_0/assets/1", Some(&token)).await;
    gw.get("/api/v3_0/assets/3", Some(&token)).await;
    gw.get("/api/v3_0/assets/1", None).await;
    let text = gw.metrics().await;
    gw.stop().await;
    let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but promtool is not installed (Debian package prometheus)"
        );
        eprintln!("skipping: promtool is not installed (apt-get install prometheus)");
        return;
    };
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool complains:\n{complaints}\n--- metrics ---\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    let Some((db, faults, via)) = postgres_behind_proxy().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .database_url(&via)
        .start()
        .await;
    let ready = || async { plain_get(gw.admin, "/readyz").await };
    assert_eq!(ready().await.0, 200);
    assert_eq!(plain_get(gw.admin, "/healthz").await.0, 200);
    faults.cut();
    let (status, body, _) = ready().await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "the database is unreachable");
    assert_eq!(
        plain_get(gw.admin, "/healthz").await.0,
        200,
        "alive even when not ready"
    );
    assert_eq!(
        metric(&gw.metrics().await, "flexgate_ready{check=\"database\"}"),
        0.0
    );
    faults.restore();
    assert!(
        eventually(Duration::from_secs(10), || async { ready().await.0 == 200 }).await,
        "readiness did not recover"
    );
    gw.stop().await;
}

#[test]
fn audit_lines_are_json_with_the_decision_and_no_secrets() {
    let db = TestDb::sqlite();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = runtime.block_on(Upstream::start());
    let dir = tempfile::tempdir().unwrap();
    let tls = test_tls(dir.path());
    let config = dir.path().join("rules.toml");
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    // Candidate rules in shadow: asset reads for admins only.
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(
        &candidate,
        rules.replace(
            "name = \"asset-read\"\nmethods = [\"GET\"]\npath = \"/api/v3_0/assets/{id}\"\n",
            "name = \"asset-read\"\nmethods = [\"GET\"]\npath = \"/api/v3_0/assets/{id}\"\nroles_required = [\"admin\"]\n",
        ),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "[server]\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\nupstream = \"http://{}\"\n\n[shadow]\nrules = \"candidate.toml\"\n\n{rules}",
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
            upstream.addr
        ),
    )
    .unwrap();
    let url = db.url.clone();
    common::on_own_runtime(async move {
        let store = flexgate::store::Store::connect(&url, &Default::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        flexgate::demo::seed(&store, 4).await.unwrap();
    });
    let made = common::flexgate(&db)
        .args([
            "apikey",
            "create",
            "--user",
            "prosumer@flexgate.demo",
            "--name",
            "meter-7",
            "--json",
        ])
        .env("SECRET_KEY", SECRET_KEY)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: Value = serde_json::from_slice(&made.stdout).unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let key_id = made["id"].clone();
    let ready = dir.path().join("ready.json");
    let log = dir.path().join("log.jsonl");
    let mut child = common::flexgate(&db)
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ])
        .env("SECRET_KEY", SECRET_KEY)
        .env("FLEXGATE_UPSTREAM_SECRET", UPSTREAM_SECRET)
        .env("FLEXGATE_LOG_FORMAT", "json")
        .env("FLEXGATE_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addresses: Value = loop {
        if let Some(v) = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let port: u16 = addresses["https"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let password = flexgate::demo::DEMO_PASSWORD;
    let token = runtime.block_on(async {
        let client = tls_client(&tls);
        let post = |body: Value| {
            let client = client.clone();
            async move {
                let req =
                    http::Request::post(format!("https://localhost:{port}/api/requestAuthToken"))
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(
                            body.to_string(),
                        )))
                        .unwrap();
                let response = client.request(req).await.unwrap();
                use http_body_util::BodyExt;
                let body = response.into_body().collect().await.unwrap().to_bytes();
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)
            }
        };
        post(json!({"email": "nobody@flexgate.demo", "password": "guessed-password"})).await;
        let token = post(json!({"email": "prosumer@flexgate.demo", "password": password}))
                .await["auth_token"]
                .as_str()
                .unwrap()
                .to_owned();
        let send = |method: &'static str, path: &'static str, credential: String| {
            let client = client.clone();
            async move {
                let req = http::Request::builder()
                    .method(method)
                    .uri(format!("https://localhost:{port}{path}"))
                    .header("authorization", format!("Bearer {credential}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                client.request(req).await.unwrap().status()
            }
        };
        for (method, path) in [
            ("DELETE", "/api/v3_0/assets/1"),
            ("GET", "/api/v3_0/assets/3"),
        ] {
            assert_eq!(send(method, path, token.clone()).await, 403);
        }
        // An API key's denial names the key, never its value.
        assert_eq!(send("GET", "/api/v3_0/assets/3", key.clone()).await, 403);
        // Allowed here, forbidden by the candidate: one audit line with both.
        assert_eq!(send("GET", "/api/v3_0/assets/1", token.clone()).await, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        token
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let audit: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "flexgate::audit")
        .collect();
    let denied = audit
        .iter()
        .find(|l| l["http.method"] == "DELETE")
        .unwrap_or_else(|| panic!("no audit line for the denied DELETE:\n{text}"));
    for (field, value) in [
        ("decision", json!("forbidden")),
        ("reason", json!("no_acl_item_matched")),
        ("client.address", json!("127.0.0.1")),
        ("rule.name", json!("asset-delete")),
        ("user.id", json!(5)),
        ("account.id", json!(3)),
        ("permission", json!("delete")),
        ("resource.kind", json!("asset")),
        ("resource.id", json!("1")),
        ("http.status", json!(403)),
    ] {
        assert_eq!(denied[field], value, "{field} in {denied}");
    }
    assert!(denied["timestamp"].is_string(), "{denied}");
    let by_key = audit
        .iter()
        .find(|l| l["key.name"] == "meter-7")
        .unwrap_or_else(|| panic!("no audit line for the key's denied request:\n{text}"));
    assert_eq!(by_key["key.id"], key_id, "{by_key}");
    assert_eq!(by_key["decision"], "forbidden", "{by_key}");
    let shadowed = audit
        .iter()
        .find(|l| l["shadow.decision"].is_string())
        .unwrap_or_else(|| panic!("no audit line for the shadow's disagreement:\n{text}"));
    for (field, value) in [
        ("decision", json!("allow")),
        ("shadow.decision", json!("forbidden")),
        ("shadow.reason", json!("roles_required")),
        ("rule.name", json!("asset-read")),
        ("user.id", json!(5)),
    ] {
        assert_eq!(shadowed[field], value, "{field} in {shadowed}");
    }
    assert!(
        audit
            .iter()
            .any(|l| l["rule.name"] == "token_endpoint" && l["decision"] == "unauthenticated"),
        "failed login not audited:\n{text}"
    );
    assert!(
        audit.iter().any(|l| l["rule.name"] == "token_endpoint"
            && l["decision"] == "allow"
            && l["user.id"] == 5),
        "login not audited:\n{text}"
    );
    assert!(
        !audit.iter().any(|l| l["http.method"] == "GET"
            && l["decision"] == "allow"
            && l["shadow.decision"].is_null()),
        "allows are not logged by default"
    );
    for secret in [
        key.as_str(),
        &key[..20],
        token.as_str(),
        &token[..40],
        password,
        "guessed-password",
        "$2b$",
        "$5$",
    ] {
        assert!(
            !text.contains(secret),
            "the log contains a secret ({secret:?})"
        );
    }
}

/// An HTTPS client that trusts the test CA of `tls`.
fn tls_client(
    tls: &Tls,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls.client).clone())
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}
