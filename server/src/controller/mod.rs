//! Larder's own statements: `CREATE CACHE` turns a SELECT into dataflow, and the `SHOW` and
//! `DROP` family report and remove. Results are plain text tables; the adapter encodes them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use larder_replication::PgSource;
use larder_sql::lower::{lower, Catalog};
use larder_sql::normalize::{normalize_query, Normalized};
use larder_sql::statement::{parse_select, CacheSource, Dialect, LarderStatement};
use larder_sql::{pgtypes, TableSchema};
use thiserror::Error;
use tracing::info;

use crate::core::{CacheEntry, Core, ResultColumn};
use crate::privileges::{Privileges, Reads, RoleAccess};
use crate::storage::StoredCache;
use crate::tables::TableState;
use larder_adapter::cache::StatementContext;
use larder_sql::search_path::{self, PathEntry, Resolved};
use std::time::Duration;

mod access;
mod naming;
mod show;

use show::{cache_row, show_version};

/// A small text result set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// Command tag when the statement returns no rows (e.g. `DROP CACHE`).
    pub tag: Option<String>,
}

impl Table {
    fn new(columns: &[&str]) -> Table {
        Table {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            tag: None,
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row.into_iter().map(Some).collect());
    }

    fn done(tag: &str) -> Table {
        Table {
            tag: Some(tag.to_string()),
            ..Table::default()
        }
    }
}

#[derive(Debug, Error)]
pub enum ControllerError {
    /// The query cannot be cached; `reason` names the construct.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    /// The session's role may not do this (SQLSTATE 42501).
    #[error("permission denied: {0}")]
    Forbidden(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub use crate::proxied::ProxiedQueries;

pub struct Controller {
    pub core: Arc<Core>,
    pub source: Option<Arc<PgSource>>,
    pub proxied: ProxiedQueries,
    /// The upstream database whose tables are replicated.
    pub database: String,
    pub upstream_display: String,
    pub connections: AtomicU64,
    /// Stored caches that could not be built (yet), with the reason; retried whenever a
    /// table comes online, listed by `SHOW CACHES`.
    pub unbuilt: Mutex<Vec<(StoredCache, String)>>,
    pub privileges: Arc<Privileges>,
    pub relations: Arc<crate::relations::Relations>,
}

/// Tables visible to lowering: the replicated, online ones. An unqualified name resolves to
/// `public` first, else to the only schema that has such a table.
struct RegistryCatalog<'a> {
    core: &'a Core,
}

impl Catalog for RegistryCatalog<'_> {
    fn table(&self, schema: Option<&str>, name: &str) -> Option<TableSchema> {
        let tables = self.core.tables.read().expect("tables lock poisoned");
        let usable = |t: &&crate::tables::TableEntry| t.stored.is_some() && t.schema.name == name;
        let found = match schema {
            Some(s) => tables.all().find(|t| usable(t) && t.schema.schema == s),
            None => tables
                .all()
                .find(|t| usable(t) && t.schema.schema == "public")
                .or_else(|| {
                    let mut it = tables.all().filter(usable);
                    match (it.next(), it.next()) {
                        (Some(one), None) => Some(one),
                        _ => None,
                    }
                }),
        };
        found.map(|t| t.schema.clone())
    }
}

