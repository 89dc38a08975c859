//! A MySQL/MariaDB replication position: binlog file + offset, plus the GTID state when known.
//!
//! Order: by the binlog file's numeric suffix (`binlog.000012` < `binlog.000100`), then the
//! file name (different base names never mix on one server, this only keeps the order total),
//! then the offset, then the GTID text (a tie-breaker only; two positions at the same file and
//! offset are the same point of the stream). The offset is the end of the event that finished
//! the transaction (`log_pos` in its header): streaming from it starts with the next
//! transaction.
//!
//! Storage: [`Position::encode`] writes a versioned binary form that [`Position::decode`]
//! reads back (version 1, without `created`, too); anything else is rejected.
//!
//! `created` is when the binlog file was created (its format description event's timestamp),
//! once the stream has read it: a stream resumed at the position checks it, so that a file of
//! the same name on another server, or after `RESET MASTER`, is not taken for this one. It is
//! not part of the position's identity or order.

use std::cmp::Ordering;
use std::fmt;

use crate::error::ReplicationError;

/// Opaque, totally ordered position in the upstream's binlog.
#[derive(Clone, Debug)]
pub struct Position {
    /// Binlog file name (`binlog.000003`).
    pub file: String,
    /// Byte offset in `file`: the end of the last event taken.
    pub offset: u64,
    /// MariaDB: `domain-server-seq` list (as in `@@gtid_binlog_pos`) after the last
    /// transaction taken. MySQL: the executed GTID set, when known. `None` when the upstream
    /// has no GTIDs.
    pub gtid: Option<String>,
    /// When `file` was created (its format description event's timestamp), when known.
    pub created: Option<u32>,
}

impl PartialEq for Position {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Position {}

impl std::hash::Hash for Position {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.file, self.offset, &self.gtid).hash(state);
    }
}

const ENCODING_VERSION: u8 = 2;
/// Longest file name / GTID text accepted by `decode` (guards against garbage lengths).
const TEXT_MAX: usize = 1 << 20;

impl Position {
    pub fn new(file: impl Into<String>, offset: u64, gtid: Option<String>) -> Position {
        Position {
            file: file.into(),
            offset,
            gtid: gtid.filter(|g| !g.is_empty()),
            created: None,
        }
    }

    /// The position with its file's creation time.
    pub fn created(mut self, created: Option<u32>) -> Position {
        self.created = created;
        self
    }

    /// The numeric suffix of the file name (`binlog.000012` -> 12); 0 when there is none.
    pub fn file_sequence(&self) -> u64 {
        file_sequence(&self.file)
    }

    /// The position as one ordered number, for what compares positions (the applied
    /// position, staleness, read-your-writes): the file's sequence in the high 32 bits, the
    /// offset in the low ones (a binlog file is at most 1 GiB). Later positions are larger.
    pub fn progress(&self) -> u64 {
        (self.file_sequence() << 32) | (self.offset & 0xffff_ffff)
    }

