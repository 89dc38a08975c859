//! The cache path of a MySQL session: what it knows about itself (current database,
//! transaction state, settings that change results, writes not yet seen by replication,
//! prepared statements), whether a cache may answer a command, and the answer.
//!
//! A cache answers a SELECT (COM_QUERY) or the execution of a prepared SELECT
//! (COM_STMT_EXECUTE) only when all of these hold, else the command goes upstream untouched:
//! * caching is on, and a cache exists for the query's id (names read in the session's
//!   current database);
//! * the session is outside a transaction with autocommit on, unless the cache was created
//!   `ALWAYS`;
//! * the session changed no setting that changes results (`sql_mode`, `time_zone`, ...);
//! * replication has applied the upstream's binlog position as of the session's last write
//!   (read-your-writes; asked once per write, lazily, before the next cached read);
//! * the upstream, asked as the session's user, prepares the query (privileges are exactly
//!   the upstream's), and describes its columns in a character set Larder writes as is. The
//!   answer is kept per query until replication reads a privilege statement, or the session
//!   changes user, settings or database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_sql::fingerprint::{fingerprint, Template};
use larder_sql::normalize::{
    normalize, placeholder_slot_type, resolve_params, Literal, ParamSource,
};
use larder_sql::statement::Dialect;
use larder_sql::{SqlType, Value};

use crate::cache::{CacheBackend, CachedQuery, UpstreamTiming};
use crate::memo::ByteBoundedMap;
use crate::mysql::messages::flags::status;
use crate::mysql::messages::stmt::{ParamType, ParamValue, StmtExecute};
use crate::mysql::messages::{ColumnDefinition, ColumnType, Payload};
use crate::shallow::ShallowCache;

use super::effect::{effect_of, Effect};

/// Queries a session keeps the upstream's description of.
const VIEWS_MAX: usize = 256;
/// Prepared statements a session keeps track of (more are relayed only).
const STATEMENTS_MAX: usize = 4096;
/// Longest query text parsed for the cache path.
const QUERY_TEXT_MAX_BYTES: usize = 64 << 10;
/// Bytes of shapes a session keeps by fingerprint (texts that differ only in literals).
const FINGERPRINTS_MAX_BYTES: usize = 1 << 20;
/// Bytes of SET statements a session's shallow cache keys may carry.
const SET_HISTORY_MAX_BYTES: usize = 4096;
/// How long a read after a write waits for replication before going upstream.
const BARRIER_WAIT_MS: u64 = 100;

/// A SELECT's shape for the cache path: its id in the session's database, and where each
/// parameter slot gets its value.
pub(super) struct Shape {
    pub(super) query_id: Arc<str>,
    /// The normalized text, relations qualified (for `SHOW PROXIED QUERIES`).
    pub(super) normalized: Arc<str>,
    pub(super) params: Vec<ParamSource>,
    /// The text as the client sent it (prepared again upstream to check privileges).
    pub(super) text: String,
}

/// A shape learned for a fingerprint: a text with the same key, read in the same database,
/// differs only in literals, which the template maps to the shape's slots.
struct KnownShape {
    database: Option<String>,
    query_id: Arc<str>,
    normalized: Arc<str>,
    template: Template,
}

/// What the upstream said about a query for this session.
pub(super) struct View {
    access_epoch: u64,
    pub(super) columns: Vec<Vec<u8>>,
    pub(super) types: Vec<ColumnType>,
}

/// A cache read decided: the cache, each parameter slot's values, what the upstream said
/// about the query for this session, and its shape.
pub(super) struct Read {
    pub(super) cache: Arc<dyn CachedQuery>,
    pub(super) params: Vec<Vec<Value>>,
    pub(super) view: Arc<View>,
    pub(super) shape: Arc<Shape>,
}

/// Most views kept for all sessions together (past it they are all forgotten).
const SHARED_VIEWS_MAX: usize = 4096;

/// What the upstream said about a query for a user whose session kept the handshake's
/// character set: the same for every such session of the user, since the upstream sees
/// every session come from Larder's address and so matches one account. A new session's
/// first read of a query then needs no upstream round trip.
#[derive(Default)]
pub(crate) struct SharedViews {
    map: std::sync::Mutex<HashMap<(String, u8, String), Arc<View>>>,
}

