//! The real binary serving: `flexgate demo` and its printed commands, two `flexgate
//! serve` processes sharing one PostgreSQL (revocation reaches both), SIGHUP reloads,
//! SIGTERM drains, and the `config check`, `explain` and `token` commands.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, *};

/// A flexgate process that is killed when dropped.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub https: String,
    pub admin: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Start `flexgate args...` and wait for its ready file.
pub(crate) fn spawn(db: &TestDb, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Process {
    let ready = dir.join(format!(
        "ready-{}.json",
        std::process::id() as u128 * 1000 + rand_suffix()
    ));
    let mut cmd = flexgate(db);
    cmd.args(args)
        .arg("--ready-file")
        .arg(&ready)
        .env("SECRET_KEY", SECRET_KEY)
        .env("FLEXGATE_UPSTREAM_SECRET", UPSTREAM_SECRET)
        .env("FLEXGATE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(ready.with_extension("log")).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut process = Process {
        child: cmd.spawn().unwrap(),
        https: String::new(),
        admin: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok());
        if let Some(v) = ready {
            process.https = v["https"].as_str().unwrap_or_default().to_owned();
            process.admin = v["admin"].as_str().unwrap_or_default().to_owned();
            return process;
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!("flexgate exited with {status} before it was ready");
        }
        assert!(Instant::now() < deadline, "flexgate did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rand_suffix() -> u128 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u128
}

/// Write a rule file for `flexgate serve` with listeners on port 0.
pub(crate) fn serve_config(
    dir: &Path,
    upstream: &Upstream,
    rules: &str,
    extra_server: &str,
) -> std::path::PathBuf {
    let tls = test_tls(dir);
    let path = dir.join(format!("serve-{}.toml", rand_suffix()));
    std::fs::write(
        &path,
        format!(
            "[server]\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\nupstream = \"http://{}\"\n{extra_server}\n\n{rules}",
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
            upstream.addr
        ),
    )
    .unwrap();
    path
}

/// An HTTPS client that trusts any certificate of this test (the processes make their own).
pub(crate) fn insecure_client() -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

pub(crate) async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let mut builder = http::Request::builder().method(method).uri(format!(
        "https://localhost:{}{path}",
        addr.rsplit(':').next().unwrap()
    ));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = insecure_client()
        .request(
            builder
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_owned(),
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn login(addr: &str, email: &str) -> String {
    let (status, body) = call(
        addr,
        "POST",
        "/api/requestAuthToken",
        &[("content-type", "application/json")],
        &serde_json::json!({"email": email, "password": flexgate::demo::DEMO_PASSWORD}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["auth_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_its_printed_flows() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut demo = spawn(
        &db,
        &[
            "demo",
            "--dir",
            demo_dir.to_str().unwrap(),
            "--https-port",
            "0",
            "--http-port",
            "0",
            "--admin-port",
            "0",
        ],
        &[],
        dir.path(),
    );
    let https = demo.https.clone();
    let token = login(&https, "prosumer@flexgate.demo").await;
    let (status, body) = call(
        &https,
        "GET",
        "/api/v3_0/assets/1",
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["identity"]["user_id"], "5");
    assert_eq!(
        echo["signature_valid"], true,
        "the demo upstream verifies the signature"
    );
    let (status, _) = call(
        &https,
        "DELETE",
        "/api/v3_0/assets/1",
        &[("authorization", &token)],
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(&https, "GET", "/api/v3_0/assets/1", &[], "").await;
    assert_eq!(status, 401);
    let (status, _, _) = plain_get(demo.admin.parse().unwrap(), "/readyz").await;
    assert_eq!(status, 200);
    // The container health check: `flexgate probe` exits 0 only on a 2xx answer.
    let probe = |url: String| {
        let out = Command::new(env!("CARGO_BIN_EXE_flexgate"))
            .args(["probe", &url, "--timeout", "2"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let admin = &demo.admin;
    assert_eq!(
        probe(format!("http://{admin}/readyz")),
        (Some(0), "200 OK".to_owned())
    );
    assert_eq!(probe(format!("http://{admin}/nowhere")).0, Some(1));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(probe(format!("http://{closed}/readyz")).0, Some(1));
    assert_eq!(probe(format!("https://{admin}/readyz")).0, Some(1));
    // The printed instructions name the real ports and a working explain command.
    let mut stdout = demo.child.stdout.take().unwrap();
    demo.signal("TERM");
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut printed).unwrap();
    assert!(
        printed.contains(&format!(
            "https://localhost:{}",
            https.rsplit(':').next().unwrap()
        )),
        "{printed}"
    );
    assert!(printed.contains("TOKEN=$(curl"), "{printed}");
    let explain_line = printed
        .lines()
        .skip_while(|l| !l.contains("explain --config"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let words: Vec<&str> = explain_line
        .split_whitespace()
        .filter(|w| *w != "\\")
        .collect();
    let env_var = words[0].strip_prefix("DATABASE_URL=").unwrap();
    let out = Command::new(words[1])
        .args(&words[2..])
        .env("DATABASE_URL", env_var)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("result: DENY 403"), "{text}");
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "demo exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_two_replicas_sharing_postgresql() {
    let Some(db) = TestDb::postgres() else { return };
    let upstream = Upstream::start().await;
    let store = flexgate::store::Store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    flexgate::demo::seed(&store, 4).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let config = serve_config(dir.path(), &upstream, &rules, "");
    let config = config.to_str().unwrap();
    let a = spawn(&db, &["serve", "--config", config], &[], dir.path());
    let b = spawn(&db, &["serve", "--config", config], &[], dir.path());
    let token = login(&a.https, "prosumer@flexgate.demo").await;
    for replica in [&a, &b] {
        let (status, body) = call(
            &replica.https,
            "GET",
            "/api/v3_0/assets/1",
            &[("authorization", &token)],
            "",
        )
        .await;
        if status != 200 {
            for log in std::fs::read_dir(dir.path()).unwrap().flatten() {
                if log.path().extension().is_some_and(|e| e == "log") {
                    eprintln!(
                        "== {}\n{}",
                        log.path().display(),
                        std::fs::read_to_string(log.path()).unwrap_or_default()
                    );
                }
            }
        }
        assert_eq!(
            status, 200,
            "a token from one replica works on the other: {body}"
        );
    }
    let revoked = run(
        &db,
        &["token", "revoke", "--user", "prosumer@flexgate.demo"],
        None,
    );
    revoked.ok();
    let started = Instant::now();
    for replica in [&a, &b] {
        let refused = eventually(Duration::from_secs(5), || async {
            call(
                &replica.https,
                "GET",
                "/api/v3_0/assets/1",
                &[("authorization", &token)],
                "",
            )
            .await
            .0 == 401
        })
        .await;
        assert!(
            refused,
            "replica {} still accepted the token 5 s after revocation",
            replica.https
        );
    }
    println!(
        "both replicas refused the revoked token after {:?}",
        started.elapsed()
    );
    // A fresh login works on both.
    let token = login(&b.https, "prosumer@flexgate.demo").await;
    assert_eq!(
        call(
            &a.https,
            "GET",
            "/api/v3_0/assets/1",
            &[("authorization", &token)],
            ""
        )
        .await
        .0,
        200
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_sigterm_drains() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let route = |name: &str, path: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nmethods = [\"GET\"]\npath = \"{path}\"\nauth = \"public\"\n\n"
        )
    };
    let config = serve_config(
        dir.path(),
        &upstream,
        &route("slow", "/slow/{ms}"),
        "rules_poll_secs = 0",
    );
    let process = spawn(
        &db,
        &["serve", "--config", config.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_eq!(
        call(&process.https, "GET", "/status/200", &[], "").await.0,
        404
    );
    // Polling is off: only SIGHUP reloads.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&route("status", "/status/{code}"));
    std::fs::write(&config, &text).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        call(&process.https, "GET", "/status/200", &[], "").await.0,
        404,
        "reloaded without SIGHUP"
    );
    process.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(&process.https, "GET", "/status/200", &[], "").await.0 == 200
        })
        .await
    );
    // An invalid file on SIGHUP keeps the rules that work.
    let mut broken = std::fs::File::options().append(true).open(&config).unwrap();
    writeln!(
        broken,
        "[[route]]\nname = \"bad\"\nmethods = [\"GET\"]\npath = \"relative\""
    )
    .unwrap();
    process.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        call(&process.https, "GET", "/status/200", &[], "").await.0,
        200
    );

    // SIGTERM while requests are in flight: they finish, then the process exits 0.
    let https = process.https.clone();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let https = https.clone();
            tokio::spawn(async move { call(&https, "GET", "/slow/1000", &[], "").await.0 })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || async { upstream.count() >= 3 }).await);
    process.signal("TERM");
    for request in slow {
        assert_eq!(
            request.await.unwrap(),
            200,
            "an in-flight request was dropped at shutdown"
        );
    }
    let mut process = process;
    let status = process.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn config_check_reports_every_problem_and_checks_sql() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[kind.asset]\nquery = \"SELECT account_id FROM demo_asset WHERE id = $1\"\ncolumns = [\"account_id\"]\n\
         acl = { read = \"account:{acount_id}\" }\n\n[[route]]\nname = \"r\"\nmethods = [\"GET\"]\npath = \"/a/{id}\"\n\
         [[route.check]]\npermission = \"reed\"\nkind = \"asset\"\npath = \"id\"\n",
    )
    .unwrap();
    let out = run(&db, &["config", "check", bad.to_str().unwrap()], None);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "bad.toml:1: error: kind \"asset\", acl \"read\": principal \"account:{acount_id}\""
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("bad.toml:7: error: route \"r\", check 1: unknown permission \"reed\"; did you mean \"read\"?"), "{}", out.stderr);

    // With DATABASE_URL set, owner queries are prepared against the database.
    for file in ["config/demo.toml", "config/flexmeasures.toml"] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let out = run(&db, &["config", "check", &path], None);
        // The demo tables do not exist in an empty database: the SQL check says so.
        assert_eq!(out.code, 1, "{file}: {}", out.stderr);
        assert!(out.stderr.contains("error: kind"), "{file}: {}", out.stderr);
    }
    common_seed_demo(&db);
    let out = run(
        &db,
        &[
            "config",
            "check",
            &format!("{}/config/demo.toml", env!("CARGO_MANIFEST_DIR")),
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("OK (26 routes, 5 kinds"),
        "{}",
        out.stdout
    );
}

#[test]
fn explain_walks_the_same_stages_as_the_proxy() {
    let db = TestDb::sqlite();
    common_seed_demo(&db);
    let config = format!("{}/config/demo.toml", env!("CARGO_MANIFEST_DIR"));
    let explain = |email: &str, method: &str, path: &str, body: Option<&str>| {
        let mut args = vec![
            "explain", "--config", &config, "--email", email, "--method", method, "--path", path,
            "--json",
        ];
        if let Some(b) = body {
            args.extend(["--body", b]);
        }
        let out = run(&db, &args, None);
        serde_json::from_str::<Value>(out.ok()).unwrap()
    };
    let allowed = explain(
        "consultant@flexgate.demo",
        "GET",
        "/api/v3_0/assets/1",
        None,
    );
    assert_eq!(allowed["decision"], "allow");
    let trace = allowed["trace"].to_string();
    assert!(trace.contains("rule: \\\"asset-read\\\""), "{trace}");
    assert!(
        trace.contains("owner row {account_id=3, consultancy_account_id=2, parent_asset_id=None}"),
        "{trace}"
    );
    assert!(
        trace.contains("ACL item (account:{consultancy_account_id}, role:consultant): matches"),
        "{trace}"
    );
    let denied = explain(
        "prosumer@flexgate.demo",
        "DELETE",
        "/api/v3_0/assets/1",
        None,
    );
    assert_eq!(
        (
            denied["decision"].as_str(),
            denied["status"].as_u64(),
            denied["reason"].as_str()
        ),
        (Some("deny"), Some(403), Some("no_acl_item_matched"))
    );
    let missing = explain("admin@flexgate.demo", "GET", "/api/v3_0/assets/99", None);
    assert_eq!(missing["status"], 404);
    let body = explain(
        "prosumer@flexgate.demo",
        "POST",
        "/api/v3_0/sensors/1/schedules/trigger",
        Some(r#"{"flex-model": [{"sensor": 3}]}"#),
    );
    assert_eq!(body["status"], 403);
    assert!(
        body["trace"].to_string().contains("read on sensor 3"),
        "{}",
        body["trace"]
    );
    let unmatched = explain("prosumer@flexgate.demo", "GET", "/nothing/here", None);
    assert_eq!(unmatched["status"], 404);
    let bad_path = explain(
        "prosumer@flexgate.demo",
        "GET",
        "/api/v3_0/assets/1/../3",
        None,
    );
    assert_eq!(bad_path["status"], 400);
}

#[test]
fn token_issue_prints_a_token_the_proxy_accepts() {
    let db = TestDb::sqlite();
    common_seed_demo(&db);
    let out = common::flexgate(&db)
        .args([
            "token",
            "issue",
            "--email",
            "prosumer@flexgate.demo",
            "--json",
        ])
        .env("SECRET_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let out = common::Run::from(out);
    let issued = out.json();
    assert_eq!(issued["user_id"], 5);
    let token = issued["auth_token"].as_str().unwrap().to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = Upstream::start().await;
        let gw = GatewayBuilder::new(&db, &upstream)
            .rules(
                &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
                    .unwrap(),
            )
            .start()
            .await;
        assert_eq!(gw.get("/api/v3_0/assets/1", Some(&token)).await.status, 200);
        gw.stop().await;
    });
    // Inactive users get no token; a missing SECRET_KEY is named.
    let out = common::Run::from(
        common::flexgate(&db)
            .args(["token", "issue", "--email", "inactive@flexgate.demo"])
            .env("SECRET_KEY", SECRET_KEY)
            .output()
            .unwrap(),
    );
    out.fails_with("inactive user");
    run(
        &db,
        &["token", "issue", "--email", "prosumer@flexgate.demo"],
        None,
    )
    .fails_with("SECRET_KEY is not set");
}

/// Seed the demo data into a test database.
fn common_seed_demo(db: &TestDb) {
    let url = db.url.clone();
    common::on_own_runtime(async move {
        let store = flexgate::store::Store::connect(&url, &Default::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        flexgate::demo::seed(&store, 4).await.unwrap();
        store.close().await;
    });
}
