//! Serving shallow (TTL) caches on Postgres: what the upstream sent for a query, kept and
//! sent again byte for byte.
//!
//! The key of a result is everything that decides its bytes: the session's role (results are
//! shared only within one role, which sees the same rows under the same policies), the output
//! settings the server reports (`TimeZone`, `DateStyle`, `IntervalStyle`, `client_encoding`),
//! the query id as this session resolves it, and the request itself (the SQL text, or the
//! prepared text with declared parameter types, the Bind's parameters and its result formats).
//!
//! An entry holds the RowDescription (when the request that fetched it described the result)
//! and the DataRows with the CommandComplete. A hit is the unit's own ParseComplete and
//! BindComplete, then those bytes, then ReadyForQuery.
//!
//! - A miss forwards the request and tees its response into the cache ([`FillTicket`]).
//! - A miss on a key another session is fetching waits for that fetch ([`Dispatch::wait`]),
//!   and forwards after all if it fails.
//! - A hit on an entry past its refresh age sends the same request again as Larder's own
//!   capture, right behind the answer, on this session's upstream connection: the refresh
//!   runs with this session's role and settings, outside any transaction.

use std::time::Instant;

use super::*;
use crate::pg::intercept::{WaitOutcome, WaitResponse};
use crate::pg::messages::FrameIter;
use crate::shallow::{EntryParts, FillTicket, Lookup, RefreshTicket, ShallowCache, KEY_MAX_BYTES};

/// Largest response kept in a shallow cache (larger ones are relayed and not kept). A refresh
/// is a capture, whose answer is bounded by [`crate::pg::CAPTURE_SIZE_MAX_BYTES`]: larger
/// results are fetched anew by a miss when they expire.
pub(super) const ENTRY_MAX_BYTES: usize = 8 << 20;
/// Larder's statement name for refreshes (closed in the same unit).
const REFRESH_STATEMENT: &str = "larder_shallow_refresh";
/// Session settings that change how the upstream prints a result.
const OUTPUT_SETTINGS: &[&str] = &[
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "client_encoding",
    "standard_conforming_strings",
];

/// One request a shallow cache may answer.
pub(super) struct ShallowRequest<'a> {
    pub(super) unit: ShallowUnit<'a>,
    /// What a local answer starts with (ParseComplete, BindComplete).
    pub(super) prefix: BytesMut,
    /// A local answer includes the RowDescription.
    pub(super) needs_head: bool,
    /// Nothing of the client's follows in this batch and the request can be forwarded later
    /// unchanged: a miss may wait for another session's fetch.
    pub(super) may_wait: bool,
}

/// The client's request, as it was sent. Its copy (to forward after a wait) and Larder's own
/// unit that runs it again (a refresh) are built only when needed.
pub(super) enum ShallowUnit<'a> {
    /// A `Query` message.
    Simple { sql: &'a str, raw: &'a [u8] },
    /// `[Parse] Bind [Describe] Execute Sync` (`msgs`), with the statement's text and declared
    /// parameter types.
    Extended {
        msgs: &'a [RawFrame<'a>],
        sql: &'a str,
        param_types: &'a [u32],
        bind: &'a Bind,
    },
}

impl ShallowUnit<'_> {
    /// Appends the request's part of the key.
    fn put_key(&self, key: &mut Vec<u8>) {
        match self {
            ShallowUnit::Simple { sql, .. } => put_simple_key(key, sql),
            ShallowUnit::Extended {
                sql,
                param_types,
                bind,
                ..
            } => put_extended_key(key, sql, param_types, bind),
        }
    }

    /// The client's messages, to forward later.
    fn raw(&self) -> Bytes {
        match self {
            ShallowUnit::Simple { raw, .. } => Bytes::copy_from_slice(raw),
            ShallowUnit::Extended { msgs, .. } => {
                let mut out = BytesMut::new();
                for m in *msgs {
                    out.put_slice(m.raw);
                }
                out.freeze()
            }
        }
    }

    /// Larder's own unit that fetches the same result again.
    fn refresh(&self) -> BytesMut {
        match self {
            ShallowUnit::Simple { raw, .. } => BytesMut::from(*raw),
            ShallowUnit::Extended {
                sql,
                param_types,
                bind,
                ..
            } => extended_refresh(sql, param_types, bind),
        }
    }
}

/// What the caller does after [`RouterSession::serve_shallow`].
pub(super) enum ShallowAction {
    /// Answered (from the cache, or by waiting for another session's fetch).
    Answered,
    /// Forward the request; with a tee when its response fills the cache.
    Forward(Option<TeeSink>),
}