impl Controller {
    /// Runs one of Larder's statements for the session described by `ctx`.
    pub async fn execute(
        &self,
        stmt: LarderStatement,
        ctx: &StatementContext,
    ) -> Result<Table, ControllerError> {
        // After `SET ROLE` Larder may not know the current role yet; the session user could
        // `RESET ROLE` at any time, so it is who the statement runs as.
        let role = ctx.role.as_deref().unwrap_or(&ctx.session_user);
        match &stmt {
            LarderStatement::DropCache { .. } => self.require_admin(role, "DROP CACHE").await?,
            LarderStatement::DropAllCaches => self.require_admin(role, "DROP ALL CACHES").await?,
            LarderStatement::DropAllProxiedQueries => {
                self.require_admin(role, "DROP ALL PROXIED QUERIES").await?
            }
            _ => {}
        }
        match stmt {
            LarderStatement::CreateCache {
                always,
                name,
                source,
            } => self.create_cache(always, name, source, role, ctx).await,
            LarderStatement::ExplainCreateCache { source } => {
                self.explain_create_cache(source, ctx).await
            }
            LarderStatement::DropCache { name } => self.drop_cache(&name),
            LarderStatement::DropAllCaches => {
                for c in self.core.caches.all() {
                    self.drop_cache(&c.query_id)?;
                }
                let unbuilt: Vec<String> = self
                    .unbuilt
                    .lock()
                    .expect("unbuilt lock poisoned")
                    .iter()
                    .map(|(c, _)| c.name.clone())
                    .collect();
                for name in unbuilt {
                    self.drop_cache(&name)?;
                }
                Ok(Table::done("DROP ALL CACHES"))
            }
            LarderStatement::DropAllProxiedQueries => {
                self.proxied.clear();
                Ok(Table::done("DROP ALL PROXIED QUERIES"))
            }
            LarderStatement::ShowCaches { query_id } => Ok(self.show_caches(query_id.as_deref())),
            LarderStatement::ShowProxiedQueries {
                supported_only,
                query_id,
                limit,
            } => {
                self.show_proxied(supported_only, query_id.as_deref(), limit, role)
                    .await
            }
            LarderStatement::ShowStatus => Ok(self.show_status()),
            LarderStatement::ShowTables => Ok(self.show_tables()),
            LarderStatement::ShowVersion => Ok(show_version()),
            LarderStatement::ExplainLastStatement => Err(ControllerError::Internal(
                "EXPLAIN LAST STATEMENT is answered by the session".into(),
            )),
        }
    }

    /// Makes a built cache visible to the router, after learning every role's privileges on
    /// its table (so that no role's first query is sent upstream for want of them).
    pub async fn publish(&self, entry: Arc<CacheEntry>) {
        match self.upstream_client().await {
            Ok(client) => {
                let learned = crate::privileges::learn_everyone(
                    &self.privileges,
                    &self.core,
                    &client,
                    &[entry.table_oid],
                )
                .await;
                if let Err(e) = learned {
                    tracing::debug!(error = %e, "learning privileges before publishing a cache");
                }
            }
            Err(e) => tracing::debug!(error = %e, "learning privileges before publishing a cache"),
        }
        self.core.caches.insert(entry);
    }

    fn source_query(&self, source: CacheSource) -> Result<(String, Normalized), ControllerError> {
        match source {
            CacheSource::Select { query, text } => Ok((text, normalize_query(*query))),
            CacheSource::QueryId(id) => {
                if let Some(c) = self.core.caches.get(&id) {
                    let q = parse_select(&c.query, Dialect::Postgres)
                        .map_err(|e| ControllerError::Invalid(e.to_string()))?;
                    return Ok((c.query.clone(), normalize_query(q)));
                }
                let text = self.proxied.text_of(&id).ok_or_else(|| {
                    ControllerError::NotFound(format!("no query with id {id} has been seen"))
                })?;
                let q = parse_select(&text, Dialect::Postgres).map_err(|_| {
                    ControllerError::Unsupported(format!("query {id} is not a SELECT"))
                })?;
                Ok((text, normalize_query(q)))
            }
        }
    }

