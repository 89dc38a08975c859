//! The adapter's view of the cache. The server implements [`CacheBackend`]; the adapter only
//! asks it for a cache by query id, reads from it, and hands it Larder's own statements.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use larder_sql::search_path::{PathEntry, Resolved};
use larder_sql::statement::LarderStatement;
use larder_sql::{SqlType, Value};

/// A result column exactly as the upstream describes it (for RowDescription).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultColumn {
    pub name: String,
    pub table_oid: u32,
    pub column_id: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub typmod: i32,
    pub ty: SqlType,
}

/// A small result of text values, for Larder's own statements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// Command tag for statements without rows (e.g. `DROP CACHE`).
    pub tag: Option<String>,
}

/// A failed Larder statement, with the SQLSTATE the client sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementError {
    pub sqlstate: &'static str,
    pub message: String,
}

/// Who runs a Larder statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementContext {
    /// The session's current role, or `None` when the session changed it (`SET ROLE`) and
    /// Larder does not know the new one yet.
    pub role: Option<String>,
    /// The session user (who logged in).
    pub session_user: String,
    /// The session's `search_path`, when Larder knows it.
    pub search_path: Option<Vec<PathEntry>>,
    /// The session's temporary schema: `Some(None)` when it has none, `None` when unknown.
    pub temp_schema: Option<Option<String>>,
    /// A MySQL session's part (`None` on Postgres).
    pub mysql: Option<MyStatementContext>,
}

/// What a MySQL session tells about itself with a Larder statement. The session has already
/// checked upstream, as its own user, that it may run the SELECT of a `CREATE CACHE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyStatementContext {
    /// The session's current database (`USE`), if any.
    pub database: Option<String>,
    /// The user holds the global SUPER privilege or ALL PRIVILEGES ON *.* (its grants, as the
    /// upstream shows them to the session).
    pub admin: bool,
    /// The context of a cache Larder makes on its own (`--query-caching async`) of a query
    /// the session sent upstream: making it needs no privilege, since every session's reads
    /// of it are checked upstream all the same.
    pub on_its_own: bool,
}

/// Why a cache could not answer; the query then goes upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Miss {
    pub reason: String,
}

/// Receives the rows of a cache read (see [`CachedQuery::read_into`]): a row, and the index of
/// each output column in it. An error ends the read.
pub type RowSink<'s> =
    dyn FnMut(&[Value], &mut dyn Iterator<Item = usize>) -> Result<(), String> + 's;

/// A table a cache reads, as it was when the cache was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedRelation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// Columns of the table the query reads anywhere (for column privileges).
    pub columns_read: Vec<String>,
}

