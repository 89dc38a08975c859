//! Relaying one response from the upstream to the client, packet by packet, while following
//! its structure far enough to know where it ends.
//!
//! Packets are written to the client as they come, through a small buffer that is flushed when
//! it fills ([`FLUSH_BYTES`]) and whenever the upstream has nothing more buffered: a session
//! holds at most one upstream packet (up to 16 MiB) plus that buffer, whatever the size of
//! the result set.

use bytes::BytesMut;

use super::io::PacketConn;
use super::SessionError;
use crate::mysql::messages::flags::{header, status};
use crate::mysql::messages::stmt::PrepareOk;
use crate::mysql::messages::{
    AuthMoreData, ColumnCount, Command, EofPacket, MyProtocolError, Payload,
    EOF_PAYLOAD_MAX_EXCLUSIVE,
};
use crate::mysql::packet::{RawPacket, PAYLOAD_MAX_PER_PACKET};

/// Response bytes gathered before they are written to the client.
const FLUSH_BYTES: usize = 64 << 10;

pub(super) struct Relay<'a> {
    pub(super) client: &'a mut PacketConn,
    pub(super) upstream: &'a mut PacketConn,
    /// CLIENT_DEPRECATE_EOF: result sets end with an OK (0xFE) and have no EOF after the
    /// column definitions.
    pub(super) deprecate_eof: bool,
    out: BytesMut,
    /// The server status flags of the last OK or EOF that ended (part of) the response.
    pub(super) last_status: Option<u16>,
    /// COM_STMT_PREPARE's OK and its column definitions, when `capture_prepare` is set.
    pub(super) prepared: Option<(PrepareOk, Vec<Vec<u8>>)>,
    capture_prepare: bool,
    /// Result rows relayed.
    pub(super) rows: u64,
    /// The response's logical packets as `[u32 LE length][payload]`, while teed
    /// ([`Relay::teeing`]); `None` once it outgrew `tee_max_bytes` or cannot be kept.
    tee: Option<BytesMut>,
    tee_max_bytes: usize,
    /// Whether the last packet teed was an ERR.
    tee_err: bool,
}

/// Most column definitions a captured prepare keeps (more: not captured).
const CAPTURE_COLUMNS_MAX: u16 = 4096;

fn upstream_malformed(what: &'static str) -> SessionError {
    SessionError::UpstreamProtocol(MyProtocolError::Invalid(what))
}

fn status_of(p: &RawPacket) -> u16 {
    EofPacket::status_of(p.payload()).unwrap_or(0)
}

fn more_results(p: &RawPacket) -> bool {
    status_of(p) & status::SERVER_MORE_RESULTS_EXISTS != 0
}

fn is_err(p: &RawPacket) -> bool {
    p.payload().first() == Some(&header::ERR)
}

impl<'a> Relay<'a> {
    pub(super) fn new(
        client: &'a mut PacketConn,
        upstream: &'a mut PacketConn,
        deprecate_eof: bool,
    ) -> Self {
        Relay {
            client,
            upstream,
            deprecate_eof,
            out: BytesMut::with_capacity(FLUSH_BYTES),
            last_status: None,
            prepared: None,
            capture_prepare: false,
            rows: 0,
            tee: None,
            tee_max_bytes: 0,
            tee_err: false,
        }
    }

    /// Keep a copy of the response, up to `max_bytes` ([`Relay::teed`]).
    pub(super) fn teeing(mut self, max_bytes: usize) -> Self {
        self.tee = Some(BytesMut::new());
        self.tee_max_bytes = max_bytes;
        self
    }

    /// The teed response, when it is one whole result: no ERR, no further results, every
    /// packet whole and the total within the bound.
    pub(super) fn teed(&mut self) -> Option<BytesMut> {
        let more = self
            .last_status
            .is_some_and(|s| s & status::SERVER_MORE_RESULTS_EXISTS != 0);
        if self.tee_err || more {
            return None;
        }
        self.tee.take().filter(|t| !t.is_empty())
    }

    fn tee_packet(&mut self, p: &RawPacket) {
        let Some(tee) = self.tee.as_mut() else {
            return;
        };
        let payload = p.payload();
        if p.is_continued() || tee.len() + payload.len() + 4 > self.tee_max_bytes {
            self.tee = None;
            return;
        }
        tee.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        tee.extend_from_slice(payload);
        self.tee_err = payload.first() == Some(&header::ERR);
    }