impl SharedViews {
    fn get(&self, key: &(String, u8, String), epoch: u64) -> Option<Arc<View>> {
        let map = self.map.lock().expect("views lock poisoned");
        map.get(key).filter(|v| v.access_epoch == epoch).cloned()
    }

    fn put(&self, key: (String, u8, String), view: Arc<View>) {
        let mut map = self.map.lock().expect("views lock poisoned");
        if map.len() >= SHARED_VIEWS_MAX {
            map.clear();
        }
        map.insert(key, view);
    }
}

/// A prepared statement the client made (through the relay).
pub(super) struct Statement {
    shape: Option<Arc<Shape>>,
    params: usize,
    types: Option<Vec<ParamType>>,
    long_data: bool,
    view: Option<Arc<View>>,
}

pub(super) struct Route {
    pub(super) backend: Arc<dyn CacheBackend>,
    /// The current database; `None` while unknown (after COM_CHANGE_USER, an unparsed USE).
    database: Option<Option<String>>,
    /// Server status flags after the last response (in-transaction, autocommit).
    pub(super) status: u16,
    /// Why the session's settings keep it from the cache, once it changed one.
    settings: Option<String>,
    /// A statement that may have written ran since replication was last seen to cover it.
    barrier: bool,
    views: HashMap<String, Arc<View>>,
    statements: HashMap<u32, Statement>,
    extended_metadata: bool,
    /// Why the last SELECT went upstream (`EXPLAIN LAST STATEMENT`).
    pub(super) last: Option<(String, String)>,
    /// Told how long the upstream took for the SELECT being relayed (the advisor).
    pub(super) timing: Option<Arc<dyn UpstreamTiming>>,
    /// Who logged in (for the advisor's context).
    pub(super) user: String,
    /// The buffer hits are encoded into, kept from hit to hit (unless a large one grew it).
    pub(super) scratch: bytes::BytesMut,
    /// The session's time zone is UTC (as sessions start, or as it set it).
    time_zone_utc: bool,
    /// Views shared with the user's other sessions, and the handshake's character set;
    /// used until the session runs a SET (its character sets may differ then).
    shared: Option<(Arc<SharedViews>, u8)>,
    /// When a statement that may have written last ran (shallow caches serve the session
    /// nothing fetched before it).
    pub(super) wrote_at: Option<Instant>,
    /// The handshake's character set, and the SETs the session ran since that changed no
    /// result (`SET NAMES`, time zones, ...): with the user, they decide how the upstream
    /// writes a result for the session. `None` once they outgrew [`SET_HISTORY_MAX_BYTES`].
    charset: u8,
    set_history: Option<Vec<u8>>,
    /// Where the response of the command being relayed goes besides the client (a shallow
    /// cache's fill or refresh).
    pub(super) tee: Option<super::shallow::Tee>,
    /// Shapes by fingerprint key ([`Route::shape_of`]).
    fingerprints: ByteBoundedMap<Arc<KnownShape>>,
}

impl Route {
    pub(super) fn new(
        backend: Arc<dyn CacheBackend>,
        user: String,
        database: Option<String>,
        extended_metadata: bool,
    ) -> Route {
        Route {
            backend,
            database: Some(database),
            status: status::SERVER_STATUS_AUTOCOMMIT,
            settings: None,
            barrier: false,
            views: HashMap::new(),
            statements: HashMap::new(),
            extended_metadata,
            last: None,
            timing: None,
            user,
            scratch: bytes::BytesMut::new(),
            time_zone_utc: false,
            shared: None,
            wrote_at: None,
            charset: 0,
            set_history: Some(Vec::new()),
            tee: None,
            fingerprints: ByteBoundedMap::new(FINGERPRINTS_MAX_BYTES),
        }
        .starting_in_utc()
    }

    /// Shares views with the user's other sessions that keep the handshake's `charset`.
    pub(super) fn sharing(mut self, views: Arc<SharedViews>, charset: u8) -> Route {
        self.shared = Some((views, charset));
        self.charset = charset;
        self
    }

    fn shared_key(&self, query_id: &str) -> Option<(&SharedViews, (String, u8, String))> {
        let (views, charset) = self.shared.as_ref()?;
        Some((
            views.as_ref(),
            (self.user.clone(), *charset, query_id.to_string()),
        ))
    }

