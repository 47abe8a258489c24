//! Load benchmark: `cargo bench --bench load`.
//!
//! Starts on loopback a minimal upstream (hyper, 2-byte body), the release `flexgate`
//! binary with a seeded database, and the peers that are installed (`apt-get install
//! nginx haproxy caddy`): nginx, HAProxy and Caddy as plain reverse proxies, nginx
//! `auth_request` and Caddy `forward_auth` to a do-nothing 204, and nginx
//! `auth_request` to flexgate's decision listener, and two bare tokio proxies
//! (`floor_proxy`: hyper's server and client, the floor of flexgate's own stack; and a
//! relay with no HTTP library, the floor of any proxy on tokio). Then drives each scenario from a
//! one-thread load generator with a fixed number of keep-alive connections for a fixed
//! time, like `wrk -t1 -c32`. Prints requests/s and latency percentiles per scenario,
//! and writes `target/bench/load.json` and `target/bench/load.md` with each scenario
//! compared to the direct upstream and to nginx: saturating runs by their share of the
//! throughput, fixed-rate runs by the p99 they add over the direct and nginx runs at the
//! same rate. Each target's pair (flexgate's authorized route against a peer, or against
//! its own public route) then runs again alternately, three times, and the median of
//! the pairs' ratios is reported: one pair alone is at the mercy of a noisy neighbour.
//! For the same reason the half-rate runs (direct, flexgate, nginx in turn) make three
//! rounds, and the latency target reads the median of the p99 each round adds.
//!
//! PostgreSQL is used when `DATABASE_URL` names one (scenario 4 needs it to mean what it
//! says); otherwise SQLite. Knobs: `FLEXGATE_BENCH_SECS` (default 5),
//! `FLEXGATE_BENCH_CONNECTIONS` (32), `FLEXGATE_BENCH_SKIP_MEMORY=1`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use flexgate::auth::token::{self, TokenKey};
use flexgate::settings::Secret;
use flexgate::store::Store;

