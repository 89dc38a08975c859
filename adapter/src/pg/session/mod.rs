//! One client session: startup negotiation (TLS, GSSENC refusal, cancel requests), the
//! authentication pass-through and the message relay.
//!
//! The relay is a single poll loop per session ([`Relay::poll_relay`]) that owns both sockets,
//! all buffers and the session state, so there are no locks, channels or extra tasks on the hot
//! path. Each direction has an input buffer (complete messages are cut from it) and an output
//! buffer (all complete messages of a read are forwarded with one write). The two directions
//! never block each other: a slow client only stops Larder reading from the upstream once the
//! client's output buffer passes a high-water mark, and vice versa, so pipelining clients and
//! COPY cannot deadlock through the proxy.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, timeout_at, Instant, Sleep};
use tracing::{debug, warn};

use super::cancel::{forward_cancel, CancelKeyGuard, CancelRegistry, CancelTarget};
use super::conn::Conn;
use super::intercept::{
    ClientBatch, Dispatch, InflightGauge, InflightShare, InterceptorFactory, Peer, Pipeline,
    ResponseMode, SessionState, Slot, CAPTURE_SIZE_MAX_BYTES,
};
use super::messages::{
    backend_tag, frontend_tag, peek_frame, peek_header, Authentication, BackendKeyData,
    CancelRequest, Decode, Encode, ErrorResponse, FrameIter, ProtocolError, ReadyForQuery,
    SaslInitialResponse, StartupMessage, StartupPacket, Terminate,
};
use super::upstream::{UpstreamAddr, UpstreamConnector};
use super::{Interceptor, PgProxyConfig};
use crate::AdapterError;

mod buffers;
mod negotiate;
mod process;

use buffers::*;
pub(crate) use negotiate::handle_connection;
use negotiate::*;

/// Initial/extra capacity reserved for reads from the client.
const CLIENT_READ_CHUNK_BYTES: usize = 8 * 1024;
/// Initial/extra capacity reserved for reads from the upstream (result sets are larger).
const UPSTREAM_READ_CHUNK_BYTES: usize = 32 * 1024;
/// Reserve more before a read when less than this is free.
const READ_SPARE_MIN_BYTES: usize = 1024;
/// Stop reading a side while the output towards the other side holds this much (for the
/// client: its output buffer plus the local answers queued for it).
const OUT_HIGH_WATER_BYTES: usize = 512 * 1024;
/// Stop reading the client while this many asynchronously computed local answers are queued.
const LATER_QUEUED_MAX: usize = 64;
/// Largest client message before authentication completes (password, SASL and GSSAPI
/// tokens); Postgres allows authentication tokens of up to 65535 bytes.
const AUTH_MESSAGE_SIZE_MAX_BYTES: usize = 65_536;
/// A partially received client message gets at most this much extra buffer per read, however
/// large its declared size: memory follows the bytes that actually arrive.
const CLIENT_READ_GROW_MAX_BYTES: usize = 1 << 20;
/// Buffers grown past this (by one huge message) are replaced once empty.
const BUFFER_SHRINK_ABOVE_BYTES: usize = 1 << 20;
/// Upstream messages can be as large as a 1 GiB row plus overhead; the upstream is trusted.
const UPSTREAM_MESSAGE_SIZE_MAX_BYTES: usize = (1 << 30) + (1 << 20);
/// How long a closing session may take to flush its last messages (and, after a client-side
/// limit, keep reading and discarding the client's input until it closes, so that closing with
/// unread input, a TCP reset, does not destroy the error the client has not received yet).
const CLOSE_FLUSH_TIMEOUT_MS: u64 = 5_000;
/// SSLRequest/GSSENCRequest packets allowed before the StartupMessage.
const NEGOTIATION_PACKETS_MAX: usize = 4;
/// First byte of a TLS ClientHello record (direct TLS, `sslnegotiation=direct`).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// State shared by all sessions of one `serve` call.
pub(crate) struct Shared {
    pub cfg: Arc<PgProxyConfig>,
    pub connector: UpstreamConnector,
    pub cancels: Arc<CancelRegistry>,
    pub sessions: Arc<Semaphore>,
    pub interceptors: Arc<dyn InterceptorFactory>,
    /// Client statements in flight upstream, for load shedding.
    pub inflight: Arc<InflightGauge>,
}