    /// The time zone a session starts with: the upstream's default.
    fn starting_in_utc(mut self) -> Route {
        self.time_zone_utc = self.backend.sessions_start_in_utc();
        self
    }

    pub(super) fn database(&self) -> Option<String> {
        self.database.clone().flatten()
    }

    /// The shape of a SELECT in the session's database; `Err` says why it has none. A text
    /// that differs from one seen before only in its literals needs no parse (the literals
    /// are read by a lexer and mapped to the shape's slots: [`larder_sql::fingerprint`]).
    pub(super) fn shape_of(&mut self, text: &str) -> Result<Shape, String> {
        if text.len() > QUERY_TEXT_MAX_BYTES {
            return Err("the query text is too long to consider".into());
        }
        let start = text.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        let starts = |w: &str| {
            start
                .get(..w.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(w))
        };
        if !starts("select") && !starts("with") {
            return Err("not a SELECT".into());
        }
        let database = match &self.database {
            Some(db) => db.as_deref(),
            None => return Err("the session's current database is unknown".into()),
        };
        let fp = fingerprint(text);
        if let Some(fp) = &fp {
            let known = self
                .fingerprints
                .get_refresh(&fp.key)
                .filter(|k| k.database.as_deref() == database);
            if let Some(known) = known {
                if let Some(params) = known.template.params(&fp.literals) {
                    return Ok(Shape {
                        query_id: Arc::clone(&known.query_id),
                        normalized: Arc::clone(&known.normalized),
                        params,
                        text: text.to_string(),
                    });
                }
            }
        }
        let n = normalize(text, Dialect::MySql).map_err(|e| e.to_string())?;
        let qualifier = match database {
            Some(db) => db,
            None if larder_sql::identity::unqualified_relations(&n.query).is_empty() => "",
            None => return Err("no database selected".into()),
        };
        let (query_id, normalized) = larder_sql::mysql::identity(&n.query, qualifier);
        let (query_id, normalized): (Arc<str>, Arc<str>) = (query_id.into(), normalized.into());
        if let Some(fp) = &fp {
            if let Some(template) = Template::learn(fp, &n, Dialect::MySql) {
                let bytes = fp.key.len() + query_id.len() + normalized.len() + 128;
                let known = Arc::new(KnownShape {
                    database: database.map(str::to_string),
                    query_id: Arc::clone(&query_id),
                    normalized: Arc::clone(&normalized),
                    template,
                });
                let _ = self.fingerprints.insert(&fp.key, known, bytes, false);
            }
        }
        Ok(Shape {
            query_id,
            normalized,
            params: n.params,
            text: text.to_string(),
        })
    }

    /// The checks every cache read shares (the view aside); the cache for `shape`.
    fn cache_for(&self, shape: &Shape) -> Result<Arc<dyn CachedQuery>, String> {
        if !self.backend.caching_on() {
            return Err("caching is off (ALTER LARDER SET caching = off, or --caching off)".into());
        }
        if let Some(why) = &self.settings {
            return Err(why.clone());
        }
        let cache = self
            .backend
            .lookup(&shape.query_id)
            .ok_or_else(|| format!("no cache for query {}", shape.query_id))?;
        let timestamps = cache.columns().iter().any(|c| c.ty == SqlType::TimestampTz)
            || cache.param_types().contains(&SqlType::TimestampTz);
        if timestamps && !self.time_zone_utc {
            return Err(
                "the session's time zone is not UTC (TIMESTAMP values print and compare in it)"
                    .into(),
            );
        }
        let in_txn = self.status & status::SERVER_STATUS_IN_TRANS != 0;
        let autocommit = self.status & status::SERVER_STATUS_AUTOCOMMIT != 0;
        if (in_txn || !autocommit) && !cache.always() {
            return Err(
                "inside a transaction or with autocommit off (the cache was not created ALWAYS)"
                    .into(),
            );
        }
        Ok(cache)
    }

