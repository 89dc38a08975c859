//! One side of a session (the client or the upstream) as a packet stream: a socket and a read
//! buffer. Every error names the side it happened on, so the session knows whom to tell.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::SessionError;
use crate::mysql::messages::{ErrPacket, Payload};
use crate::mysql::packet::{write_packets, Assembler, Logical, PacketHeader, RawPacket};
use crate::pg::conn::Conn;

const READ_CHUNK_BYTES: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Upstream,
}

pub(crate) struct PacketConn {
    pub(crate) conn: Conn,
    buf: BytesMut,
    side: Side,
    /// The sequence id the next packet on this leg carries (after the last one read or
    /// written), for an error Larder sends in the middle of an exchange.
    pub(crate) next_seq: u8,
}

impl PacketConn {
    pub(crate) fn new(conn: Conn, side: Side) -> Self {
        PacketConn {
            conn,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            side,
            next_seq: 0,
        }
    }

    fn io_err(&self, e: std::io::Error) -> SessionError {
        match self.side {
            Side::Client => SessionError::ClientIo(e),
            Side::Upstream => SessionError::UpstreamIo(e),
        }
    }

    /// How many bytes are read but not consumed yet.
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes read but not consumed yet.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Gives the socket back (for a TLS upgrade); fails if bytes were read ahead of it.
    pub(crate) fn into_conn(self) -> Result<Conn, SessionError> {
        if self.has_buffered() {
            return Err(self.io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bytes received before the TLS handshake",
            )));
        }
        Ok(self.conn)
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    async fn fill(&mut self) -> Result<bool, SessionError> {
        self.buf.reserve(READ_CHUNK_BYTES);
        match self.conn.read_buf(&mut self.buf).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Reads more bytes; the peer closing is an error.
    pub(crate) async fn read_more(&mut self) -> Result<(), SessionError> {
        if self.fill().await? {
            Ok(())
        } else {
            Err(self.io_err(std::io::ErrorKind::UnexpectedEof.into()))
        }
    }

    /// The next packet if it is completely buffered.
    pub(crate) fn try_packet(&mut self) -> Option<RawPacket> {
        let p = RawPacket::parse(&mut self.buf)?;
        self.next_seq = p.seq().wrapping_add(1);
        Some(p)
    }

    /// The next physical packet; `None` when the peer closed between packets.
    pub(crate) async fn read_packet_or_eof(&mut self) -> Result<Option<RawPacket>, SessionError> {
        loop {
            if let Some(p) = self.try_packet() {
                return Ok(Some(p));
            }
            if !self.fill().await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.io_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// The next physical packet, read without reading ahead of it (what follows an
    /// SSLRequest is the TLS handshake, which must stay in the socket). Only with an empty
    /// buffer; `max` bounds the payload.
    pub(crate) async fn read_packet_exact(
        &mut self,
        max: usize,
    ) -> Result<RawPacket, SessionError> {
        if self.has_buffered() {
            return match self.try_packet() {
                Some(p) => Ok(p),
                None => Err(self.protocol_err(
                    crate::mysql::messages::MyProtocolError::Truncated("packet"),
                    0,
                )),
            };
        }
        let mut header = [0u8; 4];
        if let Err(e) = self.conn.read_exact(&mut header).await {
            return Err(self.io_err(e));
        }
        let h = PacketHeader::peek(&header).expect("4 bytes");
        if h.len > max {
            return Err(self.protocol_err(
                crate::mysql::messages::MyProtocolError::TooLarge { len: h.len, max },
                h.seq.wrapping_add(1),
            ));
        }
        let mut body = vec![0u8; h.len];
        if let Err(e) = self.conn.read_exact(&mut body).await {
            return Err(self.io_err(e));
        }
        self.next_seq = h.seq.wrapping_add(1);
        Ok(RawPacket::new(h.seq, &body))
    }

    /// The next physical packet; the peer closing is an error.
    pub(crate) async fn read_packet(&mut self) -> Result<RawPacket, SessionError> {
        match self.read_packet_or_eof().await? {
            Some(p) => Ok(p),
            None => Err(self.io_err(std::io::ErrorKind::UnexpectedEof.into())),
        }
    }

    /// The next logical payload, joined by `asm` (whose bound is checked on each header
    /// before the body is read); `None` when the peer closed between payloads. Cancel-safe:
    /// what was read stays in the buffer and in `asm`.
    pub(crate) async fn read_logical(
        &mut self,
        asm: &mut Assembler,
    ) -> Result<Option<Logical>, SessionError> {
        loop {
            if let Some(h) = PacketHeader::peek(&self.buf) {
                if let Err(e) = asm.check(&h) {
                    return Err(self.protocol_err(e, h.seq.wrapping_add(1)));
                }
                if let Some(p) = self.try_packet() {
                    match asm.push(&p) {
                        Ok(Some(l)) => return Ok(Some(l)),
                        Ok(None) => continue,
                        Err(e) => return Err(self.protocol_err(e, p.seq().wrapping_add(1))),
                    }
                }
            }
            if !self.fill().await? {
                if self.buf.is_empty() && asm.pending_len() == 0 {
                    return Ok(None);
                }
                return Err(self.io_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    pub(crate) fn protocol_err(
        &self,
        e: crate::mysql::messages::MyProtocolError,
        next_seq: u8,
    ) -> SessionError {
        match self.side {
            Side::Client => SessionError::ClientProtocol { err: e, next_seq },
            Side::Upstream => SessionError::UpstreamProtocol(e),
        }
    }

    /// Writes raw bytes and flushes.
    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let r = async {
            self.conn.write_all(bytes).await?;
            self.conn.flush().await
        }
        .await;
        r.map_err(|e| self.io_err(e))
    }

    /// Writes one packet as is.
    pub(crate) async fn send_packet(&mut self, p: &RawPacket) -> Result<(), SessionError> {
        self.next_seq = p.seq().wrapping_add(1);
        self.send_bytes(p.as_bytes()).await
    }

    /// Writes `payload` as packets numbered from `seq`.
    pub(crate) async fn send_payload(
        &mut self,
        seq: u8,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        let mut b = BytesMut::with_capacity(payload.len() + 8);
        self.next_seq = write_packets(&mut b, seq, payload);
        self.send_bytes(&b).await
    }

    /// Writes an ERR packet with sequence id `seq`.
    pub(crate) async fn send_err(&mut self, seq: u8, err: &ErrPacket) -> Result<(), SessionError> {
        let mut payload = BytesMut::new();
        err.encode(&mut payload);
        self.send_payload(seq, &payload).await
    }

    pub(crate) async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.conn.shutdown()).await;
    }
}