const SECRET_KEY: &str = "bench-secret-key-0123456789abcdef0123456789";
const UPSTREAM_SECRET: &str = "bench-upstream-secret-0123456789abcdef0123";
const ASSETS: i64 = 300_000;
/// Alternating runs of scenarios 3 and 7, and rounds of the half-rate runs, for
/// steadier comparisons on a shared machine.
const PAIRS: usize = 3;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful here.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // This binary re-executed as the bare-stack peer (see `floor_proxy`).
    if let Ok(spec) = std::env::var(FLOOR_PROXY_ENV) {
        floor_proxy(&spec, Floor::Hyper);
    }
    if let Ok(spec) = std::env::var(RAW_FLOOR_PROXY_ENV) {
        floor_proxy(&spec, Floor::Raw);
    }
    let secs: u64 = env_or("FLEXGATE_BENCH_SECS", 5);
    let connections: usize = env_or("FLEXGATE_BENCH_CONNECTIONS", 32);
    let duration = Duration::from_secs(secs);
    let mut bench = Bench::setup();
    let mut results: Vec<Result_> = Vec::new();
    let report = |r: &Result_| println!("{}", r.line());

    let direct = bench.closed_loop(
        "1. direct to the upstream",
        Target::Plain(bench.upstream),
        connections,
        duration,
        fixed(get("/api/v3_0/assets/1", None)),
    );
    report(&direct);
    let public = bench.closed_loop(
        "2. flexgate, public route",
        Target::Plain(bench.proxy_http),
        connections,
        duration,
        fixed(get("/api/ops/ping", None)),
    );
    report(&public);
    let token = bench.token.clone();
    // Scenarios 3 and 7 run again in alternating pairs below: one definition of each.
    let authorized_run = |name: &str| {
        bench.closed_loop(
            name,
            Target::Plain(bench.proxy_http),
            connections,
            duration,
            fixed(get("/api/v3_0/assets/1", Some(&token))),
        )
    };
    let nginx_run = |name: &str, addr: SocketAddr| {
        bench.closed_loop(
            name,
            Target::Plain(addr),
            connections,
            duration,
            fixed(get("/api/v3_0/assets/1", None)),
        )
    };
    let authorized = authorized_run("3. flexgate, authorized (token and owner cached)");
    report(&authorized);
    let uncached = {
        let token = token.clone();
        let next = std::sync::atomic::AtomicI64::new(100);
        bench.closed_loop(
            &format!("4. flexgate, owner not cached ({})", bench.backend),
            Target::Plain(bench.proxy_http),
            connections,
            duration,
            Arc::new(move |_| {
                let id =
                    100 + next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (ASSETS - 100);
                get(&format!("/api/v3_0/assets/{id}"), Some(&token))
            }),
        )
    };
    report(&uncached);
    let tls = bench.closed_loop(
        "5. flexgate over TLS (scenario 3 through HTTPS)",
        Target::Tls(bench.proxy_https, bench.tls_client.clone()),
        connections,
        duration,
        fixed(get("/api/v3_0/assets/1", Some(&token))),
    );
    report(&tls);
    let logins = bench.closed_loop(
        "6a. token endpoint (bcrypt cost 12)",
        Target::Plain(bench.proxy_http),
        8,
        duration,
        fixed(login(
            "prosumer@flexgate.demo",
            flexgate::demo::DEMO_PASSWORD,
        )),
    );
    report(&logins);
    let nginx = bench
        .nginx
        .map(|addr| nginx_run("7. nginx, plain reverse proxy", addr))
        .inspect(report);
    // The peers in the same run, against the same upstream: plain proxies, and proxies
    // that ask an authorization endpoint (a do-nothing 204, or flexgate's decision
    // listener) before every request.
    let peer_run = |label: &str, addr: SocketAddr, asks_flexgate: bool| {
        bench.closed_loop(
            label,
            Target::Plain(addr),
            connections,
            duration,
            fixed(get(
                "/api/v3_0/assets/1",
                asks_flexgate.then_some(token.as_str()),
            )),
        )
    };
    let peer_rows: Vec<Result_> = bench
        .peers
        .iter()
        .map(|p| peer_run(p.label, p.addr, p.asks_flexgate))
        .inspect(report)
        .collect();
    let shadowed = bench.shadowed.as_ref().map(|(addr, _)| {
        bench.closed_loop(
            "9. flexgate, authorized, with the same rules in shadow",
            Target::Plain(*addr),
            connections,
            duration,
            fixed(get("/api/v3_0/assets/1", Some(&token))),
        )
    });
    if let Some(r) = &shadowed {
        report(r);
    }
    // One pair of runs is at the mercy of a noisy neighbour: scenarios 3 and 7 again,
    // alternately, and the median of the pairs' ratios.
    let pair_ratios: Vec<f64> = bench
        .nginx
        .map(|addr| {
            (1..=PAIRS)
                .map(|i| {
                    let ours = authorized_run(&format!("3, pair {i}"));
                    let theirs = nginx_run(&format!("7, pair {i}"), addr);
                    let ratio = ours.rps() / theirs.rps();
                    println!(
                        "pair {i}: 3 at {:.0} req/s, 7 at {:.0} req/s: {:.0}%",
                        ours.rps(),
                        theirs.rps(),
                        100.0 * ratio
                    );
                    ratio
                })
                .collect()
        })
        .unwrap_or_default();
    // The other targets' ratios, from alternating pairs too: authorized against the
    // public route (what authorization costs), the auth-subrequest peers, and the CPU
    // per request against nginx's.
    let mut peer_pairs: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for i in 1..=PAIRS {
        let ours = authorized_run(&format!("3, pair {i} (peers)"));
        let public_again = bench.closed_loop(
            &format!("2, pair {i}"),
            Target::Plain(bench.proxy_http),
            connections,
            duration,
            fixed(get("/api/ops/ping", None)),
        );
        peer_pairs
            .entry("2_over_3".into())
            .or_default()
            .push(public_again.rps() / ours.rps());
        let mut floors = Vec::new();
        for p in bench.peers.iter() {
            let theirs = peer_run(&format!("{}, pair {i}", p.label), p.addr, p.asks_flexgate);
            let key = p.label.split('.').next().unwrap_or(p.label).to_owned();
            peer_pairs
                .entry(format!("3_vs_{key}"))
                .or_default()
                .push(ours.rps() / theirs.rps());
            if FLOOR_KEYS.contains(&key.as_str()) {
                floors.push((key, theirs));
            }
        }
        if let (Some(nginx_addr), Some(ours_cpu)) = (bench.nginx, ours.cpu_us_per_request) {
            let theirs = nginx_run(&format!("7, pair {i} (CPU)"), nginx_addr);
            if let Some(theirs_cpu) = theirs.cpu_us_per_request {
                peer_pairs
                    .entry("3_cpu_over_7_cpu".into())
                    .or_default()
                    .push(ours_cpu / theirs_cpu);
                // How far the bare stacks themselves are from nginx, in the same round.
                for (key, floor) in &floors {
                    peer_pairs
                        .entry(format!("{key}_vs_7"))
                        .or_default()
                        .push(floor.rps() / theirs.rps());
                    if let Some(floor_cpu) = floor.cpu_us_per_request {
                        peer_pairs
                            .entry(format!("{key}_cpu_over_7_cpu"))
                            .or_default()
                            .push(floor_cpu / theirs_cpu);
                    }
                }
            }
        }
    }
    println!("peer pairs: {peer_pairs:?}");

    // Latency at half of scenario 3's rate: direct, flexgate and nginx in turn (the
    // table's rows), then PAIRS - 1 more rounds in the same order. What a proxy adds is
    // its p99 minus direct's within one round; the targets read the median over the
    // rounds, since a neighbour's burst on a shared machine lands in one of them.
    let rate = authorized.rps() / 2.0;
    let half_run = |name: &str, target: Target, token: Option<&str>| {
        bench.open_loop(
            name,
            target,
            connections,
            duration,
            rate,
            fixed(get("/api/v3_0/assets/1", token)),
        )
    };
    let half_round = |round: usize| {
        // Round 1's rows go in the table, so they are reported as they finish.
        let label = |scenario: &str, of: &str| match round {
            1 => format!("{scenario} at 50% of {of} rate"),
            _ => format!("{scenario} at 50%, round {round}"),
        };
        let table_row = |r: Result_| {
            if round == 1 {
                report(&r);
            }
            r
        };
        let direct = table_row(half_run(
            &label("1", "3's"),
            Target::Plain(bench.upstream),
            None,
        ));
        let ours = table_row(half_run(
            &label("3", "its"),
            Target::Plain(bench.proxy_http),
            Some(&token),
        ));
        let theirs = bench
            .nginx
            .map(|addr| table_row(half_run(&label("7", "3's"), Target::Plain(addr), None)));
        println!(
            "half-rate round {round}: direct p99 {:.3} ms; 3 adds {:.3} ms{}",
            direct.pct(99.0) as f64 / 1000.0,
            p99_added_ms(&ours, &direct),
            theirs.as_ref().map_or(String::new(), |t| format!(
                ", 7 adds {:.3} ms",
                p99_added_ms(t, &direct)
            )),
        );
        (direct, ours, theirs)
    };
    let rounds: Vec<_> = (1..=PAIRS).map(half_round).collect();
    let (direct_half, authorized_half, nginx_half) = rounds[0].clone();
    let added_rounds: Vec<f64> = rounds.iter().map(|(d, o, _)| p99_added_ms(o, d)).collect();
    let nginx_added_rounds: Vec<f64> = rounds
        .iter()
        .filter_map(|(d, _, n)| n.as_ref().map(|n| p99_added_ms(n, d)))
        .collect();
    let authorized_half_p99s: Vec<f64> = rounds
        .iter()
        .map(|(_, o, _)| f64::from(o.pct(99.0)))
        .collect();
    let flood = bench.flood_logins(duration + Duration::from_secs(2));
    let flooded = bench.open_loop(
        "6b. 3 at 50% during a login flood",
        Target::Plain(bench.proxy_http),
        connections,
        duration,
        rate,
        fixed(get("/api/v3_0/assets/1", Some(&token))),
    );
    let flood_logins = flood.join().unwrap_or(0);
    report(&flooded);
    println!("    (the flood sent {flood_logins} wrong-password logins)");
    // The same flood spread over two replicas sharing one PostgreSQL (whose failure
    // counts are shared): half of it at each.
    let flooded_replicas = bench.replica.as_ref().map(|(replica, _)| {
        let one = bench.flood_logins_at(bench.proxy_http, 4, duration + Duration::from_secs(2));
        let two = bench.flood_logins_at(*replica, 4, duration + Duration::from_secs(2));
        let r = bench.open_loop(
            "6c. 3 at 50% during a login flood over two replicas",
            Target::Plain(bench.proxy_http),
            connections,
            duration,
            rate,
            fixed(get("/api/v3_0/assets/1", Some(&token))),
        );
        let sent = one.join().unwrap_or(0) + two.join().unwrap_or(0);
        report(&r);
        println!("    (the flood sent {sent} wrong-password logins to the two replicas)");
        r
    });

    results.extend([
        direct.clone(),
        public,
        authorized.clone(),
        uncached.clone(),
        tls,
        logins,
    ]);
    results.extend(nginx.clone());
    results.push(direct_half.clone());
    results.extend(nginx_half.clone());
    results.extend([authorized_half.clone(), flooded.clone()]);
    results.extend(flooded_replicas.clone());
    results.extend(peer_rows.iter().cloned());
    results.extend(shadowed.clone());

    let memory = if std::env::var("FLEXGATE_BENCH_SKIP_MEMORY").is_ok() {
        None
    } else {
        Some(bench.memory_after_filling_caches(100_000))
    };
    if let Some((rss, fill)) = &memory {
        println!(
            "memory: {:.1} MiB resident in a fresh proxy after caching 100k tokens and 100k owners (filled in {:.1} s)",
            *rss as f64 / 1048576.0,
            fill.as_secs_f64()
        );
    }

    let targets = json!({
        "3_vs_nginx": nginx.as_ref().map(|n| authorized.rps() / n.rps()),
        "3_vs_nginx_pairs": pair_ratios,
        "3_vs_nginx_median": median(&pair_ratios),
        "3_vs_direct": authorized.rps() / direct.rps(),
        "3_p99_added_ms_at_half_rate": added_rounds[0],
        "3_p99_added_ms_at_half_rate_rounds": added_rounds,
        "3_p99_added_ms_at_half_rate_median": median(&added_rounds),
        "7_p99_added_ms_at_half_rate": nginx_added_rounds.first(),
        "7_p99_added_ms_at_half_rate_rounds": nginx_added_rounds,
        "7_p99_added_ms_at_half_rate_median": median(&nginx_added_rounds),
        "4_p99_ms": uncached.pct(99.0) as f64 / 1000.0,
        // Against the median of scenario 3's p99 at the same rate over the rounds.
        "6_p99_flood_ratio": median(&authorized_half_p99s).map(|p99| f64::from(flooded.pct(99.0)) / p99.max(1.0)),
        "rss_mib": memory.as_ref().map(|(rss, _)| *rss as f64 / 1048576.0),
        "pairs": peer_pairs.iter().map(|(k, v)| (k.clone(), json!({"rounds": v, "median": median(v)}))).collect::<serde_json::Map<_, _>>(),
        "9_shadow_vs_3": shadowed.as_ref().map(|r| r.rps() / authorized.rps()),
    });
    println!("\ntargets: {targets:#}");
    let baselines = Baselines {
        direct: &direct,
        nginx: nginx.as_ref(),
        direct_half: &direct_half,
        nginx_half: nginx_half.as_ref(),
    };
    write_report(&results, &baselines, &targets, &bench);
}

