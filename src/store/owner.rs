//! Resource ownership: run a kind's owner query for an id and read the row into
//! [`Value`]s in the kind's declared column order, through a moka cache.
//!
//! The cache is keyed by (kind fingerprint, id), so a reload that changes a query never
//! serves rows of the old one. Concurrent misses for one key run one query (moka's
//! `try_get_with`); "not found" is cached for a shorter time; errors are never cached,
//! and the caller fails closed on them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::{Error, Store, dispatch};
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

struct OwnerExpiry {
    found: Duration,
    missing: Duration,
}

impl Expiry<OwnerKey, Owner> for OwnerExpiry {
    fn expire_after_create(&self, _: &OwnerKey, v: &Owner, _: Instant) -> Option<Duration> {
        Some(if v.is_some() {
            self.found
        } else {
            self.missing
        })
    }
}

/// Looks up owners, cached.
pub struct OwnerResolver {
    store: Store,
    cache: moka::future::Cache<OwnerKey, Owner>,
    metrics: Metrics,
}

impl std::fmt::Debug for OwnerResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerResolver").finish_non_exhaustive()
    }
}

impl OwnerResolver {
    /// A resolver over `store` with the configured cache sizes and lifetimes.
    pub fn new(store: Store, settings: &CacheSettings, metrics: Metrics) -> Self {
        let evictions = metrics.clone();
        OwnerResolver {
            store,
            cache: moka::future::Cache::builder()
                .name("owners")
                .max_capacity(settings.owner_capacity)
                .expire_after(OwnerExpiry {
                    found: settings.owner_ttl,
                    missing: settings.owner_negative_ttl,
                })
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        evictions.cache_eviction("owners");
                    }
                })
                .build(),
            metrics,
        }
    }

    /// The owner row of `id` of `kind` (a non-singleton kind), from cache or database.
    /// Returns `(row, whether it came from the cache)`.
    pub async fn resolve(&self, kind: &Kind, id: &ResourceId) -> Result<(Owner, bool), Arc<Error>> {
        let key = OwnerKey {
            kind: kind.fingerprint,
            id: id.clone(),
        };
        if let Some(hit) = self.cache.get(&key).await {
            self.metrics.cache_lookup("owners", true);
            return Ok((hit, true));
        }
        self.metrics.cache_lookup("owners", false);
        let store = self.store.clone();
        let query = kind.query.clone();
        let columns = kind.columns.clone();
        let id = id.clone();
        let metrics = self.metrics.clone();
        let name = kind.name.clone();
        let row = self
            .cache
            .try_get_with(key, async move {
                let Some(query) = query else {
                    return Err(Error::Invalid("singleton kinds have no owner query".into()));
                };
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
            })
            .await?;
        Ok((row, false))
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
    }
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
