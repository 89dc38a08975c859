//! The state both directions of a session share: the output buffers, the queue of expected
//! responses (one slot per sync point, or a local answer) that keeps responses in request
//! order, the segment accounting that lets Larder put a Parse of its own into the client's
//! stream, and each session's share of the proxy-wide count of statements in flight upstream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use super::{LocalResponse, ResponseMode};
use crate::pg::messages::{frontend_tag, FrameIter};

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
    /// A local answer, or client messages to forward after all, still being decided (see
    /// [`super::Dispatch::wait`]); always alone in the queue.
    Wait(WaitResponse),
}

/// What a [`Slot::Wait`] turns into.
pub enum WaitOutcome {
    /// Complete backend messages ending with ReadyForQuery, for the client.
    Answer(Bytes),
    /// Client messages (whole units ending at a sync point) to send upstream now, relaying
    /// the response, optionally teed.
    Forward { raw: Bytes, tee: Option<Tee> },
}

pub type WaitResponse =
    std::pin::Pin<Box<dyn std::future::Future<Output = WaitOutcome> + Send + 'static>>;

/// Receives a teed response (`None` when it passed its bound or the statement never got its
/// answer) and how long the upstream took.
pub type TeeSink = Box<dyn FnOnce(Option<Bytes>, std::time::Duration) + Send>;

/// A copy of one relayed response, for Larder (see [`super::Dispatch::tee_last_relay`]).
pub struct Tee {
    buf: BytesMut,
    max_bytes: usize,
    overflow: bool,
    sink: Option<TeeSink>,
}

impl Tee {
    pub fn new(max_bytes: usize, sink: TeeSink) -> Tee {
        Tee {
            buf: BytesMut::new(),
            max_bytes,
            overflow: false,
            sink: Some(sink),
        }
    }

    pub(crate) fn push(&mut self, msg: &[u8]) {
        if self.overflow {
            return;
        }
        if self.buf.len() + msg.len() > self.max_bytes {
            self.overflow = true;
            self.buf = BytesMut::new();
        } else {
            self.buf.extend_from_slice(msg);
        }
    }

    fn finish(mut self, took: std::time::Duration) {
        if let Some(sink) = self.sink.take() {
            let bytes = (!self.overflow).then(|| std::mem::take(&mut self.buf).freeze());
            sink(bytes, took);
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The session ended before the answer: the sink learns there is none.
        if let Some(sink) = self.sink.take() {
            sink(None, std::time::Duration::ZERO);
        }
    }
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
            Slot::Wait(_) => write!(f, "Wait"),
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
    /// Each relayed sync point still waiting for its ReadyForQuery: when it was forwarded,
    /// and who else wants its duration.
    pub relay_started: VecDeque<Relayed>,
    /// DataRows relayed so far for the relayed sync point at the front.
    pub rows_in_front: u64,
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

/// A relayed sync point waiting for its ReadyForQuery.
pub struct Relayed {
    pub started: std::time::Instant,
    pub timing: Option<std::sync::Arc<dyn crate::cache::UpstreamTiming>>,
    /// Who gets a copy of the response.
    pub tee: Option<Tee>,
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed")
            .field("started", &self.started)
            .field("timed", &self.timing.is_some())
            .field("teed", &self.tee.is_some())
            .finish()
    }
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

    pub(super) fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn sub(&self, n: usize) {
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

    pub(super) fn add(&mut self) {
        self.held += 1;
        self.gauge.add(1);
    }

    pub(super) fn sub(&mut self) {
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
    pub(super) fn admit_local(&mut self, len: usize) -> bool {
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
        self.pending_sync_points() == 0 && !self.unsynced && !self.waiting()
    }

    /// A [`Slot::Wait`] is undecided: nothing more is read from the client or sent upstream.
    pub fn waiting(&self) -> bool {
        matches!(self.slots.front(), Some(Slot::Wait(_)))
    }

    /// The tee of the relayed response at the front, if any.
    pub fn front_tee(&mut self) -> Option<&mut Tee> {
        match self.slots.front() {
            Some(Slot::Relay) => self.relay_started.front_mut()?.tee.as_mut(),
            _ => None,
        }
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
    pub(super) fn send(&mut self, raw: &[u8], mode: ResponseMode) {
        self.upstream_out.extend_from_slice(raw);
        let mut it = FrameIter::new(raw, usize::MAX);
        for msg in it.by_ref().map_while(Result::ok) {
            match msg.frame.tag {
                frontend_tag::QUERY | frontend_tag::SYNC | frontend_tag::FUNCTION_CALL => {
                    if mode == ResponseMode::Relay {
                        if let Some(share) = &mut self.inflight {
                            share.add();
                        }
                        self.relay_started.push_back(Relayed {
                            started: std::time::Instant::now(),
                            timing: None,
                            tee: None,
                        });
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
        let rows = std::mem::take(&mut self.rows_in_front);
        if let Some(Slot::Relay) = &slot {
            if let Some(share) = &mut self.inflight {
                share.sub();
            }
            if let Some(relayed) = self.relay_started.pop_front() {
                if let Some(m) = &self.metrics {
                    m.upstream_done(relayed.started);
                }
                if let Some(timing) = relayed.timing {
                    timing.done(relayed.started.elapsed(), rows);
                }
                if let Some(tee) = relayed.tee {
                    tee.finish(relayed.started.elapsed());
                }
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
        if let Some(Slot::Wait(fut)) = self.slots.front_mut() {
            let Poll::Ready(outcome) = fut.as_mut().poll(cx) else {
                return false;
            };
            self.slots.pop_front();
            debug_assert!(self.slots.is_empty(), "a Wait slot is alone in the queue");
            match outcome {
                WaitOutcome::Answer(bytes) => {
                    if self.admit_local(bytes.len()) {
                        self.client_out.extend_from_slice(&bytes);
                    }
                }
                WaitOutcome::Forward { raw, tee } => {
                    self.send(&raw, ResponseMode::Relay);
                    if let (Some(tee), Some(last)) = (tee, self.relay_started.back_mut()) {
                        last.tee = Some(tee);
                    }
                }
            }
            // Larder's own units held back while it waited.
            self.release_deferred();
            return true;
        }
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