// === setup ===

struct Bench {
    upstream: SocketAddr,
    proxy_http: SocketAddr,
    proxy_https: SocketAddr,
    nginx: Option<SocketAddr>,
    token: String,
    tls_client: Arc<rustls::ClientConfig>,
    backend: &'static str,
    database_url: String,
    config: PathBuf,
    flexgate: Child,
    _nginx: Option<Child>,
    /// HAProxy, Caddy and the auth-subrequest setups, when installed.
    peers: Vec<Peer>,
    /// A second flexgate with the same rules in shadow (the shadow row's cost).
    shadowed: Option<(SocketAddr, Child)>,
    /// A second replica on the same database (the two-replica login flood).
    replica: Option<(SocketAddr, Child)>,
    _dir: tempfile::TempDir,
    _upstream_thread: std::thread::JoinHandle<()>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.flexgate.kill();
        let _ = self.flexgate.wait();
        for (_, child) in self.shadowed.iter_mut().chain(self.replica.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for peer in &mut self.peers {
            let _ = Command::new("kill")
                .args(["-QUIT", &peer.child.id().to_string()])
                .status();
            let _ = peer.child.kill();
            let _ = peer.child.wait();
        }
        if let Some(n) = self._nginx.as_mut() {
            // SIGQUIT: nginx's graceful stop, which takes its worker along (SIGKILL on
            // the master would leave the worker running).
            let _ = Command::new("kill")
                .args(["-QUIT", &n.id().to_string()])
                .status();
            let _ = n.wait();
        }
    }
}