    /// Keep COM_STMT_PREPARE's OK and column definitions (see `prepared`).
    pub(super) fn capturing_prepare(mut self) -> Self {
        self.capture_prepare = true;
        self
    }

    /// Records the status of an end packet; whether more results follow.
    fn ended(&mut self, p: &RawPacket) -> bool {
        let status = status_of(p);
        self.last_status = Some(status);
        status & status::SERVER_MORE_RESULTS_EXISTS != 0
    }

    /// Relays the whole response to `cmd`.
    pub(super) async fn response(&mut self, cmd: Command) -> Result<(), SessionError> {
        match cmd {
            Command::StmtClose | Command::StmtSendLongData => return Ok(()),
            Command::Statistics => {
                self.next().await?;
            }
            Command::StmtPrepare => self.prepare().await?,
            Command::StmtFetch => {
                self.rows().await?;
            }
            Command::FieldList => self.field_list().await?,
            Command::ChangeUser => self.auth().await?,
            Command::Query => self.results(true, false).await?,
            Command::StmtExecute | Command::StmtBulkExecute => self.results(false, true).await?,
            _ => self.results(false, false).await?,
        }
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.client.send_bytes(&out).await?;
            self.out = out;
            self.out.clear();
        }
        Ok(())
    }

    /// The next physical packet from the upstream, already queued for the client.
    async fn pull(&mut self) -> Result<RawPacket, SessionError> {
        loop {
            if let Some(p) = self.upstream.try_packet() {
                self.tee_packet(&p);
                self.client.next_seq = p.seq().wrapping_add(1);
                self.out.extend_from_slice(p.as_bytes());
                if self.out.len() >= FLUSH_BYTES {
                    self.flush().await?;
                }
                return Ok(p);
            }
            // Nothing buffered: the client gets what it has before Larder waits.
            self.flush().await?;
            self.upstream.read_more().await?;
        }
    }

    /// The next logical packet (all of its physical packets relayed); returns the first.
    async fn next(&mut self) -> Result<RawPacket, SessionError> {
        let first = self.pull().await?;
        let mut continued = first.is_continued();
        while continued {
            continued = self.pull().await?.is_continued();
        }
        Ok(first)
    }

    /// Whether `p` ends a result set (EOF, or OK with a 0xFE header). A row can start with
    /// 0xFE too (an 8-byte length), but is then longer than any end packet.
    fn is_end(&self, p: &RawPacket) -> bool {
        let limit = if self.deprecate_eof {
            PAYLOAD_MAX_PER_PACKET
        } else {
            EOF_PAYLOAD_MAX_EXCLUSIVE
        };
        p.payload().first() == Some(&header::EOF) && p.payload().len() < limit
    }

    /// Relays `n` logical packets (column or parameter definitions).
    async fn skip(&mut self, n: u64) -> Result<(), SessionError> {
        for _ in 0..n {
            let p = self.next().await?;
            if is_err(&p) {
                return Err(upstream_malformed("ERR among column definitions"));
            }
        }
        Ok(())
    }

    /// Rows until the end packet or an ERR; returns whether more results follow.
    async fn rows(&mut self) -> Result<bool, SessionError> {
        loop {
            let p = self.next().await?;
            if is_err(&p) {
                return Ok(false);
            }
            if self.is_end(&p) {
                return Ok(self.ended(&p));
            }
            self.rows += 1;
        }
    }

    /// OK, ERR, LOCAL INFILE or result sets, while SERVER_MORE_RESULTS_EXISTS says more follow.
    async fn results(&mut self, query: bool, execute: bool) -> Result<(), SessionError> {
        loop {
            let p = self.next().await?;
            let more = match p.payload().first().copied() {
                None => return Err(upstream_malformed("empty response packet")),
                Some(header::ERR) => false,
                Some(header::OK) => self.ended(&p),
                Some(header::EOF) if self.is_end(&p) => self.ended(&p),
                Some(header::LOCAL_INFILE) if query => self.local_infile().await?,
                Some(_) => {
                    let n = ColumnCount::decode(p.payload())
                        .map_err(SessionError::UpstreamProtocol)?
                        .0;
                    self.skip(n).await?;
                    if self.deprecate_eof {
                        self.rows().await?
                    } else {
                        let eof = self.next().await?;
                        if is_err(&eof) {
                            false
                        } else if !self.is_end(&eof) {
                            return Err(upstream_malformed("no EOF after column definitions"));
                        } else if execute
                            && status_of(&eof) & status::SERVER_STATUS_CURSOR_EXISTS != 0
                        {
                            // A cursor was opened: rows come with COM_STMT_FETCH.
                            more_results(&eof)
                        } else {
                            self.rows().await?
                        }
                    }
                }
            };
            if !more {
                return Ok(());
            }
        }
    }

    /// LOAD DATA LOCAL INFILE: the client sends the file's contents (ending with an empty
    /// packet), then the upstream answers OK or ERR. Returns whether more results follow.
    async fn local_infile(&mut self) -> Result<bool, SessionError> {
        self.flush().await?;
        let mut continued = false;
        loop {
            let c = self.client.read_packet().await?;
            let done = c.payload().is_empty() && !continued;
            continued = c.is_continued();
            self.upstream.send_packet(&c).await?;
            if done {
                break;
            }
        }
        let p = self.next().await?;
        Ok(!is_err(&p) && self.ended(&p))
    }

    /// COM_STMT_PREPARE: OK with the counts, parameter and column definitions; or ERR.
    async fn prepare(&mut self) -> Result<(), SessionError> {
        let p = self.next().await?;
        let pl = p.payload();
        if pl.first() != Some(&header::OK) {
            return Ok(());
        }
        if pl.len() < 9 {
            return Err(upstream_malformed("short COM_STMT_PREPARE OK"));
        }
        let columns = u16::from_le_bytes([pl[5], pl[6]]);
        let params = u16::from_le_bytes([pl[7], pl[8]]);
        let ok = PrepareOk::decode(pl).map_err(SessionError::UpstreamProtocol)?;
        if params > 0 {
            self.skip(params as u64).await?;
            if !self.deprecate_eof {
                self.next().await?;
            }
        }
        let capture = self.capture_prepare && columns <= CAPTURE_COLUMNS_MAX;
        let mut defs = Vec::new();
        for _ in 0..columns {
            let p = self.next().await?;
            if is_err(&p) || p.is_continued() {
                return Err(upstream_malformed("ERR among column definitions"));
            }
            if capture {
                defs.push(p.payload().to_vec());
            }
        }
        if columns > 0 && !self.deprecate_eof {
            self.next().await?;
        }
        if capture {
            self.prepared = Some((ok, defs));
        }
        Ok(())
    }

    /// COM_FIELD_LIST: column definitions until the end packet or an ERR.
    async fn field_list(&mut self) -> Result<(), SessionError> {
        loop {
            let p = self.next().await?;
            if is_err(&p) || self.is_end(&p) {
                return Ok(());
            }
        }
    }

    /// COM_CHANGE_USER: an auth exchange, until OK or ERR.
    async fn auth(&mut self) -> Result<(), SessionError> {
        loop {
            let p = self.next().await?;
            match p.payload().first().copied() {
                Some(header::OK) | Some(header::ERR) => return Ok(()),
                Some(header::AUTH_MORE_DATA) if AuthMoreData::server_continues(p.payload()) => {}
                _ => {
                    self.flush().await?;
                    let c = self.client.read_packet().await?;
                    self.upstream.send_packet(&c).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;
    use crate::mysql::messages::{EofPacket, ErrPacket, OkPacket, Payload};
    use crate::mysql::packet::write_packets;
    use crate::mysql::session::io::Side;
    use crate::pg::conn::Conn;

    fn payload<M: Payload>(m: &M) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        b.to_vec()
    }

    fn eof(status: u16) -> Vec<u8> {
        payload(&EofPacket {
            warnings: 0,
            status,
        })
    }

    fn ok_end(status: u16) -> Vec<u8> {
        let mut ok = OkPacket::new(status);
        ok.header = header::EOF;
        payload(&ok)
    }

    fn column(name: &str) -> Vec<u8> {
        payload(&crate::mysql::messages::ColumnDefinition {
            catalog: b"def".to_vec(),
            schema: b"s".to_vec(),
            table: b"t".to_vec(),
            org_table: b"t".to_vec(),
            name: name.as_bytes().to_vec(),
            org_name: name.as_bytes().to_vec(),
            rest: vec![0x0c, 0x3f, 0, 11, 0, 0, 0, 3, 0, 0, 0, 0, 0],
        })
    }

    /// Feeds `response` (payloads, numbered from 1) and a sentinel packet to the relay as the
    /// upstream; checks the client got exactly the response and the sentinel was left unread.
    async fn relay(cmd: Command, deprecate_eof: bool, response: &[Vec<u8>]) {
        let (client_larder, mut client_peer) = UnixStream::pair().unwrap();
        let (upstream_larder, mut upstream_peer) = UnixStream::pair().unwrap();
        let mut wire = BytesMut::new();
        let mut seq = 1u8;
        for p in response {
            seq = write_packets(&mut wire, seq, p);
        }
        let expected = wire.clone();
        write_packets(&mut wire, 0, b"\x00sentinel");
        let writer = tokio::spawn(async move {
            upstream_peer.write_all(&wire).await.unwrap();
            upstream_peer
        });
        let mut client = PacketConn::new(Conn::Unix(client_larder), Side::Client);
        let mut upstream = PacketConn::new(Conn::Unix(upstream_larder), Side::Upstream);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            client_peer.read_exact(&mut got).await.unwrap();
            assert!(got == expected[..], "the client got other bytes");
            client_peer
        });
        Relay::new(&mut client, &mut upstream, deprecate_eof)
            .response(cmd)
            .await
            .unwrap();
        let _peer = writer.await.unwrap();
        let _client_peer = reader.await.unwrap();
        let next = upstream.read_packet().await.unwrap();
        assert_eq!(
            next.payload(),
            b"\x00sentinel",
            "the relay read past the response"
        );
    }

    #[tokio::test]
    async fn result_sets_end_where_they_end() {
        // A row starting with 0xFE (an 8-byte length) is a row, not an end packet.
        let mut fe_row = vec![0xFE];
        fe_row.extend_from_slice(&3u64.to_le_bytes());
        fe_row.extend_from_slice(b"abc");
        let more = status::SERVER_MORE_RESULTS_EXISTS;
        relay(
            Command::Query,
            false,
            &[
                vec![2],
                column("a"),
                column("b"),
                eof(0),
                fe_row.clone(),
                vec![1, b'x', 0xFB],
                eof(more),
                payload(&OkPacket::new(more)),
                vec![1],
                column("c"),
                eof(0),
                eof(0),
            ],
        )
        .await;
        relay(
            Command::Query,
            true,
            &[
                vec![1],
                column("a"),
                vec![1, b'x'],
                vec![1, b'y'],
                ok_end(0),
            ],
        )
        .await;
        // An error in the middle of the rows ends the response.
        relay(
            Command::Query,
            true,
            &[
                vec![1],
                column("a"),
                vec![1, b'x'],
                payload(&ErrPacket::new(1317, "70100", "interrupted")),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn rows_split_over_packets() {
        let mut big = vec![0xFC, 0, 0];
        big.resize(PAYLOAD_MAX_PER_PACKET + 100, b'z');
        relay(
            Command::Query,
            false,
            &[vec![1], column("a"), eof(0), big, eof(0)],
        )
        .await;
    }

    #[tokio::test]
    async fn prepare_execute_cursor_fetch_and_others() {
        let mut prep = vec![0x00];
        prep.put_u32_le(1);
        prep.put_u16_le(2); // columns
        prep.put_u16_le(1); // params
        prep.put_u8(0);
        prep.put_u16_le(0);
        relay(
            Command::StmtPrepare,
            false,
            &[
                prep.clone(),
                column("?"),
                eof(0),
                column("a"),
                column("b"),
                eof(0),
            ],
        )
        .await;
        relay(
            Command::StmtPrepare,
            true,
            &[prep, column("?"), column("a"), column("b")],
        )
        .await;
        // A cursor: no rows after the column definitions; they come with COM_STMT_FETCH.
        let cursor = status::SERVER_STATUS_CURSOR_EXISTS;
        relay(
            Command::StmtExecute,
            false,
            &[vec![1], column("a"), eof(cursor)],
        )
        .await;
        relay(
            Command::StmtFetch,
            false,
            &[vec![0, 0, 1], vec![0, 0, 2], eof(cursor)],
        )
        .await;
        relay(Command::Ping, false, &[payload(&OkPacket::new(2))]).await;
        relay(Command::SetOption, false, &[eof(2)]).await;
        relay(
            Command::Statistics,
            false,
            &[b"Uptime: 5  Threads: 1".to_vec()],
        )
        .await;
        relay(
            Command::FieldList,
            false,
            &[column("a"), column("b"), eof(0)],
        )
        .await;
        relay(Command::StmtClose, false, &[]).await;
    }
}