/// Connects upstream, forwards the startup message and relays until the session ends.
async fn run_session(
    shared: &Arc<Shared>,
    client: Conn,
    mut startup: StartupMessage,
    peer: Peer,
    deadline: Instant,
    shutdown: watch::Receiver<bool>,
) {
    if startup.param("database").is_none() {
        if let Some(db) = &shared.cfg.upstream.dbname {
            startup.set_param("database", db);
        }
    }
    let state = SessionState::new(peer, startup.params.clone(), client.is_tls());
    let up = match timeout_at(deadline, shared.connector.connect()).await {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            let message = match &e {
                AdapterError::UpstreamConnect { .. } => format!("larder: {e}"),
                other => format!(
                    "larder: could not connect to upstream {}: {other}",
                    shared.cfg.upstream.address()
                ),
            };
            warn!(%peer, upstream = %shared.cfg.upstream.address(), error = %e,
                "could not connect to upstream");
            reject(client, "08006", &message).await;
            return;
        }
        Err(_) => {
            warn!(%peer, upstream = %shared.cfg.upstream.address(), "upstream connect timed out");
            let message = format!(
                "larder: could not connect to upstream {}: timed out",
                shared.cfg.upstream.address()
            );
            reject(client, "08006", &message).await;
            return;
        }
    };
    debug!(%peer, user = %state.user(), database = %state.database(),
        client_tls = state.client_tls(), upstream_tls = up.tls, "session started");
    let interceptor = shared.interceptors.create(&state);
    let mut relay = Relay::new(shared.clone(), client, up, state, interceptor, deadline);
    startup.encode(&mut relay.pipe.upstream_out);
    let started = Instant::now();
    let reason = drive(relay, shutdown).await;
    debug!(%peer, reason = %reason, duration_ms = started.elapsed().as_millis() as u64,
        "session closed");
}

/// Runs the relay while watching the shutdown signal.
///
/// The signal's future is polled once to register this task's waker, and after that only when
/// the receiver reports a change (an atomic version check): polling it on every wake-up cost
/// about a tenth of a pass-through query's instructions.
async fn drive(relay: Relay, mut shutdown: watch::Receiver<bool>) -> CloseReason {
    let mut relay = relay;
    if *shutdown.borrow_and_update() {
        relay.shutdown_requested = true;
    }
    let probe = shutdown.clone();
    let mut watching = !relay.shutdown_requested;
    let mut registered = false;
    let mut changed = pin!(shutdown.changed());
    std::future::poll_fn(|cx| {
        if watching && (!registered || probe.has_changed().unwrap_or(true)) {
            match changed.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => {
                    // Only `true` is ever sent (waiting on for another change would need a
                    // new future).
                    debug_assert!(*probe.borrow(), "shutdown signal set to false");
                    relay.shutdown_requested = *probe.borrow();
                    watching = false;
                }
                // The sender is gone: no shutdown can be signalled any more.
                Poll::Ready(Err(_)) => watching = false,
                Poll::Pending => registered = true,
            }
        }
        relay.poll_relay(cx)
    })
    .await
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum CloseReason {
    ClientTerminated,
    ClientEof,
    ClientGone(io::Error),
    ClientProtocol(ProtocolError),
    UpstreamEof,
    UpstreamGone(io::Error),
    UpstreamProtocol(ProtocolError),
    StartupTimeout,
    IdleTimeout {
        in_transaction: bool,
    },
    Shutdown,
    Interceptor(String),
    /// A client message declared a size over the limit in force.
    MessageTooLarge {
        len: usize,
        max: usize,
        limit: &'static str,
    },
    /// The client left more output unread than `client_output_max_bytes` while asking for
    /// more local answers.
    ClientOutputLimit {
        unread_bytes: usize,
        max_bytes: usize,
    },
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientTerminated => write!(f, "client terminated"),
            CloseReason::ClientEof => write!(f, "client closed the connection"),
            CloseReason::ClientGone(e) => write!(f, "client connection failed: {e}"),
            CloseReason::ClientProtocol(e) => write!(f, "client protocol violation: {e}"),
            CloseReason::UpstreamEof => write!(f, "upstream closed the connection"),
            CloseReason::UpstreamGone(e) => write!(f, "upstream connection failed: {e}"),
            CloseReason::UpstreamProtocol(e) => write!(f, "upstream protocol violation: {e}"),
            CloseReason::StartupTimeout => write!(f, "startup timed out"),
            CloseReason::IdleTimeout { .. } => write!(f, "idle timeout"),
            CloseReason::Shutdown => write!(f, "shutdown"),
            CloseReason::Interceptor(e) => write!(f, "interceptor failed: {e}"),
            CloseReason::MessageTooLarge { len, max, limit } => {
                write!(f, "client message of {len} bytes exceeds {limit} ({max})")
            }
            CloseReason::ClientOutputLimit {
                unread_bytes,
                max_bytes,
            } => write!(
                f,
                "client left {unread_bytes} bytes unread, over client_output_max_bytes \
                 ({max_bytes})"
            ),
        }
    }
}