impl Bench {
    fn setup() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let (upstream, upstream_thread) = start_upstream();
        let (database_url, backend) = database(dir.path());
        runtime().block_on(seed(&database_url));
        let (cert, key, tls_client) = tls(dir.path());
        let config = dir.path().join("bench.toml");
        let rules =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
                .unwrap();
        std::fs::write(
            &config,
            format!(
                "[server]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nhttp_mode = \"proxy\"\nadmin = \"127.0.0.1:0\"\ndecision = \"127.0.0.1:0\"\n\
                 tls_cert = {cert:?}\ntls_key = {key:?}\nupstream = \"http://{upstream}\"\n\n\
                 [auth]\nmax_concurrent_logins = 1\n[auth.throttle]\nfailures_per_email = 1000000\nfailures_per_client = 1000000\n\n\
                 [cache]\nowner_capacity = 400000\ntoken_capacity = 400000\nowner_ttl_secs = 3600\n\n{rules}"
            ),
        )
        .unwrap();
        let (flexgate, addresses) =
            start_flexgate(&config, &database_url, &dir.path().join("ready.json"));
        let addr = |k: &str| {
            addresses[k]
                .as_str()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap()
        };
        let proxy_http = addr("http");
        let token = runtime().block_on(async {
            let (status, body) = request(
                Target::Plain(proxy_http),
                &login("prosumer@flexgate.demo", flexgate::demo::DEMO_PASSWORD),
            )
            .await;
            assert_eq!(
                status,
                200,
                "login failed: {}",
                String::from_utf8_lossy(&body)
            );
            serde_json::from_slice::<Value>(&body).unwrap()["auth_token"]
                .as_str()
                .unwrap()
                .to_owned()
        });
        let (nginx, nginx_child) = match start_nginx(dir.path(), upstream) {
            Some((a, c)) => (Some(a), Some(c)),
            None => {
                println!("nginx is not installed (apt-get install nginx): scenario 7 skipped");
                (None, None)
            }
        };
        let decision = addr("decision");
        let peers = start_peers(dir.path(), upstream, decision);
        // The same rules, and the same rules again in shadow: what shadow decisions cost.
        let shadow_config = dir.path().join("bench-shadow.toml");
        std::fs::write(
            &shadow_config,
            std::fs::read_to_string(&config).unwrap().replacen(
                "[server]\n",
                "[shadow]\nrules = \"bench.toml\"\n\n[server]\n",
                1,
            ),
        )
        .unwrap();
        let (shadow_child, shadow_addresses) = start_flexgate(
            &shadow_config,
            &database_url,
            &dir.path().join("ready-shadow.json"),
        );
        let shadowed = Some((
            shadow_addresses["http"].as_str().unwrap().parse().unwrap(),
            shadow_child,
        ));
        let replica = (backend == "PostgreSQL").then(|| {
            let (child, addresses) = start_flexgate(
                &config,
                &database_url,
                &dir.path().join("ready-replica.json"),
            );
            (addresses["http"].as_str().unwrap().parse().unwrap(), child)
        });
        println!(
            "machine: {} cores; flexgate {} (release) on {backend}; generator: 1 thread\n",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            env!("CARGO_PKG_VERSION"),
        );
        Bench {
            upstream,
            proxy_http,
            proxy_https: addr("https"),
            nginx,
            token,
            tls_client,
            backend,
            database_url,
            config,
            flexgate,
            _nginx: nginx_child,
            peers,
            shadowed,
            replica,
            _dir: dir,
            _upstream_thread: upstream_thread,
        }
    }

    fn closed_loop(
        &self,
        name: &str,
        target: Target,
        conns: usize,
        duration: Duration,
        make: Maker,
    ) -> Result_ {
        let pid = self.pid_of(&target);
        drive(name, target, conns, duration, None, make, pid)
    }

    fn open_loop(
        &self,
        name: &str,
        target: Target,
        conns: usize,
        duration: Duration,
        rate: f64,
        make: Maker,
    ) -> Result_ {
        let pid = self.pid_of(&target);
        drive(name, target, conns, duration, Some(rate), make, pid)
    }

    /// The processes behind a target, for CPU accounting (none for the upstream; a
    /// proxy that asks an authorization service counts that service too).
    fn pid_of(&self, target: &Target) -> Vec<u32> {
        let addr = match target {
            Target::Plain(a) | Target::Tls(a, _) => *a,
        };
        if addr == self.proxy_http || addr == self.proxy_https {
            vec![self.flexgate.id()]
        } else if Some(addr) == self.nginx {
            self._nginx.iter().map(Child::id).collect()
        } else if let Some(peer) = self.peers.iter().find(|p| p.addr == addr) {
            let mut pids = vec![peer.child.id()];
            if peer.asks_flexgate {
                pids.push(self.flexgate.id());
            }
            pids
        } else if let Some((shadowed, child)) = &self.shadowed {
            if addr == *shadowed {
                vec![child.id()]
            } else {
                Vec::new()
            }
        } else {
            Vec::new()
        }
    }

    /// Wrong passwords for ever-new emails from 8 connections, in a thread of its own.
    fn flood_logins(&self, duration: Duration) -> std::thread::JoinHandle<u64> {
        self.flood_logins_at(self.proxy_http, 8, duration)
    }

    /// The same flood at `target` from `conns` connections.
    fn flood_logins_at(
        &self,
        target: SocketAddr,
        conns: usize,
        duration: Duration,
    ) -> std::thread::JoinHandle<u64> {
        std::thread::spawn(move || {
            let counter = std::sync::atomic::AtomicU64::new(0);
            let make: Maker = Arc::new(move |_| {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                login(&format!("attacker{n}@example.com"), "wrong-password")
            });
            let r = drive(
                "flood",
                Target::Plain(target),
                conns,
                duration,
                None,
                make,
                Vec::new(),
            );
            // Every flood request is refused (401), so count them all.
            r.requests + r.errors
        })
    }

    /// Restart the proxy (so that the caches hold only what this fills: the scenarios
    /// before cached other owners), fill its token and owner caches with `n` distinct
    /// entries each, then read its resident memory.
    fn memory_after_filling_caches(&mut self, n: i64) -> (u64, Duration) {
        let _ = self.flexgate.kill();
        let _ = self.flexgate.wait();
        let ready = self._dir.path().join("ready-memory.json");
        let (flexgate, addresses) = start_flexgate(&self.config, &self.database_url, &ready);
        self.flexgate = flexgate;
        self.proxy_http = addresses["http"].as_str().unwrap().parse().unwrap();
        let started = Instant::now();
        let url = self.database_url.clone();
        let tokens = runtime().block_on(async move {
            let store = Store::connect(&url, &Default::default()).await.unwrap();
            let principal = store.principal(5).await.unwrap().unwrap();
            store.close().await;
            // A cheaper sha256_crypt (1000 rounds, the minimum) keeps the fill quick; the
            // cache entry is the same size.
            let binding = {
                use sha_crypt::{PasswordHasher, ShaCrypt};
                ShaCrypt::new(
                    sha_crypt::Algorithm::Sha256Crypt,
                    sha_crypt::Params::new(1000).unwrap(),
                )
                .hash_password_with_salt(principal.password_hash.as_bytes(), b"benchsalt")
                .unwrap()
                .to_string()
            };
            let key = TokenKey::derive(&Secret::new(SECRET_KEY.as_bytes().to_vec()));
            let now = flexgate::auth::unix_now();
            (0..n)
                .map(|i| token::encode(&key, 5, &binding, &principal.uniquifier, now - i as u64))
                .collect::<Vec<String>>()
        });
        let tokens = Arc::new(tokens);
        let fill = drive(
            "fill caches",
            Target::Plain(self.proxy_http),
            16,
            Duration::from_secs(600),
            None,
            {
                let tokens = Arc::clone(&tokens);
                Arc::new(move |i| {
                    if i >= tokens.len() as u64 {
                        return Vec::new();
                    }
                    get(
                        &format!("/api/v3_0/assets/{}", 1000 + i),
                        Some(&tokens[i as usize]),
                    )
                })
            },
            Vec::new(),
        );
        assert_eq!(fill.errors, 0, "cache fill had errors");
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.flexgate.id()))
            .unwrap_or_default();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        (rss_kib * 1024, started.elapsed())
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Start `flexgate serve` on `config` and wait until it has written its addresses.
fn start_flexgate(config: &Path, database_url: &str, ready: &Path) -> (Child, Value) {
    let flexgate = Command::new(env!("CARGO_BIN_EXE_flexgate"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--ready-file")
        .arg(ready)
        .env("DATABASE_URL", database_url)
        .env("SECRET_KEY", SECRET_KEY)
        .env("FLEXGATE_UPSTREAM_SECRET", UPSTREAM_SECRET)
        .env("SECURITY_TOKEN_MAX_AGE", "2592000")
        .env("FLEXGATE_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the flexgate binary");
    let addresses = wait_for_file(ready);
    (flexgate, addresses)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn wait_for_file(path: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            return v;
        }
        assert!(Instant::now() < deadline, "flexgate did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn database(dir: &Path) -> (String, &'static str) {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            let admin = url.clone();
            runtime().block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
                sqlx::query("DROP DATABASE IF EXISTS flexgate_bench WITH (FORCE)")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query("CREATE DATABASE flexgate_bench")
                    .execute(&mut conn)
                    .await
                    .unwrap();
            });
            let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
            (format!("{base}/flexgate_bench"), "PostgreSQL")
        }
        _ => (
            format!("sqlite://{}", dir.join("bench.db").display()),
            "SQLite",
        ),
    }
}

