//! The hook where a later layer (the cache) can answer client messages locally.
//!
//! Every complete client message passes through [`Interceptor::on_client_messages`] after
//! authentication, in batches (all complete messages read in one socket read), before anything is
//! forwarded. The default ([`PassThrough`]) forwards the batch unchanged with one copy.
//!
//! Ordering: responses to the client must come in request order even when some requests are
//! answered locally. The session tracks *sync points*: every forwarded `Query`, `Sync` or
//! `FunctionCall` is answered by exactly one upstream `ReadyForQuery`. A local response passed to
//! [`Dispatch::respond`] is queued behind all sync points forwarded before it and written to the
//! client right after the upstream's ReadyForQuery for the last of them. So an interceptor must
//! answer locally only whole units ending at a sync point (e.g. `Query`, or
//! `Bind/Describe/Execute/Sync`), including the final ReadyForQuery in its response.
//! [`ResponseMode::Discard`] lets it forward messages whose responses the client must not see
//! (e.g. re-creating upstream a statement the client prepared while being served locally), and
//! [`Dispatch::capture`] sends a query of its own whose response goes to
//! [`Interceptor::on_captured`] instead of the client. [`Dispatch::respond_later`] queues a
//! local answer that is computed asynchronously (it is polled by the session, in order).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use super::messages::{frontend_tag, FrameIter, RawFrame, TransactionStatus};
use crate::AdapterError;

/// Where a client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A client on Larder's Unix socket (`--unix-socket-dir`).
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix => f.write_str("[local]"),
        }
    }
}

/// What Larder knows about a client session; read-only for interceptors.
#[derive(Debug, Clone)]
pub struct SessionState {
    pub(crate) peer: Peer,
    pub(crate) user: String,
    pub(crate) database: String,
    pub(crate) startup_params: Vec<(String, String)>,
    pub(crate) parameters: HashMap<String, String>,
    pub(crate) transaction_status: TransactionStatus,
    pub(crate) authenticated: bool,
    pub(crate) client_tls: bool,
}

impl SessionState {
    pub(crate) fn new(peer: Peer, startup_params: Vec<(String, String)>, client_tls: bool) -> Self {
        let get = |k: &str| {
            startup_params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let user = get("user").unwrap_or_default();
        // Postgres defaults the database to the user name.
        let database = get("database").unwrap_or_else(|| user.clone());
        SessionState {
            peer,
            user,
            database,
            startup_params,
            parameters: HashMap::new(),
            transaction_status: TransactionStatus::Idle,
            authenticated: false,
            client_tls,
        }
    }

    /// The client's address (or [`Peer::Unix`]).
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The user the client authenticated as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The database of this session.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The parameters of the client's StartupMessage as forwarded upstream.
    pub fn startup_params(&self) -> &[(String, String)] {
        &self.startup_params
    }

    /// A server-reported run-time parameter (`TimeZone`, `DateStyle`, `server_version`,
    /// `client_encoding`, `IntervalStyle`, `standard_conforming_strings`, ...), kept current
    /// from ParameterStatus messages.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// All server-reported parameters.
    pub fn parameters(&self) -> &HashMap<String, String> {
        &self.parameters
    }

    /// Transaction status from the latest ReadyForQuery.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.transaction_status
    }

    /// True once the upstream sent the first ReadyForQuery.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// True when the client reached Larder over TLS.
    pub fn client_tls(&self) -> bool {
        self.client_tls
    }
}

/// The complete client messages of one read, in order.
#[derive(Debug, Clone, Copy)]
pub struct ClientBatch<'a> {
    pub(crate) raw: &'a [u8],
}

impl<'a> ClientBatch<'a> {
    /// The messages; each was already validated (known type, sane length).
    pub fn iter(&self) -> impl Iterator<Item = RawFrame<'a>> + 'a {
        FrameIter::new(self.raw, usize::MAX).map_while(Result::ok)
    }

