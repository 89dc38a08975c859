//! The server side of the adapter's cache trait: lookups, reads, Larder statements.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use larder_adapter::cache::{
    BoxFuture, CacheBackend, CachedQuery, CachedRelation, Miss, ResultColumn, RowSink,
    StatementContext, StatementError, TextTable, UpstreamTiming,
};
use larder_dataflow::ReadError;
use larder_sql::search_path::{self, PathEntry, Resolved};
use larder_sql::statement::{CacheSource, LarderStatement};
use larder_sql::{SqlType, Value};

use crate::controller::{Controller, ControllerError};
use crate::core::CacheEntry;
use crate::privileges::Reads;

pub struct Backend {
    controller: Arc<Controller>,
    auto: Option<Arc<AutoCaching>>,
}

impl Backend {
    /// `auto`: `--query-caching async`.
    pub fn new(controller: Arc<Controller>, auto: Option<AutoCaching>) -> Backend {
        Backend {
            controller,
            auto: auto.map(Arc::new),
        }
    }
}

/// Most creations `--query-caching async` keeps waiting for their turn.
const AUTO_CACHING_PENDING_MAX: usize = 64;
/// Shapes whose creation failed for a passing reason (a table still being copied, replication
/// catching up) that are tried again when seen again, at most, and how long after.
const AUTO_CACHING_RETRY_MAX: usize = 256;
const AUTO_CACHING_RETRY_AFTER_MS: u64 = 1_000;

/// Shapes to try again, each not before its time (bounded; the oldest go first).
#[derive(Default)]
struct RetryList {
    due: std::sync::Mutex<std::collections::VecDeque<(String, std::time::Instant)>>,
    /// Entries in `due`: a read of it spares the lock when there are none.
    len: AtomicUsize,
}

impl RetryList {
    fn add(&self, id: &str, at: std::time::Instant) {
        let mut due = self.due.lock().expect("retry lock poisoned");
        due.retain(|(d, _)| d != id);
        if due.len() >= AUTO_CACHING_RETRY_MAX {
            due.pop_front();
        }
        due.push_back((id.to_string(), at));
        self.len.store(due.len(), Ordering::Relaxed);
    }

    /// Takes `id` off the list if its time has come.
    fn take_due(&self, id: &str, now: std::time::Instant) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut due = self.due.lock().expect("retry lock poisoned");
        let Some(i) = due.iter().position(|(d, at)| d == id && *at <= now) else {
            return false;
        };
        due.remove(i);
        self.len.store(due.len(), Ordering::Relaxed);
        true
    }
}

/// `--query-caching async`: caches Larder makes on its own for queries it sees go upstream.
pub struct AutoCaching {
    caches_max: usize,
    made: AtomicUsize,
    /// Creations waiting for their turn; past [`AUTO_CACHING_PENDING_MAX`] new shapes are
    /// not considered (they are considered again after `DROP ALL PROXIED QUERIES`).
    pending: AtomicUsize,
    /// One creation at a time: fills are not stacked on each other.
    one_at_a_time: tokio::sync::Semaphore,
    /// Where creations run (the multi-thread runtime of Larder's own statements).
    runtime: tokio::runtime::Handle,
    /// Shapes to try again (see [`AUTO_CACHING_RETRY_MAX`]).
    retry: RetryList,
}

impl AutoCaching {
    pub fn new(caches_max: usize, runtime: tokio::runtime::Handle) -> AutoCaching {
        AutoCaching {
            caches_max,
            made: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            one_at_a_time: tokio::sync::Semaphore::new(1),
            runtime,
            retry: RetryList::default(),
        }
    }

    /// Whether a shape seen again should be tried again now.
    fn retry_due(&self, id: &str) -> bool {
        self.retry.take_due(id, std::time::Instant::now())
    }