impl CloseReason {
    /// The FATAL error the client gets, if any.
    fn client_error(&self) -> Option<ErrorResponse> {
        Some(match self {
            CloseReason::ClientTerminated
            | CloseReason::ClientEof
            | CloseReason::ClientGone(_)
            | CloseReason::UpstreamEof => return None,
            CloseReason::ClientProtocol(e) => {
                ErrorResponse::fatal("08P01", format!("invalid frontend message: {e}"))
            }
            CloseReason::UpstreamGone(e) => {
                ErrorResponse::fatal("08006", format!("larder: lost connection to upstream: {e}"))
            }
            CloseReason::UpstreamProtocol(e) => ErrorResponse::fatal(
                "08P01",
                format!("larder: invalid message from upstream: {e}"),
            ),
            CloseReason::StartupTimeout => {
                ErrorResponse::fatal("57014", "canceling authentication due to timeout")
            }
            CloseReason::IdleTimeout {
                in_transaction: false,
            } => ErrorResponse::fatal(
                "57P05",
                "terminating connection due to idle-session timeout",
            ),
            CloseReason::IdleTimeout {
                in_transaction: true,
            } => ErrorResponse::fatal(
                "25P03",
                "terminating connection due to idle-in-transaction timeout",
            ),
            CloseReason::Shutdown => ErrorResponse::fatal(
                "57P01",
                "terminating connection due to administrator command",
            ),
            // As Postgres answers an invalid message length: a protocol violation.
            CloseReason::MessageTooLarge { len, max, limit } => ErrorResponse::fatal(
                "08P01",
                format!("larder: message of {len} bytes exceeds the limit {limit} ({max} bytes)"),
            ),
            CloseReason::ClientOutputLimit {
                unread_bytes,
                max_bytes,
            } => ErrorResponse::fatal(
                "53400",
                format!(
                    "larder: terminating connection: the client left {unread_bytes} bytes of \
                     responses unread, over the limit client_output_max_bytes of {max_bytes} \
                     bytes"
                ),
            ),
            CloseReason::Interceptor(e) => {
                ErrorResponse::fatal("XX000", format!("larder: internal error: {e}"))
            }
        })
    }
}

/// What the session timer is currently armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerMode {
    Off,
    Startup,
    Idle,
    Closing,
}

/// The relay state of one session (see the module docs).
struct Relay {
    shared: Arc<Shared>,
    client: Conn,
    upstream: Conn,
    upstream_addr: UpstreamAddr,
    upstream_tls: bool,
    /// Bytes read from the client, not yet cut into messages.
    cbuf: BytesMut,
    /// Bytes read from the upstream, not yet cut into messages.
    ubuf: BytesMut,
    pipe: Pipeline,
    client_flush_pending: bool,
    upstream_flush_pending: bool,
    client_alive: bool,
    upstream_alive: bool,
    client_shutdown_done: bool,
    state: SessionState,
    interceptor: Box<dyn Interceptor>,
    cancel_key: Option<CancelKeyGuard>,
    closing: Option<CloseReason>,
    /// While closing, read and discard client input until the client closes (see
    /// [`CLOSE_FLUSH_TIMEOUT_MS`]).
    linger: bool,
    shutdown_requested: bool,
    /// Skipping the rest of an extended-protocol unit refused by load shedding, up to its Sync.
    shedding: bool,
    timer: Pin<Box<Sleep>>,
    timer_mode: TimerMode,
    startup_deadline: Instant,
    idle_timeout: Option<Duration>,
    last_activity: Instant,
}