    /// All messages as encoded on the wire.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

/// How the upstream responses to forwarded messages are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Relay them to the client.
    Relay,
    /// Drop them, up to and including each sync point's ReadyForQuery. Asynchronous messages
    /// (ParameterStatus, NotificationResponse) are still relayed.
    Discard,
    /// Collect them, up to and including each sync point's ReadyForQuery, and hand them to
    /// [`Interceptor::on_captured`]. Asynchronous messages are still relayed.
    Capture,
}

/// A local answer computed asynchronously: complete backend messages ending with
/// ReadyForQuery.
pub type LocalResponse = Pin<Box<dyn Future<Output = Bytes> + Send + 'static>>;

/// Most bytes collected for one captured response; the rest is dropped.
pub const CAPTURE_SIZE_MAX_BYTES: usize = 1 << 20;

/// One expected response unit, in client order.
pub(crate) enum Slot {
    /// Relay upstream output up to the next ReadyForQuery.
    Relay,
    /// Drop upstream output up to the next ReadyForQuery.
    Discard,
    /// Collect upstream output up to the next ReadyForQuery for the interceptor.
    Capture,
    /// Bytes produced by Larder, written once everything before it is out.
    Local(Bytes),
    /// Bytes Larder is still computing; written when ready and everything before it is out.
    Later(LocalResponse),
}

impl Slot {
    /// True for slots answered by an upstream ReadyForQuery.
    fn is_sync_point(&self) -> bool {
        matches!(self, Slot::Relay | Slot::Discard | Slot::Capture)
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Relay => write!(f, "Relay"),
            Slot::Discard => write!(f, "Discard"),
            Slot::Capture => write!(f, "Capture"),
            Slot::Local(b) => write!(f, "Local({} bytes)", b.len()),
            Slot::Later(_) => write!(f, "Later"),
        }
    }
}

/// Buffers and ordering state shared by the two directions of a session.
#[derive(Debug, Default)]
pub(crate) struct Pipeline {
    pub upstream_out: BytesMut,
    pub client_out: BytesMut,
    pub slots: VecDeque<Slot>,
    /// Extended-protocol messages were forwarded since the last sync point.
    pub unsynced: bool,
    /// The client's Terminate was forwarded.
    pub terminated: bool,
    /// The response being captured for the interceptor.
    pub captured: BytesMut,
    /// Bytes of the [`Slot::Local`] answers queued in `slots`.
    pub local_queued_bytes: usize,
    /// Number of [`Slot::Later`] answers queued in `slots`.
    pub later_queued: usize,
    /// Most unread bytes (client output plus queued local answers) a local answer may add to;
    /// `None` is unlimited. An answer alone larger than this still goes out once the client
    /// has read everything before it.
    pub client_output_max_bytes: Option<usize>,
    /// Set when a local answer was dropped because it would have passed
    /// `client_output_max_bytes`: the unread bytes it would have made. The session ends.
    pub output_overflow: Option<usize>,
    /// Larder's own captured units waiting for the upstream to reach a boundary (see
    /// [`Pipeline::at_boundary`]); sent, in order, by [`Pipeline::release_deferred`].
    pub deferred: BytesMut,
    /// When each relayed sync point still waiting for its ReadyForQuery was forwarded, and
    /// where its duration is counted (`None`: not timed).
    pub relay_started: VecDeque<std::time::Instant>,
    pub metrics: Option<std::sync::Arc<crate::metrics::ProxyMetrics>>,
    /// Where sent messages stand: the segment (sync points sent so far) and the Parse messages
    /// sent in it.
    pub sent: SegmentCursor,
    /// Where upstream responses stand: the segment (ReadyForQuery received so far) and the
    /// ParseCompletes received in it.
    pub received: SegmentCursor,
    /// Parses Larder put into the client's stream (see [`Dispatch::inject_parse`]), oldest
    /// first, whose ParseComplete has not come back yet.
    pub injected: VecDeque<InjectedParse>,
    /// Client statements in flight upstream across all sessions (the session's own
    /// [`Slot::Relay`] slots are counted in it).
    pub inflight: Option<InflightShare>,
}

/// Client statements (sync points) in flight upstream across the sessions of one proxy, with
/// the bound past which new statements are refused.
#[derive(Debug, Default)]
pub struct InflightGauge {
    count: AtomicUsize,
    /// 0: no bound.
    pub max: usize,
}

