//! Resource ownership: run a kind's owner query for an id and read the row into
//! [`Value`]s in the kind's declared column order, through a moka cache.
//!
//! The cache is keyed by (kind fingerprint, id), so a reload that changes a query never
//! serves rows of the old one. Concurrent misses for one key run one query (moka's
//! `try_get_with`); "not found" is cached for a shorter time; errors are never cached,
//! and the caller fails closed on them.
//!
//! On PostgreSQL, concurrent misses for *different* ids of one kind share a query: the
//! kind's query is run for an array of ids at once ([`batch_form`]), so a burst of new
//! ids costs a few round trips instead of one each. Misses queue while a query is in
//! flight and the next query takes them all; a lone miss is not delayed. A query that
//! PostgreSQL cannot run in that form (a syntax it does not allow in a subquery) falls
//! back to one query per id for that kind.
//!
//! A proxy worker thread (marked with [`set_worker`]) runs its batches on database
//! connections of its own, driven by its own runtime: a lookup then never wakes another
//! thread. Other callers use the shared pool on the runtime that owns it.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use moka::Expiry;
use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::{Error, Store, dispatch};
use crate::cache::{Expiring, FRONT_SLOTS, FrontCache};
use crate::metrics::Metrics;
use crate::policy::Value;
use crate::rules::extract::{IdType, ResourceId};
use crate::rules::{CacheSettings, Kind};

/// An owner row, or `None` when the id does not exist.
pub type Owner = Option<Arc<[Value]>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OwnerKey {
    kind: u64,
    id: ResourceId,
}

/// Entries expire when their value says (found rows live longer than "not found").
struct OwnerExpiry;

impl Expiry<OwnerKey, Expiring<Owner>> for OwnerExpiry {
    fn expire_after_create(
        &self,
        _: &OwnerKey,
        v: &Expiring<Owner>,
        now: Instant,
    ) -> Option<Duration> {
        Some(v.expires.saturating_duration_since(now))
    }
}

/// Looks up owners, cached.
pub struct OwnerResolver {
    store: Store,
    cache: moka::future::Cache<OwnerKey, Expiring<Owner>>,
    /// Recent answers of `cache`, per thread (see [`crate::cache`]).
    front: FrontCache<OwnerKey, Owner>,
    /// How long a found row and a "not found" stay cached.
    found_ttl: Duration,
    missing_ttl: Duration,
    metrics: Metrics,
    /// One batcher per kind version (fingerprint), PostgreSQL only, for callers that
    /// are not proxy workers.
    batchers: Mutex<HashMap<u64, Arc<Batcher>>>,
    /// Per proxy worker: its own connections and batchers, made on first use.
    lanes: Box<[OnceLock<Lane>]>,
}

/// Database connections for one proxy worker's owner lookups, and its batchers.
struct Lane {
    pool: sqlx::PgPool,
    batchers: Mutex<HashMap<u64, Arc<Batcher>>>,
}

/// Connections per worker for batched owner lookups (one batch per kind in flight).
const LANE_CONNECTIONS: u32 = 2;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Mark this thread as proxy worker `index` (a single-threaded runtime serving its own
/// connections): its owner lookups then use database connections of its own.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}

impl std::fmt::Debug for OwnerResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerResolver").finish_non_exhaustive()
    }
}

