//! Socket buffers of the relay: how a read makes room (bounded by the bytes that actually
//! arrive from an untrusted client), reading into a buffer and draining one to a socket.

use super::*;

/// How much room a partially buffered large message gets before the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Growth {
    /// All its missing bytes at once (the trusted upstream: one allocation per large row).
    WholeMessage,
    /// At most as much as is already buffered and at most [`CLIENT_READ_GROW_MAX_BYTES`]
    /// (clients: memory follows the bytes that actually arrive, whatever size was declared).
    FollowArrivals,
}

/// Makes room for the next read: a chunk when little space is left, more for a partially
/// buffered large message (see [`Growth`]); replaces buffers a huge message left oversized.
pub(super) fn reserve_for_read(
    buf: &mut BytesMut,
    chunk: usize,
    size_max_bytes: usize,
    growth: Growth,
) {
    if buf.is_empty() && buf.capacity() > BUFFER_SHRINK_ABOVE_BYTES {
        *buf = BytesMut::with_capacity(chunk);
        return;
    }
    let missing = match peek_header(buf, size_max_bytes) {
        Ok(Some(h)) if h.total_len > buf.len() => h.total_len - buf.len(),
        _ => 0,
    };
    let step = match growth {
        Growth::WholeMessage => missing,
        Growth::FollowArrivals => missing
            .min(CLIENT_READ_GROW_MAX_BYTES)
            .min(buf.len().max(chunk)),
    };
    let spare = buf.capacity() - buf.len();
    if spare < READ_SPARE_MIN_BYTES || spare < step {
        buf.reserve(step.max(chunk));
    }
}

/// One non-blocking read into `buf`'s spare capacity.
pub(super) fn poll_read_buf(
    conn: &mut Conn,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let fut = pin!(conn.read_buf(buf));
    fut.poll(cx)
}

/// Writes all of `out` and flushes; `Ready(Ok)` once nothing is pending.
pub(super) fn poll_drain(
    conn: &mut Conn,
    out: &mut BytesMut,
    flush_pending: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !out.is_empty() {
        let n = ready!(Pin::new(&mut *conn).poll_write(cx, out))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        out.advance(n);
        *flush_pending = true;
    }
    if out.capacity() > BUFFER_SHRINK_ABOVE_BYTES {
        *out = BytesMut::new();
    }
    if *flush_pending {
        ready!(Pin::new(&mut *conn).poll_flush(cx))?;
        *flush_pending = false;
    }
    Poll::Ready(Ok(()))
}