impl InflightGauge {
    pub fn new(max: usize) -> Self {
        InflightGauge {
            count: AtomicUsize::new(0),
            max,
        }
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True when a new statement must be refused.
    pub fn full(&self) -> bool {
        self.max != 0 && self.current() >= self.max
    }

    fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        let before = self.count.fetch_sub(n, Ordering::Relaxed);
        debug_assert!(before >= n, "in-flight gauge below zero");
    }
}

/// One session's part of an [`InflightGauge`]: what it added, taken back when it ends.
#[derive(Debug)]
pub struct InflightShare {
    gauge: Arc<InflightGauge>,
    held: usize,
}

impl InflightShare {
    pub fn new(gauge: Arc<InflightGauge>) -> Self {
        InflightShare { gauge, held: 0 }
    }

    pub fn gauge(&self) -> &InflightGauge {
        &self.gauge
    }

    fn add(&mut self) {
        self.held += 1;
        self.gauge.add(1);
    }

    fn sub(&mut self) {
        debug_assert!(
            self.held > 0,
            "a session answered more statements than it sent"
        );
        if self.held > 0 {
            self.held -= 1;
            self.gauge.sub(1);
        }
    }
}

impl Drop for InflightShare {
    fn drop(&mut self) {
        self.gauge.sub(self.held);
    }
}

/// A position in the upstream conversation, counted in segments (the messages up to and
/// including one sync point) and Parse messages within a segment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentCursor {
    pub segment: u64,
    pub parses: u32,
}

/// A Parse Larder sent in the middle of the client's messages: its ParseComplete is the
/// `ordinal`-th of its segment and is dropped. If the segment ends without it (the Parse
/// failed, or an earlier error made the upstream skip it), the interceptor is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InjectedParse {
    pub at: SegmentCursor,
    pub statement: String,
    pub token: u64,
}

impl Pipeline {
    /// Number of forwarded sync points still waiting for their ReadyForQuery.
    pub fn pending_sync_points(&self) -> usize {
        self.slots.iter().filter(|s| s.is_sync_point()).count()
    }

    /// Response bytes the client has not read yet that Larder already holds: the client output
    /// buffer and the local answers queued behind forwarded statements.
    pub fn client_backlog_bytes(&self) -> usize {
        self.client_out.len() + self.local_queued_bytes
    }

    /// Whether a local answer of `len` bytes may be added to the client's unread output;
    /// records the overflow otherwise.
    fn admit_local(&mut self, len: usize) -> bool {
        if self.output_overflow.is_some() {
            return false;
        }
        let Some(max) = self.client_output_max_bytes else {
            return true;
        };
        let unread = self.client_backlog_bytes();
        if unread > 0 && unread.saturating_add(len) > max {
            self.output_overflow = Some(unread.saturating_add(len));
            return false;
        }
        true
    }

    /// True when the upstream session is at a ReadyForQuery boundary with nothing of the
    /// client's in flight: every forwarded sync point has been answered and no extended-protocol
    /// messages wait for their Sync. Only then may Larder send a unit of its own: otherwise it
    /// would land in the middle of a COPY (the upstream fails the session with "unexpected
    /// message type 0x50 during COPY from stdin"), of a pipeline (its Sync would end the
    /// client's implicit transaction or error recovery early) or of a statement.
    pub fn at_boundary(&self) -> bool {
        self.pending_sync_points() == 0 && !self.unsynced
    }

    /// Sends the deferred captured units once the upstream is at a boundary (called by the
    /// session after every ReadyForQuery).
    pub fn release_deferred(&mut self) {
        if self.deferred.is_empty() || self.terminated || !self.at_boundary() {
            return;
        }
        let raw = std::mem::take(&mut self.deferred);
        self.send(&raw, ResponseMode::Capture);
    }