impl OwnerResolver {
    /// A resolver over `store` with the configured cache sizes and lifetimes, for
    /// `workers` proxy worker threads.
    pub fn new(store: Store, settings: &CacheSettings, metrics: Metrics, workers: usize) -> Self {
        let evictions = metrics.clone();
        OwnerResolver {
            store,
            cache: moka::future::Cache::builder()
                .name("owners")
                .max_capacity(settings.owner_capacity)
                .expire_after(OwnerExpiry)
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        evictions.cache_eviction("owners");
                    }
                })
                .build(),
            front: FrontCache::new(FRONT_SLOTS),
            found_ttl: settings.owner_ttl,
            missing_ttl: settings.owner_negative_ttl,
            metrics,
            batchers: Mutex::new(HashMap::new()),
            lanes: (0..workers).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The owner row of `id` of `kind` (a non-singleton kind), from cache or database.
    /// Returns `(row, whether it came from the cache)`.
    pub async fn resolve(&self, kind: &Kind, id: &ResourceId) -> Result<(Owner, bool), Arc<Error>> {
        let key = OwnerKey {
            kind: kind.fingerprint,
            id: id.clone(),
        };
        if let Some(hit) = self.front.get(&key, Instant::now()) {
            self.metrics.cache_lookup("owners", true);
            return Ok((hit, true));
        }
        // Boxed: the shared cache and the database make a future of several KiB, and
        // every request future that awaits this one would otherwise carry that room,
        // front-cache hits included.
        Box::pin(self.resolve_shared(key, kind, id)).await
    }

    /// [`OwnerResolver::resolve`] past the front cache: the shared cache, then the
    /// database.
    async fn resolve_shared(
        &self,
        key: OwnerKey,
        kind: &Kind,
        id: &ResourceId,
    ) -> Result<(Owner, bool), Arc<Error>> {
        let epoch = self.front.epoch();
        if let Some(hit) = self.cache.get(&key).await {
            self.metrics.cache_lookup("owners", true);
            self.front.put(key, hit.value.clone(), hit.expires, epoch);
            return Ok((hit.value, true));
        }
        self.metrics.cache_lookup("owners", false);
        let Some(query) = kind.query.clone() else {
            return Err(Arc::new(Error::Invalid(
                "singleton kinds have no owner query".into(),
            )));
        };
        let lookup = match self.batcher(kind, &query) {
            Some(batcher) => Lookup::Batched(batcher),
            None => Lookup::Single(Box::new(SingleLookup {
                store: self.store.clone(),
                query,
                columns: kind.columns.clone(),
                metrics: self.metrics.clone(),
                name: kind.name.clone(),
            })),
        };
        let (found_ttl, missing_ttl) = (self.found_ttl, self.missing_ttl);
        let load = lookup.run(id.clone());
        let row = self
            .cache
            .try_get_with(key.clone(), async move {
                let value = load.await?;
                let ttl = if value.is_some() {
                    found_ttl
                } else {
                    missing_ttl
                };
                Ok::<_, Error>(Expiring {
                    value,
                    expires: Instant::now() + ttl,
                })
            })
            .await?;
        self.front.put(key, row.value.clone(), row.expires, epoch);
        Ok((row.value, false))
    }

    /// The kind's batcher, when its query has a batch form and the database is
    /// PostgreSQL (SQLite runs in process: a query there costs no round trip).
    fn batcher(&self, kind: &Kind, query: &str) -> Option<Arc<Batcher>> {
        let super::Pool::Postgres(shared) = self.store.pool() else {
            return None;
        };
        let worker = WORKER.with(Cell::get).and_then(|i| self.lanes.get(i));
        let (batchers, pool, on_worker) = match worker {
            Some(lane) => {
                let lane = lane.get_or_init(|| Lane {
                    // Lazy: connections are made on first use, by this worker's
                    // runtime, whose reactor then drives them.
                    pool: sqlx::postgres::PgPoolOptions::new()
                        .max_connections(LANE_CONNECTIONS)
                        .acquire_timeout(self.store.query_timeout())
                        .connect_lazy_with(shared.connect_options().as_ref().clone()),
                    batchers: Mutex::new(HashMap::new()),
                });
                (&lane.batchers, lane.pool.clone(), true)
            }
            None => (&self.batchers, shared.clone(), false),
        };
        let mut batchers = batchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = batchers.get(&kind.fingerprint) {
            return (!found.single_only()).then(|| Arc::clone(found));
        }
        let sql = batch_form(query, kind.id_type)?;
        // Kinds of reloaded rule files leave their batchers behind; keep the map small.
        if batchers.len() > 256 {
            batchers.clear();
        }
        let batcher = Arc::new(Batcher {
            store: self.store.clone(),
            pool,
            on_worker,
            batch_sql: Arc::from(sql),
            query: Arc::from(query),
            columns: kind.columns.clone().into(),
            id_type: kind.id_type,
            metrics: self.metrics.clone(),
            name: kind.name.clone(),
            state: Mutex::new(BatchState::default()),
        });
        batchers.insert(kind.fingerprint, Arc::clone(&batcher));
        Some(batcher)
    }

    /// Cached entries, for metrics (pending bookkeeping is applied first, since moka
    /// counts lazily).
    pub async fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// Forget everything (tests; the change feed does not cover upstream data).
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.front.invalidate_all();
    }
}

