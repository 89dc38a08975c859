//! Building a cache: lowering plus the checks that need live state, the upstream's
//! description of the result, and the fill of the new dataflow nodes from storage.
//!
//! The fill never stalls replication or other caches. Under the dataflow lock the cache's
//! nodes are added and a storage snapshot is taken; both reflect the same applied
//! transactions, because the replicator writes storage and applies to the graph under that
//! lock. The snapshot is then read in chunks, each fed to the new nodes under a short hold of
//! the lock, while the graph buffers the live changes of the cache's tables for it. Nodes the
//! cache shares with other caches are not filled again: the nodes built over them get their
//! present output, also in chunks, and only the tables that feed a built node are read.
//! Finishing replays that buffer and makes the cache ready: snapshot plus every later change.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use larder_dataflow::TableId as DfTableId;
use larder_sql::lower::lower;
use larder_sql::normalize::Normalized;
use larder_sql::plan::{AggFunc, BinaryOp, CachePlan, Expr, Func, NodeOp};
use larder_sql::SqlType;

use super::{db_error_text, Controller, ControllerError, RegistryCatalog};
use crate::core::{CacheEntry, CachedRelation, Core};
use crate::tables::{TableEntry, TableState};
use larder_sql::statement::Dialect;

/// Rows fed to a new cache per hold of the dataflow lock.
const FILL_CHUNK_ROWS: usize = 8192;
/// Rows fed at a time when the cache's joins read storage (each row may look up many
/// stored rows), so that a hold of the dataflow lock ends soon after a transaction asks.
const FILL_STORED_PIECE_ROWS: usize = 16;
/// A fill lets go of the dataflow lock after this long (or as soon as a transaction waits).
const FILL_HOLD_MAX: std::time::Duration = std::time::Duration::from_millis(5);

impl Controller {
    /// Lowering plus the checks that need live state; `Err` carries the reason. The tables
    /// are the plan's relations, in order.
    pub(super) fn check_supported(
        &self,
        normalized: &Normalized,
    ) -> Result<(CachePlan, Vec<TableEntry>), ControllerError> {
        for (schema, name) in larder_sql::normalize::relations(&normalized.query) {
            self.refuse_not_replicated(schema.as_deref(), &name)?;
        }
        if self.dialect == Dialect::MySql && larder_sql::mysql::uses_double_pipe(&normalized.query)
        {
            return Err(ControllerError::Unsupported(
                "|| is OR in MySQL (concatenation only under PIPES_AS_CONCAT)".into(),
            ));
        }
        let plan = lower(
            &normalized.query,
            &RegistryCatalog { core: &self.core },
            &normalized.params,
        )
        .map_err(|u| ControllerError::Unsupported(u.reason))?;
        let mut entries = Vec::with_capacity(plan.relations.len());
        for relation in &plan.relations {
            let entry = self
                .core
                .tables
                .read()
                .expect("tables lock poisoned")
                .by_name(&relation.schema, &relation.name)
                .cloned()
                .ok_or_else(|| {
                    ControllerError::Unsupported(format!(
                        "table {}.{} is not replicated",
                        relation.schema, relation.name
                    ))
                })?;
            match &entry.state {
                TableState::Online => {}
                TableState::NotReplicated { reason } => {
                    return Err(ControllerError::Unsupported(format!(
                        "table {}.{} is not replicated: {reason}",
                        relation.schema, relation.name
                    )))
                }
                other => {
                    return Err(ControllerError::Unavailable(format!(
                        "table {}.{} is not ready yet ({})",
                        relation.schema,
                        relation.name,
                        other.describe().1
                    )))
                }
            }
            entries.push(entry);
        }
        if plan
            .order_by
            .iter()
            .any(|k| plan.reader_types().get(k.column) == Some(&SqlType::Bpchar))
        {
            return Err(ControllerError::Unsupported(
                "ORDER BY on a char(n) column is not supported yet (trailing spaces are insignificant)".into(),
            ));
        }
        Ok((plan, entries))
    }

