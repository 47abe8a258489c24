//! Test harness shared by the integration tests: real databases (a temporary SQLite file,
//! or a fresh PostgreSQL database per test under `DATABASE_URL`), a runner for the real
//! `flexgate` binary, and (in `net`) a test CA, a recording upstream, an in-process
//! gateway and clients.
//!
//! PostgreSQL tests need `DATABASE_URL`. Without it they are skipped with a message,
//! except under `CI=true`, where a missing database fails the test loudly.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection;

pub mod fm;
pub mod h2raw;
pub mod net;
pub use net::*;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test and is removed afterwards.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    /// Someone else's database (FlexMeasures'): never migrated or dropped by the harness.
    pub external: bool,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// A fresh database of `backend`, or `None` when PostgreSQL is not configured (only
    /// allowed outside CI).
    pub fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite()),
            Backend::Postgres => TestDb::postgres(),
        }
    }

    /// A temporary SQLite file.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("flexgate.db").display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            external: false,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A new, empty PostgreSQL database on the server named by `DATABASE_URL`.
    pub fn postgres() -> Option<TestDb> {
        let admin_url = match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => url,
            _ => {
                if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                    panic!(
                        "CI=true but DATABASE_URL does not name a PostgreSQL server: the PostgreSQL tests cannot run"
                    );
                }
                eprintln!("skipping PostgreSQL test: set DATABASE_URL=postgres://... to run it");
                return None;
            }
        };
        let name = format!(
            "flexgate_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_url.clone();
        let db = name.clone();
        on_own_runtime(async move {
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to DATABASE_URL");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{db}\""
            )))
            .execute(&mut conn)
            .await
            .expect("drop old test database");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
                .execute(&mut conn)
                .await
                .expect("create test database");
        });
        let url = replace_db_name(&admin_url, &name);
        Some(TestDb {
            url,
            backend: Backend::Postgres,
            external: false,
            _dir: None,
            pg: Some((admin_url, name)),
        })
    }

    /// An existing PostgreSQL database that belongs to someone else (FlexMeasures'):
    /// gateways use it as it is, without migrating it, and it is left in place.
    pub fn external(url: &str) -> TestDb {
        TestDb {
            url: url.to_owned(),
            backend: Backend::Postgres,
            external: true,
            _dir: None,
            pg: None,
        }
    }

    /// The path of the SQLite file (SQLite only).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }

    /// Run SQL against the test database (setup of fixtures such as demo tables).
    pub fn execute(&self, sql: &str) {
        let url = self.url.clone();
        let sql = sql.to_owned();
        on_own_runtime(async move {
            let store = flexgate::store::Store::connect(&url, &Default::default())
                .await
                .expect("connect");
            store.execute_script(&sql).await.expect("execute SQL");
            store.close().await;
        });
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            on_own_runtime(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        }
    }
}

/// Run a future on a runtime of its own in a separate thread, so it works from sync
/// tests, async tests and `Drop` alike.
pub fn on_own_runtime<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fut)
    })
    .join()
    .expect("helper thread panicked")
}

fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port/db -> keep everything up to the last '/' after the host.
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Define one test per backend from a single body taking `&TestDb`.
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* fn $name:ident($db:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($db: &$crate::common::TestDb) $body
            #[test]
            fn sqlite() {
                let db = $crate::common::TestDb::sqlite();
                body(&db);
            }
            #[test]
            fn postgres() {
                if let Some(db) = $crate::common::TestDb::postgres() {
                    body(&db);
                }
            }
        }
    };
}

/// Like `both_backends!`, for async bodies: `async fn name(db) { ... }` runs on a
/// two-worker runtime once per backend.
#[macro_export]
macro_rules! both_backends_async {
    ($(#[$meta:meta])* async fn $name:ident($db:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body($db: &$crate::common::TestDb) $body
            fn run(db: $crate::common::TestDb) {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(body(&db));
            }
            #[test]
            fn sqlite() {
                run($crate::common::TestDb::sqlite());
            }
            #[test]
            fn postgres() {
                if let Some(db) = $crate::common::TestDb::postgres() {
                    run(db);
                }
            }
        }
    };
}

/// The demo's rules with an upload route (`plain_text_multipart`) on the demo's sensors,
/// which their accounts' members may post to.
pub fn demo_rules_with_uploads() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap()
        + r#"
[[route]]
name = "sensor-upload"
methods = ["POST"]
path = "/api/v3_0/sensors/{id}/data/upload"
plain_text_multipart = true
  [[route.check]]
  permission = "create-children"
  kind = "sensor"
  path = "id"
"#
}

/// The `flexgate` binary under test, with a clean environment pointed at `db`.
pub fn flexgate(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flexgate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("FLEXGATE_BCRYPT_COST", "4")
        .env("FLEXGATE_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// What a finished command printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Assert success and return stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Assert failure with exit code 1 and an error message containing `needle`.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) {
        assert_eq!(
            self.code, 1,
            "expected exit code 1\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            self.stderr
        );
    }

    /// Parse stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.stdout))
    }
}

/// Run `flexgate args...` against `db` with extra environment variables.
pub fn run_env(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = flexgate(db);
    cmd.args(args).envs(env.iter().copied());
    Run::from(cmd.output().expect("run flexgate"))
}

/// Run `flexgate args...` against `db`, feeding `stdin` if given.
pub fn run(db: &TestDb, args: &[&str], stdin: Option<&str>) -> Run {
    use std::io::Write;
    let mut cmd = flexgate(db);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn flexgate");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    Run::from(child.wait_with_output().expect("wait for flexgate"))
}