/// How one cache miss is filled.
enum Lookup {
    /// Through the kind's batcher.
    Batched(Arc<Batcher>),
    /// With a query of its own.
    Single(Box<SingleLookup>),
}

/// What a lookup with a query of its own needs.
struct SingleLookup {
    store: Store,
    query: Arc<str>,
    columns: Vec<String>,
    metrics: Metrics,
    name: String,
}

impl Lookup {
    async fn run(self, id: ResourceId) -> Result<Owner, Error> {
        match self {
            Lookup::Batched(batcher) => batcher.lookup(id).await,
            Lookup::Single(lookup) => {
                let SingleLookup {
                    store,
                    query,
                    columns,
                    metrics,
                    name,
                } = *lookup;
                single(store, query, columns, metrics, name, id).await
            }
        }
    }
}

/// One query for one id, on the pool's runtime, timed and logged.
async fn single(
    store: Store,
    query: Arc<str>,
    columns: Vec<String>,
    metrics: Metrics,
    name: String,
    id: ResourceId,
) -> Result<Owner, Error> {
    let started = Instant::now();
    let db = store.clone();
    let result = store
        .offload(async move { fetch_owner(&db, &query, &columns, &id).await })
        .await;
    metrics.owner_query(&name, started.elapsed(), result.is_ok());
    if let Err(e) = &result {
        tracing::warn!(kind = %name, error = %e, "owner query failed; failing closed");
    }
    result
}

/// Most ids one batch query asks for.
const MAX_BATCH: usize = 256;
/// Batch queries of one kind in flight at once. One measured best: misses that arrive
/// meanwhile make the next batch bigger rather than a query of their own (rig: 15k
/// against 12k uncached requests/s with two).
const MAX_FLUSHERS: usize = 1;

/// Collects concurrent misses of one kind and answers them with shared queries.
struct Batcher {
    store: Store,
    /// Where batch queries run: a worker's own connections, or the shared pool.
    pool: sqlx::PgPool,
    /// Whether `pool` belongs to the worker thread that uses this batcher (flushes run
    /// on its runtime) rather than to the shared pool's runtime.
    on_worker: bool,
    batch_sql: Arc<str>,
    query: Arc<str>,
    columns: Arc<[String]>,
    id_type: IdType,
    metrics: Metrics,
    name: String,
    state: Mutex<BatchState>,
}

type Waiter = tokio::sync::oneshot::Sender<Result<Owner, Arc<Error>>>;

#[derive(Default)]
struct BatchState {
    pending: Vec<(ResourceId, Waiter)>,
    flushers: usize,
    /// PostgreSQL refused the batch form: one query per id from now on.
    single_only: bool,
}