async fn seed(url: &str) {
    let store = Store::connect(url, &Default::default()).await.unwrap();
    store.migrate().await.unwrap();
    flexgate::demo::seed(&store, 12).await.unwrap();
    let more = if url.starts_with("postgres") {
        format!(
            "INSERT INTO demo_asset (id, name, account_id) SELECT g, 'asset ' || g, 3 FROM generate_series(100, {ASSETS}) g;"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < {ASSETS}) \
             INSERT INTO demo_asset (id, name, account_id) SELECT i, 'asset ' || i, 3 FROM n;"
        )
    };
    store.execute_script(&more).await.unwrap();
    store.close().await;
}

fn tls(dir: &Path) -> (String, String, Arc<rustls::ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    (
        cert.display().to_string(),
        key.display().to_string(),
        Arc::new(client),
    )
}

/// The upstream: hyper HTTP/1.1 on one thread, a fixed 2-byte body.
fn start_upstream() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service =
                        service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                            // The do-nothing authorization endpoint of the auth-subrequest peers.
                            if req.uri().path().starts_with("/auth-204") {
                                let mut no_content = hyper::Response::new(Full::new(Bytes::new()));
                                *no_content.status_mut() = hyper::StatusCode::NO_CONTENT;
                                return Ok::<_, Infallible>(no_content);
                            }
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    });
    (addr, thread)
}