    /// Tries, in the background, to make a cache of a shape just seen for the first time.
    fn consider(self: &Arc<Self>, controller: &Arc<Controller>, id: &str, ctx: StatementContext) {
        if self.made.load(Ordering::Relaxed) >= self.caches_max
            || ctx.role.is_none()
            || !controller.core.status.caching_on.load(Ordering::Relaxed)
        {
            return;
        }
        if self.pending.fetch_add(1, Ordering::Relaxed) >= AUTO_CACHING_PENDING_MAX {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let (auto, controller, id) = (Arc::clone(self), Arc::clone(controller), id.to_string());
        self.runtime.spawn(async move {
            let permit = auto.one_at_a_time.acquire().await;
            auto.pending.fetch_sub(1, Ordering::Relaxed);
            let Ok(_permit) = permit else {
                return;
            };
            if auto.made.load(Ordering::Relaxed) >= auto.caches_max
                || controller.core.caches.get(&id).is_some()
            {
                return;
            }
            let stmt = LarderStatement::CreateCache {
                always: false,
                name: None,
                source: CacheSource::QueryId(id.clone()),
                kind: larder_sql::statement::CacheKind::Default,
                policy: None,
            };
            match controller.execute(stmt, &ctx).await {
                Ok(_) => {
                    let made = auto.made.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(query_id = %id, made, max = auto.caches_max, "cache made on its own (--query-caching async)");
                }
                Err(e) => {
                    tracing::debug!(query_id = %id, error = %e, "not cached on its own");
                    // A passing reason: try again the next time the shape is seen.
                    if matches!(e, crate::controller::ControllerError::Unavailable(_)) {
                        auto.retry.add(
                            &id,
                            std::time::Instant::now()
                                + std::time::Duration::from_millis(AUTO_CACHING_RETRY_AFTER_MS),
                        );
                    }
                }
            }
        });
    }
}

impl CachedQuery for CacheEntry {
    fn query_id(&self) -> &str {
        &self.query_id
    }
    fn always(&self) -> bool {
        self.always
    }
    fn relations(&self) -> &[CachedRelation] {
        &self.relations
    }
    fn columns(&self) -> &[ResultColumn] {
        &self.columns
    }
    fn param_types(&self) -> &[SqlType] {
        &self.plan.param_types
    }
    fn built_epoch(&self) -> u64 {
        self.built_epoch
    }
    fn read_into(&self, params: &[Vec<Value>], sink: &mut RowSink<'_>) -> Result<u64, Miss> {
        if !self.serving.load(Ordering::Acquire) {
            if self.evicted.load(Ordering::Relaxed) {
                self.refills.request(&self.query_id);
            }
            let reason = self
                .invalid_reason()
                .unwrap_or_else(|| "the cache is not serving".into());
            return Err(Miss { reason });
        }
        // The staleness bound: one atomic load against the coarse clock.
        if !self.ops.freshness.fresh_now() {
            return Err(Miss {
                reason: self
                    .ops
                    .freshness
                    .stale_reason(std::time::Instant::now())
                    .unwrap_or_else(|| "replication is behind the staleness bound".into()),
            });
        }
        let started = self.ops.clock.raw();
        let mut read = self.reader.read_into(params, &mut |row, output| {
            sink(row, &mut output.iter().map(|c| c.column))
        });
        if let Err(ReadError::Holes(keys)) = read {
            // A partial cache: fill the keys (answering this read once they are in), or go
            // upstream while they are filled in the background.
            let filled = self.filler.as_ref().is_some_and(|f| f.fill_or_queue(keys));
            if !filled {
                return Err(Miss {
                    reason: "the key is not in the cache yet (it is being filled)".into(),
                });
            }
            read = self.reader.read_into(params, &mut |row, output| {
                sink(row, &mut output.iter().map(|c| c.column))
            });
        }
        match read {
            Ok(n) => {
                self.hits.add(1);
                let ops = &self.ops;
                let nanos = ops.clock.delta_as_nanos(started, ops.clock.raw());
                ops.cache_reads
                    .observe(std::time::Duration::from_nanos(nanos));
                Ok(n)
            }
            Err(e) => Err(Miss {
                reason: read_error_reason(&e),
            }),
        }
    }
}

fn read_error_reason(e: &ReadError) -> String {
    match e {
        ReadError::NotReady => "the cache is still being filled".into(),
        ReadError::Poisoned => "the cache cannot compute this result exactly".into(),
        other => format!("the cache could not answer: {other}"),
    }
}

impl CacheBackend for Backend {
    fn database(&self) -> &str {
        &self.controller.database
    }

    fn lookup(&self, query_id: &str) -> Option<Arc<dyn CachedQuery>> {
        let entry: Arc<dyn CachedQuery> = self.controller.core.caches.get(query_id)?;
        Some(entry)
    }

    fn shallow(&self, query_id: &str) -> Option<Arc<larder_adapter::shallow::ShallowCache>> {
        self.controller.core.shallow.get(query_id)
    }

    fn may_read_shallow(
        &self,
        role: &str,
        cache: &larder_adapter::shallow::ShallowCache,
    ) -> Result<(), String> {
        cache.relations.iter().try_for_each(|r| {
            self.controller.privileges.may_read(
                role,
                &Reads {
                    oid: r.oid,
                    schema: &r.schema,
                    name: &r.name,
                    columns: &r.columns_read,
                },
            )
        })
    }

    fn record_proxied(
        &self,
        query_id: &str,
        normalized_text: &str,
        context: &dyn Fn() -> StatementContext,
    ) -> Option<Arc<dyn UpstreamTiming>> {
        let (stats, new) = self.controller.proxied.record(query_id, normalized_text)?;
        if let Some(auto) = &self.auto {
            if new || auto.retry_due(query_id) {
                auto.consider(&self.controller, query_id, context());
            }
        }
        Some(stats)
    }

    fn execute(
        &self,
        stmt: LarderStatement,
        ctx: StatementContext,
    ) -> BoxFuture<Result<TextTable, StatementError>> {
        let controller = self.controller.clone();
        Box::pin(async move {
            match controller.execute(stmt, &ctx).await {
                Ok(t) => Ok(TextTable {
                    columns: t.columns,
                    rows: t.rows,
                    tag: t.tag,
                }),
                Err(e) => Err(StatementError {
                    sqlstate: sqlstate(&e),
                    message: e.to_string(),
                }),
            }
        })
    }