    /// Queues complete frontend messages for the upstream and the slots of their responses.
    fn send(&mut self, raw: &[u8], mode: ResponseMode) {
        self.upstream_out.extend_from_slice(raw);
        let mut it = FrameIter::new(raw, usize::MAX);
        for msg in it.by_ref().map_while(Result::ok) {
            match msg.frame.tag {
                frontend_tag::QUERY | frontend_tag::SYNC | frontend_tag::FUNCTION_CALL => {
                    if mode == ResponseMode::Relay {
                        if let Some(share) = &mut self.inflight {
                            share.add();
                        }
                        if self.metrics.is_some() {
                            self.relay_started.push_back(std::time::Instant::now());
                        }
                    }
                    self.slots.push_back(match mode {
                        ResponseMode::Relay => Slot::Relay,
                        ResponseMode::Discard => Slot::Discard,
                        ResponseMode::Capture => Slot::Capture,
                    });
                    self.unsynced = false;
                    self.sent = SegmentCursor {
                        segment: self.sent.segment + 1,
                        parses: 0,
                    };
                }
                frontend_tag::PARSE => {
                    self.unsynced = true;
                    self.sent.parses += 1;
                }
                frontend_tag::BIND
                | frontend_tag::DESCRIBE
                | frontend_tag::EXECUTE
                | frontend_tag::CLOSE
                | frontend_tag::FLUSH => self.unsynced = true,
                frontend_tag::TERMINATE => self.terminated = true,
                _ => {}
            }
        }
        debug_assert_eq!(
            it.consumed(),
            raw.len(),
            "send_upstream needs whole messages"
        );
    }

    /// Removes the slot at the front, answered by a ReadyForQuery (a relayed one's duration
    /// is counted).
    pub fn pop_answered(&mut self) -> Option<Slot> {
        let slot = self.slots.pop_front();
        if let Some(Slot::Relay) = &slot {
            if let Some(share) = &mut self.inflight {
                share.sub();
            }
            if let (Some(started), Some(m)) = (self.relay_started.pop_front(), &self.metrics) {
                m.upstream_done(started);
            }
        }
        slot
    }

    /// Counts a ParseComplete from the upstream (after authentication); true if it answers a
    /// Parse Larder injected, so it must not reach the client.
    pub fn on_parse_complete(&mut self) -> bool {
        self.received.parses += 1;
        match self.injected.front() {
            Some(p) if p.at == self.received => {
                self.injected.pop_front();
                true
            }
            _ => false,
        }
    }

    /// Ends the segment being answered (a ReadyForQuery after authentication); returns the
    /// injected Parses of that segment that never completed.
    pub fn end_segment(&mut self) -> Vec<InjectedParse> {
        let ended = self.received.segment;
        self.received = SegmentCursor {
            segment: ended + 1,
            parses: 0,
        };
        let mut lost = Vec::new();
        while self.injected.front().is_some_and(|p| p.at.segment <= ended) {
            lost.extend(self.injected.pop_front());
        }
        lost
    }

    /// Appends leading ready local responses to the client output.
    pub fn drain_local_front(&mut self) {
        while let Some(Slot::Local(_)) = self.slots.front() {
            if let Some(Slot::Local(bytes)) = self.slots.pop_front() {
                self.local_queued_bytes -= bytes.len();
                self.client_out.extend_from_slice(&bytes);
            }
        }
    }

    /// Polls a pending local response at the front; true if one completed.
    pub fn poll_later_front(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while let Some(Slot::Later(fut)) = self.slots.front_mut() {
            let Poll::Ready(bytes) = fut.as_mut().poll(cx) else {
                break;
            };
            self.slots.pop_front();
            self.later_queued -= 1;
            if self.admit_local(bytes.len()) {
                self.client_out.extend_from_slice(&bytes);
            }
            self.drain_local_front();
            progress = true;
        }
        progress
    }
}

/// What an interceptor can do with client messages.
pub struct Dispatch<'a> {
    pub(crate) pipe: &'a mut Pipeline,
}