fn start_nginx(dir: &Path, upstream: SocketAddr) -> Option<(SocketAddr, Child)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
               upstream backend {{ server {upstream}; keepalive 64; keepalive_requests 10000000; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 10000000;\n    location / {{\n      proxy_pass http://backend;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
            dir = dir.display()
        ),
    )
    .ok()?;
    let child = Command::new(nginx)
        .args([
            "-c",
            conf.to_str()?,
            "-p",
            dir.to_str()?,
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((addr, child))
}

/// A peer proxy in the same run: HAProxy, Caddy, or nginx/Caddy asking an
/// authorization endpoint (a do-nothing 204, or flexgate's decision listener).
struct Peer {
    /// Its row in the table (and, before the dot, its key in `load.json`'s pairs).
    label: &'static str,
    /// Whether the requests need flexgate's token (it asks flexgate).
    asks_flexgate: bool,
    addr: SocketAddr,
    child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The nginx server block of an auth-subrequest setup: `auth` is the authorization
/// location's proxy_pass target and headers.
fn nginx_auth_conf(dir: &Path, port: u16, upstream: SocketAddr, auth: &str) -> String {
    format!(
        "worker_processes auto;\npid {dir}/nginx-{port}.pid;\nerror_log {dir}/nginx-{port}-error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
           upstream backend {{ server {upstream}; keepalive 64; keepalive_requests 10000000; }}\n\
           upstream authz {{ {auth_upstream}; keepalive 64; keepalive_requests 10000000; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 10000000;\n\
             location / {{\n      auth_request /_auth;\n\
               auth_request_set $uid $upstream_http_x_flexgate_user_id;\n\
               proxy_set_header X-Flexgate-User-Id $uid;\n\
               proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n\
             location = /_auth {{\n      internal;\n      proxy_pass_request_body off;\n      proxy_set_header Content-Length \"\";\n\
               proxy_set_header X-Original-Method $request_method;\n      proxy_set_header X-Original-URI $request_uri;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      {auth_pass}\n    }}\n  }}\n}}\n",
        dir = dir.display(),
        auth_upstream = auth.split('|').next().unwrap_or(""),
        auth_pass = auth.split('|').nth(1).unwrap_or(""),
    )
}

/// The bare-stack peers' keys in `load.json`'s pairs (their labels before the dot).
const FLOOR_KEYS: [&str; 2] = ["7d", "7e"];

/// Set to `<listen>,<upstream>` to run this bench binary as [`floor_proxy`] on hyper.
const FLOOR_PROXY_ENV: &str = "FLEXGATE_BENCH_FLOOR_PROXY";

/// Set to `<listen>,<upstream>` to run this bench binary as [`floor_proxy`] with no
/// HTTP library.
const RAW_FLOOR_PROXY_ENV: &str = "FLEXGATE_BENCH_RAW_FLOOR_PROXY";

/// Which floor [`floor_proxy`] runs.
#[derive(Clone, Copy)]
enum Floor {
    /// hyper 1's HTTP/1 server and client connections: the stack flexgate is built on.
    Hyper,
    /// No HTTP library: heads parsed with httparse and relayed as bytes.
    Raw,
}

/// The floor of a proxy on tokio: one current-thread runtime per core with
/// `SO_REUSEPORT` (as flexgate's workers are), and nothing else: no authorization,
/// header rewriting, routing, timeouts or metrics; each client connection gets its own
/// upstream connection, so there is no pool either. [`Floor::Hyper`] is flexgate's own
/// stack (hyper's HTTP/1 server and client), so what it costs per request is what any
/// proxy on that stack costs at least. [`Floor::Raw`] replaces hyper with the least an
/// HTTP/1 proxy can do (see [`raw_floor_connection`]), which says what a hand-written
/// server could at best win over hyper's, and how far tokio itself is from nginx. Runs
/// as its own process (this binary, re-executed) so that its CPU is counted like any
/// peer's.
fn floor_proxy(spec: &str, floor: Floor) -> ! {
    let (listen, upstream) = spec
        .split_once(',')
        .and_then(|(l, u)| Some((l.parse::<SocketAddr>().ok()?, u.parse::<SocketAddr>().ok()?)))
        .expect("the floor proxy's spec is <listen>,<upstream>");
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.set_reuseport(true).unwrap();
                    socket.bind(listen).unwrap();
                    let listener = socket.listen(1024).unwrap();
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        match floor {
                            Floor::Hyper => tokio::spawn(floor_connection(client, upstream)),
                            Floor::Raw => tokio::spawn(raw_floor_connection(client, upstream)),
                        };
                    }
                })
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(1)
}

/// One client connection of [`floor_proxy`], with its own upstream connection.
async fn floor_connection(client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await else {
        return;
    };
    tokio::spawn(conn);
    // HTTP/1 serves one request at a time: the lock is never contended.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let sender = Arc::clone(&sender);
        async move { sender.lock().await.send_request(request).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

/// One client connection of [`Floor::Raw`], with its own upstream connection: each
/// request head is parsed with httparse (the parser hyper uses) and relayed unchanged,
/// and each response head is parsed for its `Content-Length` and relayed with its body,
/// from two buffers reused for the connection's life. No header map, no allocation per
/// request, no timers: the bench's requests have no body and its upstream's responses a
/// `Content-Length`, and anything else ends the connection. Far too little for a real
/// proxy (no framing checks, no chunked bodies, no limits), which is the point: it is
/// the least any HTTP/1 proxy on tokio does per request.
async fn raw_floor_connection(mut client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let mut request = Vec::with_capacity(16 * 1024);
    let mut response = Vec::with_capacity(16 * 1024);
    loop {
        let head = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&request) {
                Ok(httparse::Status::Complete(n)) => break n,
                Ok(httparse::Status::Partial) if request.len() < 16 * 1024 => {}
                _ => return,
            }
            if !read_more(&mut client, &mut request).await {
                return;
            }
        };
        if up.write_all(&request[..head]).await.is_err() {
            return;
        }
        request.drain(..head);
        let whole = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = parsed.parse(&response) {
                let length = parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    });
                let Some(length) = length else { return };
                if response.len() >= n + length {
                    break n + length;
                }
            } else if response.len() >= 16 * 1024 {
                return;
            }
            if !read_more(&mut up, &mut response).await {
                return;
            }
        };
        if client.write_all(&response[..whole]).await.is_err() {
            return;
        }
        response.drain(..whole);
    }
}

/// Read what `stream` has into `buf` (4 KiB more room at least); false at its end or
/// on an error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.reserve(4096);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

/// Start whichever peers are installed (`apt-get install haproxy caddy nginx`), and
/// the two bare-stack floors.
fn start_peers(dir: &Path, upstream: SocketAddr, decision: SocketAddr) -> Vec<Peer> {
    let mut peers = Vec::new();
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let caddy = ["/usr/bin/caddy", "/usr/local/bin/caddy"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let mut spawn = |label: &'static str, asks_flexgate: bool, port: u16, cmd: &mut Command| {
        let Ok(child) = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
            println!("{label}: cannot start; skipped");
            return;
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if wait_listening(addr) {
            peers.push(Peer {
                label,
                asks_flexgate,
                addr,
                child,
            });
        } else {
            println!("{label}: did not start listening; skipped");
        }
    };
    let port = free_port();
    spawn(
        "7d. hyper + tokio alone, bare reverse proxy (flexgate's stack, nothing else)",
        false,
        port,
        Command::new(std::env::current_exe().unwrap())
            .env(FLOOR_PROXY_ENV, format!("127.0.0.1:{port},{upstream}")),
    );
    let port = free_port();
    spawn(
        "7e. tokio alone, raw HTTP/1 relay (httparse, no HTTP library, no checks)",
        false,
        port,
        Command::new(std::env::current_exe().unwrap())
            .env(RAW_FLOOR_PROXY_ENV, format!("127.0.0.1:{port},{upstream}")),
    );
    match haproxy {
        Some(bin) => {
            let port = free_port();
            let conf = dir.join("haproxy.cfg");
            std::fs::write(
                &conf,
                format!(
                    "global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
                     frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  http-reuse always\n  server s1 {upstream}\n"
                ),
            )
            .unwrap();
            spawn(
                "7b. HAProxy, plain reverse proxy",
                false,
                port,
                Command::new(bin).args(["-db", "-f", conf.to_str().unwrap()]),
            );
        }
        None => println!("HAProxy is not installed (apt-get install haproxy): its row is skipped"),
    }
    match caddy {
        Some(bin) => {
            for (label, port, site) in [
                (
                    "7c. Caddy, plain reverse proxy",
                    free_port(),
                    format!("reverse_proxy {upstream}"),
                ),
                (
                    "8b. Caddy + forward_auth to a 204 endpoint",
                    free_port(),
                    format!(
                        "route {{\n  forward_auth {upstream} {{\n    uri /auth-204\n  }}\n  reverse_proxy {upstream}\n}}"
                    ),
                ),
            ] {
                let data = dir.join(format!("caddy-{port}"));
                std::fs::create_dir_all(&data).unwrap();
                let conf = data.join("Caddyfile");
                std::fs::write(
                    &conf,
                    format!("{{\n  admin off\n  auto_https off\n  storage file_system {{\n    root {}\n  }}\n}}\nhttp://:{port} {{\n  bind 127.0.0.1\n  {site}\n}}\n", data.display()),
                )
                .unwrap();
                spawn(
                    label,
                    false,
                    port,
                    Command::new(bin)
                        .args([
                            "run",
                            "--config",
                            conf.to_str().unwrap(),
                            "--adapter",
                            "caddyfile",
                        ])
                        .env("XDG_DATA_HOME", &data)
                        .env("XDG_CONFIG_HOME", &data)
                        .env("HOME", &data),
                );
            }
        }
        None => println!("Caddy is not installed (apt-get install caddy): its rows are skipped"),
    }
    match nginx {
        Some(bin) => {
            for (label, asks, auth) in [
                (
                    "8a. nginx + auth_request to a 204 endpoint",
                    false,
                    format!("server {upstream}|proxy_pass http://authz/auth-204;"),
                ),
                (
                    "8c. nginx + auth_request to flexgate's decision listener",
                    true,
                    format!("server {decision}|proxy_pass http://authz/nginx;"),
                ),
            ] {
                let port = free_port();
                let conf = dir.join(format!("nginx-{port}.conf"));
                std::fs::write(&conf, nginx_auth_conf(dir, port, upstream, &auth)).unwrap();
                spawn(
                    label,
                    asks,
                    port,
                    Command::new(bin).args([
                        "-c",
                        conf.to_str().unwrap(),
                        "-p",
                        dir.to_str().unwrap(),
                        "-g",
                        "daemon off;",
                    ]),
                );
            }
        }
        None => println!("nginx is not installed: the auth_request rows are skipped"),
    }
    peers
}

// === requests ===

type Maker = Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>;

fn fixed(bytes: Vec<u8>) -> Maker {
    Arc::new(move |_| bytes.clone())
}

fn get(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n").into_bytes()
}

fn login(email: &str, password: &str) -> Vec<u8> {
    let body = json!({"email": email, "password": password}).to_string();
    format!(
        "POST /api/requestAuthToken HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[derive(Clone)]
enum Target {
    Plain(SocketAddr),
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

/// Read one response (Content-Length or chunked); returns the status and the body.
async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, Vec<u8>)> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) => {
            while buf.len() < head_end + len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok((status, buf[head_end..head_end + len].to_vec()))
        }
        None => {
            // chunked: read until the terminating chunk
            while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok((status, Vec::new()))
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(target: &Target) -> std::io::Result<Box<dyn Io>> {
    match target {
        Target::Plain(addr) => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
        Target::Tls(addr, config) => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(
                    rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                    s,
                )
                .await?;
            Ok(Box::new(tls))
        }
    }
}

async fn request(target: Target, bytes: &[u8]) -> (u16, Vec<u8>) {
    let mut io = connect(&target).await.unwrap();
    io.write_all(bytes).await.unwrap();
    read_response(&mut io, &mut Vec::new()).await.unwrap()
}

// === load generation ===

#[derive(Clone)]
struct Result_ {
    name: String,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    /// CPU time (user + system) the proxy under test spent per request, when known.
    cpu_us_per_request: Option<f64>,
    /// The fixed rate it ran at; `None` for a saturating run. A fixed-rate run matches
    /// its baseline's throughput by design, so it is compared by its p99 instead.
    rate: Option<f64>,
}

impl Result_ {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[i]
    }
    fn line(&self) -> String {
        format!(
            "{:<52} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  p99.9 {:>6.3} ms  cpu {:>5} us/req  errors {}",
            self.name,
            self.rps(),
            self.pct(50.0) as f64 / 1000.0,
            self.pct(99.0) as f64 / 1000.0,
            self.pct(99.9) as f64 / 1000.0,
            self.cpu_us_per_request
                .map_or("-".to_owned(), |c| format!("{c:.1}")),
            self.errors
        )
    }
}

/// Run `conns` keep-alive connections for `duration` (after a one-second warm-up),
/// closed-loop, or paced to `rate` requests/s in total.
fn drive(
    name: &str,
    target: Target,
    conns: usize,
    duration: Duration,
    rate: Option<f64>,
    make: Maker,
    proxy: Vec<u32>,
) -> Result_ {
    let cpu_before: Option<u64> =
        (!proxy.is_empty()).then(|| proxy.iter().copied().map(cpu_ticks).sum());
    runtime().block_on(async move {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let warmup = Duration::from_secs(1);
        let start = Instant::now() + warmup;
        let end = start + duration;
        let interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
        let mut tasks = Vec::new();
        for c in 0..conns {
            let (target, make, counter) = (target.clone(), Arc::clone(&make), Arc::clone(&counter));
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut io = match connect(&target).await {
                    Ok(io) => io,
                    Err(_) => return (latencies, 0, 1),
                };
                let mut buf = Vec::with_capacity(16 * 1024);
                let mut next = Instant::now()
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / conns as f64));
                loop {
                    if let Some(i) = interval {
                        let now = Instant::now();
                        if next > now {
                            tokio::time::sleep_until(next.into()).await;
                        }
                        next += i;
                    }
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let bytes = make(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                    if bytes.is_empty() {
                        break;
                    }
                    let result = async {
                        io.write_all(&bytes).await?;
                        read_response(&mut io, &mut buf).await
                    }
                    .await;
                    let measured = sent >= start;
                    match result {
                        Ok((status, _)) if (200..300).contains(&status) => {
                            if measured {
                                ok += 1;
                                latencies
                                    .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            }
                        }
                        Ok(_) => errors += u64::from(measured),
                        Err(_) => {
                            errors += u64::from(measured);
                            match connect(&target).await {
                                Ok(fresh) => io = fresh,
                                Err(_) => break,
                            }
                        }
                    }
                }
                (latencies, ok, errors)
            }));
        }
        let mut all = Vec::new();
        let (mut ok, mut errors) = (0, 0);
        for t in tasks {
            let (l, o, e) = t.await.unwrap();
            all.extend(l);
            ok += o;
            errors += e;
        }
        all.sort_unstable();
        let elapsed = Instant::now()
            .saturating_duration_since(start)
            .min(duration)
            .max(Duration::from_millis(1));
        // CPU is measured over every request sent, warm-up included.
        let sent = counter.load(std::sync::atomic::Ordering::Relaxed).max(1);
        let cpu_us_per_request = cpu_before.map(|before| {
            let now: u64 = proxy.iter().copied().map(cpu_ticks).sum();
            now.saturating_sub(before) as f64 * 10_000.0 / sent as f64
        });
        Result_ {
            name: name.to_owned(),
            requests: ok,
            errors,
            elapsed,
            latencies_us: all,
            cpu_us_per_request,
            rate,
        }
    })
}

