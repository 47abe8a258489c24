//! How flexgate's cost grows: `cargo bench --bench scale`.
//!
//! Four curves, each bounded in time, on loopback, stopping by themselves:
//!
//! 1. **Routes**: generated rule files of 10, 100, 1,000 and 10,000 routes: how long a
//!    compile (a reload) takes, the heap the compiled rules hold, and what one match costs.
//! 2. **Caches**: the heap held per cached owner (SQLite, the demo schema) and per cached
//!    FlexMeasures token (FlexMeasures mode; PostgreSQL), at 100k and 1M entries.
//! 3. **Connections**: 10,000 idle keep-alive connections to the release binary: resident
//!    memory per connection, and the p99 of 8 busy connections beside them.
//! 4. **Replicas**: 1, 4 and 16 idle `flexgate serve` processes on one PostgreSQL: the
//!    CPU PostgreSQL spends on their change-feed polls (FlexMeasures mode's revalidation
//!    is measured per process by `cargo bench --bench revalidate`).
//!
//! Heap is counted by a counting allocator around the system one (exact bytes, not
//! pages). PostgreSQL parts need `DATABASE_URL`; `FLEXGATE_SCALE_LARGE=0` skips the 1M
//! points; `FLEXGATE_SCALE_PARTS=routes,connections` runs only those curves. Results: `target/bench/scale.json` and `scale.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let large = std::env::var("FLEXGATE_SCALE_LARGE").map_or(true, |v| v != "0");
    let parts = std::env::var("FLEXGATE_SCALE_PARTS")
        .unwrap_or_else(|_| "routes,caches,connections,replicas".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    let postgres = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut report = serde_json::Map::new();
    let mut md = String::from("# flexgate: how cost grows\n\n");

    // 1. Routes.
    if part("routes") {
        md.push_str("| routes | compile (reload) ms | heap of the rules KiB | one match ns |\n|---:|---:|---:|---:|\n");
        let mut rows = Vec::new();
        for n in [10usize, 100, 1_000, 10_000] {
            let (compile_ms, heap, match_ns) = routes(n);
            println!(
                "routes {n}: compile {compile_ms:.1} ms, heap {} KiB, match {match_ns:.0} ns",
                heap / 1024
            );
            md.push_str(&format!(
                "| {n} | {compile_ms:.1} | {} | {match_ns:.0} |\n",
                heap / 1024
            ));
            rows.push(json!({"routes": n, "compile_ms": compile_ms, "heap_bytes": heap, "match_ns": match_ns}));
        }
        report.insert("routes".into(), Value::Array(rows));
    }

    // 2. Caches.
    if part("caches") {
        let sizes: Vec<i64> = if large {
            vec![10_000, 100_000, 1_000_000]
        } else {
            vec![10_000, 100_000]
        };
        md.push_str("\n| cached entries | moka alone (u64 -> u64): heap per entry B | owners: heap per entry B | tokens (FlexMeasures mode): heap per entry B | owners + tokens: heap MiB |\n|---:|---:|---:|---:|---:|\n");
        let mut rows = Vec::new();
        for &n in &sizes {
            let baseline = moka_alone(n);
            let owners = runtime.block_on(owners(n));
            let tokens = postgres
                .as_ref()
                .map(|url| runtime.block_on(fm_tokens(url, n)));
            println!(
                "caches {n}: moka alone {baseline:.0} B, {:.0} B per owner{}",
                owners,
                tokens.map_or(String::new(), |t| format!(
                    ", {t:.0} B per FlexMeasures token"
                ))
            );
            md.push_str(&format!(
                "| {n} | {baseline:.0} | {owners:.0} | {} | {:.1} |\n",
                tokens.map_or("-".into(), |t| format!("{t:.0}")),
                (owners + tokens.unwrap_or(0.0)) * n as f64 / (1024.0 * 1024.0)
            ));
            rows.push(
                json!({"entries": n, "moka_bytes_each": baseline, "owner_bytes_each": owners, "token_bytes_each": tokens}),
            );
        }
        report.insert("caches".into(), Value::Array(rows));
    }

    // 3. Connections.
    if part("connections") {
        match runtime.block_on(connections(10_000)) {
            Ok(c) => {
                println!("connections: {c}");
                md.push_str(&format!(
                "\n10,000 idle keep-alive connections: {:.1} KiB resident per connection; 8 busy connections' p99 {:.3} ms beside them ({:.3} ms without).\n",
                c["rss_bytes_per_connection"].as_f64().unwrap_or(0.0) / 1024.0,
                c["busy_p99_ms_with_idle"].as_f64().unwrap_or(0.0),
                c["busy_p99_ms_alone"].as_f64().unwrap_or(0.0),
            ));
                report.insert("connections".into(), c);
            }
            Err(e) => println!("connections: skipped ({e})"),
        }
    }

    // 4. Replicas.
    if !part("replicas") {
    } else if let Some(url) = &postgres {
        md.push_str("\n| replicas | native: PostgreSQL CPU ms/s | native: transactions/s | FlexMeasures mode, 1,000 users each: PostgreSQL CPU ms/s | transactions/s |\n|---:|---:|---:|---:|---:|\n");
        let mut rows = Vec::new();
        for n in [1usize, 4, 16] {
            let (native_ms, native_tx) = runtime.block_on(replicas(url, n, false, 0));
            let (fm_ms, fm_tx) = runtime.block_on(replicas(url, n, true, 1000));
            println!(
                "replicas {n}: native {native_ms:.1} ms/s CPU, {native_tx:.1} tx/s; FlexMeasures mode {fm_ms:.1} ms/s CPU, {fm_tx:.1} tx/s"
            );
            md.push_str(&format!(
                "| {n} | {native_ms:.1} | {native_tx:.1} | {fm_ms:.1} | {fm_tx:.1} |\n"
            ));
            rows.push(json!({
                "replicas": n,
                "native_postgres_cpu_ms_per_s": native_ms,
                "native_transactions_per_s": native_tx,
                "flexmeasures_users_each": 1000,
                "flexmeasures_postgres_cpu_ms_per_s": fm_ms,
                "flexmeasures_transactions_per_s": fm_tx,
            }));
        }
        report.insert("replicas".into(), Value::Array(rows));
    } else {
        println!("replicas: skipped (set DATABASE_URL=postgres://...)");
    }

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("scale.json"),
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("scale.md"), md).unwrap();
    println!("\nwrote {}/scale.json and scale.md", dir.display());
}