    /// A table Larder knows but does not replicate: say why, before lowering says "unknown".
    fn refuse_not_replicated(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<(), ControllerError> {
        let tables = self.core.tables.read().expect("tables lock poisoned");
        let candidates: Vec<_> = tables
            .all()
            .filter(|t| t.schema.name == name && schema.is_none_or(|s| s == t.schema.schema))
            .collect();
        let chosen = candidates
            .iter()
            .find(|t| t.schema.schema == "public")
            .or_else(|| {
                if candidates.len() == 1 {
                    candidates.first()
                } else {
                    None
                }
            });
        if let Some(t) = chosen {
            if let TableState::NotReplicated { reason } = &t.state {
                return Err(ControllerError::Unsupported(format!(
                    "table {}.{} is not replicated: {reason}",
                    t.schema.schema, t.schema.name
                )));
            }
        }
        Ok(())
    }

    /// Said by `EXPLAIN CREATE CACHE` when a table the query reads has row security.
    pub(super) async fn row_security_note(
        &self,
        tables: &[TableEntry],
    ) -> Result<Option<String>, ControllerError> {
        if self.dialect == Dialect::MySql {
            return Ok(None);
        }
        let client = self.upstream_client().await?;
        let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = ANY($1) AND c.relrowsecurity ORDER BY 1, 2",
                &[&oids],
            )
            .await
            .map_err(|e| ControllerError::Unavailable(db_error_text(&e)))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let names: Vec<String> = rows
            .iter()
            .map(|r| format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        Ok(Some(format!(
            "row security is enabled on {}: sessions whose role a policy applies to are \
             answered upstream; superusers, BYPASSRLS roles and the owner are served from the cache",
            names.join(", ")
        )))
    }

    /// The tables' columns the plan reads, by name, per relation (for privileges).
    pub(super) fn cached_relations(plan: &CachePlan, tables: &[TableEntry]) -> Vec<CachedRelation> {
        plan.relation_columns_read()
            .into_iter()
            .zip(tables)
            .map(|(cols, t)| CachedRelation {
                oid: t.oid,
                schema: t.schema.schema.clone(),
                name: t.schema.name.clone(),
                columns_read: cols
                    .into_iter()
                    .filter_map(|i| t.schema.columns.get(i).map(|c| c.name.clone()))
                    .collect(),
            })
            .collect()
    }

    /// Describe upstream, add to the dataflow, fill from storage. With `announce`, the cache
    /// is listed (and reads of it go upstream as "still being filled") while it fills.
    pub async fn build_cache(
        &self,
        name: &str,
        text: &str,
        normalized: &Normalized,
        always: bool,
    ) -> Result<Arc<CacheEntry>, ControllerError> {
        self.build_cache_announced(name, text, normalized, always, false)
            .await
    }

    pub(super) async fn build_cache_announced(
        &self,
        name: &str,
        text: &str,
        normalized: &Normalized,
        always: bool,
        announce: bool,
    ) -> Result<Arc<CacheEntry>, ControllerError> {
        let (plan, pending) = self.prepare(name, text, normalized, always).await?;
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            let built = fill_cache(&core, plan, pending, announce);
            // A fill's batches are transient and as large as the result: give their memory
            // back rather than keep the peak resident.
            crate::memory::release_freed();
            built
        })
        .await
        .map_err(|e| ControllerError::Internal(e.to_string()))?
    }

    /// A cache stored by an earlier run, brought back: a partial cache is built at once (it
    /// starts empty and fills its keys on demand); any other is dormant, in the registry but
    /// not in the dataflow, and filled from storage on its first read (see `memory.rs`), so
    /// that a restart scans no table before the caches serve.
    pub async fn restore_cache(
        &self,
        name: &str,
        text: &str,
        normalized: &Normalized,
        always: bool,
    ) -> Result<Arc<CacheEntry>, ControllerError> {
        let (plan, pending) = self.prepare(name, text, normalized, always).await?;
        let dormant = {
            let mut graph = self.core.dataflow.lock().expect("dataflow lock poisoned");
            if graph.would_be_partial(&plan) {
                None
            } else {
                Some(graph.dormant_cache(&plan).map_err(fill_error)?)
            }
        };
        let Some((cache_id, reader)) = dormant else {
            let core = self.core.clone();
            return tokio::task::spawn_blocking(move || fill_cache(&core, plan, pending, false))
                .await
                .map_err(|e| ControllerError::Internal(e.to_string()))?;
        };
        let entry = pending.into_entry(&self.core, plan, cache_id, reader, None);
        entry.make_dormant(crate::memory::DORMANT_REASON);
        Ok(Arc::new(entry))
    }

    /// Lowering, the checks that need live state and the upstream's description of the
    /// result: everything of a cache but its dataflow.
    async fn prepare(
        &self,
        name: &str,
        text: &str,
        normalized: &Normalized,
        always: bool,
    ) -> Result<(CachePlan, PendingEntry), ControllerError> {
        // Read before anything of the tables' shapes is: a shape change from here on makes
        // this build older than it, which prepared statements compare against.
        let built_epoch = self
            .core
            .shape_epoch
            .load(std::sync::atomic::Ordering::SeqCst);
        let (mut plan, tables) = self.check_supported(normalized)?;
        self.check_collations(&mut plan, &tables).await?;
        let columns = match self.dialect {
            Dialect::MySql => self.describe_mysql(text, &plan).await?,
            Dialect::Postgres => self.describe(&normalized.text).await?,
        };
        if columns.len() != plan.output.len() {
            return Err(ControllerError::Internal(format!(
                "upstream describes {} result columns, the plan has {}",
                columns.len(),
                plan.output.len()
            )));
        }
        if tables.iter().any(|t| t.stored.is_none()) {
            return Err(ControllerError::Internal("table without storage".into()));
        }
        let relations = Self::cached_relations(&plan, &tables);
        let pending = PendingEntry {
            name: name.to_string(),
            query_id: normalized.query_id.clone(),
            query: text.to_string(),
            normalized: normalized.text.clone(),
            always,
            relations,
            columns,
            built_epoch,
        };
        Ok((plan, pending))
    }

    /// Whether a deep cache can answer `normalized`: the dataflow supports it and, on MySQL,
    /// computes what MySQL computes. Its tables when it can.
    pub(super) async fn deep_support(
        &self,
        normalized: &Normalized,
    ) -> Result<Vec<TableEntry>, ControllerError> {
        let (mut plan, tables) = self.check_supported(normalized)?;
        self.check_collations(&mut plan, &tables).await?;
        Ok(tables)
    }

    /// Text compares and sorts by its collation. Larder compares bytes, which is right for
    /// every deterministic collation's equality and for ordering under "C"/"POSIX" (or a
    /// database default that is bytewise); anything else is refused with the column named.
    pub(super) async fn check_collations(
        &self,
        plan: &mut CachePlan,
        tables: &[TableEntry],
    ) -> Result<(), ControllerError> {
        if self.dialect == Dialect::MySql {
            let refused = self.attach_key_collations(plan, tables).await?;
            let json_as_stored = self
                .my_source()?
                .flavor()
                .await
                .map_err(|e| ControllerError::Unavailable(e.to_string()))?
                == larder_replication::mysql::Flavor::MariaDb;
            return match super::mysql::mysql_refusal(plan, json_as_stored) {
                Some(reason) => Err(ControllerError::Unsupported(
                    refused.map_or(reason.clone(), |r| format!("{reason} ({r})")),
                )),
                None => Ok(()),
            };
        }
        let client = self.upstream_client().await?;
        let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
        let rows = client
            .query(
                "SELECT a.attname::text, co.collname::text, co.collprovider::text, co.collisdeterministic \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
                 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&oids],
            )
            .await
            .map_err(|e| ControllerError::Unavailable(format!("reading collations: {}", db_error_text(&e))))?;
        let text_order = orders_or_ranges_text(plan);
        let db_bytewise = self
            .core
            .c_collation
            .load(std::sync::atomic::Ordering::SeqCst);
        for r in rows {
            let (column, collation, provider, deterministic): (String, String, String, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if !deterministic {
                return Err(ControllerError::Unsupported(format!(
                    "column {column} uses the nondeterministic collation {collation}"
                )));
            }
            let bytewise =
                collation == "C" || collation == "POSIX" || (provider == "d" && db_bytewise);
            if text_order && !bytewise {
                return Err(ControllerError::Unsupported(format!(
                    "ordering or range comparison of text needs the C collation (column {column} uses {})",
                    if provider == "d" { "the database default".to_string() } else { collation }
                )));
            }
        }
        Ok(())
    }
}