    /// Versioned binary form: `[2] file_len:u32le file offset:u64le has_gtid:u8
    /// [gtid_len:u32le gtid] has_created:u8 [created:u32le]` (version 1 ends after the GTID).
    pub fn encode(&self) -> Vec<u8> {
        let gtid = self.gtid.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(18 + self.file.len() + gtid.len());
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&(self.file.len() as u32).to_le_bytes());
        out.extend_from_slice(self.file.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        match &self.gtid {
            None => out.push(0),
            Some(g) => {
                out.push(1);
                out.extend_from_slice(&(g.len() as u32).to_le_bytes());
                out.extend_from_slice(g.as_bytes());
            }
        }
        match self.created {
            None => out.push(0),
            Some(c) => {
                out.push(1);
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out
    }

    /// Reads [`Position::encode`]'s output; rejects other versions, truncation, trailing
    /// bytes, non-UTF-8 text and an empty file name.
    pub fn decode(bytes: &[u8]) -> Result<Position, ReplicationError> {
        let bad = |why: &str| ReplicationError::InvalidPosition(why.to_string());
        let mut r = Reader(bytes);
        let version = match r.take(1).map(|b| b[0]) {
            Some(v @ (1 | ENCODING_VERSION)) => v,
            Some(v) => return Err(bad(&format!("unknown encoding version {v}"))),
            None => return Err(bad("empty")),
        };
        let file = r.text().ok_or_else(|| bad("bad file name"))?;
        if file.is_empty() {
            return Err(bad("empty file name"));
        }
        let offset = r
            .take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| bad("truncated offset"))?;
        let gtid = match r.take(1).map(|b| b[0]) {
            Some(0) => None,
            Some(1) => Some(r.text().ok_or_else(|| bad("bad GTID text"))?),
            _ => return Err(bad("bad GTID flag")),
        };
        let created = match (version, r.take(1).map(|b| b[0])) {
            (1, None) => None,
            (_, Some(0)) => None,
            (_, Some(1)) => Some(
                r.take(4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
                    .ok_or_else(|| bad("truncated creation time"))?,
            ),
            _ => return Err(bad("bad creation time flag")),
        };
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Position::new(file, offset, gtid).created(created))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        if len > TEXT_MAX {
            return None;
        }
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// The digits after the last `.` of a binlog file name.
fn file_sequence(file: &str) -> u64 {
    file.rsplit_once('.')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .unwrap_or(0)
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        self.file_sequence()
            .cmp(&other.file_sequence())
            .then_with(|| self.file.cmp(&other.file))
            .then_with(|| self.offset.cmp(&other.offset))
            .then_with(|| self.gtid.cmp(&other.gtid))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)?;
        if let Some(g) = &self.gtid {
            write!(f, " (gtid {g})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_file_suffix_then_offset() {
        let p = |f: &str, o| Position::new(f, o, None);
        assert!(p("binlog.000002", 4) < p("binlog.000010", 4));
        assert!(p("binlog.000099", 900) < p("binlog.000100", 4));
        assert!(p("binlog.000003", 120) < p("binlog.000003", 121));
        assert!(p("binlog.999999", 5) < p("binlog.1000000", 4));
        let mut v = vec![p("b.10", 1), p("b.9", 7), p("b.9", 3), p("b.100", 0)];
        v.sort();
        assert_eq!(
            v,
            vec![p("b.9", 3), p("b.9", 7), p("b.10", 1), p("b.100", 0)]
        );
    }

    #[test]
    fn progress_orders_as_positions_do() {
        let p = |f: &str, o| Position::new(f, o, None);
        let ordered = [
            p("binlog.000002", 4),
            p("binlog.000002", 1 << 30),
            p("binlog.000010", 4),
            p("binlog.000099", 900),
            p("binlog.000100", 4),
            p("binlog.1000000", 4),
        ];
        for w in ordered.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].progress() < w[1].progress(), "{:?} {:?}", w[0], w[1]);
        }
        assert_eq!(p("binlog.000003", 120).progress(), (3 << 32) | 120);
    }

    #[test]
    fn encode_decode_round_trips() {
        for pos in [
            Position::new("binlog.000001", 4, None),
            Position::new("mysql-bin.000123", u64::MAX, Some("0-1-17,1-2-3".into())),
            Position::new(
                "x",
                0,
                Some("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5".into()),
            ),
            Position::new("binlog.000002", 99, None).created(Some(1_733_000_000)),
        ] {
            let bytes = pos.encode();
            let back = Position::decode(&bytes).unwrap();
            assert_eq!(back, pos);
            assert_eq!(back.created, pos.created);
        }
        // Version 1 (stored before creation times were kept) still reads.
        let mut v1 = Position::new("binlog.000001", 4, Some("0-1-2".into())).encode();
        v1[0] = 1;
        v1.pop();
        assert_eq!(
            Position::decode(&v1).unwrap(),
            Position::new("binlog.000001", 4, Some("0-1-2".into()))
        );
        // An empty GTID is no GTID.
        assert_eq!(Position::new("f.1", 4, Some(String::new())).gtid, None);
    }

    #[test]
    fn garbage_is_rejected() {
        let good = Position::new("binlog.000001", 4, Some("0-1-1".into())).encode();
        assert!(Position::decode(&[]).is_err());
        assert!(Position::decode(&[2]).is_err());
        assert!(Position::decode(b"binlog.000001:4").is_err());
        for cut in 0..good.len() {
            assert!(Position::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Position::decode(&trailing).is_err());
        let mut huge = vec![1];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Position::decode(&huge).is_err());
        let mut not_utf8 = vec![1, 1, 0, 0, 0, 0xff];
        not_utf8.extend_from_slice(&4u64.to_le_bytes());
        not_utf8.push(0);
        assert!(Position::decode(&not_utf8).is_err());
    }

    #[test]
    fn display_names_file_offset_and_gtid() {
        let p = Position::new("binlog.000002", 345, Some("0-1-9".into()));
        assert_eq!(p.to_string(), "binlog.000002:345 (gtid 0-1-9)");
    }
}
