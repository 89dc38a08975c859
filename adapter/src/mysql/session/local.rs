//! What a session says or asks by itself: result sets Larder writes to the client (cache hits,
//! Larder's statements), and the few exchanges it has with the upstream on the session's own
//! connection, as the session's user (preparing a query to learn whether the user may run it
//! and how the upstream describes its columns; `SHOW GRANTS`).
//!
//! A local response is built whole in a buffer before any of it is sent, so a value that
//! cannot be written exactly leaves nothing half-sent: the command then goes upstream.

use bytes::{BufMut, BytesMut};

use super::io::PacketConn;
use super::SessionError;
use crate::cache::TextTable;
use crate::mysql::messages::flags::header;
use crate::mysql::messages::stmt::{stmt_close, stmt_prepare, PrepareOk};
use crate::mysql::messages::{
    put_lenenc_bytes, put_lenenc_int, ColumnDefinition, EofPacket, ErrPacket, MyProtocolError,
    OkPacket, Payload,
};
use crate::mysql::packet::write_packets;

/// Most bytes of one local response (a larger cache result goes upstream instead).
pub(super) const LOCAL_RESPONSE_MAX_BYTES: usize = 16 << 20;
/// Most bytes the side exchanges read from the upstream (column definitions, grants).
const SIDE_RESPONSE_MAX_BYTES: usize = 1 << 20;

/// A response being written: packets with consecutive sequence ids from the command's.
pub(super) struct Response {
    pub(super) wire: BytesMut,
    seq: u8,
    payload: BytesMut,
}

impl Response {
    pub(super) fn new(mut wire: BytesMut, first_seq: u8) -> Response {
        wire.clear();
        Response {
            wire,
            seq: first_seq,
            payload: BytesMut::with_capacity(256),
        }
    }

    /// The payload of the next packet, to fill and then [`Response::end_packet`].
    pub(super) fn packet(&mut self) -> &mut BytesMut {
        self.payload.clear();
        &mut self.payload
    }

    pub(super) fn end_packet(&mut self) -> Result<(), String> {
        self.seq = write_packets(&mut self.wire, self.seq, &self.payload);
        if self.wire.len() > LOCAL_RESPONSE_MAX_BYTES {
            return Err(format!(
                "the result is larger than {LOCAL_RESPONSE_MAX_BYTES} bytes"
            ));
        }
        Ok(())
    }

    /// Column count and definitions (raw payloads as the upstream sent them), then the EOF
    /// unless CLIENT_DEPRECATE_EOF.
    pub(super) fn header(
        &mut self,
        columns: &[Vec<u8>],
        deprecate_eof: bool,
        status: u16,
    ) -> Result<(), String> {
        put_lenenc_int(self.packet(), columns.len() as u64);
        self.end_packet()?;
        for c in columns {
            self.packet().put_slice(c);
            self.end_packet()?;
        }
        if !deprecate_eof {
            EofPacket {
                warnings: 0,
                status,
            }
            .encode(self.packet());
            self.end_packet()?;
        }
        Ok(())
    }

    /// The packet that ends the rows: EOF, or OK with the EOF header.
    pub(super) fn end(&mut self, deprecate_eof: bool, status: u16) -> Result<(), String> {
        if deprecate_eof {
            let mut ok = OkPacket::new(status);
            ok.header = header::EOF;
            ok.encode(self.packet());
        } else {
            EofPacket {
                warnings: 0,
                status,
            }
            .encode(self.packet());
        }
        self.end_packet()
    }
}

/// A column definition of a text column Larder makes up (Larder's own statements): utf8mb4,
/// VAR_STRING.
fn text_column(name: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    ColumnDefinition {
        catalog: b"def".to_vec(),
        schema: Vec::new(),
        table: Vec::new(),
        org_table: Vec::new(),
        name: name.as_bytes().to_vec(),
        org_name: Vec::new(),
        // utf8mb4_general_ci, length 1024 (x4), VAR_STRING, no flags, 39 decimals (none).
        rest: vec![0x0c, 45, 0, 0, 0x10, 0, 0, 253, 0, 0, 39, 0, 0],
    }
    .encode(&mut b);
    b.to_vec()
}

/// Larder's answer to one of its statements: a text result set, or an OK.
pub(super) fn text_table(
    t: &TextTable,
    first_seq: u8,
    deprecate_eof: bool,
    status: u16,
    extended_metadata: bool,
) -> BytesMut {
    let mut r = Response::new(BytesMut::new(), first_seq);
    if t.columns.is_empty() {
        OkPacket::new(status).encode(r.packet());
        let _ = r.end_packet();
        return r.wire;
    }
    let columns: Vec<Vec<u8>> = t
        .columns
        .iter()
        .map(|c| {
            let mut def = text_column(c);
            if extended_metadata {
                // An empty extended-metadata string before the fixed part.
                let at = def.len() - 13;
                def.insert(at, 0);
            }
            def
        })
        .collect();
    // Sizes: Larder's tables are small, and bounded by what they list.
    let _ = r.header(&columns, deprecate_eof, status);
    for row in &t.rows {
        let p = r.packet();
        for v in row {
            match v {
                None => p.put_u8(0xFB),
                Some(s) => put_lenenc_bytes(p, s.as_bytes()),
            }
        }
        let _ = r.end_packet();
    }
    let _ = r.end(deprecate_eof, status);
    r.wire
}

/// What preparing a query upstream told: its column definitions (raw payloads).
pub(super) struct Described {
    pub(super) columns: Vec<Vec<u8>>,
}

fn side_malformed(what: &'static str) -> SessionError {
    SessionError::UpstreamProtocol(MyProtocolError::Invalid(what))
}

