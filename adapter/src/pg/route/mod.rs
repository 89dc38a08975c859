//! Routing: which client statements are answered from a cache and which go upstream.
//!
//! [`CacheRouter`] is the [`InterceptorFactory`] the server installs. Per session it keeps:
//! - the prepared statements the client created (text, declared parameter types, whether the
//!   upstream has them: a statement first answered locally is re-created upstream, invisibly,
//!   before anything that needs it is forwarded);
//! - a memo from SQL text to its normalized shape (query id + parameter sources);
//! - how unqualified table names resolve under the session's `search_path` (asked of the
//!   upstream with `to_regclass`, forgotten whenever the session runs something that could
//!   change it, and refreshed after [`RESOLUTION_TTL_MS`]);
//! - where the previous statement was answered, for `EXPLAIN LAST STATEMENT`.
//!
//! A unit is answered locally only when it is whole (a `Query`, or `[Parse] Bind [Describe]
//! Execute Sync` on the unnamed portal), nothing forwarded earlier is still in flight, the
//! transaction state allows it, and the cache can answer. Everything else is forwarded
//! unchanged. A cache that cannot answer is never an error for the client: the statement goes
//! upstream and the reason is remembered.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use larder_sql::fingerprint::{fingerprint, Template};
use larder_sql::identity::{resolved_query_id_of_text, unqualified_relations};
use larder_sql::normalize::{may_change_settings, normalize, resolve_params, ParamSource};
use larder_sql::pgtypes::{self, TimeZoneSetting};
use larder_sql::search_path::Resolved;
use larder_sql::statement::{
    classify, parse_larder_statement, Dialect, LarderStatement, StatementKind, TransactionKind,
};
use larder_sql::{SqlType, Value};

use super::intercept::{
    ClientBatch, Dispatch, Interceptor, InterceptorFactory, SessionState, TeeSink,
};
use super::messages::{
    frontend_tag, Bind, BindComplete, Close, CommandComplete, Decode, Describe, Encode,
    ErrorResponse, Execute, FieldDescription, NoData, ParameterDescription, Parse, ParseComplete,
    Query, RawFrame, ReadyForQuery, RowDescription, Sync, Target, TransactionStatus,
};
use crate::cache::{
    CacheBackend, CachedQuery, StatementContext, StatementError, TextTable, UpstreamTiming,
};
use crate::memo::ByteBoundedMap;
use crate::AdapterError;

mod barrier;
mod bind;
mod encode;
mod extended;
mod facts;
mod names;
mod serve;
mod shallow;
mod shape;

use bind::*;
use encode::*;
use facts::*;
use names::*;
use shape::*;

/// Bounds on per-session memory, in bytes (keys, values and bookkeeping; see `memo.rs`).
///
/// Statements the upstream also has are forgotten first when the budget is full (Bind and
/// Describe are forwarded by name; only the chance to answer them locally is lost, and a Bind of
/// a forgotten statement counts as possible DDL for the read-your-DDL barrier). Statements
/// answered only locally are pinned: they never go, and a new one that would not fit is not
/// answered locally but forwarded (and so prepared upstream), so the session never breaks.
const STATEMENTS_MAX_BYTES: usize = 8 << 20;
const SHAPES_MAX_BYTES: usize = 4 << 20;
/// SQL texts longer than this are never memoed (they are classified again each time, and
/// such statements are never answered locally).
const MEMO_TEXT_MAX_BYTES: usize = 64 << 10;
/// What a Bind of a statement the router forgot is treated as: possibly DDL.
const FORGOTTEN_STATEMENT_SQL: &str = ";";
const TEXT_OID: u32 = 25;
/// Largest hit response buffer kept for reuse by a session.
const SCRATCH_KEEP_MAX_BYTES: usize = 64 << 10;

pub struct CacheRouter {
    backend: Arc<dyn CacheBackend>,
    /// Read-your-writes for new sessions (each may `SET larder.read_your_writes`).
    read_your_writes: bool,
}

impl CacheRouter {
    pub fn new(backend: Arc<dyn CacheBackend>, read_your_writes: bool) -> CacheRouter {
        CacheRouter {
            backend,
            read_your_writes,
        }
    }
}