impl Relay {
    fn new(
        shared: Arc<Shared>,
        client: Conn,
        up: super::upstream::UpstreamConn,
        state: SessionState,
        interceptor: Box<dyn Interceptor>,
        startup_deadline: Instant,
    ) -> Self {
        let idle_timeout = match shared.cfg.idle_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let pipe = Pipeline {
            client_output_max_bytes: Some(shared.cfg.client_output_max_bytes),
            inflight: Some(InflightShare::new(shared.inflight.clone())),
            metrics: Some(shared.cfg.metrics.clone()),
            ..Pipeline::default()
        };
        Relay {
            shared,
            client,
            upstream: up.conn,
            upstream_addr: up.addr,
            upstream_tls: up.tls,
            cbuf: BytesMut::with_capacity(CLIENT_READ_CHUNK_BYTES),
            ubuf: BytesMut::with_capacity(UPSTREAM_READ_CHUNK_BYTES),
            pipe,
            client_flush_pending: false,
            upstream_flush_pending: false,
            client_alive: true,
            upstream_alive: true,
            client_shutdown_done: false,
            state,
            interceptor,
            cancel_key: None,
            closing: None,
            linger: false,
            shutdown_requested: false,
            shedding: false,
            timer: Box::pin(sleep_until(startup_deadline)),
            timer_mode: TimerMode::Startup,
            startup_deadline,
            idle_timeout,
            last_activity: Instant::now(),
        }
    }

    /// Waiting for the client with nothing in flight.
    fn is_idle(&self) -> bool {
        self.state.authenticated
            && self.pipe.slots.is_empty()
            && !self.pipe.unsynced
            && self.cbuf.is_empty()
    }

    fn touch(&mut self) {
        if self.idle_timeout.is_some() {
            self.last_activity = Instant::now();
        }
    }

    fn arm_timer(&mut self, mode: TimerMode, at: Instant) {
        self.timer_mode = mode;
        self.timer.as_mut().reset(at);
    }

    /// Stops reading, queues the final messages for both sides and arms the flush deadline.
    fn start_close(&mut self, reason: CloseReason) {
        if self.closing.is_some() {
            return;
        }
        if self.client_alive {
            if let Some(err) = reason.client_error() {
                err.encode(&mut self.pipe.client_out);
            }
        } else {
            self.pipe.client_out.clear();
        }
        if self.upstream_alive {
            if !self.pipe.terminated {
                Terminate.encode(&mut self.pipe.upstream_out);
                self.pipe.terminated = true;
            }
        } else {
            self.pipe.upstream_out.clear();
        }
        self.linger = matches!(reason, CloseReason::ClientOutputLimit { .. });
        self.cbuf.clear();
        let at = Instant::now() + Duration::from_millis(CLOSE_FLUSH_TIMEOUT_MS);
        self.arm_timer(TimerMode::Closing, at);
        self.closing = Some(reason);
    }

