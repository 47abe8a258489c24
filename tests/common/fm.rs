//! A real FlexMeasures 1.0.1 for the FlexMeasures-mode tests: the venv `.ci/run`
//! installs (`FLEXGATE_FM_VENV`, default `/opt/flexgate-ci/fm`) runs
//! `tests/fm/fm_server.py`, which creates a fresh PostgreSQL database, migrates and
//! seeds it (accounts with one consultancy, users of every role, assets with one public,
//! sensors) and serves FlexMeasures on a loopback port. One server is shared by every
//! test of the process; it stops when the process ends (it watches its stdin). Tests
//! that change users make their own with [`RealFm::add_user`].
//!
//! Without the venv or `DATABASE_URL` the tests skip with a message, except under
//! `CI=true`, where they fail.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

/// The one site the shared FlexMeasures lets call its API from a browser (CORS).
pub const FM_CORS_ORIGIN: &str = "https://dashboard.example";

pub const FM_SECRET_KEY: &str = "test-secret-key-0123456789abcdef0123456789";
pub const FM_PASSWORD_SALT: &str = "test-salt-0123456789";

/// The shared FlexMeasures server.
pub struct RealFm {
    pub seed: Value,
    pub port: u16,
    /// FlexMeasures' database, as the superuser that seeds it.
    pub db_url: String,
    /// The same database through a role that may only read (what flexgate gets).
    pub readonly_url: String,
    pub venv: String,
    _child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

static SERVER: OnceLock<Option<RealFm>> = OnceLock::new();
static USERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn skip(why: &str) -> Option<&'static RealFm> {
    if ci() {
        panic!("CI=true but the FlexMeasures tests cannot run: {why}");
    }
    eprintln!("skipping FlexMeasures test: {why}");
    None
}

/// The shared server, started on first use; `None` (test skipped) when FlexMeasures or
/// PostgreSQL is missing outside CI.
pub fn real_flexmeasures() -> Option<&'static RealFm> {
    match SERVER.get_or_init(start) {
        Some(fm) => Some(fm),
        None => skip("FlexMeasures did not start (see the message above)"),
    }
}

/// The FlexMeasures venv's Python (its Werkzeug and itsdangerous are the real ones);
/// `None` (test skipped) when the venv is missing outside CI.
pub fn fm_python() -> Option<String> {
    let venv = std::env::var("FLEXGATE_FM_VENV").unwrap_or_else(|_| "/opt/flexgate-ci/fm".into());
    let python = format!("{venv}/bin/python");
    if !std::path::Path::new(&python).exists() {
        skip(&format!(
            "no FlexMeasures venv at {venv} (bash .ci/run installs it; or set FLEXGATE_FM_VENV)"
        ));
        return None;
    }
    Some(python)
}

fn start() -> Option<RealFm> {
    let python = fm_python()?;
    let venv = python.trim_end_matches("/bin/python").to_owned();
    let admin = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        _ => {
            skip("set DATABASE_URL=postgres://... (FlexMeasures needs PostgreSQL)");
            return None;
        }
    };
    let name = format!("flexgate_fm_{}", std::process::id());
    drop_stale_databases(&admin);
    let port = free_port();
    let dir = std::env::temp_dir().join(&name);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fm/fm_server.py");
    let pg_base = base_url(&admin).replacen("postgres://", "postgresql://", 1);
    let log = std::fs::File::create(dir.with_extension("log")).ok();
    let mut child = Command::new(&python)
        .args([
            script,
            "--db",
            &name,
            "--port",
            &port.to_string(),
            "--secret-key",
            FM_SECRET_KEY,
            "--password-salt",
            FM_PASSWORD_SALT,
            "--instance-dir",
            &dir.display().to_string(),
            "--pg",
            &pg_base,
            "--rate-limit",
            "100000 per minute",
            // One site may call the API from a browser (FlexMeasures' flask-cors):
            // the CORS preflight test's.
            "--config-line",
            &format!("CORS_ORIGINS = [{FM_CORS_ORIGIN:?}]"),
            "--fast-imports",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log.map_or(Stdio::null(), Stdio::from))
        .spawn()
        .expect("start tests/fm/fm_server.py");
    let stdin = child.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let seed: Value = match lines.next() {
        Some(Ok(line)) => serde_json::from_str(&line).expect("the seed line is JSON"),
        _ => panic!(
            "FlexMeasures did not start; its log is {}",
            dir.with_extension("log").display()
        ),
    };
    match lines.next() {
        Some(Ok(line)) if line == "READY" => {}
        other => panic!("FlexMeasures did not get ready: {other:?}"),
    }
    let db_url = format!("{}/{name}", base_url(&admin));
    let readonly_url = readonly_role(&db_url, &name);
    Some(RealFm {
        seed,
        port,
        db_url,
        readonly_url,
        venv,
        _child: Mutex::new(child),
        _stdin: Mutex::new(stdin),
    })
}

