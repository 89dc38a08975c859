//! Compact keys: a reader key with one row (the common `WHERE id = ?` on a unique column), or a
//! partial reader's filled key without rows, held as one immutable allocation (the key's
//! bytes, then the row's bytes) behind a thin pointer.
//!
//! Both left-right copies point at the same allocation: the copy a change is applied to first
//! builds a new one, and the other copy adopts it ([`super::ReaderState`]'s `absorb_second`)
//! instead of applying the change again. A compact key therefore costs one pointer in each
//! copy's table and one allocation of about its encoded size, where a key with its row as
//! values costs a slot and a boxed entry in each copy and the row's values apart.
//!
//! Keys are encoded deterministically and prefix-free, so two keys are equal exactly when
//! their bytes are: the table hashes and compares bytes, and a read encodes its key once.
//! Rows use the storage encoding ([`larder_sql::rowcodec`]).

use std::hash::Hasher;

use larder_sql::rowcodec;
use larder_sql::value::{Key, KeyPart, Row};
use triomphe::{HeaderWithLength, ThinArc};

/// One compact key, shared by both copies of a reader. Its bytes: the row's multiplicity (0
/// for a filled key without rows), the key's length, the key, and the row, if any (varints
/// for the two numbers: a thin pointer's header holds only the length of the bytes).
pub(crate) type Compact = ThinArc<(), u8>;

/// The encoded bytes of a key and their hash, computed once per key looked up or changed.
#[derive(Clone, Debug)]
pub(crate) struct KeyCode {
    bytes: Vec<u8>,
    hash: u64,
}

impl KeyCode {
    pub(crate) fn of(key: &Key) -> KeyCode {
        let mut bytes = Vec::with_capacity(16);
        encode_key(key, &mut bytes);
        let hash = hash_bytes(&bytes);
        KeyCode { bytes, hash }
    }
}

/// FxHash of the bytes, finished with MurmurHash3's 64-bit mix: the table takes its bucket
/// from the low bits, which FxHash leaves poorly mixed for short keys that differ in a few
/// bytes (integer keys clustered, and reads probed long runs).
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(bytes);
    let mut x = h.finish() ^ bytes.len() as u64;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

const KEY_NULL: u8 = 0;
const KEY_FALSE: u8 = 1;
const KEY_TRUE: u8 = 2;
const KEY_INT: u8 = 3;
const KEY_FLOAT: u8 = 4;
const KEY_DECIMAL: u8 = 5;
const KEY_TEXT: u8 = 6;
const KEY_BYTES: u8 = 7;
const KEY_OTHER: u8 = 8;