impl InterceptorFactory for CacheRouter {
    fn create(&self, session: &SessionState) -> Box<dyn Interceptor> {
        self.backend.session_opened(session.user());
        Box::new(RouterSession {
            eligible_db: session.database() == self.backend.database(),
            backend: self.backend.clone(),
            statements: ByteBoundedMap::new(STATEMENTS_MAX_BYTES),
            shapes: ByteBoundedMap::new(SHAPES_MAX_BYTES),
            fingerprints: ByteBoundedMap::new(SHAPES_MAX_BYTES),
            statements_skipped: false,
            statement_tokens: 0,
            scratch: BytesMut::new(),
            custom_output: custom_output_at_startup(session.startup_params()),
            captures: std::collections::VecDeque::new(),
            barrier_lsn: None,
            barrier_at_commit: false,
            read_your_writes: self.read_your_writes,
            ddl_at_commit: false,
            wrote_in_transaction: false,

            facts: SessionFacts::new(session, self.backend.as_ref()),
            tz_memo: None,
            row_desc_memo: None,
            ddl_lsn: 0,
            last: Last {
                destination: "upstream",
                reason: "no statement yet".into(),
            },
            upstream_timing: None,
            wrote_at: None,
            batch_tail: true,
            pending_tee: None,
        })
    }
}

enum Kind {
    /// One of Larder's own statements.
    Larder(LarderStatement),
    /// A SELECT that a cache might answer.
    Select(Arc<Shape>),
    /// Anything else.
    Other,
}

/// A cache that can answer a statement, and the read's parameter values (one list per slot).
type CacheRead = (Arc<dyn CachedQuery>, Vec<Vec<Value>>);

/// Which cache may answer a statement.
enum Route {
    Deep(CacheRead),
    /// A shallow cache, and the query id as this session means it.
    Shallow(Arc<crate::shallow::ShallowCache>, Arc<str>),
}

struct Statement {
    sql: String,
    param_types: Vec<u32>,
    /// Whether the upstream has this statement prepared.
    on_upstream: bool,
    kind: Arc<Kind>,
    /// Tells this remembering of the name apart from earlier and later ones (a session
    /// counter), for the answer to a Parse injected for it.
    token: u64,
    /// The backend's shape epoch when the client prepared it.
    epoch: u64,
}

/// What a captured response answers.
enum CaptureKind {
    /// The session's role, `search_path`, temporary schema and output settings.
    Facts,
    /// `pg_current_wal_lsn()` after this session's DDL (`ddl`) or writes.
    WalPosition { ddl: bool },
    /// A shallow cache's result fetched again (see `shallow.rs`).
    ShallowRefresh {
        ticket: crate::shallow::RefreshTicket,
        sent: std::time::Instant,
    },
}

struct Last {
    destination: &'static str,
    reason: Reason,
}

enum Reason {
    Text(String),
    /// Answered by this cache.
    Hit(Arc<dyn CachedQuery>),
    /// Answered by this shallow cache.
    Shallow(Arc<crate::shallow::ShallowCache>),
}

impl From<String> for Reason {
    fn from(s: String) -> Reason {
        Reason::Text(s)
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Reason {
        Reason::Text(s.to_string())
    }
}

impl Reason {
    fn text(&self) -> String {
        match self {
            Reason::Text(s) => s.clone(),
            Reason::Hit(c) => format!("answered by the cache of {}", c.query_id()),
            Reason::Shallow(c) => format!(
                "answered by the shallow cache of {} (results kept for {} s)",
                c.query_id,
                c.policy.ttl.as_secs_f64()
            ),
        }
    }
}

struct RouterSession {
    backend: Arc<dyn CacheBackend>,
    eligible_db: bool,
    statements: ByteBoundedMap<Statement>,
    shapes: ByteBoundedMap<Arc<Kind>>,
    /// Shapes by fingerprint key, for texts that differ from a known one only in literals.
    fingerprints: ByteBoundedMap<Arc<KnownShape>>,
    /// A prepared statement was not remembered (too long, or the memo was full).
    statements_skipped: bool,
    /// The last [`Statement::token`] handed out.
    statement_tokens: u64,
    /// See [`RouterSession::take_scratch`].
    scratch: BytesMut,
    /// Captures sent upstream, in order (their responses arrive in the same order).
    captures: std::collections::VecDeque<CaptureKind>,
    /// The session ran DDL or wrote to a cached table (or committed a transaction that did):
    /// no cache answers until replication has applied the upstream up to this WAL position.
    /// `Some(0)` while the position is still being asked for. See `barrier.rs`.
    barrier_lsn: Option<u64>,
    /// DDL or a write was forwarded inside the current transaction (its commit needs a new
    /// barrier).
    barrier_at_commit: bool,
    /// Writes close this session's cache reads until replication has applied them
    /// (`--read-your-writes`, `SET larder.read_your_writes`).
    read_your_writes: bool,
    /// DDL was forwarded inside the current transaction (its commit's barrier is a DDL one).
    ddl_at_commit: bool,
    /// The current transaction wrote to a table a cache reads: its own uncommitted rows are
    /// not in any cache.
    wrote_in_transaction: bool,