/// `postgres://user@host:port` of a database URL.
fn base_url(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_owned(),
        None => url.to_owned(),
    }
}

/// Run one SQL statement with `psql` (the test fails if it does); its output.
/// flexgate in FlexMeasures mode in front of the real FlexMeasures, over its database
/// (read-only), with `rules`, extra `[server]` lines and variables, and optionally the
/// state database replicas share.
pub async fn gateway_over(
    fm: &RealFm,
    rules: &str,
    server: &str,
    env: &[(&str, &str)],
    state_url: Option<&str>,
) -> super::TestGateway {
    let db = super::TestDb::external(&fm.readonly_url);
    let placeholder = super::Upstream::start().await;
    let mut builder = super::GatewayBuilder::new(&db, &placeholder)
        .upstream_url(&fm.base())
        .rules(rules)
        .server(&format!("preserve_host = true\n{server}"))
        .env("FLEXMEASURES_SECRET_KEY", FM_SECRET_KEY)
        .env("FLEXMEASURES_SECURITY_PASSWORD_SALT", FM_PASSWORD_SALT);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    if let Some(url) = state_url {
        builder = builder.state(url);
    }
    builder.start().await
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Databases of earlier runs whose process is gone.
fn drop_stale_databases(admin: &str) {
    let list = psql(
        admin,
        "SELECT datname FROM pg_database WHERE datname LIKE 'flexgate_fm_%'",
    );
    for db in list.lines() {
        let alive = db
            .strip_prefix("flexgate_fm_")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            psql(
                admin,
                &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            );
        }
    }
}