/// One cache, as the router sees it.
pub trait CachedQuery: Send + Sync {
    fn query_id(&self) -> &str;
    /// Created `ALWAYS`: also serves inside explicit transactions.
    fn always(&self) -> bool;
    /// Every upstream table the cache reads, each once (for `search_path` and privilege
    /// checks).
    fn relations(&self) -> &[CachedRelation];
    fn columns(&self) -> &[ResultColumn];
    /// Type of each parameter slot of the normalized query.
    fn param_types(&self) -> &[SqlType];
    /// Rows of the result for these parameter values (one list per slot); counts a hit.
    /// Hands each result row to `sink` (a row as the cache holds it, and the output columns
    /// to take from it), in order, for these parameter values (one list per slot); counts a
    /// hit. Returns the number of rows.
    fn read_into(&self, params: &[Vec<Value>], sink: &mut RowSink<'_>) -> Result<u64, Miss>;
    /// The backend's [`CacheBackend::shape_epoch`] when this cache's build began.
    fn built_epoch(&self) -> u64;
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Told when a statement relayed upstream is answered: from forwarding to the upstream's
/// ReadyForQuery, and the DataRows it sent.
pub trait UpstreamTiming: Send + Sync {
    fn done(&self, duration: std::time::Duration, rows: u64);
}

/// What the server offers the adapter.
pub trait CacheBackend: Send + Sync + 'static {
    /// The upstream database whose tables are replicated; other sessions are proxied only.
    fn database(&self) -> &str;
    fn lookup(&self, query_id: &str) -> Option<Arc<dyn CachedQuery>>;
    /// The shallow (TTL) cache of this query id, if one was created.
    fn shallow(&self, query_id: &str) -> Option<Arc<crate::shallow::ShallowCache>>;
    /// Whether `role` may be answered from the shallow cache: as [`CacheBackend::may_read`],
    /// for the relations the query names (SELECT on each, USAGE on its schema, no row
    /// security policy that applies to the role).
    fn may_read_shallow(
        &self,
        role: &str,
        cache: &crate::shallow::ShallowCache,
    ) -> Result<(), String>;
    /// A SELECT shape goes upstream (for `SHOW PROXIED QUERIES`). `context` gives the
    /// session's context, should the backend need it (to create a cache on its own). The
    /// answer, if any, is told how long the upstream took and how many rows it sent.
    fn record_proxied(
        &self,
        query_id: &str,
        normalized_text: &str,
        context: &dyn Fn() -> StatementContext,
    ) -> Option<Arc<dyn UpstreamTiming>>;
    /// Runs one of Larder's own statements (may take a while: `CREATE CACHE`).
    fn execute(
        &self,
        stmt: LarderStatement,
        ctx: StatementContext,
    ) -> BoxFuture<Result<TextTable, StatementError>>;
    /// Whether `role` may be answered from `cache`: it holds SELECT on every column the query
    /// reads and USAGE on the schema, and no row security policy applies to it. `Err` names why
    /// not (or that Larder is still learning the role's privileges); the query then goes
    /// upstream, which gives the role exactly what the database gives it.
    fn may_read(&self, role: &str, cache: &dyn CachedQuery) -> Result<(), String>;
    /// Where the unqualified relation `name` resolves along `path` for `role` (with the
    /// session's temporary schema), from Larder's own catalog of the upstream's relations,
    /// provided that catalog reflects every DDL committed up to `min_lsn` (the session's own
    /// DDL). `None` when Larder cannot tell: the router then asks the upstream.
    fn resolve_relation(
        &self,
        path: &[PathEntry],
        role: &str,
        temp_schema: Option<&str>,
        name: &str,
        min_lsn: u64,
    ) -> Option<Resolved>;
    /// Whether some cache reads a relation named `name` (in any schema): a cheap filter before
    /// resolving names.
    fn caches_relation_named(&self, name: &str) -> bool;
    /// Changes whenever the content of Larder's catalog of relations changes (a resolution made
    /// under one generation holds while it stays the same).
    fn relations_generation(&self) -> u64;
    /// The oid of `schema.name` in Larder's catalog of the upstream's relations.
    fn relation_oid(&self, schema: &str, name: &str) -> Option<u32>;
    /// The `search_path` a new session of `user` in `database` starts with when its start-up
    /// packet does not set one (role and database defaults, else the server's), as Postgres
    /// stores it; `None` while Larder does not know.
    fn default_search_path(&self, user: &str, database: &str) -> Option<String>;
    /// Whether role or database defaults (`ALTER ROLE/DATABASE ... SET`) change how floats or
    /// bytea print for sessions of this user in this database.
    fn custom_output_for(&self, user: &str, database: &str) -> bool {
        let _ = (user, database);
        false
    }
    /// The upstream WAL position replication has applied (for read-your-DDL barriers).
    /// False while an operator has turned caching off (`ALTER LARDER SET caching = off`):
    /// every query goes upstream. Checked on every cacheable query: one atomic load.
    fn caching_on(&self) -> bool;

    /// Counts changes of table shapes seen so far (see [`CachedQuery::built_epoch`]).
    fn shape_epoch(&self) -> u64;

    fn applied_position(&self) -> u64 {
        u64::MAX
    }
    /// Sessions opened (by `user`) and closed (for `SHOW LARDER STATUS`; a new role's
    /// privileges can be learned before its first query).
    fn session_opened(&self, user: &str) {
        let _ = user;
    }
    fn session_closed(&self) {}
    /// A SELECT went upstream for `reason` (what `EXPLAIN LAST STATEMENT` shows); `query_id`
    /// is the id the session means (for counting fallbacks of existing caches by reason).
    fn fell_back(&self, query_id: &str, reason: &str) {
        let _ = (query_id, reason);
    }
    /// One of Larder's own statements was answered by Larder.
    fn answered_locally(&self) {}
    /// MySQL: moves whenever replication reads a statement that changes privileges (GRANT,
    /// REVOKE, ...): a session then checks again, upstream, what it may read.
    fn access_epoch(&self) -> u64 {
        0
    }
    /// MySQL: whether a new session starts with its time zone at UTC (TIMESTAMP values are
    /// kept in UTC, and only then written as the server would).
    fn sessions_start_in_utc(&self) -> bool {
        false
    }
    /// MySQL: the upstream's binlog position now, in [`CacheBackend::applied_position`]'s
    /// units (read-your-writes: once applied, every write committed before the call is in).
    fn upstream_position(&self) -> BoxFuture<Result<u64, String>> {
        Box::pin(async { Err("the upstream position is not available".to_string()) })
    }
}