    /// The session changed `extra_float_digits` or `bytea_output` (not reported by the server).
    custom_output: bool,
    facts: SessionFacts,
    /// The last `TimeZone` value and what it parses to.
    tz_memo: Option<(String, Option<TimeZoneSetting>)>,
    /// The last RowDescription encoded: (cache, result formats, bytes).
    row_desc_memo: Option<(Arc<dyn CachedQuery>, Vec<i16>, Bytes)>,
    /// The WAL position after this session's latest DDL: relation names resolve locally only
    /// with a catalog that reflects it.
    ddl_lsn: u64,
    last: Last,
    /// Who wants to know how the statement that just missed fares upstream (set by `miss`,
    /// attached to the forwarded statement by `time_forwarded`).
    upstream_timing: Option<Arc<dyn UpstreamTiming>>,
    /// When the session last wrote (or ran DDL): shallow results fetched before are not
    /// served to it (read-your-writes).
    wrote_at: Option<std::time::Instant>,
    /// The unit being routed is the last complete one of its batch.
    batch_tail: bool,
    /// The tee of a shallow cache's fetch, for the unit about to be forwarded.
    pending_tee: Option<TeeSink>,
}

impl Drop for RouterSession {
    fn drop(&mut self) {
        self.backend.session_closed();
    }
}

impl Interceptor for RouterSession {
    fn on_client_messages(
        &mut self,
        session: &SessionState,
        batch: &ClientBatch<'_>,
        dispatch: &mut Dispatch<'_>,
    ) -> Result<(), AdapterError> {
        let msgs: Vec<RawFrame<'_>> = batch.iter().collect();
        let mut i = 0;
        while i < msgs.len() {
            let tag = msgs[i].frame.tag;
            match tag {
                frontend_tag::QUERY => {
                    self.batch_tail = i + 1 == msgs.len();
                    self.on_query(session, &msgs[i], dispatch);
                    i += 1;
                }
                frontend_tag::PARSE
                | frontend_tag::BIND
                | frontend_tag::DESCRIBE
                | frontend_tag::EXECUTE
                | frontend_tag::CLOSE
                | frontend_tag::FLUSH => {
                    match msgs[i..]
                        .iter()
                        .position(|m| m.frame.tag == frontend_tag::SYNC)
                    {
                        Some(n) => {
                            self.batch_tail = i + n + 1 == msgs.len();
                            self.on_unit(session, &msgs[i..=i + n], dispatch);
                            i += n + 1;
                        }
                        None => {
                            // The client waits (Flush) before its Sync: forward as is.
                            let _ = self.forward_unit(&msgs[i..], dispatch);
                            i = msgs.len();
                        }
                    }
                }
                _ => {
                    dispatch.forward(&msgs[i]);
                    i += 1;
                }
            }
        }
        Ok(())
    }

    fn on_parse_lost(&mut self, _session: &SessionState, statement: &str, token: u64) {
        self.parse_lost(statement, token);
    }

    fn on_captured(&mut self, _session: &SessionState, response: &[u8]) {
        match self.captures.pop_front() {
            Some(CaptureKind::WalPosition { ddl }) => {
                let lsn = first_row(response)
                    .and_then(|r| r.into_iter().next().flatten())
                    .and_then(|t| parse_lsn(&t));
                self.on_barrier_position(lsn, ddl);
            }
            Some(CaptureKind::Facts) => {
                let row = first_row(response).unwrap_or_default();
                // Role and database defaults of these settings are invisible otherwise.
                self.custom_output = self.facts.on_answer(&row).custom;
            }
            Some(CaptureKind::ShallowRefresh { ticket, sent }) => {
                self.on_shallow_refresh(ticket, sent, response);
            }
            None => {}
        }
    }
}

impl RouterSession {
    // ---- simple query protocol ----