/// A rule file with `n` routes over two kinds, the way large deployments grow them: one
/// family of templates per resource type, each with a check.
fn rule_file(n: usize) -> String {
    let mut text = String::from(
        "[kind.thing]\nquery = \"SELECT account_id FROM things WHERE id = $1\"\ncolumns = [\"account_id\"]\n\n[kind.thing.acl]\nread = [\"account:{account_id}\"]\nupdate = [[\"account:{account_id}\", \"role:account-admin\"]]\n\n",
    );
    for i in 0..n {
        let (methods, permission) = if i % 2 == 0 {
            ("GET", "read")
        } else {
            ("PATCH", "update")
        };
        text.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nmethods = [\"{methods}\"]\npath = \"/api/v3_0/family{}/things/{{id}}/part{}\"\n  [[route.check]]\n  permission = \"{permission}\"\n  kind = \"thing\"\n  path = \"id\"\n\n",
            i / 20,
            i % 20
        ));
    }
    text
}

fn routes(n: usize) -> (f64, i64, f64) {
    let text = rule_file(n);
    let path = Path::new("bench-routes.toml");
    let before = live();
    let started = Instant::now();
    let config =
        flexgate::rules::compile::compile_text(&text, path).expect("generated rules compile");
    let compile_ms = started.elapsed().as_secs_f64() * 1000.0;
    let heap = live() - before;
    let rules = &config.rules;
    let paths: Vec<String> = (0..1000)
        .map(|k| {
            let i = (k * 7919) % n;
            format!("/api/v3_0/family{}/things/{}/part{}", i / 20, k, i % 20)
        })
        .collect();
    let method = http::Method::GET;
    let rounds = 200;
    let started = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        for p in &paths {
            if flexgate::proxy::pipeline::match_rule(rules, &method, p).is_ok() {
                found += 1;
            }
        }
    }
    let match_ns = started.elapsed().as_nanos() as f64 / (rounds * paths.len()) as f64;
    assert!(found > 0);
    drop(config);
    (compile_ms, heap, match_ns)
}