/// Appends the key's encoding: per part, a tag and a number (a zigzag varint for integers,
/// 8 bytes for floats) or a varint length and bytes. Prefix-free, hence injective.
fn encode_key(key: &Key, out: &mut Vec<u8>) {
    for part in &key.0 {
        let bytes: &[u8] = match part {
            KeyPart::Null => {
                out.push(KEY_NULL);
                continue;
            }
            KeyPart::Bool(b) => {
                out.push(if *b { KEY_TRUE } else { KEY_FALSE });
                continue;
            }
            KeyPart::Int(i) => {
                out.push(KEY_INT);
                rowcodec::put_zigzag(out, *i);
                continue;
            }
            KeyPart::Float(bits) => {
                out.push(KEY_FLOAT);
                out.extend_from_slice(&bits.to_le_bytes());
                continue;
            }
            KeyPart::Decimal(s) => {
                out.push(KEY_DECIMAL);
                s.as_bytes()
            }
            KeyPart::Text(s) => {
                out.push(KEY_TEXT);
                s.as_bytes()
            }
            KeyPart::Bytes(b) => {
                out.push(KEY_BYTES);
                b
            }
            KeyPart::Other(s) => {
                out.push(KEY_OTHER);
                s.as_bytes()
            }
        };
        rowcodec::put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
}

/// The key [`encode_key`] wrote, or `None` for bytes it did not write.
fn decode_key(mut bytes: &[u8]) -> Option<Key> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    fn word(bytes: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(bytes, 8)?.try_into().ok()?))
    }
    fn len(bytes: &mut &[u8]) -> Option<usize> {
        usize::try_from(rowcodec::take_varint(bytes).ok()?).ok()
    }
    fn text(bytes: &mut &[u8]) -> Option<String> {
        let n = len(bytes)?;
        String::from_utf8(take(bytes, n)?.to_vec()).ok()
    }
    let mut parts = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        parts.push(match tag {
            KEY_NULL => KeyPart::Null,
            KEY_FALSE => KeyPart::Bool(false),
            KEY_TRUE => KeyPart::Bool(true),
            KEY_INT => KeyPart::Int(rowcodec::take_zigzag(&mut bytes).ok()?),
            KEY_FLOAT => KeyPart::Float(word(&mut bytes)?),
            KEY_DECIMAL => KeyPart::Decimal(text(&mut bytes)?),
            KEY_TEXT => KeyPart::Text(text(&mut bytes)?),
            KEY_BYTES => {
                let n = len(&mut bytes)?;
                KeyPart::Bytes(take(&mut bytes, n)?.to_vec())
            }
            KEY_OTHER => KeyPart::Other(text(&mut bytes)?),
            _ => return None,
        });
    }
    Some(Key(parts))
}

/// A compact key of `code` holding `count` copies of `row` (no row for a count of 0).
pub(crate) fn build(
    code: &KeyCode,
    count: u32,
    row: Option<&[larder_sql::value::Value]>,
) -> Compact {
    let mut bytes = Vec::with_capacity(code.bytes.len() + 48);
    rowcodec::put_varint(&mut bytes, u64::from(count));
    rowcodec::put_varint(&mut bytes, code.bytes.len() as u64);
    bytes.extend_from_slice(&code.bytes);
    if let Some(row) = row {
        rowcodec::encode_row(row, &mut bytes);
    }
    ThinArc::from_header_and_slice((), &bytes)
}

/// The count, the key's bytes and the row's bytes (empty ones for bytes this module did not
/// write, which a decoding then refuses).
fn parts(c: &Compact) -> (u32, &[u8], &[u8]) {
    let mut bytes: &[u8] = &c.slice;
    let mut number = || {
        rowcodec::take_varint(&mut bytes)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
    };
    let (Some(count), Some(key_len)) = (number(), number()) else {
        return (0, &[], &[]);
    };
    if key_len > bytes.len() {
        return (0, &[], &[]);
    }
    let (key, row) = bytes.split_at(key_len);
    (u32::try_from(count).unwrap_or(0), key, row)
}

fn key_bytes(c: &Compact) -> &[u8] {
    parts(c).1
}

/// The row's multiplicity (0: a filled key without rows).
pub(crate) fn count(c: &Compact) -> u32 {
    parts(c).0
}

/// The row it holds, if any; `Err` for bytes this module did not write.
pub(crate) fn row(c: &Compact) -> Result<Option<Row>, rowcodec::RowCodecError> {
    match parts(c) {
        (0, _, _) => Ok(None),
        (_, _, row) => rowcodec::decode_row(row).map(Some),
    }
}

/// The key it holds.
pub(crate) fn key(c: &Compact) -> Option<Key> {
    decode_key(key_bytes(c))
}

/// Whether the two are the same allocation.
pub(crate) fn same(a: &Compact, b: &Compact) -> bool {
    std::ptr::eq(&a.slice, &b.slice)
}

/// Bytes the allocation takes, before the allocator's rounding.
pub(crate) fn size(c: &Compact) -> usize {
    std::mem::size_of::<usize>() + std::mem::size_of::<HeaderWithLength<()>>() + c.slice.len()
}

/// One copy's compact keys: a table of pointers, hashed and compared by key bytes.
#[derive(Clone, Default)]
pub(crate) struct CompactKeys {
    table: hashbrown::HashTable<Compact>,
}