    fn on_query(
        &mut self,
        session: &SessionState,
        msg: &RawFrame<'_>,
        dispatch: &mut Dispatch<'_>,
    ) {
        let Ok(q) = Query::decode(&msg.frame) else {
            dispatch.forward(msg);
            return;
        };
        let kind = self.kind_of(&q.sql);
        match &*kind {
            Kind::Larder(stmt) => {
                let stmt = stmt.clone();
                self.run_larder(session, stmt, None, dispatch);
            }
            Kind::Select(shape) => match self.try_cache(session, shape, None, dispatch) {
                Ok(Route::Shallow(cache, query_id)) => {
                    let request = shallow::ShallowRequest {
                        unit: shallow::ShallowUnit::Simple {
                            sql: &q.sql,
                            raw: msg.raw,
                        },
                        prefix: BytesMut::new(),
                        needs_head: true,
                        may_wait: self.batch_tail,
                    };
                    match self.serve_shallow(session, &cache, &query_id, request, dispatch) {
                        shallow::ShallowAction::Answered => {}
                        shallow::ShallowAction::Forward(tee) => {
                            self.miss_recorded(session, shape);
                            dispatch.forward(msg);
                            self.time_forwarded(dispatch);
                            if let Some(tee) = tee {
                                dispatch.tee_last_relay(shallow::ENTRY_MAX_BYTES, tee);
                            }
                        }
                    }
                }
                Ok(Route::Deep((cache, params))) => {
                    let mut out = self.take_scratch();
                    let formats = Formats::all_text();
                    self.put_row_description(&cache, &[], &mut out);
                    match self.read_hit(session, cache.as_ref(), &params, &formats, &mut out) {
                        Ok(rows) => {
                            finish(&mut out, rows, session.transaction_status());
                            self.hit(&cache);
                            dispatch.respond_copy(&out);
                            self.put_scratch(out);
                        }
                        Err(reason) => {
                            self.miss(session, shape, reason);
                            dispatch.forward(msg);
                            self.time_forwarded(dispatch);
                        }
                    }
                }
                Err(reason) => {
                    self.miss(session, shape, reason);
                    let in_block = session.transaction_status() != TransactionStatus::Idle
                        || is_multi_statement(&q.sql);
                    self.watch_forwarded(&q.sql, in_block);
                    dispatch.forward(msg);
                    self.time_forwarded(dispatch);
                }
            },
            Kind::Other => {
                let in_block = session.transaction_status() != TransactionStatus::Idle
                    || is_multi_statement(&q.sql);
                self.watch_forwarded(&q.sql, in_block);
                self.last = Last {
                    destination: "upstream",
                    reason: "not a cacheable SELECT".into(),
                };
                dispatch.forward(msg);
                self.barrier_after(session, &q.sql, dispatch);
            }
        }
    }

    // ---- extended query protocol ----

    /// Forget `search_path` resolutions when a forwarded statement could change them.
    /// Follows a statement forwarded upstream: what it may change of the session's facts
    /// (role, `search_path`, temporary schema) and output settings. `in_block`: it may be
    /// undone or may not run at all (inside a transaction block, in a multi-statement string,
    /// or only prepared).
    fn watch_forwarded(&mut self, sql: &str, in_block: bool) {
        let kind = classify(sql);
        let settings = kind == StatementKind::Select
            && match &*self.kind_of(sql) {
                Kind::Select(shape) => shape.may_change_settings,
                _ => true,
            };
        self.facts.watch(kind, sql, settings, in_block);
        // Output settings Larder cannot see (they are not reported by the server): once the
        // session touches them, caches with affected column types are not used any more.
        if matches!(kind, StatementKind::Set | StatementKind::Select)
            && sql.len() < 64 * 1024
            && (contains_ignore_ascii_case(sql, "extra_float_digits")
                || contains_ignore_ascii_case(sql, "bytea_output"))
        {
            self.custom_output = true;
        }
    }

    // ---- Larder's own statements ----

    /// Runs a Larder statement and answers with its rows. `extended` carries the bytes
    /// already produced (ParseComplete/BindComplete) and whether a Describe asked for the
    /// row description.
    fn run_larder(
        &mut self,
        session: &SessionState,
        stmt: LarderStatement,
        extended: Option<(BytesMut, bool)>,
        dispatch: &mut Dispatch<'_>,
    ) {
        let status = session.transaction_status();
        let (prefix, header) = match extended {
            Some((out, true)) => (out, Header::Described),
            Some((out, false)) => (out, Header::Bare),
            None => (BytesMut::new(), Header::Simple),
        };
        if let LarderStatement::ExplainLastStatement = stmt {
            let table = TextTable {
                columns: stmt
                    .result_columns()
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                rows: vec![vec![
                    Some(self.last.destination.to_string()),
                    Some(self.last.reason.text()),
                ]],
                tag: None,
            };
            dispatch.respond(encode_text_table(prefix, Ok(table), header, status));
            return;
        }
        self.backend.answered_locally();
        self.last = Last {
            destination: "larder",
            reason: "Larder statement".into(),
        };
        let ctx = self.facts.context(session.user());
        let fut = self.backend.execute(stmt, ctx);
        dispatch.respond_later(Box::pin(async move {
            encode_text_table(prefix, fut.await, header, status)
        }));
    }
}

#[cfg(test)]
mod tests;