/// Heap per entry of a moka cache of `u64 -> u64` with a time to live, as flexgate's
/// caches are built: what the cache itself costs before any key or value.
fn moka_alone(n: i64) -> f64 {
    let before = live();
    let cache: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
        .max_capacity(n as u64 + 10)
        .time_to_live(Duration::from_secs(3600))
        .build();
    for i in 0..n as u64 {
        cache.insert(i, i);
    }
    cache.run_pending_tasks();
    assert!(cache.entry_count() as i64 >= n * 99 / 100);
    let each = (live() - before) as f64 / n as f64;
    drop(cache);
    each
}

/// Heap per cached owner row: `n` assets in SQLite, each resolved once.
async fn owners(n: i64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("owners.db").display());
    let store = flexgate::store::Store::connect(&url, &Default::default())
        .await
        .unwrap();
    store
        .execute_script(&format!(
            "CREATE TABLE things (id INTEGER PRIMARY KEY, account_id INTEGER, consultancy_account_id INTEGER);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
             INSERT INTO things SELECT i, i % 1000, NULL FROM s;"
        ))
        .await
        .unwrap();
    let config = flexgate::rules::compile::compile_text(
        &format!("[cache]\nowner_capacity = {}\nowner_ttl_secs = 3600\n\n[kind.thing]\nquery = \"SELECT account_id, consultancy_account_id FROM things WHERE id = $1\"\ncolumns = [\"account_id\", \"consultancy_account_id\"]\n\n[kind.thing.acl]\nread = [\"account:{{account_id}}\"]\n", n + 10),
        Path::new("owners.toml"),
    )
    .unwrap();
    let kind = config.rules.kinds[0].clone();
    let resolver = flexgate::store::owner::OwnerResolver::new(
        store.clone(),
        &config.server.cache,
        flexgate::metrics::Metrics::new(),
        1,
    );
    let before = live();
    let resolver = Arc::new(resolver);
    let kind = Arc::new(kind);
    let mut tasks = Vec::new();
    for part in 0..8 {
        let (resolver, kind) = (Arc::clone(&resolver), Arc::clone(&kind));
        tasks.push(tokio::spawn(async move {
            let mut id = 1 + part;
            while id <= n {
                let rid = flexgate::rules::extract::ResourceId::Int(id);
                resolver.resolve(&kind, &rid).await.unwrap();
                id += 8;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(resolver.entry_count().await as i64 >= n * 99 / 100);
    let each = (live() - before) as f64 / n as f64;
    store.close().await;
    each
}

/// Heap per cached FlexMeasures token: `n` distinct tokens of one user, each checked once.
async fn fm_tokens(admin: &str, n: i64) -> f64 {
    use sqlx::Connection;
    let name = format!("flexgate_bench_scale_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", &admin[..admin.rfind('/').unwrap()]);
    let store = flexgate::store::Store::connect(&url, &Default::default())
        .await
        .unwrap();
    store
        .execute_script(
            &format!("{FM_SCHEMA}
             INSERT INTO fm_user (email, password, active, fs_uniquifier, account_id) VALUES ('u@example.com', '', true, 'uid-1', 1);"),
        )
        .await
        .unwrap();
    let secrets = flexgate::settings::FlexMeasuresSecrets {
        secret_key: Some(flexgate::settings::Secret::new(b"bench-fm-secret".to_vec())),
        remember_salt: "remember-salt".into(),
        ..Default::default()
    };
    let cache = flexgate::rules::CacheSettings {
        token_capacity: n as u64 + 10,
        ..Default::default()
    };
    let fm = flexgate::auth::flexmeasures::FmAuthenticator::new(
        store.clone(),
        None,
        None,
        &secrets,
        Duration::from_secs(21600),
        1,
        &cache,
        &Default::default(),
        flexgate::metrics::Metrics::new(),
    )
    .unwrap();
    let keys = flexgate::auth::itsdangerous::Keys::derive(
        [&b"bench-fm-secret"[..]],
        b"remember-salt",
        flexgate::auth::itsdangerous::Derivation::DjangoConcat,
    );
    let now = flexgate::auth::unix_now();
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            let payload = format!(
                r#"{{"ver":"5","uid":"uid-1","fs_paa":{}.{:06},"exp":0}}"#,
                now, i
            );
            flexgate::auth::itsdangerous::sign(&keys, payload.as_bytes(), now - 1)
        })
        .collect();
    // Warm the user, then count what the tokens add.
    fm.authenticate(&tokens[0]).await.unwrap();
    let before = live();
    for t in &tokens {
        fm.authenticate(t).await.unwrap();
    }
    let (_, entries) = fm.cache_sizes().await;
    assert!(entries as i64 >= n * 99 / 100, "{entries} of {n} cached");
    let each = (live() - before) as f64 / n as f64;
    drop(fm);
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    each
}

const SECRET_KEY: &str = "bench-secret-key-0123456789abcdef0123456789";
const UPSTREAM_SECRET: &str = "bench-upstream-secret-0123456789abcdef0123";

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// `flexgate serve` on a rule file with a public catch-all route to `upstream`, and
/// `/private/...` for any signed-in user. The caller kills and waits for the child.
#[allow(clippy::zombie_processes)]
fn serve(
    dir: &Path,
    database_url: &str,
    upstream: &str,
    extra: &str,
    envs: &[(&str, &str)],
) -> (Child, Value) {
    let config = dir.join("scale.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\nhttp_mode = \"proxy\"\nadmin = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{extra}\n\n[[route]]\nname = \"any\"\nmethods = [\"GET\"]\npath = \"/{{*rest}}\"\nauth = \"public\"\n\n[[route]]\nname = \"private\"\nmethods = [\"GET\"]\npath = \"/private/{{*rest}}\"\n"
        ),
    )
    .unwrap();
    let ready = dir.join(format!(
        "ready-{}.json",
        std::process::id() as u64 + live() as u64 % 1000
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_flexgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .env("DATABASE_URL", database_url)
        .env("SECRET_KEY", SECRET_KEY)
        .env("FLEXGATE_UPSTREAM_SECRET", UPSTREAM_SECRET)
        .env("FLEXGATE_LOG", "error")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flexgate");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        {
            return (child, v);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flexgate did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

async fn one_request(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    stream.write_all(REQUEST).await?;
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
        if let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

async fn busy_p99(addr: SocketAddr, secs: u64) -> f64 {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = vec![0u8; 16384];
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let sent = Instant::now();
                if one_request(&mut stream, &mut buf).await.is_err() {
                    break;
                }
                latencies.push(sent.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all.get(all.len() * 99 / 100).copied().unwrap_or(0) as f64 / 1000.0
}

/// A 2-byte upstream on a thread of its own.
fn upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn connections(n: usize) -> Result<Value, String> {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let up = upstream();
    let (mut child, addresses) = serve(
        dir.path(),
        &db,
        &format!("http://{up}"),
        &format!(
            "workers = 2\n[server.limits]\nmax_connections = {}\nmax_connections_per_client = 0\nheader_read_timeout_ms = 300000\n",
            n * 2
        ),
        &[],
    );
    let addr: SocketAddr = addresses["http"].as_str().unwrap().parse().unwrap();
    let alone = busy_p99(addr, 3).await;
    let rss_before = rss_bytes(child.id());
    let mut idle = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let mut stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                return Err(format!(
                    "connection {} failed: {e} (raise the open-file limit)",
                    idle.len()
                ));
            }
        };
        one_request(&mut stream, &mut buf)
            .await
            .map_err(|e| e.to_string())?;
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_bytes(child.id());
    let with_idle = busy_p99(addr, 5).await;
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
    Ok(json!({
        "connections": n,
        "rss_bytes_before": rss_before,
        "rss_bytes_after": rss_after,
        "rss_bytes_per_connection": (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
        "busy_p99_ms_alone": alone,
        "busy_p99_ms_with_idle": with_idle,
    }))
}

fn postgres_cpu_ticks() -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with("postgres") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        total += fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
    }
    total
}

/// FlexMeasures' tables as flexgate reads them: one account, one role.
const FM_SCHEMA: &str = "CREATE TABLE account (id serial PRIMARY KEY, name text, consultancy_account_id integer);
     CREATE TABLE account_role (id serial PRIMARY KEY, name text);
     CREATE TABLE roles_accounts (id serial PRIMARY KEY, account_id integer, role_id integer);
     CREATE TABLE fm_user (id serial PRIMARY KEY, email text, username text, password text, active boolean, fs_uniquifier text NOT NULL UNIQUE, account_id integer NOT NULL);
     CREATE TABLE role (id serial PRIMARY KEY, name text);
     CREATE TABLE roles_users (id serial PRIMARY KEY, user_id integer, role_id integer);
     INSERT INTO account (name) VALUES ('a');
     INSERT INTO role (name) VALUES ('account-admin');";

/// What `n` idle replicas cost PostgreSQL: CPU (from `/proc`, 10 ms ticks summed over
/// a 20 s window) and transactions per second (`pg_stat_database`). Native replicas poll
/// the change feed; FlexMeasures-mode replicas each hold `users` signed-in users and
/// revalidate them every `revalidate_ms` (1 s).
async fn replicas(admin: &str, n: usize, flexmeasures: bool, users: usize) -> (f64, f64) {
    use sqlx::Connection;
    let name = format!("flexgate_bench_replicas_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", &admin[..admin.rfind('/').unwrap()]);
    let secret = "bench-fm-secret-0123456789";
    let mut tokens = Vec::new();
    if flexmeasures {
        let store = flexgate::store::Store::connect(&url, &Default::default())
            .await
            .unwrap();
        store
            .execute_script(&format!(
                "{FM_SCHEMA}
                 INSERT INTO fm_user (email, password, active, fs_uniquifier, account_id)
                   SELECT 'u' || i || '@example.com', '', true, 'uid-' || i, 1 FROM generate_series(1, {users}) AS i;
                 INSERT INTO roles_users (user_id, role_id) SELECT id, 1 FROM fm_user WHERE id % 10 = 0;"
            ))
            .await
            .unwrap();
        store.close().await;
        let keys = flexgate::auth::itsdangerous::Keys::derive(
            [secret.as_bytes()],
            b"remember-salt",
            flexgate::auth::itsdangerous::Derivation::DjangoConcat,
        );
        let now = flexgate::auth::unix_now();
        tokens = (1..=users)
            .map(|i| {
                let payload = format!(r#"{{"ver":"5","uid":"uid-{i}","fs_paa":{now}.0,"exp":0}}"#);
                flexgate::auth::itsdangerous::sign(&keys, payload.as_bytes(), now - 1)
            })
            .collect();
    }
    let up = upstream();
    let mut children = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let (child, addresses) = if flexmeasures {
            serve(
                dir.path(),
                &url,
                &format!("http://{up}"),
                "workers = 1\n\n[identity]\nsource = \"flexmeasures\"\n",
                &[("FLEXMEASURES_SECRET_KEY", secret)],
            )
        } else {
            serve(
                dir.path(),
                &url,
                &format!("http://{up}"),
                "workers = 1",
                &[],
            )
        };
        if flexmeasures {
            let addr: SocketAddr = addresses["http"].as_str().unwrap().parse().unwrap();
            sign_in_everyone(addr, &tokens).await;
        }
        children.push(child);
        dirs.push(dir);
    }
    // Idle backends report their counts within 10 s: let the sign-ins' be counted
    // before the window opens.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let tx_before = transactions(&mut conn, &name).await;
    let before = postgres_cpu_ticks();
    let secs = 20;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let ticks = postgres_cpu_ticks() - before;
    let tx_after = transactions(&mut conn, &name).await;
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    (
        ticks as f64 * 10.0 / secs as f64,
        (tx_after - tx_before) as f64 / secs as f64,
    )
}

/// Transactions PostgreSQL has counted for database `name` (backends report their
/// counts lazily, within about 10 s when idle, so a 20 s window reads them roughly).
async fn transactions(conn: &mut sqlx::PgConnection, name: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(conn)
    .await
    .unwrap();
    n
}

/// One request per token through `/private/`, so a replica caches every user.
async fn sign_in_everyone(addr: SocketAddr, tokens: &[String]) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; 16384];
    for token in tokens {
        let request =
            format!("GET /private/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut got = 0;
        loop {
            let n = stream.read(&mut buf[got..]).await.unwrap();
            assert!(n > 0, "flexgate closed the connection");
            got += n;
            if let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "sign-in refused: {head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got >= end + 4 + len {
                    break;
                }
            }
        }
    }
}
