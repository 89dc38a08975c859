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
//! [`ResponseMode::Discard`] lets it forward messages whose responses the client must not see,
//! [`Dispatch::inject_parse`] prepares upstream, inside the client's own segment, a statement
//! the client prepared while being served locally, and
//! [`Dispatch::capture`] sends a query of its own whose response goes to
//! [`Interceptor::on_captured`] instead of the client. [`Dispatch::respond_later`] queues a
//! local answer that is computed asynchronously (it is polled by the session, in order).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;

use super::messages::{frontend_tag, FrameIter, RawFrame, TransactionStatus};
use crate::AdapterError;

mod pipeline;

pub use pipeline::{InflightGauge, InflightShare, Tee, TeeSink, WaitOutcome, WaitResponse};
pub(crate) use pipeline::{InjectedParse, Pipeline, Slot};

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

/// What an interceptor can do with client messages.
pub struct Dispatch<'a> {
    pub(crate) pipe: &'a mut Pipeline,
}

impl Dispatch<'_> {
    /// Forwards one client message unchanged, relaying its responses.
    pub fn forward(&mut self, msg: &RawFrame<'_>) {
        self.send_upstream(msg.raw, ResponseMode::Relay);
    }

    /// Tells `timing` how the last statement forwarded (the last sync point sent, if its
    /// response is relayed) fares upstream.
    pub fn time_last_relay(&mut self, timing: std::sync::Arc<dyn crate::cache::UpstreamTiming>) {
        if matches!(self.pipe.slots.back(), Some(Slot::Relay)) {
            if let Some(last) = self.pipe.relay_started.back_mut() {
                last.timing = Some(timing);
            }
        }
    }

    /// Hands the response to the last statement forwarded (the last sync point sent, if its
    /// response is relayed) to `tee` as well as to the client: every message up to, not
    /// including, its ReadyForQuery (asynchronous ones aside), at most `max_bytes`.
    pub fn tee_last_relay(&mut self, max_bytes: usize, sink: TeeSink) {
        if matches!(self.pipe.slots.back(), Some(Slot::Relay)) {
            if let Some(last) = self.pipe.relay_started.back_mut() {
                last.tee = Some(Tee::new(max_bytes, sink));
            }
        }
    }

    /// Answers the client with what `response` resolves to: local bytes, or client messages
    /// to forward after all (see [`WaitOutcome`]). Only when nothing is in flight or queued
    /// (returns false otherwise, and does nothing); the session reads nothing more from the
    /// client and Larder sends nothing of its own until it resolves, so a forward keeps the
    /// order. The caller must not forward or answer anything else in this batch.
    pub fn wait(&mut self, response: WaitResponse) -> bool {
        if !self.pipe.slots.is_empty() || !self.pipe.deferred.is_empty() || self.pipe.unsynced {
            return false;
        }
        self.pipe.slots.push_back(Slot::Wait(response));
        true
    }

    /// Like [`Dispatch::capture`], but only when it can go at once (the upstream is at a
    /// boundary and nothing of Larder's waits); false, and nothing sent, otherwise.
    pub fn capture_now(&mut self, raw: &[u8]) -> bool {
        if self.pipe.deferred.is_empty() && self.pipe.at_boundary() {
            self.send_upstream(raw, ResponseMode::Capture);
            true
        } else {
            false
        }
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

    /// [`Dispatch::respond`] from a buffer the caller keeps (and reuses): when nothing is
    /// queued before it, the bytes go straight to the client output, with no allocation.
    pub fn respond_copy(&mut self, response: &[u8]) {
        if !self.pipe.slots.is_empty() {
            self.respond(Bytes::copy_from_slice(response));
        } else if self.pipe.admit_local(response.len()) {
            self.pipe.client_out.extend_from_slice(response);
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
    use bytes::BytesMut;

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