    /// Lowering plus the checks that need live state; `Err` carries the reason.
    fn check_supported(
        &self,
        normalized: &Normalized,
    ) -> Result<(larder_sql::plan::CachePlan, crate::tables::TableEntry), ControllerError> {
        if let Some((schema, name)) = larder_sql::normalize::from_table(&normalized.query) {
            self.refuse_not_replicated(schema.as_deref(), &name)?;
        }
        let plan = lower(&normalized.query, &RegistryCatalog { core: &self.core })
            .map_err(|u| ControllerError::Unsupported(u.reason))?;
        let entry = {
            let tables = self.core.tables.read().expect("tables lock poisoned");
            tables
                .by_name(&plan.table.schema, &plan.table.name)
                .cloned()
        }
        .ok_or_else(|| {
            ControllerError::Unsupported(format!(
                "table {}.{} is not replicated",
                plan.table.schema, plan.table.name
            ))
        })?;
        match &entry.state {
            TableState::Online => {}
            TableState::NotReplicated { reason } => {
                return Err(ControllerError::Unsupported(format!(
                    "table {}.{} is not replicated: {reason}",
                    plan.table.schema, plan.table.name
                )))
            }
            other => {
                return Err(ControllerError::Unavailable(format!(
                    "table {}.{} is not ready yet ({})",
                    plan.table.schema,
                    plan.table.name,
                    other.describe().1
                )))
            }
        }
        if plan
            .order_by
            .iter()
            .any(|k| plan.materialized_types.get(k.column) == Some(&larder_sql::SqlType::Bpchar))
        {
            return Err(ControllerError::Unsupported(
                "ORDER BY on a char(n) column is not supported yet (trailing spaces are insignificant)".into(),
            ));
        }
        Ok((plan, entry))
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

    async fn explain_create_cache(
        &self,
        source: CacheSource,
        ctx: &StatementContext,
    ) -> Result<Table, ControllerError> {
        let (text, normalized) = self.source_query(source)?;
        let (_, normalized) = self.for_session(&text, normalized, ctx).await?;
        let supported = if self.core.caches.get(&normalized.query_id).is_some() {
            "cached".to_string()
        } else {
            let checked = match self.check_supported(&normalized) {
                Ok((plan, entry)) => self.check_collations(&plan, &entry).await.map(|()| entry),
                Err(e) => Err(e),
            };
            match checked {
                Ok(entry) => match self.row_security_note(&entry).await? {
                    Some(note) => format!("yes ({note})"),
                    None => "yes".to_string(),
                },
                Err(e) => format!("no: {e}"),
            }
        };
        let mut t = Table::new(&["query_id", "query", "supported"]);
        t.push(vec![normalized.query_id, normalized.text, supported]);
        Ok(t)
    }

    /// Said by `EXPLAIN CREATE CACHE` when the table has row security.
    async fn row_security_note(
        &self,
        table: &crate::tables::TableEntry,
    ) -> Result<Option<String>, ControllerError> {
        let client = self.upstream_client().await?;
        let row = client
            .query_opt(
                "SELECT relrowsecurity FROM pg_catalog.pg_class WHERE oid = $1",
                &[&table.oid],
            )
            .await
            .map_err(|e| ControllerError::Unavailable(db_error_text(&e)))?;
        Ok(row.filter(|r| r.get::<_, bool>(0)).map(|_| {
            format!(
                "row security is enabled on {}.{}: sessions whose role a policy applies to are \
                 answered upstream; superusers, BYPASSRLS roles and the owner are served from the cache",
                table.schema.schema, table.schema.name
            )
        }))
    }

    async fn create_cache(
        &self,
        always: bool,
        name: Option<String>,
        source: CacheSource,
        role: &str,
        ctx: &StatementContext,
    ) -> Result<Table, ControllerError> {
        let (text, normalized) = self.source_query(source)?;
        let (text, normalized) = self.for_session(&text, normalized, ctx).await?;
        // The creator must be able to read everything the query reads.
        if let Ok((plan, table)) = self.check_supported(&normalized) {
            let columns: Vec<String> = plan
                .base_columns_read()
                .into_iter()
                .filter_map(|i| table.schema.columns.get(i).map(|c| c.name.clone()))
                .collect();
            let access = self.role_access(role, &[table.oid]).await?;
            access
                .may_select(
                    role,
                    &Reads {
                        oid: table.oid,
                        schema: &table.schema.schema,
                        name: &table.schema.name,
                        columns: &columns,
                    },
                )
                .map_err(|e| ControllerError::Forbidden(format!("CREATE CACHE: {e}")))?;
        }
        if let Some(existing) = self.core.caches.get(&normalized.query_id) {
            return Ok(cache_row(&existing));
        }
        let name = name.unwrap_or_else(|| normalized.query_id.clone());
        if self.core.caches.by_name_or_id(&name).is_some() {
            return Err(ControllerError::Invalid(format!(
                "a cache named {name} already exists"
            )));
        }
        let entry = self.build_cache(&name, &text, &normalized, always).await?;
        self.core
            .storage
            .put_cache(&StoredCache {
                name: name.clone(),
                query_id: normalized.query_id.clone(),
                query: text.clone(),
                always,
            })
            .map_err(|e| ControllerError::Internal(e.to_string()))?;
        info!(cache = %name, query_id = %normalized.query_id, "cache created");
        let row = cache_row(&entry);
        self.publish(entry).await;
        Ok(row)
    }

    /// Describe upstream, add to the dataflow, fill from storage.
    pub async fn build_cache(
        &self,
        name: &str,
        text: &str,
        normalized: &Normalized,
        always: bool,
    ) -> Result<Arc<CacheEntry>, ControllerError> {
        let (plan, table) = self.check_supported(normalized)?;
        self.check_collations(&plan, &table).await?;
        let columns = self.describe(&normalized.text).await?;
        if columns.len() != plan.output.len() {
            return Err(ControllerError::Internal(format!(
                "upstream describes {} result columns, the plan has {}",
                columns.len(),
                plan.output.len()
            )));
        }
        let stored = table
            .stored
            .clone()
            .ok_or_else(|| ControllerError::Internal("table without storage".into()))?;
        let core = self.core.clone();
        let plan_for_graph = plan.clone();
        let (cache_id, reader) = tokio::task::spawn_blocking(move || {
            let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
            let rows = core
                .storage
                .scan_table(stored.id)
                .map_err(|e| ControllerError::Internal(e.to_string()))?;
            let (id, reader) = graph
                .add_cache(&plan_for_graph)
                .map_err(|e| ControllerError::Internal(e.to_string()))?;
            if let Err(e) = graph.bootstrap(id, rows) {
                let _ = graph.remove_cache(id);
                return Err(ControllerError::Internal(e.to_string()));
            }
            Ok((id, reader))
        })
        .await
        .map_err(|e| ControllerError::Internal(e.to_string()))??;
        Ok(Arc::new(CacheEntry {
            name: name.to_string(),
            query_id: normalized.query_id.clone(),
            query: text.to_string(),
            normalized: normalized.text.clone(),
            always,
            table_oid: table.oid,
            table_schema: table.schema.schema.clone(),
            table_name: table.schema.name.clone(),
            columns_read: plan
                .base_columns_read()
                .into_iter()
                .filter_map(|i| table.schema.columns.get(i).map(|c| c.name.clone()))
                .collect(),
            plan,
            cache_id,
            reader,
            columns,
            hits: AtomicU64::new(0),
            invalid: Mutex::new(None),
            serving: AtomicBool::new(true),
        }))
    }

    /// Text compares and sorts by its collation. Larder compares bytes, which is right for
    /// every deterministic collation's equality and for ordering under "C"/"POSIX" (or a
    /// database default that is bytewise); anything else is refused with the column named.
    async fn check_collations(
        &self,
        plan: &larder_sql::plan::CachePlan,
        table: &crate::tables::TableEntry,
    ) -> Result<(), ControllerError> {
        let client = self.upstream_client().await?;
        let rows = client
            .query(
                "SELECT a.attname::text, co.collname::text, co.collprovider::text, co.collisdeterministic \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&table.oid],
            )
            .await
            .map_err(|e| ControllerError::Unavailable(format!("reading collations: {}", db_error_text(&e))))?;
        let text_order = orders_or_ranges_text(plan, &table.schema);
        let db_bytewise = self.core.c_collation.load(Ordering::SeqCst);
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

    /// A fresh SQL session on the upstream, with the settings replication uses.
    async fn upstream_client(&self) -> Result<tokio_postgres::Client, ControllerError> {
        let source = self
            .source
            .as_ref()
            .ok_or_else(|| ControllerError::Unavailable("replication is not running".into()))?;
        source
            .client()
            .await
            .map_err(|e| ControllerError::Unavailable(format!("upstream: {e}")))
    }

    /// The result columns exactly as the upstream describes them.
    async fn describe(&self, normalized_text: &str) -> Result<Vec<ResultColumn>, ControllerError> {
        let client = self.upstream_client().await?;
        let stmt = client.prepare(normalized_text).await.map_err(|e| {
            ControllerError::Unsupported(format!(
                "the upstream rejects the query: {}",
                db_error_text(&e)
            ))
        })?;
        stmt.columns()
            .iter()
            .map(|c| {
                let oid = c.type_().oid();
                let ty = pgtypes::type_from_oid(oid).ok_or_else(|| {
                    ControllerError::Unsupported(format!(
                        "result column {} has type {}, which Larder cannot serve",
                        c.name(),
                        c.type_().name()
                    ))
                })?;
                Ok(ResultColumn {
                    name: c.name().to_string(),
                    table_oid: c.table_oid().unwrap_or(0),
                    column_id: c.column_id().unwrap_or(0),
                    type_oid: oid,
                    type_len: pgtypes::type_len(&ty),
                    typmod: c.type_modifier(),
                    ty,
                })
            })
            .collect()
    }

    fn drop_cache(&self, name: &str) -> Result<Table, ControllerError> {
        {
            let mut unbuilt = self.unbuilt.lock().expect("unbuilt lock poisoned");
            if let Some(i) = unbuilt
                .iter()
                .position(|(c, _)| c.name == name || c.query_id == name)
            {
                let (c, _) = unbuilt.remove(i);
                self.core
                    .storage
                    .delete_cache(&c.name)
                    .map_err(|e| ControllerError::Internal(e.to_string()))?;
                return Ok(Table::done("DROP CACHE"));
            }
        }
        let entry = self
            .core
            .caches
            .by_name_or_id(name)
            .ok_or_else(|| ControllerError::NotFound(format!("no cache named {name}")))?;
        self.core.caches.remove(&entry.query_id);
        {
            let mut graph = self.core.dataflow.lock().expect("dataflow lock poisoned");
            let _ = graph.remove_cache(entry.cache_id);
        }
        self.core
            .storage
            .delete_cache(&entry.name)
            .map_err(|e| ControllerError::Internal(e.to_string()))?;
        info!(cache = %entry.name, "cache dropped");
        Ok(Table::done("DROP CACHE"))
    }

    /// Try again to build the stored caches that could not be built; keeps the failures.
    pub async fn retry_unbuilt(&self) {
        let pending = std::mem::take(&mut *self.unbuilt.lock().expect("unbuilt lock poisoned"));
        for (c, _) in pending {
            let result = match self.stored_query(&c.query) {
                Ok((text, n)) => self.build_cache(&c.name, &text, &n, c.always).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(entry) => {
                    info!(cache = %c.name, "cache built");
                    self.publish(entry).await;
                }
                Err(e) => self
                    .unbuilt
                    .lock()
                    .expect("unbuilt lock poisoned")
                    .push((c, e.to_string())),
            }
        }
    }
}

/// Whether the plan sorts by, or range-compares, a text value (collation-dependent).
fn orders_or_ranges_text(plan: &larder_sql::plan::CachePlan, table: &TableSchema) -> bool {
    use larder_sql::plan::{BinaryOp, Expr, Func};
    use larder_sql::SqlType;
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
    let base: Vec<SqlType> = table.columns.iter().map(|c| c.ty.clone()).collect();
    plan.order_by.iter().any(|k| {
        plan.materialized_types
            .get(k.column)
            .is_some_and(is_text_type)
    }) || plan.filter.as_ref().is_some_and(|f| ranges(f, &base))
        || plan
            .residual
            .as_ref()
            .is_some_and(|r| ranges(r, &plan.materialized_types))
}

fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