/// CPU ticks (1/100 s) used so far by a process and its child processes (nginx's workers).
fn cpu_ticks(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    let children: u64 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .map(cpu_ticks)
        .sum();
    own + children
}

// === report ===

/// What each row is compared with: saturating runs with the saturating direct and nginx
/// runs (throughput), fixed-rate runs with the direct and nginx runs at the same rate
/// (p99).
struct Baselines<'a> {
    direct: &'a Result_,
    nginx: Option<&'a Result_>,
    direct_half: &'a Result_,
    nginx_half: Option<&'a Result_>,
}

impl Baselines<'_> {
    /// The row's baseline among direct (`false`) or nginx (`true`) runs.
    fn for_row(&self, r: &Result_, nginx: bool) -> Option<&Result_> {
        match (r.rate.is_some(), nginx) {
            (false, false) => Some(self.direct),
            (false, true) => self.nginx,
            (true, false) => Some(self.direct_half),
            (true, true) => self.nginx_half,
        }
    }
}

/// How `r` compares with `base`: its share of the throughput for a saturating run, the
/// p99 it adds for a fixed-rate run.
enum Comparison {
    Share(f64),
    P99AddedMs(f64),
}

impl Comparison {
    fn of(r: &Result_, base: &Result_) -> Comparison {
        match r.rate {
            None => Comparison::Share(r.rps() / base.rps()),
            Some(_) => Comparison::P99AddedMs(p99_added_ms(r, base)),
        }
    }