async fn side_packet(upstream: &mut PacketConn, read: &mut usize) -> Result<Vec<u8>, SessionError> {
    let p = upstream.read_packet().await?;
    if p.is_continued() {
        return Err(side_malformed("a side response packet over 16 MiB"));
    }
    *read += p.payload().len();
    if *read > SIDE_RESPONSE_MAX_BYTES {
        return Err(side_malformed("a side response too large"));
    }
    Ok(p.payload().to_vec())
}

/// Prepares `sql` upstream as the session's user and closes it at once: `Err` is the
/// upstream's refusal (no privilege, no such table, a syntax it does not take).
pub(super) async fn describe_upstream(
    upstream: &mut PacketConn,
    sql: &str,
    deprecate_eof: bool,
) -> Result<Result<Described, ErrPacket>, SessionError> {
    upstream.send_payload(0, &stmt_prepare(sql)).await?;
    let mut read = 0usize;
    let first = side_packet(upstream, &mut read).await?;
    if first.first() == Some(&header::ERR) {
        let err = ErrPacket::decode(&first).map_err(SessionError::UpstreamProtocol)?;
        return Ok(Err(err));
    }
    let ok = PrepareOk::decode(&first).map_err(SessionError::UpstreamProtocol)?;
    for _ in 0..ok.params {
        side_packet(upstream, &mut read).await?;
    }
    if ok.params > 0 && !deprecate_eof {
        side_packet(upstream, &mut read).await?;
    }
    let mut columns = Vec::with_capacity(usize::from(ok.columns));
    for _ in 0..ok.columns {
        columns.push(side_packet(upstream, &mut read).await?);
    }
    if ok.columns > 0 && !deprecate_eof {
        side_packet(upstream, &mut read).await?;
    }
    // COM_STMT_CLOSE has no response.
    upstream
        .send_payload(0, &stmt_close(ok.statement_id))
        .await?;
    Ok(Ok(Described { columns }))
}

/// Runs `sql` upstream on the session's connection and returns its rows as text (for
/// `SHOW GRANTS`); `Err` is the upstream's refusal.
pub(super) async fn query_upstream(
    upstream: &mut PacketConn,
    sql: &str,
    deprecate_eof: bool,
) -> Result<Result<Vec<Vec<Option<Vec<u8>>>>, ErrPacket>, SessionError> {
    let mut q = BytesMut::with_capacity(sql.len() + 1);
    q.put_u8(0x03);
    q.put_slice(sql.as_bytes());
    upstream.send_payload(0, &q).await?;
    let mut read = 0usize;
    let first = side_packet(upstream, &mut read).await?;
    match first.first() {
        Some(&header::ERR) => {
            return Ok(Err(
                ErrPacket::decode(&first).map_err(SessionError::UpstreamProtocol)?
            ))
        }
        Some(&header::OK) => return Ok(Ok(Vec::new())),
        _ => {}
    }
    let n = crate::mysql::messages::ColumnCount::decode(&first)
        .map_err(SessionError::UpstreamProtocol)?
        .0;
    for _ in 0..n {
        side_packet(upstream, &mut read).await?;
    }
    if !deprecate_eof {
        side_packet(upstream, &mut read).await?;
    }
    let mut rows = Vec::new();
    loop {
        let p = side_packet(upstream, &mut read).await?;
        match p.first() {
            Some(&header::EOF) if p.len() < 0xFFFFFF => return Ok(Ok(rows)),
            Some(&header::ERR) => {
                return Ok(Err(
                    ErrPacket::decode(&p).map_err(SessionError::UpstreamProtocol)?
                ))
            }
            _ => {}
        }
        let mut r = crate::mysql::messages::Reader::new(&p);
        let mut row = Vec::with_capacity(n as usize);
        for _ in 0..n {
            row.push(
                r.lenenc_int_or_null_bytes()
                    .map_err(SessionError::UpstreamProtocol)?
                    .map(<[u8]>::to_vec),
            );
        }
        rows.push(row);
    }
}

/// Whether `SHOW GRANTS` rows give global SUPER or ALL PRIVILEGES.
pub(super) fn grants_admin(rows: &[Vec<Option<Vec<u8>>>]) -> bool {
    rows.iter().flatten().flatten().any(|g| {
        let g = String::from_utf8_lossy(g).to_ascii_uppercase();
        let Some(on) = g.find(" ON *.* ") else {
            return false;
        };
        let privileges = &g[..on];
        privileges.contains("ALL PRIVILEGES") || privileges.contains("SUPER")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_super_or_all_is_admin() {
        let row = |s: &str| vec![Some(s.as_bytes().to_vec())];
        assert!(grants_admin(&[row(
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"
        )]));
        assert!(grants_admin(&[
            row("GRANT USAGE ON *.* TO `a`@`%`"),
            row("GRANT SELECT, SUPER ON *.* TO `a`@`%`")
        ]));
        assert!(!grants_admin(&[
            row("GRANT USAGE ON *.* TO `a`@`%`"),
            row("GRANT ALL PRIVILEGES ON `shop`.* TO `a`@`%`")
        ]));
    }

    #[test]
    fn larder_tables_are_result_sets() {
        let t = TextTable {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![Some("x".into()), None]],
            tag: None,
        };
        let wire = text_table(&t, 1, true, 2, false);
        // count, 2 definitions, 1 row, OK-as-EOF: 5 packets with seq 1..=5.
        let mut b = wire.clone();
        let mut seqs = Vec::new();
        while let Some(p) = crate::mysql::packet::RawPacket::parse(&mut b) {
            seqs.push(p.seq());
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }
}
