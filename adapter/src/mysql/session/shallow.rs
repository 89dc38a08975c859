//! Serving shallow (TTL) caches on MySQL: what the upstream sent for a query, kept and sent
//! again byte for byte.
//!
//! The key of a result is everything that decides its bytes: the user (entries are filled
//! only by the user's own upstream reads, so privileges are the upstream's), the handshake's
//! character set (the session ran no SET), whether the time zone is UTC, MariaDB's extended
//! metadata, the privilege and table-shape epochs, and the request: a COM_QUERY's text, or a
//! prepared statement's text, parameter types and execution bytes. CLIENT_DEPRECATE_EOF
//! changes the bytes too, and is part of the cache key's request ([`put_request`]).
//!
//! An entry is the response's packets after the command, each as `[u32 LE length][payload]`.
//! A hit sends them with the session's own sequence ids and its own transaction status in
//! the final packet.
//!
//! - A miss relays the command and tees its response into the cache ([`Tee::Fill`]), when it
//!   is one whole result set (no ERR, no further results, at most [`ENTRY_MAX_BYTES`]).
//! - A miss on a key another session is fetching waits for that fetch, and relays after all if
//!   it fails.
//! - A read of an entry past its refresh age is relayed, and its response replaces the entry
//!   ([`Tee::Refresh`]): the session's connection is its own, so the refresh cannot run behind
//!   the answer as on Postgres without delaying the session's next command.
//! - A session that wrote is not served entries fetched before its write.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};

use super::route::Route;
use super::serve::Reply;
use super::{Established, SessionError};
use crate::mysql::messages::flags::status;
use crate::shallow::{EntryParts, FillTicket, Lookup, RefreshTicket, ShallowCache, KEY_MAX_BYTES};

/// Largest response kept in a shallow cache (larger ones are relayed and not kept).
pub(super) const ENTRY_MAX_BYTES: usize = 8 << 20;

/// Where a relayed response goes once whole, besides the client.
pub(crate) enum Tee {
    Fill(FillTicket),
    Refresh(RefreshTicket),
}

impl Tee {
    pub(super) fn complete(self, body: BytesMut, cost: Duration) {
        let parts = EntryParts {
            head: None,
            body: body.freeze(),
        };
        match self {
            Tee::Fill(t) => t.complete(parts, cost),
            Tee::Refresh(t) => t.complete(parts, cost),
        }
    }
}

/// Appends a request's part of the key: its kind, the reply's format, and its bytes.
pub(super) fn put_request(key: &mut Vec<u8>, execute: bool, reply: Reply, request: &[u8]) {
    key.push(u8::from(execute));
    key.push(u8::from(reply.deprecate_eof));
    key.extend_from_slice(request);
}

/// Answers from `cache` when it may: `Ok(Err(reason))` relays the command (with
/// `route.tee` set when its response fills or refreshes the cache).
pub(super) async fn serve(
    est: &mut Established,
    route: &mut Route,
    cache: &Arc<ShallowCache>,
    key: Vec<u8>,
    reply: Reply,
) -> Result<Result<(), String>, SessionError> {
    if key.len() > KEY_MAX_BYTES {
        return Ok(Err("the request is too large to key a shallow cache".into()));
    }
    let parts = match cache.lookup(key) {
        Lookup::Hit(hit) => {
            if route.wrote_at.is_some_and(|w| w >= hit.filled_at) {
                // Its answer serves as the refresh when one is due.
                route.tee = hit.refresh.map(Tee::Refresh);
                return Ok(Err(
                    "this session wrote after the cached result was fetched".into(),
                ));
            }
            if let Some(ticket) = hit.refresh {
                route.tee = Some(Tee::Refresh(ticket));
                return Ok(Err(
                    "the cached result is past its refresh age (fetching it again)".into(),
                ));
            }
            hit.parts
        }
        Lookup::Fill(ticket) => {
            route.tee = Some(Tee::Fill(ticket));
            return Ok(Err("not in the shallow cache yet (fetching it)".into()));
        }
        Lookup::Wait(waiter) => match waiter.wait().await {
            Some(parts) => parts,
            None => return Ok(Err("another session's fetch of this result failed".into())),
        },
    };
    let session_status =
        route.status & (status::SERVER_STATUS_IN_TRANS | status::SERVER_STATUS_AUTOCOMMIT);
    let Some(wire) = replay(&parts.body, reply, session_status) else {
        return Ok(Err("the cached result cannot be replayed".into()));
    };
    est.client.send_bytes(&wire).await?;
    Ok(Ok(()))
}