/// What a cache entry is made of before the dataflow gives it an id and a reader.
struct PendingEntry {
    name: String,
    query_id: String,
    query: String,
    normalized: String,
    always: bool,
    relations: Vec<CachedRelation>,
    columns: Vec<crate::core::ResultColumn>,
    built_epoch: u64,
}

impl PendingEntry {
    /// The entry, serving, once the dataflow gave the cache `cache_id` and `reader`.
    fn into_entry(
        self,
        core: &Core,
        plan: CachePlan,
        cache_id: larder_dataflow::CacheId,
        reader: larder_dataflow::ReaderHandle,
        filler: Option<Arc<crate::partial::HoleFiller>>,
    ) -> CacheEntry {
        CacheEntry {
            name: self.name,
            query_id: self.query_id,
            query: self.query,
            normalized: self.normalized,
            always: self.always,
            relations: self.relations,
            plan,
            cache_id,
            reader,
            columns: self.columns,
            built_epoch: self.built_epoch,
            hits: crate::core::HitCounter::default(),
            invalid: Mutex::new(None),
            serving: AtomicBool::new(true),
            ops: core.ops.clone(),
            retired: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            refills: Arc::clone(&core.refills),
            filler,
        }
    }
}

/// Adds the plan to the dataflow and fills it from a storage snapshot (see the module docs).
fn fill_cache(
    core: &Arc<Core>,
    plan: CachePlan,
    pending: PendingEntry,
    announce: bool,
) -> Result<Arc<CacheEntry>, ControllerError> {
    let internal = |e: String| ControllerError::Internal(e);
    // The indexes its joins read are built first, so that its fill reads them as of its own
    // snapshot (see `storage/index.rs`); pinned until the graph itself asks for them.
    let indexes = build_indexes(core, &plan)?;
    let (cache_id, reader, tables, snapshot, partial) = {
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        // Storage and the graph are at the same transaction while the lock is held: the
        // snapshot is what the new cache is filled from, and the storage its joins read
        // while it fills (and a shared join lists its output from).
        let snapshot = core.storage.snapshot();
        let (id, reader) = graph
            .add_cache_with(&plan, Some(&core.storage.stored_view(&snapshot)))
            .map_err(|e| internal(e.to_string()))?;
        let tables = graph.bootstrap_tables(id);
        if let Err(e) = core.storage.set_indexes(&graph.stored_indexes()) {
            let _ = graph.remove_cache(id);
            return Err(e.into());
        }
        (id, reader, tables, snapshot, graph.partial_key(id))
    };
    drop(indexes);
    // A partial cache starts empty and ready: its keys are filled from storage on demand.
    let filler = match partial {
        Some(key) => {
            let stored = u32::try_from(key.table.0)
                .ok()
                .and_then(|id| {
                    let tables = core.tables.read().expect("tables lock poisoned");
                    tables.by_table_id(id).and_then(|t| t.stored.clone())
                })
                .ok_or_else(|| internal(format!("table {} has no storage", key.table.0)));
            match stored {
                Ok(table) => Some(Arc::new(crate::partial::HoleFiller::new(
                    core, cache_id, key, table,
                ))),
                Err(e) => {
                    let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
                    let _ = graph.remove_cache(cache_id);
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let is_partial = filler.is_some();
    let entry = Arc::new(pending.into_entry(core, plan, cache_id, reader, filler));
    if announce {
        core.caches.insert(Arc::clone(&entry));
    }
    if is_partial {
        drop(snapshot);
        let (core, weak) = (Arc::downgrade(core), Arc::downgrade(&entry));
        tokio::task::spawn_blocking(move || crate::partial::warm_up(core, weak));
        return Ok(entry);
    }
    let filled = fill_from(core, &snapshot, cache_id, &tables);
    let finished = filled.and_then(|()| {
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        let held = std::time::Instant::now();
        let finished = graph
            .finish_bootstrap_with(cache_id, &core.storage.stored_view(&snapshot))
            .map_err(fill_error);
        tracing::debug!(
            hold_ms = held.elapsed().as_millis() as u64,
            "changes held while the cache filled replayed"
        );
        finished
    });
    drop(snapshot);
    if let Err(e) = finished {
        if announce {
            core.caches.remove_if_same(&entry);
        }
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        let _ = graph.remove_cache(cache_id);
        return Err(e);
    }
    Ok(entry)
}

/// Feeds the new cache the output of the nodes it shares and each table's rows as of
/// `snapshot`, a chunk per lock hold.
fn fill_from(
    core: &Core,
    snapshot: &crate::storage::Snapshot<'_>,
    cache: larder_dataflow::CacheId,
    tables: &[DfTableId],
) -> Result<(), ControllerError> {
    let view = core.storage.stored_view(snapshot);
    let started = std::time::Instant::now();
    let mut longest_hold = std::time::Duration::ZERO;
    let reads_storage = core
        .dataflow
        .lock()
        .expect("dataflow lock poisoned")
        .cache_reads_storage(cache);
    loop {
        if core.is_shutting_down() {
            return Err(ControllerError::Unavailable("shutting down".into()));
        }
        let_replication_go_first(core);
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        if graph
            .bootstrap_shared_with(cache, FILL_CHUNK_ROWS, &view)
            .map_err(fill_error)?
        {
            break;
        }
    }
    for &table in tables {
        let stored = u32::try_from(table.0)
            .map_err(|_| ControllerError::Internal(format!("table id {} out of range", table.0)))?;
        core.storage
            .scan_table_chunks(snapshot, stored, FILL_CHUNK_ROWS, |rows| {
                if core.is_shutting_down() {
                    return Err(ControllerError::Unavailable("shutting down".into()));
                }
                let piece = if reads_storage {
                    FILL_STORED_PIECE_ROWS
                } else {
                    FILL_CHUNK_ROWS
                };
                let mut rows = rows.into_iter().peekable();
                while rows.peek().is_some() {
                    let_replication_go_first(core);
                    let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
                    let held = std::time::Instant::now();
                    // Pieces while the hold is short and no transaction waits for it.
                    while rows.peek().is_some() {
                        let part: Vec<larder_sql::Row> = rows.by_ref().take(piece).collect();
                        graph
                            .bootstrap_rows_with(cache, table, part, &view)
                            .map_err(fill_error)?;
                        if held.elapsed() >= FILL_HOLD_MAX
                            || core
                                .status
                                .apply_waiting
                                .load(std::sync::atomic::Ordering::Acquire)
                        {
                            break;
                        }
                    }
                    longest_hold = longest_hold.max(held.elapsed());
                }
                Ok(())
            })?;
    }
    tracing::debug!(
        longest_hold_ms = longest_hold.as_millis() as u64,
        seconds = started.elapsed().as_secs_f64(),
        "cache filled from its snapshot"
    );
    Ok(())
}

/// Waits (a little) while the replicator waits for the dataflow lock: the lock is not fair,
/// and a fill that takes it back at once could keep a transaction waiting for the whole fill.
fn let_replication_go_first(core: &Core) {
    for _ in 0..100 {
        if !core
            .status
            .apply_waiting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Indexes a new cache will read, kept from creation to the cache's addition to the graph.
struct PinnedIndexes<'a> {
    core: &'a Core,
    indexes: Vec<larder_dataflow::StoredIndex>,
}

impl Drop for PinnedIndexes<'_> {
    fn drop(&mut self) {
        self.core.storage.unpin_indexes(&self.indexes);
    }
}

/// Registers the secondary indexes a cache of `plan` reads (under the dataflow lock, so every
/// transaction from then on keeps them) and fills those that are new from a snapshot taken
/// after: a row written since is in both, none is missed.
fn build_indexes<'a>(
    core: &'a Core,
    plan: &CachePlan,
) -> Result<PinnedIndexes<'a>, ControllerError> {
    let indexes = core
        .dataflow
        .lock()
        .expect("dataflow lock poisoned")
        .plan_stored_indexes(plan);
    if indexes.is_empty() {
        return Ok(PinnedIndexes { core, indexes });
    }
    // One build at a time: a second cache reading an index another is still filling waits
    // for it to be complete.
    let _building = core
        .storage
        .index_builds
        .lock()
        .expect("index builds poisoned");
    let (pinned, added) = {
        let _graph = core.dataflow.lock().expect("dataflow lock poisoned");
        let added = core.storage.pin_indexes(&indexes)?;
        (PinnedIndexes { core, indexes }, added)
    };
    if added.is_empty() {
        return Ok(pinned);
    }
    let snapshot = core.storage.snapshot();
    for (table, columns) in added {
        let stored = core
            .tables
            .read()
            .expect("tables lock poisoned")
            .by_table_id(table)
            .and_then(|t| t.stored.clone())
            .ok_or_else(|| ControllerError::Internal(format!("table {table} has no storage")))?;
        let started = std::time::Instant::now();
        core.storage
            .scan_table_chunks(&snapshot, table, FILL_CHUNK_ROWS, |rows| {
                if core.is_shutting_down() {
                    return Err(ControllerError::Unavailable("shutting down".into()));
                }
                core.storage
                    .fill_index(&stored, &columns, &rows)
                    .map_err(ControllerError::from)
            })?;
        tracing::info!(
            table = %format!("{}.{}", stored.schema.schema, stored.schema.name),
            ?columns,
            seconds = started.elapsed().as_secs_f64(),
            "join index built"
        );
    }
    Ok(pinned)
}

/// Too many changes arrived while the cache was being filled: worth trying again later.
fn fill_error(e: larder_dataflow::GraphError) -> ControllerError {
    match e {
        larder_dataflow::GraphError::BootstrapOverflow(_) => ControllerError::Unavailable(
            "the tables changed faster than the new cache could be filled; try again".into(),
        ),
        other => ControllerError::Internal(other.to_string()),
    }
}

impl From<crate::storage::StorageError> for ControllerError {
    fn from(e: crate::storage::StorageError) -> Self {
        ControllerError::Internal(e.to_string())
    }
}

fn is_text_type(t: &SqlType) -> bool {
    matches!(
        t,
        SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name
    ) || matches!(t, SqlType::Array(inner) if is_text_type(inner))
}

/// Whether `e` yields text, given the types of the columns it reads.
fn yields_text(e: &Expr, cols: &[SqlType]) -> bool {
    match e {
        Expr::Column(i) => cols.get(*i).is_some_and(is_text_type),
        Expr::Literal(v) => matches!(v, larder_sql::Value::Text(_)),
        Expr::Binary {
            op: BinaryOp::Concat,
            ..
        } => true,
        Expr::Binary { ty, .. } | Expr::Cast { ty, .. } => is_text_type(ty),
        Expr::Func {
            func: Func::Coalesce,
            args,
        } => args.iter().any(|a| yields_text(a, cols)),
        _ => false,
    }
}

/// Whether `e` contains a range comparison (or BETWEEN) of text.
fn ranges(e: &Expr, cols: &[SqlType]) -> bool {
    match e {
        Expr::Binary {
            op, left, right, ..
        } => {
            let range = matches!(
                op,
                BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq
            );
            (range && (yields_text(left, cols) || yields_text(right, cols)))
                || ranges(left, cols)
                || ranges(right, cols)
        }
        Expr::Between {
            expr, low, high, ..
        } => {
            yields_text(expr, cols)
                || yields_text(low, cols)
                || yields_text(high, cols)
                || ranges(expr, cols)
        }
        Expr::Unary { expr, .. } | Expr::IsNull { expr, .. } | Expr::Cast { expr, .. } => {
            ranges(expr, cols)
        }
        Expr::InList { expr, list, .. } => {
            ranges(expr, cols) || list.iter().any(|l| ranges(l, cols))
        }
        Expr::Like { expr, pattern, .. } => ranges(expr, cols) || ranges(pattern, cols),
        Expr::Func { args, .. } => args.iter().any(|a| ranges(a, cols)),
        Expr::Column(_) | Expr::Literal(_) | Expr::Param(_) => false,
    }
}

/// Whether the plan sorts by, range-compares or takes the extreme of a text value anywhere
/// (all collation-dependent).
fn orders_or_ranges_text(plan: &CachePlan) -> bool {
    let input_types = |input: usize| {
        plan.nodes
            .get(input)
            .map(|n| n.types.as_slice())
            .unwrap_or(&[])
    };
    let in_nodes = plan.nodes.iter().any(|node| match &node.op {
        NodeOp::Filter { input, predicate } => ranges(predicate, input_types(*input)),
        NodeOp::Project { input, exprs } => exprs.iter().any(|e| ranges(e, input_types(*input))),
        NodeOp::TopK { input, order, .. } => order
            .iter()
            .any(|o| input_types(*input).get(o.column).is_some_and(is_text_type)),
        NodeOp::Aggregate {
            input, aggregates, ..
        } => aggregates.iter().any(|a| {
            matches!(a.func, AggFunc::Min | AggFunc::Max)
                && a.arg
                    .is_some_and(|c| input_types(*input).get(c).is_some_and(is_text_type))
        }),
        NodeOp::Base { .. }
        | NodeOp::Join { .. }
        | NodeOp::SemiJoin { .. }
        | NodeOp::Distinct { .. }
        | NodeOp::Union { .. } => false,
    });
    let reader = plan.reader_types();
    in_nodes
        || plan
            .order_by
            .iter()
            .any(|k| reader.get(k.column).is_some_and(is_text_type))
        || plan.residual.as_ref().is_some_and(|r| ranges(r, reader))
}