    /// The whole session as one poll function; returns when the session is over.
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        loop {
            let upstream_drained = self.poll_upstream_out(cx);
            let client_drained = self.poll_client_out(cx);
            if self.closing.is_some() {
                return self.poll_closing(cx, upstream_drained && client_drained);
            }
            let mut progress = false;

            let upstream_backlog = if self.waiting_for_local_answer() {
                self.ubuf.len()
            } else {
                self.pipe.client_out.len()
            };
            if self.upstream_alive && upstream_backlog < OUT_HIGH_WATER_BYTES {
                // The upstream is trusted: room for a whole large message is made at once.
                reserve_for_read(
                    &mut self.ubuf,
                    UPSTREAM_READ_CHUNK_BYTES,
                    UPSTREAM_MESSAGE_SIZE_MAX_BYTES,
                    Growth::WholeMessage,
                );
                match poll_read_buf(&mut self.upstream, &mut self.ubuf, cx) {
                    Poll::Ready(Ok(0)) => {
                        self.upstream_alive = false;
                        self.start_close(CloseReason::UpstreamEof);
                        continue;
                    }
                    Poll::Ready(Ok(_)) => {
                        self.touch();
                        if let Err(e) = self.process_upstream() {
                            self.start_close(CloseReason::UpstreamProtocol(e));
                            continue;
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.upstream_alive = false;
                        self.start_close(CloseReason::UpstreamGone(e));
                        continue;
                    }
                    Poll::Pending => {}
                }
            }

            // Unread responses, local ones included, throttle the client like the upstream
            // does: a client that pipelines without reading is not read any further.
            if self.client_alive
                && !self.pipe.terminated
                && self.pipe.upstream_out.len() < OUT_HIGH_WATER_BYTES
                && self.pipe.client_backlog_bytes() < OUT_HIGH_WATER_BYTES
                && self.pipe.later_queued < LATER_QUEUED_MAX
                && !self.pipe.waiting()
            {
                let (max, _) = self.client_message_limit();
                reserve_for_read(
                    &mut self.cbuf,
                    CLIENT_READ_CHUNK_BYTES,
                    max,
                    Growth::FollowArrivals,
                );
                match poll_read_buf(&mut self.client, &mut self.cbuf, cx) {
                    Poll::Ready(Ok(0)) => {
                        self.client_alive = false;
                        self.start_close(CloseReason::ClientEof);
                        continue;
                    }
                    Poll::Ready(Ok(_)) => {
                        self.touch();
                        if let Err(reason) = self.process_client() {
                            self.start_close(reason);
                            continue;
                        }
                        if let Some(reason) = self.output_overflow() {
                            self.start_close(reason);
                            continue;
                        }
                        if self.pipe.terminated {
                            self.start_close(CloseReason::ClientTerminated);
                            continue;
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.client_alive = false;
                        self.start_close(CloseReason::ClientGone(e));
                        continue;
                    }
                    Poll::Pending => {}
                }
            }

            if self.pipe.poll_later_front(cx) {
                progress = true;
                if let Some(reason) = self.output_overflow() {
                    self.start_close(reason);
                    continue;
                }
                // Upstream output held behind the local answer can flow now.
                if let Err(e) = self.process_upstream() {
                    self.start_close(CloseReason::UpstreamProtocol(e));
                    continue;
                }
            }
            if self.shutdown_requested && self.is_idle() {
                self.start_close(CloseReason::Shutdown);
                continue;
            }
            if let Some(reason) = self.poll_timer(cx) {
                self.start_close(reason);
                continue;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Writes pending output to the upstream; true when nothing is left (or it is gone).
    fn poll_upstream_out(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.upstream_alive {
            return true;
        }
        match poll_drain(
            &mut self.upstream,
            &mut self.pipe.upstream_out,
            &mut self.upstream_flush_pending,
            cx,
        ) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                self.upstream_alive = false;
                self.pipe.upstream_out.clear();
                self.start_close(CloseReason::UpstreamGone(e));
                true
            }
            Poll::Pending => false,
        }
    }

    /// Writes pending output to the client; true when nothing is left (or it is gone).
    fn poll_client_out(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.client_alive {
            return true;
        }
        match poll_drain(
            &mut self.client,
            &mut self.pipe.client_out,
            &mut self.client_flush_pending,
            cx,
        ) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                self.client_alive = false;
                self.pipe.client_out.clear();
                self.start_close(CloseReason::ClientGone(e));
                true
            }
            Poll::Pending => false,
        }
    }

