//! Commands a MySQL session answers itself: Larder's statements, and SELECTs (text or
//! prepared) a cache may answer (see [`super::route`] for when). Everything else, and every
//! read the cache may not answer, is relayed as sent.

use bytes::BytesMut;
use larder_sql::statement::{parse_larder_statement, CacheSource, Dialect, LarderStatement};
use larder_sql::Value;

use super::local::{describe_upstream, grants_admin, query_upstream, text_table, Response};
use super::route::{Read, Route, Shape, View};
use super::{Established, SessionError};
use crate::cache::{CachedQuery, MyStatementContext, StatementContext, TextTable};
use crate::mysql::messages::flags::{error_code, status};
use crate::mysql::messages::rows::{put_binary_row, put_text_row};
use crate::mysql::messages::stmt::StmtExecute;
use crate::mysql::messages::{Command, ErrPacket};

/// Largest hit buffer a session keeps for the next hit.
const SCRATCH_KEEP_MAX_BYTES: usize = 64 << 10;

/// How the session speaks: where the reply's sequence ids start, and CLIENT_DEPRECATE_EOF.
#[derive(Clone, Copy)]
pub(super) struct Reply {
    pub(super) seq: u8,
    pub(super) deprecate_eof: bool,
}

/// Answers `command` locally when it may; `Ok(false)`: relay it.
pub(super) async fn try_local(
    est: &mut Established,
    route: &mut Route,
    command: Command,
    payload: &BytesMut,
    reply: Reply,
) -> Result<bool, SessionError> {
    let statement_id = || StmtExecute::statement_id_of(payload);
    match command {
        Command::Query => {
            let Ok(text) = std::str::from_utf8(&payload[1..]) else {
                return Ok(false);
            };
            match parse_larder_statement(text, Dialect::MySql) {
                Some(Ok(stmt)) => {
                    larder_statement(est, route, stmt, reply).await?;
                    return Ok(true);
                }
                Some(Err(e)) => {
                    let err = ErrPacket::new(ER_PARSE_ERROR, "42000", format!("Larder: {e}"));
                    est.client.send_err(reply.seq, &err).await?;
                    return Ok(true);
                }
                None => {}
            }
            let Ok(shape) = route.shape_of(text) else {
                return Ok(false);
            };
            let served = match route.shallow_only(&shape.query_id) {
                Some(cache) => {
                    shallow_hit(est, route, &cache, false, text.as_bytes(), reply).await?
                }
                None => query_hit(est, route, &shape, reply).await?,
            };
            Ok(settle(route, &shape, served))
        }
        Command::StmtExecute => {
            if let Some(cache) = route.shallow_statement(payload) {
                let (shape, served) = match route.shallow_execute(payload) {
                    Ok((shape, part)) => {
                        let served = shallow_hit(est, route, &cache, true, &part, reply).await?;
                        (shape, served)
                    }
                    Err(reason) => match route.shape_of_statement(payload) {
                        Some(shape) => (shape, Err(reason)),
                        None => return Ok(false),
                    },
                };
                return Ok(settle(route, &shape, served));
            }
            let read = match route.decide_execute(payload) {
                Ok(d) => d,
                Err(reason) => {
                    if let Some(shape) = route.shape_of_statement(payload) {
                        return Ok(settle(route, &shape, Err(reason)));
                    }
                    return Ok(false);
                }
            };
            let shape = read.shape.clone();
            let served = execute_hit(est, route, payload, read, reply).await?;
            Ok(settle(route, &shape, served))
        }
        Command::StmtSendLongData => {
            if let Some(id) = statement_id() {
                route.long_data(id, true);
            }
            Ok(false)
        }
        Command::StmtReset => {
            if let Some(id) = statement_id() {
                route.long_data(id, false);
            }
            Ok(false)
        }
        Command::StmtClose => {
            if let Some(id) = statement_id() {
                route.closed(id);
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// Records why a SELECT went upstream (and asks to be told how long the upstream takes, for
/// `SHOW PROXIED QUERIES`), or that the cache answered it.
fn settle(route: &mut Route, shape: &Shape, served: Result<(), String>) -> bool {
    match served {
        Ok(()) => {
            route.last = None;
            true
        }
        Err(reason) => {
            route.backend.fell_back(&shape.query_id, &reason);
            let context = || StatementContext {
                role: Some(route.user.clone()),
                session_user: route.user.clone(),
                search_path: None,
                temp_schema: None,
                mysql: Some(MyStatementContext {
                    database: route.database(),
                    admin: false,
                    on_its_own: true,
                }),
            };
            route.timing =
                route
                    .backend
                    .record_proxied(&shape.query_id, &shape.normalized, &context);
            route.last = Some((shape.query_id.to_string(), reason));
            false
        }
    }
}

/// A shallow cache's read: its key, then the answer or why it goes upstream.
async fn shallow_hit(
    est: &mut Established,
    route: &mut Route,
    cache: &std::sync::Arc<crate::shallow::ShallowCache>,
    execute: bool,
    request: &[u8],
    reply: Reply,
) -> Result<Result<(), String>, SessionError> {
    let mut key = match route.shallow_key_start(cache) {
        Ok(k) => k,
        Err(reason) => return Ok(Err(reason)),
    };
    super::shallow::put_request(&mut key, execute, reply, request);
    super::shallow::serve(est, route, cache, key, reply).await
}

/// The status flags a local response carries (the session's transaction state).
fn reply_status(route: &Route) -> u16 {
    route.status & (status::SERVER_STATUS_IN_TRANS | status::SERVER_STATUS_AUTOCOMMIT)
}

async fn query_hit(
    est: &mut Established,
    route: &mut Route,
    shape: &Shape,
    reply: Reply,
) -> Result<Result<(), String>, SessionError> {
    let cache = match route.decide_query(shape) {
        Ok(c) => c,
        Err(reason) => return Ok(Err(reason)),
    };
    if let Err(reason) = route.barrier().await {
        return Ok(Err(reason));
    }
    let view = match route.view(&shape.query_id) {
        Some(v) => v,
        None => match describe_upstream(&mut est.upstream, &shape.text, reply.deprecate_eof).await?
        {
            Ok(d) => match route.keep_view(&shape.query_id, d.columns) {
                Ok(v) => v,
                Err(reason) => return Ok(Err(reason)),
            },
            Err(err) => return Ok(Err(refused(&err))),
        },
    };
    let params = match route.params_of_query(shape, cache.as_ref()) {
        Ok(p) => p,
        Err(reason) => return Ok(Err(reason)),
    };
    send_hit(est, route, cache.as_ref(), &params, &view, false, reply).await
}

async fn execute_hit(
    est: &mut Established,
    route: &mut Route,
    payload: &[u8],
    read: Read,
    reply: Reply,
) -> Result<Result<(), String>, SessionError> {
    let Read {
        cache,
        params,
        mut view,
        shape,
    } = read;
    if let Err(reason) = route.barrier().await {
        return Ok(Err(reason));
    }
    if let Some(text) = route.stale_statement(&view, &shape) {
        // Privileges changed since the client prepared it: ask again as the session's user.
        match describe_upstream(&mut est.upstream, &text, reply.deprecate_eof).await? {
            Ok(d) => match route.refresh_statement(payload, d.columns) {
                Some(v) => view = v,
                None => return Ok(Err("the statement's columns changed".into())),
            },
            Err(err) => return Ok(Err(refused(&err))),
        }
    }
    send_hit(est, route, cache.as_ref(), &params, &view, true, reply).await
}

fn refused(err: &ErrPacket) -> String {
    format!(
        "the upstream refuses the query for this session ({}): its answer is the upstream's",
        err.code
    )
}

/// Encodes the whole result and sends it; `Err` (nothing sent) when a value or the size
/// keeps it from the cache.
async fn send_hit(
    est: &mut Established,
    route: &mut Route,
    cache: &dyn CachedQuery,
    params: &[Vec<Value>],
    view: &View,
    binary: bool,
    reply: Reply,
) -> Result<Result<(), String>, SessionError> {
    if view.types.len() != cache.columns().len() {
        return Ok(Err(format!(
            "the upstream describes {} columns for this session, the cache has {}",
            view.types.len(),
            cache.columns().len()
        )));
    }
    let status = reply_status(route);
    let mut r = Response::new(std::mem::take(&mut route.scratch), reply.seq);
    if let Err(reason) = r.header(&view.columns, reply.deprecate_eof, status) {
        return Ok(Err(reason));
    }
    let read = cache.read_into(params, &mut |row, columns| {
        let values = columns.map(|i| &row[i]);
        let p = r.packet();
        if binary {
            put_binary_row(p, values, &view.types)?;
        } else {
            put_text_row(p, values, &view.types)?;
        }
        r.end_packet()
    });
    if let Err(miss) = read {
        return Ok(Err(miss.reason));
    }
    if let Err(reason) = r.end(reply.deprecate_eof, status) {
        return Ok(Err(reason));
    }
    est.client.send_bytes(&r.wire).await?;
    if r.wire.capacity() <= SCRATCH_KEEP_MAX_BYTES {
        route.scratch = r.wire;
    }
    Ok(Ok(()))
}

/// Runs one of Larder's statements for the session and answers it.
async fn larder_statement(
    est: &mut Established,
    route: &mut Route,
    stmt: LarderStatement,
    reply: Reply,
) -> Result<(), SessionError> {
    let status = reply_status(route);
    let answer = |est: &mut Established, t: &TextTable| {
        text_table(
            t,
            reply.seq,
            reply.deprecate_eof,
            status,
            est.extended_metadata,
        )
    };
    if let LarderStatement::ExplainLastStatement = stmt {
        let (destination, reason) = match &route.last {
            Some((_, reason)) => ("upstream", reason.clone()),
            None => ("larder", "answered by Larder, or no SELECT yet".to_string()),
        };
        let t = TextTable {
            columns: stmt
                .result_columns()
                .iter()
                .map(|c| c.to_string())
                .collect(),
            rows: vec![vec![Some(destination.into()), Some(reason)]],
            tag: None,
        };
        let wire = answer(est, &t);
        est.client.send_bytes(&wire).await?;
        return Ok(());
    }
    // The SELECT of a cache must be one the session's user may run: the upstream judges.
    let select = match &stmt {
        LarderStatement::CreateCache {
            source: CacheSource::Select { text, .. },
            ..
        }
        | LarderStatement::ExplainCreateCache {
            source: CacheSource::Select { text, .. },
        } => Some(text.clone()),
        _ => None,
    };
    if let Some(text) = select {
        if let Err(err) = describe_upstream(&mut est.upstream, &text, reply.deprecate_eof).await? {
            est.client.send_err(reply.seq, &err).await?;
            return Ok(());
        }
    }
    // What manages caches for everyone, shows every session's queries, or caches a query
    // named by id (whose privileges the session cannot check itself) needs an admin.
    let needs_admin = matches!(
        stmt,
        LarderStatement::DropCache { .. }
            | LarderStatement::DropAllCaches
            | LarderStatement::DropAllProxiedQueries
            | LarderStatement::SetCaching { .. }
            | LarderStatement::ShowProxiedQueries { .. }
            | LarderStatement::CreateCache {
                source: CacheSource::QueryId(_),
                ..
            }
            | LarderStatement::ExplainCreateCache {
                source: CacheSource::QueryId(_),
            }
    );
    let admin = needs_admin
        && match query_upstream(&mut est.upstream, "SHOW GRANTS", reply.deprecate_eof).await? {
            Ok(rows) => grants_admin(&rows),
            Err(_) => false,
        };
    let ctx = StatementContext {
        role: Some(est.user.clone()),
        session_user: est.user.clone(),
        search_path: None,
        temp_schema: None,
        mysql: Some(MyStatementContext {
            database: route.database(),
            admin,
            on_its_own: false,
        }),
    };
    match route.backend.execute(stmt, ctx).await {
        Ok(t) => {
            route.backend.answered_locally();
            let wire = answer(est, &t);
            est.client.send_bytes(&wire).await?;
        }
        Err(e) => {
            let code = match e.sqlstate {
                "0A000" => error_code::NOT_SUPPORTED_YET,
                "42501" => ER_SPECIFIC_ACCESS_DENIED,
                _ => error_code::UNKNOWN_ERROR,
            };
            let sqlstate = match e.sqlstate {
                "0A000" | "42501" => "42000",
                _ => "HY000",
            };
            let err = ErrPacket::new(code, sqlstate, format!("Larder: {}", e.message));
            est.client.send_err(reply.seq, &err).await?;
        }
    }
    Ok(())
}

/// ER_PARSE_ERROR.
const ER_PARSE_ERROR: u16 = 1064;
/// ER_SPECIFIC_ACCESS_DENIED_ERROR.
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