    fn custom_output_for(&self, user: &str, database: &str) -> bool {
        let overrides = self
            .controller
            .core
            .output_overrides
            .read()
            .expect("overrides lock poisoned");
        overrides
            .iter()
            .any(|(r, d)| (r.is_empty() || r == user) && (d.is_empty() || d == database))
    }

    fn shape_epoch(&self) -> u64 {
        self.controller.core.shape_epoch.load(Ordering::SeqCst)
    }

    fn caching_on(&self) -> bool {
        self.controller
            .core
            .status
            .caching_on
            .load(Ordering::Relaxed)
    }

    fn applied_position(&self) -> u64 {
        self.controller
            .core
            .status
            .applied_lsn
            .load(Ordering::SeqCst)
    }

    fn may_read(&self, role: &str, cache: &dyn CachedQuery) -> Result<(), String> {
        cache.relations().iter().try_for_each(|r| {
            self.controller.privileges.may_read(
                role,
                &Reads {
                    oid: r.oid,
                    schema: &r.schema,
                    name: &r.name,
                    columns: &r.columns_read,
                },
            )
        })
    }

    fn resolve_relation(
        &self,
        path: &[PathEntry],
        role: &str,
        temp_schema: Option<&str>,
        name: &str,
        min_lsn: u64,
    ) -> Option<Resolved> {
        let snap = self.controller.relations.current(min_lsn)?;
        Some(search_path::resolve(
            path,
            role,
            name,
            &|schema, n| snap.has(schema, n),
            &|n| temp_schema.is_some_and(|t| snap.has(t, n)),
        ))
    }

    fn caches_relation_named(&self, name: &str) -> bool {
        self.controller
            .core
            .caches
            .any(|c| c.relations.iter().any(|r| r.name == name))
            || self.controller.core.shallow.reads_relation_named(name)
    }

    fn relations_generation(&self) -> u64 {
        self.controller.relations.generation()
    }

    fn relation_oid(&self, schema: &str, name: &str) -> Option<u32> {
        self.controller.relations.oid(schema, name)
    }

    fn default_search_path(&self, user: &str, database: &str) -> Option<String> {
        let defaults = self
            .controller
            .core
            .search_path_defaults
            .read()
            .expect("defaults lock poisoned");
        defaults
            .as_ref()
            .map(|d| d.for_session(user, database).to_string())
    }

    fn session_opened(&self, user: &str) {
        self.controller.connections.fetch_add(1, Ordering::Relaxed);
        if self.controller.dialect == larder_sql::statement::Dialect::Postgres {
            self.controller.privileges.prefetch(user);
        }
    }

    fn session_closed(&self) {
        self.controller.connections.fetch_sub(1, Ordering::Relaxed);
    }

    fn fell_back(&self, query_id: &str, reason: &str) {
        // Only SELECTs a cache exists for count as fallbacks (the rest simply have none).
        if self.controller.core.caches.get(query_id).is_some() {
            self.controller.core.ops.fell_back(reason);
        }
    }

    fn answered_locally(&self) {
        self.controller.core.ops.local.inc();
    }

    fn access_epoch(&self) -> u64 {
        self.controller
            .mysql
            .as_ref()
            .map_or(0, |s| s.access_epoch())
    }

    fn sessions_start_in_utc(&self) -> bool {
        self.controller
            .mysql
            .as_ref()
            .is_some_and(|s| s.sessions_start_in_utc())
    }

    fn upstream_position(&self) -> BoxFuture<Result<u64, String>> {
        let source = self.controller.mysql.clone();
        Box::pin(async move {
            match source {
                Some(s) => s.current_progress().await.map_err(|e| e.to_string()),
                None => Err("the upstream position is not available".to_string()),
            }
        })
    }
}

fn sqlstate(e: &ControllerError) -> &'static str {
    match e {
        ControllerError::Unsupported(_) => "0A000",
        ControllerError::NotFound(_) => "42704",
        ControllerError::Invalid(_) => "42710",
        ControllerError::Unavailable(_) => "55000",
        ControllerError::Forbidden(_) => "42501",
        ControllerError::Internal(_) => "XX000",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn retries_come_due_once_and_stay_bounded() {
        let list = RetryList::default();
        let t0 = Instant::now();
        assert!(!list.take_due("q_a", t0), "nothing listed");
        list.add("q_a", t0 + Duration::from_secs(1));
        assert!(!list.take_due("q_a", t0), "not before its time");
        assert!(!list.take_due("q_b", t0 + Duration::from_secs(2)));
        assert!(list.take_due("q_a", t0 + Duration::from_secs(1)));
        assert!(!list.take_due("q_a", t0 + Duration::from_secs(3)), "once");
        for i in 0..AUTO_CACHING_RETRY_MAX + 10 {
            list.add(&format!("q_{i}"), t0);
        }
        assert_eq!(list.len.load(Ordering::Relaxed), AUTO_CACHING_RETRY_MAX);
        assert!(!list.take_due("q_0", t0), "the oldest went first");
        assert!(list.take_due(&format!("q_{}", AUTO_CACHING_RETRY_MAX + 9), t0));
    }
}