impl Dispatch<'_> {
    /// Forwards one client message unchanged, relaying its responses.
    pub fn forward(&mut self, msg: &RawFrame<'_>) {
        self.send_upstream(msg.raw, ResponseMode::Relay);
    }

    /// Forwards the whole batch unchanged (the pass-through fast path).
    pub fn forward_all(&mut self, batch: &ClientBatch<'_>) {
        self.send_upstream(batch.raw, ResponseMode::Relay);
    }

    /// Sends complete, well-formed frontend messages upstream (forwarded or synthesized).
    pub fn send_upstream(&mut self, raw: &[u8], mode: ResponseMode) {
        self.pipe.send(raw, mode);
    }

    /// Sends one Parse message of Larder's in the middle of the client's messages, without a
    /// sync point of its own (so it never ends the client's pipeline or implicit transaction
    /// early). Its ParseComplete is dropped; an error it causes reaches the client, in the
    /// place of the response to the client's next message. If it does not complete, the
    /// interceptor's [`Interceptor::on_parse_lost`] gets `statement` and `token`.
    pub fn inject_parse(&mut self, parse: &[u8], statement: &str, token: u64) {
        debug_assert_eq!(parse.first(), Some(&frontend_tag::PARSE));
        self.pipe.send(parse, ResponseMode::Relay);
        self.pipe.injected.push_back(InjectedParse {
            at: self.pipe.sent,
            statement: statement.to_string(),
            token,
        });
    }

    /// Answers the client locally. `response` must be complete backend messages ending with
    /// ReadyForQuery; it is written after the responses to everything forwarded before.
    ///
    /// If the client leaves too much output unread (see `client_output_max_bytes` in
    /// [`crate::PgProxyConfig`]), the answer is dropped and the session ends with SQLSTATE
    /// 53400 once the interceptor returns.
    pub fn respond(&mut self, response: Bytes) {
        if !self.pipe.admit_local(response.len()) {
            return;
        }
        if self.pipe.slots.is_empty() {
            self.pipe.client_out.extend_from_slice(&response);
        } else {
            self.pipe.local_queued_bytes += response.len();
            self.pipe.slots.push_back(Slot::Local(response));
        }
    }

    /// Answers the client locally with bytes computed asynchronously (same rules as
    /// [`Dispatch::respond`]); the session polls the future once everything before it is out.
    pub fn respond_later(&mut self, response: LocalResponse) {
        self.pipe.later_queued += 1;
        self.pipe.slots.push_back(Slot::Later(response));
    }

    /// Sends Larder's own complete messages (ending with a sync point) upstream; the response
    /// goes to [`Interceptor::on_captured`] instead of the client.
    ///
    /// Never in the middle of something of the client's: unless the upstream is at a boundary
    /// ([`Pipeline::at_boundary`]) the unit waits, behind earlier deferred ones, until the
    /// ReadyForQuery that ends what is in flight (so its answer may describe the session after
    /// later client statements too; the interceptor must not rely on anything else).
    pub fn capture(&mut self, raw: &[u8]) {
        if self.pipe.deferred.is_empty() && self.pipe.at_boundary() {
            self.send_upstream(raw, ResponseMode::Capture);
        } else {
            self.pipe.deferred.extend_from_slice(raw);
        }
    }

    /// Like [`Dispatch::capture`], but sent at once, right behind the client's last unit (in
    /// the same round trip), when that unit is complete (it ended at a sync point) and nothing
    /// of Larder's waits before it. The caller must know the client's unit cannot leave the
    /// upstream in COPY (whose data would then follow Larder's messages).
    pub fn capture_behind(&mut self, raw: &[u8]) {
        if self.pipe.unsynced || !self.pipe.deferred.is_empty() {
            self.capture(raw);
        } else {
            self.send_upstream(raw, ResponseMode::Capture);
        }
    }

    /// Sync points forwarded earlier whose ReadyForQuery has not arrived yet.
    pub fn pending_sync_points(&self) -> usize {
        self.pipe.pending_sync_points()
    }

    /// Client statements forwarded earlier whose ReadyForQuery has not arrived yet (Larder's own
    /// discarded or captured statements do not count: they change no session state the
    /// interceptor relies on).
    pub fn pending_client_statements(&self) -> usize {
        self.pipe
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Relay))
            .count()
    }

    /// True when extended-protocol messages were forwarded without a Sync yet: their responses
    /// are not delimited by a ReadyForQuery, so a local answer now could interleave with them.
    pub fn unsynced(&self) -> bool {
        self.pipe.unsynced
    }
}