impl std::fmt::Debug for CompactKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactKeys")
            .field("len", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl CompactKeys {
    pub(crate) fn get(&self, code: &KeyCode) -> Option<&Compact> {
        self.table
            .find(code.hash, |c| key_bytes(c) == code.bytes.as_slice())
    }

    pub(crate) fn remove(&mut self, code: &KeyCode) -> Option<Compact> {
        self.table
            .find_entry(code.hash, |c| key_bytes(c) == code.bytes.as_slice())
            .ok()
            .map(|e| e.remove().0)
    }

    /// Inserts `c` under `code` (its key), which must not be held.
    pub(crate) fn insert_new(&mut self, code: &KeyCode, c: Compact) {
        debug_assert_eq!(key_bytes(&c), code.bytes.as_slice());
        self.table
            .insert_unique(code.hash, c, |c| hash_bytes(key_bytes(c)));
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Compact> + '_ {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use larder_sql::value::Value;

    use super::*;

    fn keys() -> Vec<Key> {
        vec![
            Key(vec![]),
            Key(vec![KeyPart::Int(-7)]),
            Key(vec![KeyPart::Int(7), KeyPart::Null, KeyPart::Bool(true)]),
            Key(vec![KeyPart::Bool(false)]),
            Key(vec![KeyPart::Float(1.5f64.to_bits())]),
            Key(vec![KeyPart::Decimal("1.25".into())]),
            Key(vec![KeyPart::Text("".into()), KeyPart::Text("ab".into())]),
            Key(vec![KeyPart::Text("a".into()), KeyPart::Text("b".into())]),
            Key(vec![KeyPart::Text("ab".into()), KeyPart::Text("".into())]),
            Key(vec![KeyPart::Bytes(vec![0, 255])]),
            Key(vec![KeyPart::Other("x".into())]),
        ]
    }

    #[test]
    fn a_table_slot_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Compact>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn keys_round_trip_and_differ_in_bytes() {
        let codes: Vec<KeyCode> = keys().iter().map(KeyCode::of).collect();
        for (key, code) in keys().iter().zip(&codes) {
            assert_eq!(decode_key(&code.bytes).as_ref(), Some(key));
        }
        for (i, a) in codes.iter().enumerate() {
            for b in &codes[i + 1..] {
                assert_ne!(a.bytes, b.bytes);
            }
        }
        assert_eq!(decode_key(&[KEY_TEXT, 9, b'a']), None);
        assert_eq!(decode_key(&[99]), None);
    }

    #[test]
    fn a_compact_key_holds_its_key_count_and_row() {
        let key = Key(vec![KeyPart::Int(42), KeyPart::Text("k".into())]);
        let code = KeyCode::of(&key);
        let row = vec![
            Value::Int(42),
            Value::Text("twenty bytes of text".into()),
            Value::Null,
        ];
        let c = build(&code, 3, Some(&row));
        assert_eq!(count(&c), 3);
        assert_eq!(self::key(&c), Some(key.clone()));
        assert_eq!(self::row(&c), Ok(Some(row)));
        let empty = build(&code, 0, None);
        assert_eq!(self::row(&empty), Ok(None));
        assert!(size(&empty) < size(&c));

        let mut table = CompactKeys::default();
        table.insert_new(&code, c);
        assert_eq!(table.get(&code).map(count), Some(3));
        assert!(table
            .get(&KeyCode::of(&Key(vec![KeyPart::Int(42)])))
            .is_none());
        for i in 0..1000 {
            let k = KeyCode::of(&Key(vec![KeyPart::Int(i)]));
            table.insert_new(&k, build(&k, 1, Some(&[Value::Int(i)])));
        }
        assert_eq!(table.get(&code).map(count), Some(3));
        assert_eq!(table.remove(&code).map(|c| count(&c)), Some(3));
        assert!(table.get(&code).is_none());
        assert_eq!(table.len(), 1000);
    }
}
