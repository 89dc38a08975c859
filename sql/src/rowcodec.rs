//! Compact binary encoding of rows for storage (RocksDB values and key suffixes).
//!
//! Rows are persisted type-less, like [`Value`] itself: each value carries a one-byte tag, so a
//! row can be decoded without its schema and a schema change can never silently reinterpret
//! stored bytes. The first byte is a format version so the layout can evolve.
//!
//! Layout: `version (1) | count (varint) | value*`, where a value is a tag byte followed by:
//! nothing (NULL, booleans), a zigzag varint (integers, dates, times, timestamps), 8 bytes
//! little-endian (float bits, NaN payloads preserved), 16 bytes (uuid), a varint length and
//! bytes (text, numeric, json, bytea), or a varint count and nested values (arrays).
//!
//! The encoding is deterministic and prefix-free, hence injective on rows; that is all
//! [`encode_key`] needs. It does not preserve order. Decoding is defensive: hostile or corrupt
//! bytes yield a [`RowCodecError`], never a panic or an unbounded allocation.

use crate::value::{Row, Value};

/// Current layout version, written as the first byte.
pub const ROW_FORMAT_VERSION: u8 = 1;
/// Deepest accepted array nesting when decoding (Larder only produces depth 1).
pub const NESTING_MAX: usize = 16;

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT: u8 = 3;
const TAG_FLOAT: u8 = 4;
const TAG_NUMERIC: u8 = 5;
const TAG_TEXT: u8 = 6;
const TAG_BYTES: u8 = 7;
const TAG_DATE: u8 = 8;
const TAG_TIME: u8 = 9;
const TAG_TIMESTAMP: u8 = 10;
const TAG_TIMESTAMPTZ: u8 = 11;
const TAG_UUID: u8 = 12;
const TAG_JSON: u8 = 13;
const TAG_ARRAY: u8 = 14;
const TAG_UNREPRESENTABLE: u8 = 15;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowCodecError {
    #[error("row encoding is empty")]
    Empty,
    #[error("unknown row format version {0}")]
    UnknownVersion(u8),
    #[error("row encoding is truncated")]
    Truncated,
    #[error("unknown value tag {0}")]
    UnknownTag(u8),
    #[error("varint is too long")]
    VarintOverflow,
    #[error("value out of range for its kind")]
    OutOfRange,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("arrays nested deeper than {NESTING_MAX}")]
    TooDeep,
    #[error("{0} unexpected bytes after the row")]
    TrailingBytes(usize),
}

/// Append the encoding of `row` to `out`.
pub fn encode_row(row: &[Value], out: &mut Vec<u8>) {
    out.push(ROW_FORMAT_VERSION);
    put_varint(out, row.len() as u64);
    for v in row {
        encode_value(v, out);
    }
}

/// Key-suffix encoding of key column values: the row encoding, which is deterministic and
/// injective (but not order-preserving). Note it is structural: `-0.0` and `0.0`, or two NaN
/// payloads, are different keys; callers canonicalize first if they need SQL equality.
pub fn encode_key(values: &[Value], out: &mut Vec<u8>) {
    encode_row(values, out);
}

/// Decode a whole buffer produced by [`encode_row`]; trailing bytes are an error.
pub fn decode_row(bytes: &[u8]) -> Result<Row, RowCodecError> {
    let (&version, rest) = bytes.split_first().ok_or(RowCodecError::Empty)?;
    if version != ROW_FORMAT_VERSION {
        return Err(RowCodecError::UnknownVersion(version));
    }
    let mut r = Reader { b: rest };
    let values = r.values(0)?;
    if !r.b.is_empty() {
        return Err(RowCodecError::TrailingBytes(r.b.len()));
    }
    Ok(values)
}

fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(TAG_NULL),
        Value::Bool(false) => out.push(TAG_FALSE),
        Value::Bool(true) => out.push(TAG_TRUE),
        Value::Int(i) => put_signed(out, TAG_INT, *i),
        Value::Float(f) => {
            out.push(TAG_FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Numeric(s) => put_bytes(out, TAG_NUMERIC, s.as_bytes()),
        Value::Text(s) => put_bytes(out, TAG_TEXT, s.as_bytes()),
        Value::Bytes(b) => put_bytes(out, TAG_BYTES, b),
        Value::Date(d) => put_signed(out, TAG_DATE, (*d).into()),
        Value::Time(t) => put_signed(out, TAG_TIME, *t),
        Value::Timestamp(t) => put_signed(out, TAG_TIMESTAMP, *t),
        Value::TimestampTz(t) => put_signed(out, TAG_TIMESTAMPTZ, *t),
        Value::Uuid(u) => {
            out.push(TAG_UUID);
            out.extend_from_slice(u);
        }
        Value::Json(s) => put_bytes(out, TAG_JSON, s.as_bytes()),
        Value::Unrepresentable(s) => put_bytes(out, TAG_UNREPRESENTABLE, s.as_bytes()),
        Value::Array(items) => {
            out.push(TAG_ARRAY);
            put_varint(out, items.len() as u64);
            for item in items {
                encode_value(item, out);
            }
        }
    }
}