/// Sees every client message after authentication and decides what happens to it.
pub trait Interceptor: Send {
    /// Called once per read with all complete client messages. The default forwards them.
    /// An error ends the session (the client gets a FATAL error).
    fn on_client_messages(
        &mut self,
        session: &SessionState,
        batch: &ClientBatch<'_>,
        dispatch: &mut Dispatch<'_>,
    ) -> Result<(), AdapterError> {
        let _ = session;
        dispatch.forward_all(batch);
        Ok(())
    }

    /// Receives the upstream response (all messages up to and including ReadyForQuery, at most
    /// [`CAPTURE_SIZE_MAX_BYTES`]) to messages sent with [`Dispatch::capture`], in order.
    fn on_captured(&mut self, session: &SessionState, response: &[u8]) {
        let _ = (session, response);
    }

    /// A Parse sent with [`Dispatch::inject_parse`] did not complete: the upstream does not
    /// hold that statement.
    fn on_parse_lost(&mut self, session: &SessionState, statement: &str, token: u64) {
        let _ = (session, statement, token);
    }
}

/// Creates the interceptor of each new session.
pub trait InterceptorFactory: Send + Sync {
    /// Called after the client's StartupMessage, before authentication.
    fn create(&self, session: &SessionState) -> Box<dyn Interceptor>;
}

/// Forwards everything: the plain transparent proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

impl Interceptor for PassThrough {}

