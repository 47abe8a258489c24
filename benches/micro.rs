//! Micro-benchmarks of the request-path stages, in process: `cargo bench --bench micro`.
//!
//! Each stage runs a fixed number of iterations after a warm-up and prints nanoseconds
//! per call, so a change to the hot path can be measured rather than guessed. The
//! figures include nothing but the stage itself (no sockets, no scheduler).

use std::hint::black_box;
use std::time::Instant;

use flexgate::auth::token::{self, TokenKey};
use flexgate::auth::{AuthSettings, Identity, NativeAuthenticator as Authenticator};
use flexgate::metrics::Metrics;
use flexgate::policy::{self, Permission, Value};
use flexgate::proxy::headers;
use flexgate::proxy::normalize::normalize;
use flexgate::rules::extract::ResourceId;
use flexgate::settings::Secret;
use flexgate::store::Store;
use flexgate::store::owner::OwnerResolver;

const ITERATIONS: u32 = 200_000;

fn bench<T>(name: &str, mut f: impl FnMut() -> T) {
    for _ in 0..ITERATIONS / 10 {
        black_box(f());
    }
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        black_box(f());
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
    println!("{name:<52} {ns:>9.0} ns/op");
}

async fn bench_async<F, Fut, T>(name: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..ITERATIONS / 10 {
        black_box(f().await);
    }
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        black_box(f().await);
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
    println!("{name:<52} {ns:>9.0} ns/op");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("micro.db").display());
    let store = Store::connect(&url, &Default::default()).await.unwrap();
    store.migrate().await.unwrap();
    flexgate::demo::seed(&store, 4).await.unwrap();
    let config = flexgate::rules::compile::compile_text(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap(),
        std::path::Path::new("demo.toml"),
    )
    .unwrap();
    let rules = &config.rules;
    let secret = Secret::new(b"micro-benchmark-secret-0123456789abcdef".to_vec());
    let metrics = Metrics::new();
    let auth = Authenticator::new(
        store.clone(),
        &secret,
        &AuthSettings {
            max_age: std::time::Duration::from_secs(21_600),
            bcrypt_cost: 4,
            max_concurrent_logins: 1,
            cache: Default::default(),
            throttle: Default::default(),
        },
        metrics.clone(),
    )
    .unwrap();
    let issued = auth.issue(5).await.unwrap();
    let token_text = issued.token.clone();
    auth.authenticate(&token_text).await.unwrap();
    let owners = OwnerResolver::new(store.clone(), &config.server.cache, metrics.clone(), 1);
    let asset = rules.kinds.iter().find(|k| k.name == "asset").unwrap();
    owners.resolve(asset, &ResourceId::Int(1)).await.unwrap();
    let identity: std::sync::Arc<Identity> = auth.identity(5).await.unwrap();
    let key = TokenKey::derive(&secret);
    let signer = headers::UpstreamSigner::new(&secret);
    let method = http::Method::GET;

    println!("request-path stages ({ITERATIONS} iterations each)\n");
    bench("normalize an already-normal path", || {
        normalize("/api/v3_0/assets/1", &rules.paths).unwrap().len()
    });
    bench("match a route (26 routes)", || {
        rules.matcher.find(&method, "/api/v3_0/assets/1")
            != flexgate::rules::matcher::Found::NoRoute
    });
    bench("parse the Authorization header", || {
        token::token_from_authorization(token_text.as_bytes()).is_some()
    });
    bench("verify a token's signature (HMAC-SHA256)", || {
        token::verify(&key, &token_text).is_ok()
    });
    bench_async("authenticate a cached token", || {
        auth.authenticate(&token_text)
    })
    .await;
    bench_async("principal cache hit", || auth.identity(5)).await;
    bench_async("owner cache hit", || {
        owners.resolve(asset, &ResourceId::Int(1))
    })
    .await;
    let row = [Value::Int(3), Value::Int(2), Value::Null];
    let admins = policy::AdminRoles::default();
    bench("decide an ACL (policy::check_access)", || {
        policy::check_access(
            Some(&identity.principal),
            Permission::DELETE,
            Some((&asset.policy, &row[..])),
            &admins,
        )
        .is_allowed()
    });
    bench("sign the identity headers (HMAC-SHA256)", || {
        signer.sign(1_800_000_000, &method, "/api/v3_0/assets/1", &identity)
    });
    let mut request_headers = http::HeaderMap::new();
    request_headers.insert("host", http::HeaderValue::from_static("localhost"));
    request_headers.insert("accept", http::HeaderValue::from_static("*/*"));
    request_headers.insert(
        "authorization",
        http::HeaderValue::from_str(&token_text).unwrap(),
    );
    let client = headers::client_value("127.0.0.1".parse().unwrap());
    bench("rewrite request headers (strip, forward, identity)", || {
        let mut h = request_headers.clone();
        headers::strip_hop_by_hop(&mut h, false);
        headers::strip_client_identity(&mut h, &rules.identity.prefix);
        h.remove(http::header::AUTHORIZATION);
        let mut added = Vec::with_capacity(512);
        headers::set_forwarded(&mut added, &client, false, None);
        headers::inject_identity(
            &mut added,
            &rules.identity,
            &identity,
            &signer,
            &method,
            "/api/v3_0/assets/1",
            1_800_000_000,
        );
        h.len() + added.len()
    });
    let route = metrics.route("asset-read");
    bench("count a request (cached route handles)", || {
        metrics.request(
            Some(&route),
            "asset-read",
            &method,
            "allow",
            200,
            std::time::Duration::from_micros(500),
        )
    });
    bench("count a token validation (labelled counter)", || {
        metrics.token_validation("valid")
    });
    store.close().await;
}
