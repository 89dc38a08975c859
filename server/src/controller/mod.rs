//! Larder's own statements: `CREATE CACHE` turns a SELECT into dataflow, and the `SHOW` and
//! `DROP` family report and remove. Results are plain text tables; the adapter encodes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use larder_replication::PgSource;
use larder_sql::lower::Catalog;
use larder_sql::normalize::{normalize_query, Normalized};
use larder_sql::statement::{
    columns, parse_select, CacheKind, CacheSource, Dialect, LarderStatement, TtlPolicy,
};
use larder_sql::{pgtypes, TableSchema};
use thiserror::Error;
use tracing::info;

use crate::config::CacheMode;
use crate::core::{CacheEntry, Core, ResultColumn};
use crate::privileges::{Privileges, Reads, RoleAccess};
use crate::storage::StoredCache;
use crate::tables::TableState;
use larder_adapter::cache::StatementContext;
use larder_sql::search_path::{self, PathEntry, Resolved};
use std::time::Duration;

mod access;
mod build;
mod mysql;
mod naming;
mod shallow;
mod show;

pub use shallow::ShallowSettings;

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
    /// See [`Controller::upstream_client`].
    pub upstream: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    /// What `CREATE CACHE` makes by default, and what shallow caches may do.
    pub shallow: ShallowSettings,
    /// The upstream's SQL dialect: how queries read, and which of the upstream-facing steps
    /// run (see `mysql.rs` for what differs on MySQL).
    pub dialect: Dialect,
    /// The MySQL upstream (`dialect` MySql); `source` is then `None`.
    pub mysql: Option<Arc<larder_replication::mysql::MySource>>,
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
        if self.dialect == Dialect::MySql {
            let what = match &stmt {
                LarderStatement::DropCache { .. } => Some("DROP CACHE"),
                LarderStatement::DropAllCaches => Some("DROP ALL CACHES"),
                LarderStatement::DropAllProxiedQueries => Some("DROP ALL PROXIED QUERIES"),
                LarderStatement::SetCaching { .. } => Some("ALTER LARDER SET caching"),
                LarderStatement::ShowProxiedQueries { .. } => Some("SHOW PROXIED QUERIES"),
                // Larder making a cache on its own needs no privilege: reads are checked.
                LarderStatement::CreateCache {
                    source: CacheSource::QueryId(_),
                    ..
                } if ctx.mysql.as_ref().is_some_and(|m| m.on_its_own) => None,
                LarderStatement::CreateCache {
                    source: CacheSource::QueryId(_),
                    ..
                }
                | LarderStatement::ExplainCreateCache {
                    source: CacheSource::QueryId(_),
                } => Some("naming a query by its id"),
                _ => None,
            };
            if let Some(what) = what {
                self.require_mysql_admin(ctx, what)?;
            }
        }
        match &stmt {
            _ if self.dialect == Dialect::MySql => {}
            LarderStatement::DropCache { .. } => self.require_admin(role, "DROP CACHE").await?,
            LarderStatement::DropAllCaches => self.require_admin(role, "DROP ALL CACHES").await?,
            LarderStatement::DropAllProxiedQueries => {
                self.require_admin(role, "DROP ALL PROXIED QUERIES").await?
            }
            LarderStatement::SetCaching { .. } => {
                self.require_admin(role, "ALTER LARDER SET caching").await?
            }
            _ => {}
        }
        match stmt {
            LarderStatement::CreateCache {
                always,
                name,
                source,
                kind,
                policy,
            } => {
                self.create_cache(always, name, source, (kind, policy), role, ctx)
                    .await
            }
            LarderStatement::ExplainCreateCache { source } => {
                self.explain_create_cache(source, ctx).await
            }
            LarderStatement::DropCache { name } => self.drop_cache(&name).await,
            LarderStatement::DropAllCaches => {
                for c in self.core.caches.all() {
                    self.drop_cache(&c.query_id).await?;
                }
                for c in self.core.shallow.all() {
                    self.drop_shallow(&c.query_id)?;
                }
                let unbuilt: Vec<String> = self
                    .unbuilt
                    .lock()
                    .expect("unbuilt lock poisoned")
                    .iter()
                    .map(|(c, _)| c.name.clone())
                    .collect();
                for name in unbuilt {
                    self.drop_cache(&name).await?;
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
            LarderStatement::SetCaching { on } => {
                let was = self.core.status.caching_on.swap(on, Ordering::SeqCst);
                let state = if on { "on" } else { "off" };
                tracing::warn!(caching = state, was_on = was, %role, "caching switched by ALTER LARDER");
                Ok(Table::done("ALTER LARDER"))
            }
            LarderStatement::ExplainLastStatement => Err(ControllerError::Internal(
                "EXPLAIN LAST STATEMENT is answered by the session".into(),
            )),
        }
    }

    /// Makes a built cache visible to the router, after learning every role's privileges on
    /// its table (so that no role's first query is sent upstream for want of them).
    /// [`publish`](Self::publish) in place of `old`, if `old` is still registered (not dropped
    /// or replaced while `entry` was built); otherwise `entry` leaves the dataflow. Returns
    /// whether it was published.
    pub async fn publish_replacing(&self, old: &Arc<CacheEntry>, entry: Arc<CacheEntry>) -> bool {
        self.learn_privileges(&entry).await;
        if self.core.caches.replace_if_same(old, Arc::clone(&entry)) {
            return true;
        }
        let core = self.core.clone();
        let cache_id = entry.cache_id;
        let _ = tokio::task::spawn_blocking(move || core.leave_dataflow(cache_id)).await;
        false
    }

    /// Learns every role's privileges on the cache's relations, so no role's first query
    /// waits on them.
    async fn learn_privileges(&self, entry: &CacheEntry) {
        match self.upstream_client().await {
            Ok(client) => {
                let learned = crate::privileges::learn_everyone(
                    &self.privileges,
                    &self.core,
                    &client,
                    &entry.relations.iter().map(|r| r.oid).collect::<Vec<_>>(),
                )
                .await;
                if let Err(e) = learned {
                    tracing::debug!(error = %e, "learning privileges before publishing a cache");
                }
            }
            Err(e) => tracing::debug!(error = %e, "learning privileges before publishing a cache"),
        }
    }

    pub async fn publish(&self, entry: Arc<CacheEntry>) {
        self.learn_privileges(&entry).await;
        self.core.caches.insert(entry);
    }

    fn source_query(&self, source: CacheSource) -> Result<(String, Normalized), ControllerError> {
        match source {
            CacheSource::Select { query, text } => Ok((text, normalize_query(*query))),
            CacheSource::QueryId(id) => {
                if let Some(c) = self.core.shallow.get(&id) {
                    let q = parse_select(&c.query, self.dialect)
                        .map_err(|e| ControllerError::Invalid(e.to_string()))?;
                    return Ok((c.query.clone(), normalize_query(q)));
                }
                if let Some(c) = self.core.caches.get(&id) {
                    let q = parse_select(&c.query, self.dialect)
                        .map_err(|e| ControllerError::Invalid(e.to_string()))?;
                    return Ok((c.query.clone(), normalize_query(q)));
                }
                let mut text = self.proxied.text_of(&id).ok_or_else(|| {
                    ControllerError::NotFound(format!("no query with id {id} has been seen"))
                })?;
                if self.dialect == Dialect::MySql {
                    // Kept normalized with `$n`; MySQL takes `?`.
                    text = larder_sql::mysql::with_question_marks(&text).ok_or_else(|| {
                        ControllerError::Unsupported(format!(
                            "query {id}'s parameters are not in order"
                        ))
                    })?;
                }
                let q = parse_select(&text, self.dialect).map_err(|_| {
                    ControllerError::Unsupported(format!("query {id} is not a SELECT"))
                })?;
                Ok((text, normalize_query(q)))
            }
        }
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
            let checked = self.deep_support(&normalized).await;
            match checked {
                Ok(tables) => match self.row_security_note(&tables).await? {
                    Some(note) => format!("yes ({note})"),
                    None => "yes".to_string(),
                },
                Err(e) => format!("no: {e}"),
            }
        };
        let shallow = if self.core.shallow.get(&normalized.query_id).is_some() {
            "cached".to_string()
        } else {
            match self.shallow_possible(&normalized) {
                Ok(()) => "yes".to_string(),
                Err(e) => format!("no: {e}"),
            }
        };
        let mut t = Table::new(columns::EXPLAIN_CREATE_CACHE);
        t.push(vec![
            normalized.query_id,
            normalized.text,
            supported,
            shallow,
        ]);
        Ok(t)
    }

    async fn create_cache(
        &self,
        always: bool,
        name: Option<String>,
        source: CacheSource,
        (kind, policy): (CacheKind, Option<TtlPolicy>),
        role: &str,
        ctx: &StatementContext,
    ) -> Result<Table, ControllerError> {
        let (text, normalized) = self.source_query(source)?;
        let (text, normalized) = self.for_session(&text, normalized, ctx).await?;
        let shallow = match kind {
            CacheKind::Shallow => true,
            CacheKind::Deep => false,
            CacheKind::Default => match self.shallow.mode {
                CacheMode::Deep => false,
                CacheMode::Shallow => true,
                // Tables still being copied are no reason to give up on a deep cache.
                CacheMode::DeepThenShallow => matches!(
                    self.deep_support(&normalized).await,
                    Err(e) if !matches!(e, ControllerError::Unavailable(_))
                ),
            },
        };
        if shallow {
            return self
                .create_shallow(always, name, (text, normalized), policy, role)
                .await;
        }
        if self.core.shallow.get(&normalized.query_id).is_some() {
            return Err(ControllerError::Invalid(format!(
                "query {} already has a shallow cache; drop it first",
                normalized.query_id
            )));
        }
        // The creator must be able to read everything the query reads.
        if let Ok((plan, tables)) = self.check_supported(&normalized) {
            self.require_select(
                role,
                &Self::cached_relations(&plan, &tables),
                "CREATE CACHE",
            )
            .await?;
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
        let entry = self
            .build_cache_announced(&name, &text, &normalized, always, true)
            .await?;
        self.core
            .storage
            .put_cache(&StoredCache {
                name: name.clone(),
                query_id: normalized.query_id.clone(),
                query: text.clone(),
                always,
                shallow: None,
            })
            .map_err(|e| ControllerError::Internal(e.to_string()))?;
        info!(cache = %name, query_id = %normalized.query_id, "cache created");
        let row = cache_row(&entry);
        self.publish(entry).await;
        Ok(row)
    }

    /// The controller's SQL session on the upstream (with the settings replication uses),
    /// opened on first use and again after it closes. Statements never change its state.
    async fn upstream_client(&self) -> Result<Arc<tokio_postgres::Client>, ControllerError> {
        let mut slot = self.upstream.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let source = self
            .source
            .as_ref()
            .ok_or_else(|| ControllerError::Unavailable("replication is not running".into()))?;
        let client = Arc::new(
            source
                .client()
                .await
                .map_err(|e| ControllerError::Unavailable(format!("upstream: {e}")))?,
        );
        *slot = Some(Arc::clone(&client));
        Ok(client)
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

    async fn drop_cache(&self, name: &str) -> Result<Table, ControllerError> {
        if self.drop_shallow(name)? {
            return Ok(Table::done("DROP CACHE"));
        }
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
        // The dataflow lock may be held for a while (a transaction being applied, a cache
        // being filled): wait for it off the async workers.
        let core = self.core.clone();
        let cache_id = entry.cache_id;
        tokio::task::spawn_blocking(move || core.leave_dataflow(cache_id))
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))?;
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

pub(crate) fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