impl InterceptorFactory for PassThrough {
    fn create(&self, _session: &SessionState) -> Box<dyn Interceptor> {
        Box::new(PassThrough)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::{Bind, Encode, Execute, Parse, Query, Sync};

    #[test]
    fn sync_points_and_local_ordering() {
        let mut pipe = Pipeline::default();
        let mut raw = BytesMut::new();
        Query {
            sql: "SELECT 1".into(),
        }
        .encode(&mut raw);
        Bind {
            portal: String::new(),
            statement: "s".into(),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }
        .encode(&mut raw);
        Execute {
            portal: String::new(),
            max_rows: 0,
        }
        .encode(&mut raw);
        {
            let mut d = Dispatch { pipe: &mut pipe };
            let batch = ClientBatch { raw: &raw };
            assert_eq!(batch.iter().count(), 3);
            d.forward_all(&batch);
            assert_eq!(d.pending_sync_points(), 1);
        }
        assert!(pipe.unsynced);
        let mut sync = BytesMut::new();
        Sync.encode(&mut sync);
        let mut d = Dispatch { pipe: &mut pipe };
        d.send_upstream(&sync, ResponseMode::Discard);
        d.respond(Bytes::from_static(b"local"));
        assert_eq!(pipe.pending_sync_points(), 2);
        assert!(!pipe.unsynced);
        assert!(
            pipe.client_out.is_empty(),
            "local answer waits for earlier responses"
        );
        pipe.slots.pop_front();
        pipe.drain_local_front();
        assert!(pipe.client_out.is_empty());
        pipe.slots.pop_front();
        pipe.drain_local_front();
        assert_eq!(&pipe.client_out[..], b"local");
        // With nothing pending, a local answer goes out at once.
        let mut d = Dispatch { pipe: &mut pipe };
        d.respond(Bytes::from_static(b"!"));
        assert_eq!(&pipe.client_out[..], b"local!");
    }

    #[test]
    fn local_answers_past_the_output_limit_end_the_session() {
        let mut pipe = Pipeline {
            client_output_max_bytes: Some(100),
            ..Pipeline::default()
        };
        let mut d = Dispatch { pipe: &mut pipe };
        // One answer larger than the limit goes out when nothing is unread.
        d.respond(Bytes::from(vec![1u8; 150]));
        assert_eq!(d.pipe.client_out.len(), 150);
        assert!(d.pipe.output_overflow.is_none());
        d.pipe.client_out.clear();
        // Queued answers count as unread too.
        d.send_upstream(b"S\0\0\0\x04", ResponseMode::Relay);
        d.respond(Bytes::from(vec![2u8; 60]));
        assert_eq!(d.pipe.client_backlog_bytes(), 60);
        d.respond(Bytes::from(vec![3u8; 60]));
        assert_eq!(d.pipe.output_overflow, Some(120));
        assert_eq!(
            d.pipe.client_backlog_bytes(),
            60,
            "the overflowing answer was dropped"
        );
        // Nothing more is accepted once over the limit.
        d.respond(Bytes::from(vec![4u8; 1]));
        assert_eq!(d.pipe.client_backlog_bytes(), 60);
        pipe.slots.pop_front();
        pipe.drain_local_front();
        assert_eq!((pipe.client_out.len(), pipe.local_queued_bytes), (60, 0));
    }

    /// Larder's own units never go upstream while something of the client's is in flight
    /// (e.g. `COPY ... FROM STDIN`, whose CopyData follows the Query): they wait for the
    /// ReadyForQuery boundary.
    #[test]
    fn captures_wait_for_a_boundary() {
        let mut pipe = Pipeline::default();
        let mut copy = BytesMut::new();
        Query {
            sql: "COPY t FROM STDIN".into(),
        }
        .encode(&mut copy);
        let mut own = BytesMut::new();
        Execute {
            portal: String::new(),
            max_rows: 0,
        }
        .encode(&mut own);
        Sync.encode(&mut own);
        {
            let mut d = Dispatch { pipe: &mut pipe };
            d.forward_all(&ClientBatch { raw: &copy });
            d.capture(&own);
            d.capture(&own);
        }
        assert_eq!(
            &pipe.upstream_out[..],
            &copy[..],
            "nothing of Larder's during COPY"
        );
        assert_eq!(pipe.deferred.len(), 2 * own.len());
        // Partway through an extended-protocol unit of the client's: still not.
        pipe.slots.pop_front();
        pipe.unsynced = true;
        pipe.release_deferred();
        assert_eq!(pipe.upstream_out.len(), copy.len());
        // At the boundary both go, in order, each with its capture slot.
        pipe.unsynced = false;
        pipe.release_deferred();
        assert!(pipe.deferred.is_empty());
        assert_eq!(pipe.upstream_out.len(), copy.len() + 2 * own.len());
        assert_eq!(pipe.pending_sync_points(), 2);
        // With nothing in flight a capture goes at once.
        let mut pipe = Pipeline::default();
        Dispatch { pipe: &mut pipe }.capture(&own);
        assert_eq!(&pipe.upstream_out[..], &own[..]);
    }

    fn encoded(m: impl Encode) -> BytesMut {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        b
    }

    fn parse_msg(name: &str) -> BytesMut {
        encoded(Parse {
            name: name.into(),
            query: "SELECT 1".into(),
            param_types: vec![],
        })
    }

    #[test]
    fn injected_parses_are_matched_by_segment_and_ordinal() {
        let mut pipe = Pipeline::default();
        let mut d = Dispatch { pipe: &mut pipe };
        // Segment 0: the client's Parse, Larder's, the client's; then Sync.
        d.send_upstream(&parse_msg("a"), ResponseMode::Relay);
        d.inject_parse(&parse_msg("s"), "s", 7);
        d.send_upstream(&parse_msg("b"), ResponseMode::Relay);
        d.send_upstream(&encoded(Sync), ResponseMode::Relay);
        // Segment 1: an injected Parse the upstream will skip (an earlier error).
        d.send_upstream(&parse_msg("c"), ResponseMode::Relay);
        d.inject_parse(&parse_msg("t"), "t", 8);
        d.send_upstream(&encoded(Sync), ResponseMode::Relay);
        assert!(
            !pipe.on_parse_complete(),
            "the client's first ParseComplete is relayed"
        );
        assert!(
            pipe.on_parse_complete(),
            "the second answers Larder's Parse"
        );
        assert!(!pipe.on_parse_complete());
        assert!(pipe.end_segment().is_empty());
        // Segment 1 answered with an error: no ParseComplete at all.
        let lost = pipe.end_segment();
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].statement.as_str(), lost[0].token), ("t", 8));
        assert!(pipe.injected.is_empty());
    }
}