impl RouterSession {
    /// Serves `req` from `cache` if it can; otherwise says how to forward it.
    pub(super) fn serve_shallow(
        &mut self,
        session: &SessionState,
        cache: &Arc<ShallowCache>,
        query_id: &str,
        req: ShallowRequest<'_>,
        dispatch: &mut Dispatch<'_>,
    ) -> ShallowAction {
        let Some(key) = self.shallow_key(session, cache, query_id, &req.unit) else {
            self.shallow_miss(cache, "the request is too large to key a shallow cache");
            return ShallowAction::Forward(None);
        };
        let status = session.transaction_status();
        match cache.lookup(key) {
            Lookup::Hit(hit) => {
                if self.wrote_at.is_some_and(|w| w >= hit.filled_at) {
                    // The session wrote after this result was fetched: it goes upstream, and
                    // its answer serves as the refresh when one is due.
                    self.shallow_miss(
                        cache,
                        "this session wrote after the cached result was fetched",
                    );
                    return ShallowAction::Forward(hit.refresh.map(refresh_sink));
                }
                if req.needs_head && hit.parts.head.is_none() {
                    self.shallow_miss(
                        cache,
                        "the cached result was fetched without a row description",
                    );
                    return ShallowAction::Forward(hit.refresh.map(refresh_sink));
                }
                let mut out = req.prefix;
                put_entry(&mut out, &hit.parts, req.needs_head, status);
                dispatch.respond_copy(&out);
                self.last = Last {
                    destination: "cache",
                    reason: Reason::Shallow(Arc::clone(cache)),
                };
                if let Some(ticket) = hit.refresh {
                    // Only outside a transaction: the refresh must not run in the client's.
                    if status == TransactionStatus::Idle
                        && dispatch.capture_now(&req.unit.refresh())
                    {
                        self.captures.push_back(CaptureKind::ShallowRefresh {
                            ticket,
                            sent: Instant::now(),
                        });
                    }
                }
                ShallowAction::Answered
            }
            Lookup::Fill(ticket) => {
                self.shallow_miss(cache, "not in the shallow cache yet (fetching it)");
                ShallowAction::Forward(Some(fill_sink(ticket)))
            }
            Lookup::Wait(waiter) => {
                if !req.may_wait {
                    self.shallow_miss(cache, "another session is fetching this result");
                    return ShallowAction::Forward(None);
                }
                let (raw, mut prefix, needs_head) = (req.unit.raw(), req.prefix, req.needs_head);
                let response: WaitResponse = Box::pin(async move {
                    match waiter.wait().await {
                        Some(parts) if !needs_head || parts.head.is_some() => {
                            put_entry(&mut prefix, &parts, needs_head, status);
                            WaitOutcome::Answer(prefix.freeze())
                        }
                        _ => WaitOutcome::Forward { raw, tee: None },
                    }
                });
                if dispatch.wait(response) {
                    self.last = Last {
                        destination: "cache",
                        reason: Reason::Shallow(Arc::clone(cache)),
                    };
                    ShallowAction::Answered
                } else {
                    self.shallow_miss(cache, "another session is fetching this result");
                    ShallowAction::Forward(None)
                }
            }
        }
    }

    fn shallow_miss(&mut self, cache: &ShallowCache, reason: &str) {
        self.backend.fell_back(&cache.query_id, reason);
        self.last = Last {
            destination: "upstream",
            reason: reason.into(),
        };
    }

    /// The whole key, for `cache`: role, output settings, query id and the request (`None`
    /// when too long).
    fn shallow_key(
        &self,
        session: &SessionState,
        cache: &ShallowCache,
        query_id: &str,
        unit: &ShallowUnit<'_>,
    ) -> Option<Vec<u8>> {
        let role = self.facts.role()?;
        let mut key = cache.key_start();
        put_part(&mut key, role.as_bytes());
        for name in OUTPUT_SETTINGS {
            put_part(&mut key, session.parameter(name).unwrap_or("").as_bytes());
        }
        put_part(&mut key, query_id.as_bytes());
        // A table that changed shape may change the result's columns.
        key.extend_from_slice(&self.backend.shape_epoch().to_le_bytes());
        unit.put_key(&mut key);
        (key.len() <= KEY_MAX_BYTES).then_some(key)
    }

    /// A refresh sent by [`RouterSession::serve_shallow`] came back.
    pub(super) fn on_shallow_refresh(
        &mut self,
        ticket: RefreshTicket,
        sent: Instant,
        response: &[u8],
    ) {
        if let Some(parts) = cut_response(response, true) {
            ticket.complete(parts, sent.elapsed());
        }
    }
}