impl Batcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn single_only(&self) -> bool {
        self.lock().single_only
    }

    /// Queue `id` and wait for the query that answers it.
    async fn lookup(self: Arc<Self>, id: ResourceId) -> Result<Owner, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = {
            let mut state = self.lock();
            if state.single_only {
                Err(id)
            } else {
                state.pending.push((id, tx));
                let start = state.flushers < MAX_FLUSHERS;
                if start {
                    state.flushers += 1;
                }
                Ok(start)
            }
        };
        let start_flusher = match queued {
            Ok(start) => start,
            Err(id) => return self.single(id).await,
        };
        if start_flusher {
            let me = Arc::clone(&self);
            if self.on_worker {
                tokio::spawn(async move { me.flush().await });
            } else {
                self.store.spawn(async move { me.flush().await });
            }
        }
        match rx.await {
            Ok(answer) => answer.map_err(Error::Shared),
            Err(_) => Err(Error::Invalid("the owner lookup was abandoned".into())),
        }
    }

    /// Answer what is queued, batch after batch, until nothing is left.
    async fn flush(&self) {
        loop {
            let batch: Vec<(ResourceId, Waiter)> = {
                let mut state = self.lock();
                if state.pending.is_empty() {
                    state.flushers -= 1;
                    return;
                }
                let n = state.pending.len().min(MAX_BATCH);
                state.pending.drain(..n).collect()
            };
            let started = Instant::now();
            let limit = self.store.query_timeout();
            let result = tokio::time::timeout(limit, self.fetch(&batch))
                .await
                .unwrap_or(Err(Error::Timeout(limit)));
            match result {
                Ok(mut rows) => {
                    self.metrics
                        .owner_query(&self.name, started.elapsed(), true);
                    for (id, waiter) in batch {
                        let _ = waiter.send(Ok(rows.remove(&id).flatten()));
                    }
                }
                Err(e) if refuses_batch_form(&e) => {
                    tracing::warn!(kind = %self.name, error = %e, "the owner query cannot run for many ids at once; one query per id from now on");
                    self.lock().single_only = true;
                    for (id, waiter) in batch {
                        let lookup = self.single(id);
                        self.store.spawn(async move {
                            let _ = waiter.send(lookup.await.map_err(Arc::new));
                        });
                    }
                }
                Err(e) => {
                    self.metrics
                        .owner_query(&self.name, started.elapsed(), false);
                    tracing::warn!(kind = %self.name, error = %e, ids = batch.len(), "owner query failed; failing closed");
                    let shared = Arc::new(e);
                    for (_, waiter) in batch {
                        let _ = waiter.send(Err(Arc::clone(&shared)));
                    }
                }
            }
        }
    }

    /// The query of one id, as for a kind without a batch form.
    fn single(&self, id: ResourceId) -> impl Future<Output = Result<Owner, Error>> + use<> {
        single(
            self.store.clone(),
            Arc::clone(&self.query),
            self.columns.to_vec(),
            self.metrics.clone(),
            self.name.clone(),
            id,
        )
    }

    /// Run the batch form for the ids of `batch`: the first row of each id that has one.
    async fn fetch(
        &self,
        batch: &[(ResourceId, Waiter)],
    ) -> Result<HashMap<ResourceId, Owner>, Error> {
        let pool = &self.pool;
        let sql = sqlx::AssertSqlSafe(Arc::clone(&self.batch_sql));
        let query = sqlx::query(sql);
        let query = match self.id_type {
            IdType::Integer => query.bind(
                batch
                    .iter()
                    .filter_map(|(id, _)| match id {
                        ResourceId::Int(i) => Some(*i),
                        ResourceId::Text(_) => None,
                    })
                    .collect::<Vec<i64>>(),
            ),
            IdType::Text => query.bind(
                batch
                    .iter()
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<String>>(),
            ),
        };
        let rows = query.fetch_all(pool).await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let id = match self.id_type {
                IdType::Integer => ResourceId::Int(row.try_get::<i64, _>(BATCH_ID)?),
                IdType::Text => ResourceId::Text(row.try_get::<String, _>(BATCH_ID)?.into()),
            };
            if found.contains_key(&id) {
                continue;
            }
            let mut values = Vec::with_capacity(self.columns.len());
            for name in self.columns.iter() {
                values.push(decode(&row, name)?);
            }
            found.insert(id, Some(Arc::from(values)));
        }
        Ok(found)
    }
}

/// Whether PostgreSQL refused the statement itself (SQLSTATE class 42, syntax error or
/// access rule violation, or 0A, feature not supported), rather than failing to run it.
fn refuses_batch_form(e: &Error) -> bool {
    match e {
        Error::Database(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| code.starts_with("42") || code.starts_with("0A")),
        _ => false,
    }
}

/// Name of the id column the batch form adds.
const BATCH_ID: &str = "__flexgate_id";