    fn json(&self) -> Value {
        match self {
            Comparison::Share(x) => json!({ "throughput_share": x }),
            Comparison::P99AddedMs(ms) => json!({ "p99_added_ms": ms }),
        }
    }

    /// A share with enough decimals to be more than zero (the bcrypt-bound token
    /// endpoint runs at a few thousandths of a percent of direct).
    fn markdown(&self) -> String {
        match self {
            Comparison::Share(x) => {
                let percent = 100.0 * x;
                let decimals = if percent >= 1.0 || percent <= 0.0 {
                    0
                } else {
                    (-percent.log10()).ceil() as usize + 1
                };
                format!("{percent:.decimals$}%")
            }
            Comparison::P99AddedMs(ms) => format!("p99 {ms:+.3} ms"),
        }
    }
}

fn write_report(results: &[Result_], baselines: &Baselines, targets: &Value, bench: &Bench) {
    let dir = PathBuf::from(
        std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR"))),
    )
    .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let rows: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "scenario": r.name,
                "requests_per_sec": r.rps().round(),
                "p50_ms": r.pct(50.0) as f64 / 1000.0,
                "p99_ms": r.pct(99.0) as f64 / 1000.0,
                "p999_ms": r.pct(99.9) as f64 / 1000.0,
                "errors": r.errors,
                "proxy_cpu_us_per_request": r.cpu_us_per_request,
                "vs_direct": baselines.for_row(r, false).map(|b| Comparison::of(r, b).json()),
                "vs_nginx": baselines.for_row(r, true).map(|b| Comparison::of(r, b).json()),
            })
        })
        .collect();
    let report = json!({"database": bench.backend, "results": rows, "targets": targets});
    std::fs::write(
        dir.join("load.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    let mut md = String::from(
        "| scenario | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req | vs direct | vs nginx |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {} |\n",
            r.name,
            r.rps(),
            r.pct(50.0) as f64 / 1000.0,
            r.pct(99.0) as f64 / 1000.0,
            r.pct(99.9) as f64 / 1000.0,
            r.cpu_us_per_request
                .map_or("-".to_owned(), |c| format!("{c:.1}")),
            compare(r, baselines.for_row(r, false)),
            compare(r, baselines.for_row(r, true)),
        ));
    }
    std::fs::write(dir.join("load.md"), md).unwrap();
    println!("\nwrote {}/load.json and load.md", dir.display());
}

/// The middle value (the mean of the middle two for an even count), if any.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// What `r` adds at p99 over `base`, in milliseconds (negative when it is faster).
fn p99_added_ms(r: &Result_, base: &Result_) -> f64 {
    (f64::from(r.pct(99.0)) - f64::from(base.pct(99.0))) / 1000.0
}

/// The markdown cell comparing `r` with `base` ("-" without one).
fn compare(r: &Result_, base: Option<&Result_>) -> String {
    base.map_or("-".to_owned(), |b| Comparison::of(r, b).markdown())
}