/// A login role that may only read FlexMeasures' tables: the GRANTs the README gives.
fn readonly_role(db_url: &str, db: &str) -> String {
    let role = format!("{db}_ro");
    psql(
        db_url,
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN \
             CREATE ROLE \"{role}\" LOGIN; END IF; END $$; \
             GRANT CONNECT ON DATABASE \"{db}\" TO \"{role}\"; \
             GRANT USAGE ON SCHEMA public TO \"{role}\"; \
             GRANT SELECT ON fm_user, role, roles_users, account, account_role, roles_accounts, \
             generic_asset, sensor TO \"{role}\";"
        ),
    );
    let after_scheme = db_url.find("://").map_or(0, |i| i + 3);
    let host = db_url[after_scheme..]
        .split('@')
        .nth(1)
        .unwrap_or(&db_url[after_scheme..]);
    format!("postgres://{role}@{host}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A user made for one test.
#[derive(Debug, Clone)]
pub struct FmUser {
    pub id: i64,
    pub email: String,
    pub password: String,
    pub uniquifier: String,
}

impl RealFm {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A seeded user: `seed.users[key]` (`prosumer_member`, `tenant_b_member`, ...).
    pub fn user(&self, key: &str) -> &Value {
        &self.seed["users"][key]
    }

    pub fn asset(&self, key: &str) -> i64 {
        self.seed["assets"][key]["id"].as_i64().unwrap()
    }

    pub fn sensor(&self, key: &str) -> i64 {
        self.seed["sensors"][key]["id"].as_i64().unwrap()
    }

    pub fn account(&self, key: &str) -> i64 {
        self.seed["accounts"][key]["id"].as_i64().unwrap()
    }

    /// A new active user of `account` (a seed key) with these roles, made directly in
    /// FlexMeasures' tables with a bcrypt-over-HMAC password hash as Flask-Security
    /// verifies it. Changes to it then go through FlexMeasures' API.
    pub fn add_user(&self, account: &str, roles: &[&str]) -> FmUser {
        self.add_user_to(self.account(account), roles)
    }

    /// A new account on a new FlexMeasures plan whose API rate limit is
    /// `default_rate_limit` (e.g. "5 per minute"), made directly in FlexMeasures'
    /// tables; its id. FlexMeasures applies a plan's limit per user of the account.
    pub fn add_account_on_plan(&self, default_rate_limit: &str) -> i64 {
        let n = USERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("made-{}-{n}", std::process::id());
        psql(
            &self.db_url,
            &format!(
                "WITH p AS (INSERT INTO plan (name, default_rate_limit) VALUES ('{name}', '{default_rate_limit}') RETURNING id) \
                 INSERT INTO account (name, plan_id) SELECT '{name}', id FROM p RETURNING id"
            ),
        )
        .trim()
        .parse()
        .unwrap()
    }

    /// [`RealFm::add_user`] for an account given by id.
    pub fn add_user_to(&self, account_id: i64, roles: &[&str]) -> FmUser {
        let n = USERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let email = format!("made-{}-{n}@example.com", std::process::id());
        let password = format!("made-password-{n}");
        let hmac =
            flexgate::auth::flexmeasures::password_hmac(FM_PASSWORD_SALT.as_bytes(), &password);
        let hash = bcrypt::hash(&hmac.as_bytes()[..72], 4).unwrap();
        let uniquifier = flexgate::auth::random_hex(16);
        let id: i64 = psql(
            &self.db_url,
            &format!(
                "INSERT INTO fm_user (email, username, password, active, fs_uniquifier, account_id, login_count) \
                 VALUES ('{email}', '{email}', '{hash}', true, '{uniquifier}', {account_id}, 0) RETURNING id"
            ),
        )
        .trim()
        .parse()
        .unwrap();
        for role in roles {
            psql(
                &self.db_url,
                &format!(
                    "INSERT INTO roles_users (user_id, role_id) SELECT {id}, id FROM role WHERE name = '{role}'"
                ),
            );
        }
        FmUser {
            id,
            email,
            password,
            uniquifier,
        }
    }

    /// Run `tests/fm/<script>` with the venv's Python and return its stdout as JSON.
    pub fn python_json(&self, script: &str, args: &[&str]) -> Value {
        let out = Command::new(format!("{}/bin/python", self.venv))
            .arg(format!("{}/tests/fm/{script}", env!("CARGO_MANIFEST_DIR")))
            .args(args)
            .output()
            .expect("run the venv's python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{script} {args:?} printed no JSON ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// A plain HTTP/1.1 client for talking to FlexMeasures directly.
pub async fn fm_call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, http::HeaderMap, Value) {
    match body {
        Some(json) => {
            let mut with_type = headers.to_vec();
            with_type.push(("content-type", "application/json"));
            fm_send(base, method, path, &with_type, json.to_string().into()).await
        }
        None => fm_send(base, method, path, headers, bytes::Bytes::new()).await,
    }
}

/// [`fm_call`] with a body of any kind, sent as given.
pub async fn fm_send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: bytes::Bytes,
) -> (u16, http::HeaderMap, Value) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(req.body(http_body_util::Full::new(body)).unwrap()),
    )
    .await
    .expect("FlexMeasures answered in time")
    .expect("FlexMeasures request");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status.as_u16(), parts.headers, json)
}