/// The kind's query for many ids at once (PostgreSQL), or `None` when it has no `$1`,
/// uses another parameter, or cannot be read safely. Every `$1` outside string
/// literals, quoted names and comments becomes the id of an array element, and the
/// query runs once per element through a lateral join, keeping its first row as
/// `fetch_owner` does.
pub fn batch_form(query: &str, id_type: IdType) -> Option<String> {
    let body = query.trim().trim_end_matches(';').trim_end();
    let bytes = body.as_bytes();
    let mut out = String::with_capacity(body.len() + 256);
    let mut copied = 0;
    let mut replaced = 0;
    let mut i = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    while i < bytes.len() {
        let next = bytes.get(i + 1).copied();
        match bytes[i] {
            b'\'' => {
                // 'it''s'; E'...' also takes backslash escapes.
                let escapes =
                    i > 0 && matches!(bytes[i - 1], b'E' | b'e') && (i < 2 || !ident(bytes[i - 2]));
                i += 1;
                loop {
                    match bytes.get(i)? {
                        b'\\' if escapes => i += 2,
                        b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                loop {
                    match bytes.get(i)? {
                        b'"' if bytes.get(i + 1) == Some(&b'"') => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'-' if next == Some(b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if next == Some(b'*') => {
                // Comments nest in PostgreSQL.
                let mut depth = 0;
                loop {
                    if bytes.get(i..i + 2)? == b"/*" {
                        depth += 1;
                        i += 2;
                    } else if bytes.get(i..i + 2)? == b"*/" {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if i > 0 && ident(bytes[i - 1]) => i += 1,
            b'$' if next.is_some_and(|b| b.is_ascii_digit()) => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if &body[i + 1..i + 1 + digits] != "1" {
                    return None;
                }
                out.push_str(&body[copied..i]);
                out.push_str("__flexgate_ids.id");
                replaced += 1;
                i += 1 + digits;
                copied = i;
            }
            b'$' => {
                // A dollar-quoted string: $$...$$ or $tag$...$tag$.
                let tag_len = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                if bytes.get(i + 1 + tag_len) != Some(&b'$') {
                    i += 1;
                    continue;
                }
                let tag = &body[i..i + tag_len + 2];
                let rest = &body[i + tag.len()..];
                let end = rest.find(tag)?;
                i += tag.len() + end + tag.len();
            }
            _ => i += 1,
        }
    }
    if replaced == 0 {
        return None;
    }
    out.push_str(&body[copied..]);
    let array = match id_type {
        IdType::Integer => "bigint[]",
        IdType::Text => "text[]",
    };
    Some(format!(
        "SELECT __flexgate_ids.id AS {BATCH_ID}, __flexgate_owner.* \
         FROM unnest($1::{array}) AS __flexgate_ids(id) \
         CROSS JOIN LATERAL (SELECT * FROM ({out}\n) AS __flexgate_row LIMIT 1) AS __flexgate_owner"
    ))
}

/// Run `query` with `$1 = id` and read `columns` of the first row.
pub async fn fetch_owner(
    store: &Store,
    query: &Arc<str>,
    columns: &[String],
    id: &ResourceId,
) -> Result<Owner, Error> {
    let sql = sqlx::AssertSqlSafe(Arc::clone(query));
    dispatch!(store.pool(), p => {
        let q = sqlx::query(sql);
        let q = match id {
            ResourceId::Int(i) => q.bind(*i),
            ResourceId::Text(s) => q.bind(s.to_string()),
        };
        let Some(row) = q.fetch_optional(p).await? else {
            return Ok(None);
        };
        let mut values = Vec::with_capacity(columns.len());
        for name in columns {
            values.push(decode(&row, name)?);
        }
        Ok(Some(Arc::from(values)))
    })
}

/// Check a kind's query against the live database without running it: it must prepare,
/// and return every declared column with a type flexgate can read.
///
/// The statement is prepared with `$1` typed exactly as [`fetch_owner`] binds it
/// (`bigint` or `text`): the connection caches prepared statements by their SQL, and a
/// statement whose parameter PostgreSQL had inferred as `integer` would later refuse the
/// 8-byte id a request binds.
pub async fn describe_owner_query(
    store: &Store,
    query: &str,
    columns: &[String],
    id_type: IdType,
) -> Result<(), String> {
    use sqlx::{Executor, Statement, Type};
    let sql = sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(query.to_owned()));
    let found: Vec<(String, String)> = match store.pool() {
        super::Pool::Postgres(p) => {
            let param = match id_type {
                IdType::Integer => <i64 as Type<sqlx::Postgres>>::type_info(),
                IdType::Text => <String as Type<sqlx::Postgres>>::type_info(),
            };
            let prepared = p
                .prepare_with(sql, &[param])
                .await
                .map_err(|e| e.to_string())?;
            prepared
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
                .collect()
        }
        super::Pool::Sqlite(p) => {
            let prepared = p.prepare(sql).await.map_err(|e| e.to_string())?;
            prepared
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
                .collect()
        }
    };
    for name in columns {
        match found.iter().find(|(n, _)| n == name) {
            None => {
                let have: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "the query returns no column {name:?} (it returns: {})",
                    have.join(", ")
                ));
            }
            Some((_, ty)) if !readable_type(ty) => {
                return Err(format!(
                    "column {name:?} has type {ty}; cast it to an integer, text or boolean in the query"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn readable_type(ty: &str) -> bool {
    matches!(
        ty.to_ascii_uppercase().as_str(),
        "INT2"
            | "INT4"
            | "INT8"
            | "SMALLINT"
            | "INT"
            | "INTEGER"
            | "BIGINT"
            | "TEXT"
            | "VARCHAR"
            | "BPCHAR"
            | "CHAR"
            | "NAME"
            | "BOOL"
            | "BOOLEAN"
            | "NULL"
    )
}

/// Read one column as a [`Value`], whatever integer, text or boolean type it has.
fn decode<R>(row: &R, name: &str) -> Result<Value, Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i16: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let raw = row.try_get_raw(name)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let ty = raw.type_info().name().to_ascii_uppercase();
    let value = match ty.as_str() {
        "INT8" | "BIGINT" | "INTEGER" | "INT" => Value::Int(row.try_get::<i64, _>(name)?),
        "INT4" => Value::Int(i64::from(row.try_get::<i32, _>(name)?)),
        "INT2" | "SMALLINT" => Value::Int(i64::from(row.try_get::<i16, _>(name)?)),
        "BOOL" | "BOOLEAN" => Value::Bool(row.try_get::<bool, _>(name)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" => {
            Value::Text(row.try_get::<String, _>(name)?.into())
        }
        other => {
            return Err(Error::Invalid(format!(
                "owner column {name:?} has type {other}; cast it to an integer, text or boolean in the query"
            )));
        }
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(sql: &str) -> String {
        let full = batch_form(sql, IdType::Integer).unwrap();
        let start = full.find("(SELECT * FROM (").unwrap() + "(SELECT * FROM (".len();
        let end = full.rfind("\n) AS __flexgate_row").unwrap();
        full[start..end].to_owned()
    }

    #[test]
    fn every_first_parameter_becomes_the_array_element() {
        assert_eq!(
            inner("SELECT account_id FROM asset WHERE id = $1 OR parent = $1;"),
            "SELECT account_id FROM asset WHERE id = __flexgate_ids.id OR parent = __flexgate_ids.id"
        );
        let full = batch_form("SELECT a FROM t WHERE name = $1", IdType::Text).unwrap();
        assert!(full.contains("unnest($1::text[])"), "{full}");
        assert!(full.starts_with("SELECT __flexgate_ids.id AS __flexgate_id,"));
        assert!(full.ends_with("LIMIT 1) AS __flexgate_owner"));
    }

    #[test]
    fn literals_quoted_names_and_comments_are_left_alone() {
        let sql = "SELECT a AS \"$1\" FROM t -- $1 here\n/* $1 /* nested $1 */ */ WHERE x = 'it''s $1' AND y = E'\\'$1' AND z = $q$ $1 $q$ AND w = $$ $1 $$ AND v$1 = $1";
        assert_eq!(
            inner(sql),
            "SELECT a AS \"$1\" FROM t -- $1 here\n/* $1 /* nested $1 */ */ WHERE x = 'it''s $1' AND y = E'\\'$1' AND z = $q$ $1 $q$ AND w = $$ $1 $$ AND v$1 = __flexgate_ids.id"
        );
    }

    #[test]
    fn queries_that_cannot_be_read_safely_have_no_batch_form() {
        for sql in [
            "SELECT a FROM t WHERE id = 1",
            "SELECT a FROM t WHERE id = $1 AND b = $2",
            "SELECT a FROM t WHERE id = $10",
            "SELECT a FROM t WHERE id = $1 AND b = 'open",
            "SELECT a FROM t WHERE id = $1 /* open",
            "SELECT a FROM t WHERE id = $1 AND b = $x$ open",
            "SELECT \"open FROM t WHERE id = $1",
        ] {
            assert_eq!(batch_form(sql, IdType::Integer), None, "{sql}");
        }
    }
}