    /// The checks a shallow cache's read shares with a deep one's, and the start of its key:
    /// the user, the handshake's character set (the session ran no SET), the time zone's
    /// kind, and the privilege and table-shape epochs (a GRANT, a REVOKE or a schema change
    /// starts new entries).
    pub(super) fn shallow_key_start(&self, cache: &ShallowCache) -> Result<Vec<u8>, String> {
        if !self.backend.caching_on() {
            return Err("caching is off (ALTER LARDER SET caching = off, or --caching off)".into());
        }
        if let Some(why) = &self.settings {
            return Err(why.clone());
        }
        let Some(sets) = &self.set_history else {
            return Err("the session ran too many SETs to key a shallow cache".into());
        };
        let in_txn = self.status & status::SERVER_STATUS_IN_TRANS != 0;
        let autocommit = self.status & status::SERVER_STATUS_AUTOCOMMIT != 0;
        if (in_txn || !autocommit) && !cache.always {
            return Err(
                "inside a transaction or with autocommit off (the cache was not created ALWAYS)"
                    .into(),
            );
        }
        let mut key = cache.key_start();
        key.extend_from_slice(&(self.user.len() as u32).to_le_bytes());
        key.extend_from_slice(self.user.as_bytes());
        key.push(self.charset);
        key.extend_from_slice(&(sets.len() as u32).to_le_bytes());
        key.extend_from_slice(sets);
        key.push(u8::from(self.time_zone_utc));
        key.push(u8::from(self.extended_metadata));
        key.extend_from_slice(&self.backend.access_epoch().to_le_bytes());
        key.extend_from_slice(&self.backend.shape_epoch().to_le_bytes());
        Ok(key)
    }

    /// The shallow cache of `query_id` when it has no deep one. A query has at most one of
    /// the two; the deep registry is read without a lock, so deep hits look there first.
    pub(super) fn shallow_only(&self, query_id: &str) -> Option<Arc<ShallowCache>> {
        if self.backend.lookup(query_id).is_some() {
            return None;
        }
        self.backend.shallow(query_id)
    }

    /// The shallow cache of a tracked prepared SELECT, if it has one.
    pub(super) fn shallow_statement(&self, payload: &[u8]) -> Option<Arc<ShallowCache>> {
        let shape = self.shape_of_statement(payload)?;
        self.shallow_only(&shape.query_id)
    }

    /// A prepared SELECT's part of a shallow key: its text, the parameter types in force and
    /// the execution's bytes after the statement id; with its shape.
    pub(super) fn shallow_execute(
        &mut self,
        payload: &[u8],
    ) -> Result<(Arc<Shape>, Vec<u8>), String> {
        let (stmt, exec) = self.execution(payload)?;
        let shape = stmt.shape.clone().ok_or("not a cacheable SELECT")?;
        if stmt.long_data {
            return Err("parameters sent as long data".into());
        }
        if exec.flags != 0 {
            return Err("a cursor was asked for".into());
        }
        let mut part = Vec::with_capacity(shape.text.len() + payload.len() + 16);
        part.extend_from_slice(&(shape.text.len() as u32).to_le_bytes());
        part.extend_from_slice(shape.text.as_bytes());
        for t in stmt.types.iter().flatten() {
            part.extend_from_slice(&[t.code, u8::from(t.unsigned)]);
        }
        part.push(0xff);
        part.extend_from_slice(payload.get(5..).unwrap_or_default());
        Ok((shape, part))
    }

