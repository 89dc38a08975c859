//! Estimated heap bytes of operator state.
//!
//! Operators charge what they store as they store it: a distinct row kept in a multiset
//! ([`super::bump`], [`super::bump_sorted`]), a key entry of a keyed map, a value an
//! accumulator keeps. Charges go to a counter of the writer's thread, which the graph reads
//! after each call of an operator and adds to that node's total ([`take`]). Every charge has
//! its opposite when the thing goes, so a node whose input went back to nothing is back to
//! the bytes it started with. The figures are estimates, with the allocator's rounding, a
//! hash map's slots at their emptiest load and a B-tree's first node counted, so that they
//! do not undercount (`--memory-limit` keeps them): `benches/memory` compares an aggregate's
//! with the resident size. The reader's estimate (`reader/state.rs`) uses the same units.

use std::cell::Cell;

use larder_sql::value::{Key, KeyPart, Value};

thread_local! {
    static CHARGED: Cell<i64> = const { Cell::new(0) };
}

/// Adds `bytes` (negative: frees) to the current operator's charge.
pub(crate) fn charge(bytes: i64) {
    CHARGED.with(|c| c.set(c.get().saturating_add(bytes)));
}

/// The charge since the last call, reset to 0.
pub(crate) fn take() -> i64 {
    CHARGED.with(|c| c.replace(0))
}

/// Bytes the allocator takes for a request of `n` bytes (glibc: 8 bytes of header, 16-byte
/// alignment, 32 at least).
pub(crate) fn alloc_bytes(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// Heap bytes of a value besides its inline size, as allocated.
pub(crate) fn value_heap_bytes(v: &Value) -> usize {
    match v {
        Value::Numeric(s) | Value::Text(s) | Value::Json(s) | Value::Unrepresentable(s) => {
            alloc_bytes(s.capacity())
        }
        Value::Bytes(b) => alloc_bytes(b.capacity()),
        Value::Array(items) => {
            alloc_bytes(items.capacity() * std::mem::size_of::<Value>())
                + items.iter().map(value_heap_bytes).sum::<usize>()
        }
        _ => 0,
    }
}

/// A hash map's slots for one entry of `K -> V`: right after a map grows it is 7/16 full,
/// so an entry takes up to about two slots of `K`, `V` and a control byte.
pub(crate) fn slot_bytes<K, V>() -> i64 {
    (2 * (std::mem::size_of::<K>() + std::mem::size_of::<V>() + 1)) as i64
}

/// A B-tree map's first node (room for eleven entries): what a map of one entry takes at
/// least, charged when a multiset gets its first entry and freed with its last.
pub(crate) fn leaf_bytes<K, V>() -> i64 {
    alloc_bytes(16 + 11 * (std::mem::size_of::<K>() + std::mem::size_of::<V>())) as i64
}

/// Charges a multiset's first B-tree node when it gets its first entry, and frees it with
/// its last.
pub(crate) fn charge_first_node<K>(was_empty: bool, is_empty: bool) {
    match (was_empty, is_empty) {
        (true, false) => charge(leaf_bytes::<K, i64>()),
        (false, true) => charge(-leaf_bytes::<K, i64>()),
        _ => {}
    }
}

/// A B-tree entry of a row multiset (row and count) with nodes half full (filled in order,
/// a B-tree splits its nodes in halves).
const TREE_ENTRY_BYTES: usize = (std::mem::size_of::<Vec<Value>>() + 8) * 2;

/// A distinct row kept in a multiset: its values' allocation, what they point to, and its
/// share of the tree's nodes (the first node is [`leaf_bytes`]).
pub(crate) fn row_bytes(row: &[Value]) -> i64 {
    let values: usize = row.iter().map(value_heap_bytes).sum();
    (alloc_bytes(std::mem::size_of_val(row)) + values + TREE_ENTRY_BYTES) as i64
}

/// What a row multiset holds charged: its rows and, when it has any, its first node.
pub(crate) fn counts_bytes<'a, K: 'a>(rows: impl ExactSizeIterator<Item = &'a [Value]>) -> i64 {
    if rows.len() == 0 {
        return 0;
    }
    leaf_bytes::<K, i64>() + rows.map(row_bytes).sum::<i64>()
}

/// A key's own allocation (its parts and what they point to), besides its map slot.
pub(crate) fn key_bytes(key: &Key) -> i64 {
    let parts: usize = key
        .0
        .iter()
        .map(|p| match p {
            KeyPart::Decimal(s) | KeyPart::Text(s) | KeyPart::Other(s) => alloc_bytes(s.capacity()),
            KeyPart::Bytes(b) => alloc_bytes(b.capacity()),
            _ => 0,
        })
        .sum();
    (alloc_bytes(key.0.capacity() * std::mem::size_of::<KeyPart>()) + parts) as i64
}

/// `map[key]`, created (and its key charged) when missing.
pub(crate) fn entry<V: Default, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<Key, V, S>,
    key: Key,
) -> &mut V {
    map.entry(key).or_insert_with_key(|k| {
        charge(key_bytes(k) + slot_bytes::<Key, V>());
        V::default()
    })
}

/// Removes `key` from `map`, freeing its key's charge.
pub(crate) fn remove<V, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<Key, V, S>,
    key: &Key,
) -> Option<V> {
    let removed = map.remove(key);
    if removed.is_some() {
        charge(-(key_bytes(key) + slot_bytes::<Key, V>()));
    }
    removed
}