/// Appends `v` as a LEB128 varint (7 bits a byte, low first).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_signed(out: &mut Vec<u8>, tag: u8, v: i64) {
    out.push(tag);
    put_zigzag(out, v);
}

/// Appends `v` as a zigzag varint (small magnitudes of either sign take few bytes).
pub fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads a zigzag varint [`put_zigzag`] wrote from the front of `bytes`, advancing it.
pub fn take_zigzag(bytes: &mut &[u8]) -> Result<i64, RowCodecError> {
    let mut r = Reader { b: bytes };
    let v = r.signed()?;
    *bytes = r.b;
    Ok(v)
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    out.push(tag);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Reads a varint [`put_varint`] wrote from the front of `bytes`, advancing it.
pub fn take_varint(bytes: &mut &[u8]) -> Result<u64, RowCodecError> {
    let mut r = Reader { b: bytes };
    let v = r.varint()?;
    *bytes = r.b;
    Ok(v)
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RowCodecError> {
        if self.b.len() < n {
            return Err(RowCodecError::Truncated);
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, RowCodecError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, RowCodecError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(RowCodecError::VarintOverflow);
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RowCodecError::VarintOverflow)
    }

    fn signed(&mut self) -> Result<i64, RowCodecError> {
        let z = self.varint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn len(&mut self) -> Result<usize, RowCodecError> {
        let n = usize::try_from(self.varint()?).map_err(|_| RowCodecError::Truncated)?;
        if n > self.b.len() {
            return Err(RowCodecError::Truncated);
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, RowCodecError> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| RowCodecError::InvalidUtf8)
    }

    /// A count followed by that many values. Every value takes at least one byte, so a count
    /// larger than the remaining input is rejected before allocating.
    fn values(&mut self, depth: usize) -> Result<Vec<Value>, RowCodecError> {
        let count = self.len()?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            values.push(self.value(depth)?);
        }
        Ok(values)
    }

    fn value(&mut self, depth: usize) -> Result<Value, RowCodecError> {
        let tag = self.byte()?;
        Ok(match tag {
            TAG_NULL => Value::Null,
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_INT => Value::Int(self.signed()?),
            TAG_FLOAT => {
                let bytes: [u8; 8] = self
                    .take(8)?
                    .try_into()
                    .map_err(|_| RowCodecError::Truncated)?;
                Value::Float(f64::from_bits(u64::from_le_bytes(bytes)))
            }
            TAG_NUMERIC => Value::Numeric(self.string()?),
            TAG_TEXT => Value::Text(self.string()?),
            TAG_BYTES => {
                let n = self.len()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            TAG_DATE => {
                Value::Date(i32::try_from(self.signed()?).map_err(|_| RowCodecError::OutOfRange)?)
            }
            TAG_TIME => Value::Time(self.signed()?),
            TAG_TIMESTAMP => Value::Timestamp(self.signed()?),
            TAG_TIMESTAMPTZ => Value::TimestampTz(self.signed()?),
            TAG_UUID => Value::Uuid(
                self.take(16)?
                    .try_into()
                    .map_err(|_| RowCodecError::Truncated)?,
            ),
            TAG_JSON => Value::Json(self.string()?),
            TAG_UNREPRESENTABLE => Value::Unrepresentable(self.string()?),
            TAG_ARRAY => {
                if depth >= NESTING_MAX {
                    return Err(RowCodecError::TooDeep);
                }
                Value::Array(self.values(depth + 1)?)
            }
            other => return Err(RowCodecError::UnknownTag(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Row {
        vec![
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(0),
            Value::Int(-1),
            Value::Int(i64::MIN),
            Value::Int(i64::MAX),
            Value::Float(1.5),
            Value::Float(-0.0),
            Value::Float(f64::INFINITY),
            Value::Numeric("-12.340".into()),
            Value::Text(String::new()),
            Value::Text("héllo \u{0} wörld".into()),
            Value::Bytes(vec![0, 255, 7]),
            Value::Date(i32::MIN),
            Value::Date(i32::MAX),
            Value::Date(-3),
            Value::Time(86_400_000_000),
            Value::Timestamp(i64::MIN),
            Value::Timestamp(1),
            Value::TimestampTz(i64::MAX),
            Value::Uuid([9; 16]),
            Value::Json("{\"a\": 1}".into()),
            Value::Array(vec![]),
            Value::Array(vec![
                Value::Int(1),
                Value::Null,
                Value::Array(vec![Value::Text("x".into())]),
            ]),
        ]
    }

    fn round_trip(row: &[Value]) -> Row {
        let mut buf = Vec::new();
        encode_row(row, &mut buf);
        decode_row(&buf).expect("decodes")
    }

    #[test]
    fn round_trips_every_variant() {
        let row = every_variant();
        assert_eq!(round_trip(&row), row);
        assert_eq!(round_trip(&[]), Vec::<Value>::new());
    }

    #[test]
    fn nan_payload_and_negative_zero_survive() {
        let weird_nan = f64::from_bits(0x7ff8_0000_dead_beef);
        let out = round_trip(&[Value::Float(weird_nan), Value::Float(-0.0)]);
        match out.as_slice() {
            [Value::Float(a), Value::Float(b)] => {
                assert_eq!(a.to_bits(), weird_nan.to_bits());
                assert_eq!(b.to_bits(), (-0.0f64).to_bits());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn keys_are_injective_on_tricky_pairs() {
        let pairs: Vec<(Row, Row)> = vec![
            (
                vec![Value::Text("ab".into()), Value::Text("c".into())],
                vec![Value::Text("a".into()), Value::Text("bc".into())],
            ),
            (vec![Value::Int(1)], vec![Value::Date(1)]),
            (
                vec![Value::Text("1".into())],
                vec![Value::Numeric("1".into())],
            ),
            (vec![Value::Null], vec![]),
            (
                vec![Value::Array(vec![Value::Null])],
                vec![Value::Array(vec![]), Value::Null],
            ),
        ];
        for (a, b) in pairs {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            encode_key(&a, &mut ka);
            encode_key(&b, &mut kb);
            assert_ne!(ka, kb, "{a:?} vs {b:?}");
            let mut again = Vec::new();
            encode_key(&a, &mut again);
            assert_eq!(ka, again, "deterministic");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut buf = Vec::new();
        encode_row(&every_variant(), &mut buf);
        for len in 0..buf.len() {
            assert!(decode_row(&buf[..len]).is_err(), "prefix of {len} bytes");
        }
        buf.push(0);
        assert_eq!(decode_row(&buf), Err(RowCodecError::TrailingBytes(1)));
    }

    #[test]
    fn specific_errors() {
        assert_eq!(decode_row(&[]), Err(RowCodecError::Empty));
        assert_eq!(decode_row(&[9, 0]), Err(RowCodecError::UnknownVersion(9)));
        assert_eq!(
            decode_row(&[1, 1, 200]),
            Err(RowCodecError::UnknownTag(200))
        );
        assert_eq!(
            decode_row(&[1, 1, TAG_TEXT, 2, 0xff, 0xfe]),
            Err(RowCodecError::InvalidUtf8)
        );
        // A count far beyond the input must not allocate.
        let mut huge = vec![1];
        put_varint(&mut huge, u64::MAX >> 1);
        assert_eq!(decode_row(&huge), Err(RowCodecError::Truncated));
        // Eleven continuation bytes overflow a u64.
        let mut long = vec![1, 1, TAG_INT];
        long.extend_from_slice(&[0xff; 11]);
        assert_eq!(decode_row(&long), Err(RowCodecError::VarintOverflow));
        // Date outside i32.
        let mut date = vec![1, 1];
        put_signed(&mut date, TAG_DATE, i64::from(i32::MAX) + 1);
        assert_eq!(decode_row(&date), Err(RowCodecError::OutOfRange));
        // Deep nesting.
        let mut deep = vec![1, 1];
        for _ in 0..=NESTING_MAX {
            deep.extend_from_slice(&[TAG_ARRAY, 1]);
        }
        deep.push(TAG_NULL);
        assert_eq!(decode_row(&deep), Err(RowCodecError::TooDeep));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut valid = Vec::new();
        encode_row(&every_variant(), &mut valid);
        let mut decoded_ok = 0;
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 64) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| (next() % 16) as u8).collect();
                b.insert(0, ROW_FORMAT_VERSION);
                b
            } else {
                // Mutate a valid encoding in a few places.
                let mut b = valid.clone();
                for _ in 0..(1 + next() % 3) {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
                b
            };
            if let Ok(row) = decode_row(&bytes) {
                // Whatever decodes must survive a re-encode (Debug compares NaN equal).
                let mut again = Vec::new();
                encode_row(&row, &mut again);
                let back = decode_row(&again).expect("re-encoded row decodes");
                assert_eq!(format!("{back:?}"), format!("{row:?}"));
                decoded_ok += 1;
            }
        }
        assert!(decoded_ok > 0, "the generator should hit some valid rows");
    }
}