    fn poll_closing(&mut self, cx: &mut Context<'_>, drained: bool) -> Poll<CloseReason> {
        if drained {
            if self.client_alive
                && !self.client_shutdown_done
                && Pin::new(&mut self.client).poll_shutdown(cx).is_ready()
            {
                self.client_shutdown_done = true;
            }
            if self.client_shutdown_done && self.linger && self.client_alive {
                self.poll_discard_client(cx);
            }
            if !self.client_alive || (self.client_shutdown_done && !self.linger) {
                return Poll::Ready(self.take_close_reason());
            }
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.take_close_reason()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads and drops client input until the client closes (a lingering close).
    fn poll_discard_client(&mut self, cx: &mut Context<'_>) {
        loop {
            self.cbuf.clear();
            self.cbuf.reserve(CLIENT_READ_CHUNK_BYTES);
            match poll_read_buf(&mut self.client, &mut self.cbuf, cx) {
                Poll::Ready(Ok(n)) if n > 0 => continue,
                Poll::Ready(_) => {
                    self.client_alive = false;
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    /// The session must end because a local answer passed `client_output_max_bytes`.
    fn output_overflow(&mut self) -> Option<CloseReason> {
        let unread_bytes = self.pipe.output_overflow?;
        let max_bytes = self.shared.cfg.client_output_max_bytes;
        warn!(peer = %self.state.peer(), user = %self.state.user(), unread_bytes,
            client_output_max_bytes = max_bytes,
            "client leaves its responses unread; closing the session");
        Some(CloseReason::ClientOutputLimit {
            unread_bytes,
            max_bytes,
        })
    }

    /// The largest client message accepted now, and the name of that limit.
    fn client_message_limit(&self) -> (usize, &'static str) {
        let max = self.shared.cfg.message_size_max_bytes;
        if self.state.authenticated {
            (max, "message_size_max_bytes")
        } else {
            (
                max.min(AUTH_MESSAGE_SIZE_MAX_BYTES),
                "before authentication",
            )
        }
    }

    fn take_close_reason(&mut self) -> CloseReason {
        self.closing
            .take()
            .unwrap_or(CloseReason::Interceptor("close without reason".into()))
    }

    /// Polls the startup/idle timer; returns a reason to close when it expired.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<CloseReason> {
        let want = if !self.state.authenticated {
            TimerMode::Startup
        } else if self.idle_timeout.is_some() {
            TimerMode::Idle
        } else {
            TimerMode::Off
        };
        if want != self.timer_mode {
            match (want, self.idle_timeout) {
                (TimerMode::Startup, _) => self.arm_timer(want, self.startup_deadline),
                (TimerMode::Idle, Some(idle)) => self.arm_timer(want, self.last_activity + idle),
                _ => self.timer_mode = want,
            }
        }
        if self.timer_mode == TimerMode::Off || self.timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        match (self.timer_mode, self.idle_timeout) {
            (TimerMode::Startup, _) => Some(CloseReason::StartupTimeout),
            (TimerMode::Idle, Some(idle)) => {
                // The deadline moves lazily: re-arm only when the old one fires.
                let now = Instant::now();
                let due = self.last_activity + idle;
                if now >= due && self.is_idle() {
                    return Some(CloseReason::IdleTimeout {
                        in_transaction: self.state.transaction_status
                            != super::messages::TransactionStatus::Idle,
                    });
                }
                let next = if now >= due { now + idle } else { due };
                self.timer.as_mut().reset(next);
                let _ = self.timer.as_mut().poll(cx);
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_plus_mechanisms() {
        let mut buf = BytesMut::new();
        Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
        }
        .encode(&mut buf);
        let out = strip_channel_binding(&buf[5..]).unwrap().unwrap();
        assert_eq!(
            Authentication::decode_body(&out[5..]).unwrap(),
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256".into()]
            }
        );
        let mut plain = BytesMut::new();
        Authentication::Md5Password { salt: [1, 2, 3, 4] }.encode(&mut plain);
        assert!(strip_channel_binding(&plain[5..]).unwrap().is_none());
    }

    #[test]
    fn reserve_makes_room_for_partial_message() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"d\0\x01\0\x04");
        // Trusted (upstream): room for the whole declared message at once.
        reserve_for_read(&mut buf, 1024, 1 << 20, Growth::WholeMessage);
        assert!(buf.capacity() > 65536);
        let mut big = BytesMut::with_capacity(4 << 20);
        reserve_for_read(&mut big, 1024, 1 << 20, Growth::WholeMessage);
        assert!(big.capacity() < (4 << 20));
    }

    #[test]
    fn reserve_follows_arriving_bytes_for_clients() {
        // A client declares 64 MiB and sends 5 bytes: only a chunk is reserved.
        let mut buf = BytesMut::with_capacity(8192);
        buf.extend_from_slice(b"Q\x04\0\0\0");
        reserve_for_read(&mut buf, 8192, 64 << 20, Growth::FollowArrivals);
        assert!(buf.capacity() <= 16 * 1024, "reserved {}", buf.capacity());
        // As bytes arrive the buffer grows geometrically, never past twice what arrived plus
        // one step, and reaches the whole message.
        let declared = 8 << 20;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q");
        buf.extend_from_slice(&((declared - 1) as u32).to_be_bytes());
        while buf.len() < declared {
            reserve_for_read(&mut buf, 8192, 64 << 20, Growth::FollowArrivals);
            assert!(
                buf.capacity() <= 2 * buf.len() + (1 << 20) + 8192,
                "{} reserved for {} buffered",
                buf.capacity(),
                buf.len()
            );
            let spare = (buf.capacity() - buf.len()).min(declared - buf.len());
            buf.extend_from_slice(&vec![b'x'; spare]);
        }
        assert_eq!(buf.len(), declared);
    }

    #[allow(dead_code)]
    fn _assert_send(relay: Relay, rx: watch::Receiver<bool>) {
        fn is_send<T: Send>(_: T) {}
        is_send(drive(relay, rx));
    }
}