/// The packets of `body` with sequence ids from `reply.seq`, the last one's transaction
/// status bits set to `session_status`; `None` when the body is malformed.
fn replay(body: &[u8], reply: Reply, session_status: u16) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(body.len());
    let mut seq = reply.seq;
    let mut rest = body;
    let mut last = None;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let payload = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        out.put_uint_le(len as u64, 3);
        out.put_u8(seq);
        seq = seq.wrapping_add(1);
        last = Some(out.len());
        out.put_slice(payload);
    }
    let start = last?;
    let at = status_offset(&out[start..], reply.deprecate_eof)? + start;
    let keep = !(status::SERVER_STATUS_IN_TRANS | status::SERVER_STATUS_AUTOCOMMIT);
    let old = u16::from_le_bytes([out[at], out[at + 1]]);
    out[at..at + 2].copy_from_slice(&((old & keep) | session_status).to_le_bytes());
    Some(out)
}

/// Where the status flags of a result's final packet are: an EOF's (`0xFE`, warnings,
/// status), or with CLIENT_DEPRECATE_EOF an OK's (header, affected rows and last insert id
/// as length-encoded integers, status).
fn status_offset(payload: &[u8], deprecate_eof: bool) -> Option<usize> {
    if payload.first() != Some(&0xfe) {
        return None;
    }
    let at = if deprecate_eof {
        let mut at = 1;
        for _ in 0..2 {
            at += match *payload.get(at)? {
                0xfc => 3,
                0xfd => 4,
                0xfe => 9,
                0xfb | 0xff => return None,
                _ => 1,
            };
        }
        at
    } else {
        3
    };
    (payload.len() >= at + 2).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(packets: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in packets {
            b.extend_from_slice(&(p.len() as u32).to_le_bytes());
            b.extend_from_slice(p);
        }
        b
    }

    #[test]
    fn packets_get_the_sessions_sequence_and_status() {
        // Column count, one definition, a row, and an EOF: warnings 1, status AUTOCOMMIT|0x20.
        let eof: &[u8] = &[0xfe, 1, 0, 0x22, 0];
        let b = body(&[&[1], b"def", &[1, b'7'], eof]);
        let reply = Reply {
            seq: 1,
            deprecate_eof: false,
        };
        let out = replay(&b, reply, status::SERVER_STATUS_IN_TRANS).unwrap();
        assert_eq!(&out[..5], &[1, 0, 0, 1, 1]);
        assert_eq!(out[5 + 3], 2, "the next packet's sequence id");
        let end = &out[out.len() - 9..];
        assert_eq!(end[3], 4, "last sequence id");
        assert_eq!(
            &end[4..],
            &[0xfe, 1, 0, 0x21, 0],
            "status: IN_TRANS, 0x20 kept"
        );
    }

    #[test]
    fn an_ok_ends_the_result_with_deprecate_eof() {
        // OK with 0xFE header: affected rows 0, last insert id 251 (0xfc 0xfb 0x00), status.
        let ok: &[u8] = &[0xfe, 0, 0xfc, 0xfb, 0, 0x02, 0x00, 0, 0];
        let reply = Reply {
            seq: 3,
            deprecate_eof: true,
        };
        let out = replay(&body(&[&[1], ok]), reply, 0).unwrap();
        let end = &out[out.len() - ok.len()..];
        assert_eq!(&end[5..7], &[0, 0], "autocommit cleared");
    }

    #[test]
    fn malformed_bodies_are_not_replayed() {
        let reply = Reply {
            seq: 1,
            deprecate_eof: false,
        };
        assert!(replay(&[5, 0, 0, 0, 1], reply, 0).is_none());
        assert!(replay(&body(&[&[1], &[0x00, 0, 0]]), reply, 0).is_none());
        assert!(replay(&[], reply, 0).is_none());
    }
}