/// Appends the request part of a simple query's key.
fn put_simple_key(key: &mut Vec<u8>, sql: &str) {
    key.push(b'Q');
    put_part(key, sql.as_bytes());
}

/// Appends the request part of an extended unit's key: the text, declared types, parameters
/// with their formats, and the result formats.
fn put_extended_key(key: &mut Vec<u8>, sql: &str, param_types: &[u32], bind: &Bind) {
    key.push(b'E');
    put_part(key, sql.as_bytes());
    for t in param_types {
        key.extend_from_slice(&t.to_le_bytes());
    }
    key.push(b'|');
    for (i, p) in bind.params.iter().enumerate() {
        let format = match bind.param_formats.as_slice() {
            [] => 0,
            [one] => *one,
            all => all.get(i).copied().unwrap_or(0),
        };
        key.extend_from_slice(&format.to_le_bytes());
        match p {
            Some(v) => put_part(key, v),
            None => key.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    key.push(b'|');
    for f in &bind.result_formats {
        key.extend_from_slice(&f.to_le_bytes());
    }
}

/// Larder's unit that runs an extended request again, on a statement and the unnamed portal
/// of its own (closed at once), described so that the RowDescription is refreshed too.
fn extended_refresh(sql: &str, param_types: &[u32], bind: &Bind) -> BytesMut {
    let mut out = BytesMut::new();
    Parse {
        name: REFRESH_STATEMENT.into(),
        query: sql.into(),
        param_types: param_types.to_vec(),
    }
    .encode(&mut out);
    Bind {
        portal: String::new(),
        statement: REFRESH_STATEMENT.into(),
        param_formats: bind.param_formats.clone(),
        params: bind.params.clone(),
        result_formats: bind.result_formats.clone(),
    }
    .encode(&mut out);
    Describe {
        target: Target::Portal,
        name: String::new(),
    }
    .encode(&mut out);
    Execute {
        portal: String::new(),
        max_rows: 0,
    }
    .encode(&mut out);
    Close {
        target: Target::Statement,
        name: REFRESH_STATEMENT.into(),
    }
    .encode(&mut out);
    Sync.encode(&mut out);
    out
}

fn put_part(key: &mut Vec<u8>, part: &[u8]) {
    key.extend_from_slice(&(part.len() as u32).to_le_bytes());
    key.extend_from_slice(part);
}

/// Appends a cached result and ReadyForQuery.
fn put_entry(out: &mut BytesMut, parts: &EntryParts, head: bool, status: TransactionStatus) {
    if head {
        if let Some(h) = &parts.head {
            out.put_slice(h);
        }
    }
    out.put_slice(&parts.body);
    ReadyForQuery { status }.encode(out);
}

/// The tee of a forwarded request whose response goes into the cache (a fetch that fills
/// it, or a read that doubles as a refresh): `store` gets the response if it is a whole
/// result.
fn store_sink(store: impl FnOnce(EntryParts, std::time::Duration) + Send + 'static) -> TeeSink {
    Box::new(move |bytes, took| {
        if let Some(parts) = bytes.as_deref().and_then(|b| cut_response(b, false)) {
            store(parts, took);
        }
    })
}

fn fill_sink(ticket: FillTicket) -> TeeSink {
    store_sink(move |parts, took| ticket.complete(parts, took))
}

fn refresh_sink(ticket: RefreshTicket) -> TeeSink {
    store_sink(move |parts, took| ticket.complete(parts, took))
}

/// Cuts a relayed or captured response into what a shallow cache keeps: the RowDescription,
/// and the DataRows, notices and CommandComplete. `None` unless it is one whole successful
/// result (an error, a suspended portal, COPY, several results or no result are not kept).
/// `ready`: the response ends with ReadyForQuery, which must show no transaction.
pub(super) fn cut_response(response: &[u8], ready: bool) -> Option<EntryParts> {
    let mut head = None;
    let mut body = BytesMut::new();
    let mut complete = false;
    let mut ended = !ready;
    for m in FrameIter::new(response, usize::MAX) {
        let m = m.ok()?;
        if ended && complete {
            return None;
        }
        match m.frame.tag {
            // ParseComplete, BindComplete, CloseComplete: the unit's, not the result's.
            b'1' | b'2' | b'3' if !complete => {}
            b'3' => {}
            b'T' if head.is_none() && body.is_empty() && !complete => {
                head = Some(Bytes::copy_from_slice(m.raw));
            }
            b'D' | b'N' if !complete => body.put_slice(m.raw),
            b'C' if !complete => {
                body.put_slice(m.raw);
                complete = true;
            }
            b'Z' if ready && complete && !ended => {
                if m.frame.body != [b'I'] {
                    return None;
                }
                ended = true;
            }
            _ => return None,
        }
    }
    (complete && ended).then(|| EntryParts {
        head,
        body: body.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::{DataRow, NoticeResponse};

    fn msgs(parts: &[&dyn Fn(&mut BytesMut)]) -> BytesMut {
        let mut b = BytesMut::new();
        for p in parts {
            p(&mut b);
        }
        b
    }

    fn row(b: &mut BytesMut) {
        DataRow {
            values: vec![Some(Bytes::from_static(b"1"))],
        }
        .encode(b)
    }
    fn done(b: &mut BytesMut) {
        CommandComplete {
            tag: "SELECT 1".into(),
        }
        .encode(b)
    }
    fn desc(b: &mut BytesMut) {
        RowDescription { fields: vec![] }.encode(b)
    }
    fn ready(status: TransactionStatus) -> impl Fn(&mut BytesMut) {
        move |b: &mut BytesMut| ReadyForQuery { status }.encode(b)
    }

    #[test]
    fn whole_results_are_cut_and_the_rest_refused() {
        let relayed = msgs(&[
            &|b| ParseComplete.encode(b),
            &|b| BindComplete.encode(b),
            &desc,
            &row,
            &done,
        ]);
        let parts = cut_response(&relayed, false).unwrap();
        assert!(parts.head.is_some());
        let mut expect = BytesMut::new();
        row(&mut expect);
        done(&mut expect);
        assert_eq!(&parts.body[..], &expect[..]);
        // Without a Describe: no head.
        let bare = msgs(&[&|b| BindComplete.encode(b), &row, &done]);
        assert!(cut_response(&bare, false).unwrap().head.is_none());
        // A captured refresh ends with ReadyForQuery outside a transaction.
        let captured = msgs(&[
            &|b| ParseComplete.encode(b),
            &|b| BindComplete.encode(b),
            &desc,
            &row,
            &done,
            &|b| crate::pg::messages::CloseComplete.encode(b),
            &ready(TransactionStatus::Idle),
        ]);
        assert_eq!(cut_response(&captured, true).unwrap().body, parts.body);
        let in_tx = msgs(&[&desc, &row, &done, &ready(TransactionStatus::InTransaction)]);
        assert!(cut_response(&in_tx, true).is_none());
        let truncated = msgs(&[&desc, &row, &done]);
        assert!(
            cut_response(&truncated, true).is_none(),
            "the capture lost its end"
        );
        let error = msgs(&[&desc, &row, &|b| {
            ErrorResponse::error("57014", "canceled".to_string()).encode(b)
        }]);
        assert!(cut_response(&error, false).is_none());
        let two = msgs(&[&desc, &row, &done, &desc, &row, &done]);
        assert!(cut_response(&two, false).is_none(), "several results");
        let no_result = msgs(&[&|b| BindComplete.encode(b)]);
        assert!(cut_response(&no_result, false).is_none());
        let noticed = msgs(&[
            &desc,
            &|b| {
                NoticeResponse(crate::pg::messages::ErrorFields::new(
                    "NOTICE", "00000", "hi",
                ))
                .encode(b)
            },
            &row,
            &done,
        ]);
        assert!(cut_response(&noticed, false).is_some());
    }

    fn simple_key(sql: &str) -> Vec<u8> {
        let mut key = Vec::new();
        put_simple_key(&mut key, sql);
        key
    }

    fn extended_key(sql: &str, param_types: &[u32], bind: &Bind) -> Vec<u8> {
        let mut key = Vec::new();
        put_extended_key(&mut key, sql, param_types, bind);
        key
    }

    #[test]
    fn keys_tell_requests_apart() {
        let bind = |v: &'static [u8], f: Vec<i16>| Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: vec![],
            params: vec![Some(Bytes::from_static(v))],
            result_formats: f,
        };
        let a = extended_key("SELECT $1", &[], &bind(b"1", vec![]));
        assert_eq!(a, extended_key("SELECT $1", &[], &bind(b"1", vec![])));
        assert_ne!(a, extended_key("SELECT $1", &[], &bind(b"2", vec![])));
        assert_ne!(a, extended_key("SELECT $1", &[], &bind(b"1", vec![1])));
        assert_ne!(a, extended_key("SELECT $1", &[23], &bind(b"1", vec![])));
        assert_ne!(simple_key("SELECT 1"), simple_key("SELECT 2"));
    }
}