    /// Read-your-writes: after a write, waits (briefly) until replication has applied the
    /// upstream's position as of now.
    pub(super) async fn barrier(&mut self) -> Result<(), String> {
        if !self.barrier {
            return Ok(());
        }
        let target = self.backend.upstream_position().await?;
        let deadline = Instant::now() + Duration::from_millis(BARRIER_WAIT_MS);
        while self.backend.applied_position() < target {
            if Instant::now() >= deadline {
                return Err("replication has not yet applied this session's last write".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.barrier = false;
        Ok(())
    }

    /// A SELECT sent as COM_QUERY: the cache and its parameter values, once the view is
    /// known (`view_for`).
    pub(super) fn decide_query(&self, shape: &Shape) -> Result<Arc<dyn CachedQuery>, String> {
        self.cache_for(shape)
    }

    pub(super) fn params_of_query(
        &self,
        shape: &Shape,
        cache: &dyn CachedQuery,
    ) -> Result<Vec<Vec<Value>>, String> {
        let params = in_utc(&shape.params, cache.param_types());
        resolve_params(&params, &|_| None, cache.param_types()).map_err(|e| e.to_string())
    }

    /// The view of `query_id` if still current: the session's own, or its user's.
    pub(super) fn view(&self, query_id: &str) -> Option<Arc<View>> {
        let epoch = self.backend.access_epoch();
        if let Some(v) = self.views.get(query_id).filter(|v| v.access_epoch == epoch) {
            return Some(v.clone());
        }
        let (shared, key) = self.shared_key(query_id)?;
        shared.get(&key, epoch)
    }

    /// Keeps what the upstream described for `query_id`; `Err` when Larder cannot write its
    /// columns.
    pub(super) fn keep_view(
        &mut self,
        query_id: &str,
        columns: Vec<Vec<u8>>,
    ) -> Result<Arc<View>, String> {
        let view = Arc::new(self.make_view(columns)?);
        if self.views.len() >= VIEWS_MAX {
            self.views.clear();
        }
        self.views.insert(query_id.to_string(), view.clone());
        if let Some((shared, key)) = self.shared_key(query_id) {
            shared.put(key, view.clone());
        }
        Ok(view)
    }

    fn make_view(&self, columns: Vec<Vec<u8>>) -> Result<View, String> {
        let types = columns
            .iter()
            .map(|c| {
                ColumnDefinition::decode(c)
                    .and_then(|d| d.column_type(self.extended_metadata))
                    .map_err(|e| format!("a column definition Larder cannot read: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(View {
            access_epoch: self.backend.access_epoch(),
            columns,
            types,
        })
    }

    /// A statement the client prepared: kept for the cache path when it is a SELECT.
    pub(super) fn prepared(&mut self, id: u32, text: &str, params: u16, columns: Vec<Vec<u8>>) {
        if self.statements.len() >= STATEMENTS_MAX && !self.statements.contains_key(&id) {
            return;
        }
        let shape = self.shape_of(text).ok().map(Arc::new);
        let view = match &shape {
            Some(_) => self.make_view(columns).ok().map(Arc::new),
            None => None,
        };
        self.statements.insert(
            id,
            Statement {
                shape,
                params: usize::from(params),
                types: None,
                long_data: false,
                view,
            },
        );
    }

    pub(super) fn closed(&mut self, id: u32) {
        self.statements.remove(&id);
    }

    pub(super) fn long_data(&mut self, id: u32, sent: bool) {
        if let Some(s) = self.statements.get_mut(&id) {
            s.long_data = sent;
        }
    }

    /// The tracked statement an execution runs, and the execution decoded; the parameter
    /// types it declares are remembered for the next executions.
    fn execution<'p>(
        &mut self,
        payload: &'p [u8],
    ) -> Result<(&mut Statement, StmtExecute<'p>), String> {
        let id = StmtExecute::statement_id_of(payload).ok_or("a short COM_STMT_EXECUTE")?;
        let stmt = self
            .statements
            .get_mut(&id)
            .ok_or("a statement Larder does not track")?;
        let exec = StmtExecute::decode(payload, stmt.params, stmt.types.as_deref())
            .map_err(|e| format!("parameters Larder cannot read: {e}"))?;
        if let Some(t) = &exec.types {
            stmt.types = Some(t.clone());
        }
        Ok((stmt, exec))
    }

    /// An execution: remembers the parameter types it declares, and decides.
    pub(super) fn decide_execute(&mut self, payload: &[u8]) -> Result<Read, String> {
        let (stmt, exec) = self.execution(payload)?;
        let (Some(shape), Some(view)) = (stmt.shape.clone(), stmt.view.clone()) else {
            return Err("not a cacheable SELECT".into());
        };
        if stmt.long_data {
            return Err("parameters sent as long data".into());
        }
        if exec.flags != 0 {
            return Err("a cursor was asked for".into());
        }
        let cache = self.cache_for(&shape)?;
        let slot = |n: usize| placeholder_slot_type(&shape.params, cache.param_types(), n);
        let values: Vec<Value> = exec
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| param_value(v, slot(i + 1)))
            .collect::<Result<_, _>>()?;
        let utc_slot = |n: usize| slot(n) == Some(&SqlType::TimestampTz);
        let values: Vec<Value> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Text(t) if utc_slot(i + 1) => Value::Text(format!("{t}+00")),
                v => v,
            })
            .collect();
        let params = resolve_params(
            &in_utc(&shape.params, cache.param_types()),
            &|n| values.get(n.wrapping_sub(1)).cloned(),
            cache.param_types(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Read {
            cache,
            params,
            view,
            shape,
        })
    }

    /// The statement's view is older than the last privilege change: `Some(text)` to prepare
    /// again.
    pub(super) fn stale_statement(&self, view: &View, shape: &Shape) -> Option<String> {
        (view.access_epoch != self.backend.access_epoch()).then(|| shape.text.clone())
    }

    /// The statement's view was checked again with the upstream; the new view, unless its
    /// columns cannot be written.
    pub(super) fn refresh_statement(
        &mut self,
        payload: &[u8],
        columns: Vec<Vec<u8>>,
    ) -> Option<Arc<View>> {
        let id = StmtExecute::statement_id_of(payload)?;
        let view = self.make_view(columns).ok().map(Arc::new);
        let s = self.statements.get_mut(&id)?;
        s.view = view.clone();
        view
    }

    /// The shape of a tracked prepared SELECT.
    pub(super) fn shape_of_statement(&self, payload: &[u8]) -> Option<Arc<Shape>> {
        let id = StmtExecute::statement_id_of(payload)?;
        self.statements.get(&id)?.shape.clone()
    }

    /// After a relayed COM_QUERY: what it changed about the session.
    pub(super) fn after_query(&mut self, text: &str, ok: bool) {
        let effect = effect_of(text);
        match effect {
            Effect::Read => {}
            Effect::Use(db) => {
                if ok {
                    self.database = Some(Some(db));
                }
            }
            Effect::Unknown => {
                self.shared = None;
                self.database = None;
                self.settings = Some("the session ran statements Larder does not follow".into());
                self.views.clear();
                self.wrote();
            }
            Effect::Set { changed, utc } => {
                // Its character sets may differ from the handshake's now.
                self.shared = None;
                if let Some(h) = self.set_history.as_mut() {
                    h.extend_from_slice(text.trim().as_bytes());
                    h.push(0);
                    if h.len() > SET_HISTORY_MAX_BYTES {
                        self.set_history = None;
                    }
                }
                if ok {
                    if let Some(utc) = utc {
                        self.time_zone_utc = utc;
                    }
                }
                if let Some(why) = changed {
                    self.settings = Some(why);
                }
                self.views.clear();
            }
            Effect::Write => self.wrote(),
        }
    }

    /// After a relayed command other than COM_QUERY.
    pub(super) fn after_command(&mut self, command: crate::mysql::messages::Command, ok: bool) {
        use crate::mysql::messages::Command;
        match command {
            Command::ChangeUser => {
                // Another user, perhaps another character set: nothing shared any more.
                self.shared = None;
                self.database = None;
                self.reset();
                // Who the session is now, and in which character set, is the upstream's to
                // know: its results are not keyed for shallow caches any more.
                self.set_history = None;
            }
            Command::ResetConnection if ok => self.reset(),
            Command::StmtExecute | Command::StmtBulkExecute => self.wrote(),
            _ => {}
        }
    }

    pub(super) fn init_db(&mut self, db: String) {
        self.database = Some(Some(db));
    }

    fn reset(&mut self) {
        self.time_zone_utc = self.backend.sessions_start_in_utc();
        self.settings = None;
        self.set_history = Some(Vec::new());
        self.views.clear();
        self.statements.clear();
        self.wrote();
    }

    /// A statement that may have written ran.
    fn wrote(&mut self) {
        self.barrier = true;
        self.wrote_at = Some(Instant::now());
    }

    /// Whether an execution is of a statement that only reads (a tracked SELECT).
    pub(super) fn executes_select(&self, payload: &[u8]) -> bool {
        StmtExecute::statement_id_of(payload)
            .and_then(|id| self.statements.get(&id))
            .is_some_and(|s| s.shape.is_some())
    }
}

/// The literals compared with TIMESTAMP (kept in UTC) read in the session's time zone, which
/// is UTC whenever such a cache answers.
fn in_utc(params: &[ParamSource], types: &[SqlType]) -> Vec<ParamSource> {
    fn utc(p: &ParamSource) -> ParamSource {
        match p {
            ParamSource::Literal(Literal::String(s)) => {
                ParamSource::Literal(Literal::String(format!("{s}+00")))
            }
            ParamSource::List(items) => ParamSource::List(items.iter().map(utc).collect()),
            other => other.clone(),
        }
    }
    params
        .iter()
        .zip(types)
        .map(|(p, ty)| match ty {
            SqlType::TimestampTz => utc(p),
            _ => p.clone(),
        })
        .collect()
}

/// A bound parameter as a value for the slot's type: numbers and text as the literal would
/// be read; dates and times by their text. A DOUBLE (JavaScript numbers are sent so) compares
/// as a double in MySQL, which is exact only against an integer column, and only for an
/// integral value.
fn param_value(p: &ParamValue<'_>, slot: Option<&SqlType>) -> Result<Value, String> {
    let integer_slot = matches!(slot, Some(SqlType::Int2 | SqlType::Int4 | SqlType::Int8));
    let float_slot = matches!(slot, Some(SqlType::Float4 | SqlType::Float8));
    let text_slot = matches!(
        slot,
        Some(SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name | SqlType::Json)
    );
    if text_slot && !matches!(p, ParamValue::Null | ParamValue::Bytes(_)) {
        // MySQL compares text with a number (or a date) as numbers (or dates): `'' = 0`.
        return Err("a number or a date compared with text".into());
    }
    Ok(match p {
        ParamValue::Null => Value::Null,
        // An integer compared with an integer column needs no reading (a key compares
        // integers by value whatever their width).
        ParamValue::Int(i) if integer_slot => Value::Int(*i),
        ParamValue::UInt(u) if integer_slot && i64::try_from(*u).is_ok() => Value::Int(*u as i64),
        ParamValue::Int(i) => Value::Text(i.to_string()),
        ParamValue::UInt(u) => Value::Text(u.to_string()),
        // Compared with a FLOAT or DOUBLE column as a double, as MySQL does.
        ParamValue::Double(d) if float_slot && d.is_finite() => Value::Text(format!("{d:?}")),
        ParamValue::Double(d) => {
            if !(integer_slot && d.fract() == 0.0 && d.abs() < 9.007_199_254_740_992e15) {
                return Err("a floating-point parameter not compared with an integer".into());
            }
            Value::Text((*d as i64).to_string())
        }
        ParamValue::Bytes(b) => Value::Text(
            std::str::from_utf8(b)
                .map_err(|_| "a parameter that is not UTF-8")?
                .to_string(),
        ),
        ParamValue::DateTime([y, mo, d, h, mi, s, us]) => Value::Text(format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
        )),
        ParamValue::Time(..) => return Err("a TIME parameter".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_values_read_as_literals() {
        assert_eq!(
            param_value(&ParamValue::Int(-3), None).unwrap(),
            Value::Text("-3".into())
        );
        assert_eq!(
            param_value(&ParamValue::DateTime([2024, 2, 29, 1, 2, 3, 4]), None).unwrap(),
            Value::Text("2024-02-29 01:02:03.000004".into())
        );
        assert!(param_value(&ParamValue::Bytes(&[0xff]), None).is_err());
        let int = Some(&SqlType::Int4);
        assert_eq!(
            param_value(&ParamValue::Double(7.0), int).unwrap(),
            Value::Text("7".into())
        );
        assert!(param_value(&ParamValue::Double(7.5), int).is_err());
        assert!(param_value(&ParamValue::Double(7.0), Some(&SqlType::Numeric)).is_err());
        let float = Some(&SqlType::Float8);
        assert_eq!(
            param_value(&ParamValue::Double(0.1), float).unwrap(),
            Value::Text("0.1".into())
        );
        assert_eq!(
            param_value(&ParamValue::Double(1e15), float).unwrap(),
            Value::Text("1000000000000000.0".into())
        );
        // MySQL compares text with a number as numbers ('' = 0): not by the number's text.
        let text = Some(&SqlType::Text);
        assert!(param_value(&ParamValue::Int(0), text).is_err());
        assert!(param_value(&ParamValue::UInt(0), text).is_err());
        assert!(param_value(&ParamValue::Bytes(b"0"), text).is_ok());
    }
}
