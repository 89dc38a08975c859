//! The command phase: one command from the client at a time, answered locally (Larder's own
//! statements, replication commands) or relayed upstream with its whole response.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use larder_sql::statement::{parse_larder_statement, Dialect};
use tokio::sync::watch;
use tracing::debug;

use super::kill::rewrite_kill;
use super::response::Relay;
use super::route::Route;
use super::serve::{try_local, Reply};
use super::shallow::ENTRY_MAX_BYTES;
use super::{Established, SessionError, Shared};
use crate::mysql::messages::flags::{capability as cap, error_code};
use crate::mysql::messages::stmt::PrepareOk;
use crate::mysql::messages::{ComProcessKill, Command, ErrPacket, MyProtocolError, Payload};
use crate::mysql::packet::Assembler;

/// Most bytes an upstream may send while no command is in flight (an error packet is small).
const UNSOLICITED_MAX_BYTES: usize = 64 << 10;

/// The message of the ERR that answers Larder's statements in MySQL mode.
pub(crate) const NOT_AVAILABLE_MESSAGE: &str =
    "Larder: caching on MySQL upstreams is not available \
     yet; the statement was not sent upstream";

async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            // The sender is gone without signalling: keep serving.
            std::future::pending::<()>().await;
        }
    }
}

async fn idle(ms: u64) {
    if ms == 0 {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// What to do with one command.
enum Action {
    Relay(BytesMut),
    Answer(ErrPacket),
}

fn decide(shared: &Shared, command: Command, mut payload: BytesMut) -> Action {
    match command {
        Command::Query => {
            let Ok(text) = std::str::from_utf8(&payload[1..]) else {
                return Action::Relay(payload);
            };
            // With caching, Larder's statements were answered before this.
            if shared.cfg.backend.is_none()
                && parse_larder_statement(text, Dialect::MySql).is_some()
            {
                return Action::Answer(ErrPacket::new(
                    error_code::NOT_SUPPORTED_YET,
                    "42000",
                    NOT_AVAILABLE_MESSAGE,
                ));
            }
            if let Some(sql) = rewrite_kill(text, |id| shared.ids.upstream_of(id)) {
                let mut p = BytesMut::with_capacity(sql.len() + 1);
                p.put_u8(Command::Query.as_byte());
                p.put_slice(sql.as_bytes());
                payload = p;
            }
            Action::Relay(payload)
        }
        Command::ProcessKill => {
            if let Ok(k) = ComProcessKill::decode(&payload) {
                if let Some(id) = shared.ids.upstream_of(k.id) {
                    payload.clear();
                    ComProcessKill { id }.encode(&mut payload);
                }
            }
            Action::Relay(payload)
        }
        Command::BinlogDump | Command::BinlogDumpGtid | Command::RegisterSlave => {
            Action::Answer(ErrPacket::new(
                error_code::NOT_SUPPORTED_YET,
                "42000",
                "Larder: replication commands are not relayed",
            ))
        }
        _ => Action::Relay(payload),
    }
}

/// Serves commands until the client quits or goes away, the session fails, or shutdown.
pub(super) async fn run(
    shared: &Shared,
    est: &mut Established,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let deprecate_eof = est.capabilities & cap::CLIENT_DEPRECATE_EOF != 0;
    let idle_ms = shared.cfg.idle_timeout_ms;
    let mut route = shared.cfg.backend.clone().map(|b| {
        Route::new(
            b,
            est.user.clone(),
            est.database.clone(),
            est.extended_metadata,
        )
        .sharing(shared.views.clone(), est.charset)
    });
    let _opened = route
        .as_ref()
        .map(|r| SessionCount::open(r.backend.clone(), &est.user));
    let mut asm = Assembler::new(shared.cfg.max_packet_bytes);
    loop {
        let between_commands = asm.pending_len() == 0 && !est.client.has_buffered();
        let read = tokio::select! {
            r = est.client.read_logical(&mut asm) => r?,
            _ = shutdown_requested(&mut shutdown), if between_commands => {
                let err = ErrPacket::new(
                    error_code::SERVER_SHUTDOWN,
                    "08S01",
                    "Larder: server shutdown in progress",
                );
                let _ = est.client.send_err(0, &err).await;
                return Ok(());
            }
            _ = idle(idle_ms), if between_commands => return Ok(()),
            r = est.upstream.read_more(), if between_commands => {
                // The upstream spoke unasked (an error before it closes: KILL, shutdown,
                // wait_timeout) or closed: the client gets the same, as if connected directly.
                let closed = r.is_err();
                while let Some(p) = est.upstream.try_packet() {
                    est.client.send_packet(&p).await?;
                }
                if closed {
                    debug!(larder_id = est.larder_id, "the upstream closed an idle session");
                    return Ok(());
                }
                if est.upstream.buffered_len() > UNSOLICITED_MAX_BYTES {
                    return Err(SessionError::UpstreamProtocol(MyProtocolError::Invalid(
                        "unsolicited bytes from the upstream",
                    )));
                }
                continue;
            }
        };
        let Some(cmd) = read else {
            return Ok(());
        };
        if cmd.first_seq != 0 {
            return Err(SessionError::ClientProtocol {
                err: MyProtocolError::OutOfOrder {
                    got: cmd.first_seq,
                    expected: 0,
                },
                next_seq: cmd.next_seq(),
            });
        }
        let Some(command) = Command::of(&cmd.payload) else {
            return Err(SessionError::ClientProtocol {
                err: MyProtocolError::Truncated("command"),
                next_seq: cmd.next_seq(),
            });
        };
        let reply_seq = cmd.next_seq();
        if let Some(route) = route.as_mut() {
            let reply = Reply {
                seq: reply_seq,
                deprecate_eof,
            };
            if try_local(est, route, command, &cmd.payload, reply).await? {
                continue;
            }
        }
        let payload = match decide(shared, command, cmd.payload) {
            Action::Answer(err) => {
                est.client.send_err(reply_seq, &err).await?;
                continue;
            }
            Action::Relay(p) => p,
        };
        est.upstream.send_payload(0, &payload).await?;
        if command == Command::Quit {
            return Ok(());
        }
        let started = Instant::now();
        let tee = route.as_mut().and_then(|r| r.tee.take());
        let mut relay = Relay::new(&mut est.client, &mut est.upstream, deprecate_eof);
        if route.is_some() && command == Command::StmtPrepare {
            relay = relay.capturing_prepare();
        }
        if tee.is_some() {
            relay = relay.teeing(ENTRY_MAX_BYTES);
        }
        relay.response(command).await?;
        if let (Some(tee), Some(body)) = (tee, relay.teed()) {
            tee.complete(body, started.elapsed());
        }
        let (last_status, prepared, rows) = (relay.last_status, relay.prepared.take(), relay.rows);
        shared.cfg.metrics.upstream_done(started);
        if let Some(route) = route.as_mut() {
            if let Some(timing) = route.timing.take() {
                timing.done(started.elapsed(), rows);
            }
            after_relay(route, command, &payload, last_status, prepared);
        }
    }
}

/// Counts the session among the backend's open ones while it lives.
struct SessionCount(std::sync::Arc<dyn crate::cache::CacheBackend>);

impl SessionCount {
    fn open(backend: std::sync::Arc<dyn crate::cache::CacheBackend>, user: &str) -> Self {
        backend.session_opened(user);
        SessionCount(backend)
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.session_closed();
    }
}

/// What a relayed command changed about the session, for its cache path.
fn after_relay(
    route: &mut Route,
    command: Command,
    payload: &[u8],
    last_status: Option<u16>,
    prepared: Option<(PrepareOk, Vec<Vec<u8>>)>,
) {
    let ok = last_status.is_some();
    if let Some(s) = last_status {
        route.status = s;
    }
    let text = || std::str::from_utf8(&payload[1..]).ok();
    match command {
        Command::Query => match text() {
            Some(t) => route.after_query(t, ok),
            None => route.after_query(";;", ok),
        },
        Command::InitDb if ok => {
            if let Some(db) = text() {
                route.init_db(db.to_string());
            }
        }
        Command::StmtPrepare => {
            if let (Some((ok, columns)), Some(t)) = (prepared, text()) {
                route.prepared(ok.statement_id, t, ok.params, columns);
            }
        }
        Command::StmtExecute if route.executes_select(payload) => {}
        other => route.after_command(other, ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn larder_statements_are_recognized_in_mysql_dialect() {
        for sql in [
            "CREATE CACHE FROM SELECT 1",
            "show caches",
            "SHOW PROXIED QUERIES",
            "drop cache q_1",
            "ALTER LARDER SET caching = on",
        ] {
            assert!(
                parse_larder_statement(sql, Dialect::MySql).is_some(),
                "{sql}"
            );
        }
        for sql in ["SELECT 1", "show tables", "create table t (a int)"] {
            assert!(
                parse_larder_statement(sql, Dialect::MySql).is_none(),
                "{sql}"
            );
        }
    }
}
