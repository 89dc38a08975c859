//! Estimated heap bytes of operator state.
//!
//! Operators charge what they store as they store it: a distinct row kept in a multiset
//! ([`super::bump`], [`super::bump_sorted`]), a key entry of a keyed map, a value an
//! accumulator keeps. Charges go to a counter of the writer's thread, which the graph reads
//! after each call of an operator and adds to that node's total ([`take`]). Every charge has
//! its opposite when the thing goes, so a node whose input went back to nothing is back to
//! the bytes it started with. The figures are estimates (allocator overhead and map
//! capacity are not seen), meant for accounting and limits, not for exact sizes.

use std::cell::Cell;

use larder_sql::value::{Key, KeyPart, Value};

thread_local! {
    static CHARGED: Cell<i64> = const { Cell::new(0) };
}

/// Bytes a map entry costs besides its key and value (hash or tree node, padding).
const ENTRY_OVERHEAD_BYTES: i64 = 32;

/// Adds `bytes` (negative: frees) to the current operator's charge.
pub(crate) fn charge(bytes: i64) {
    CHARGED.with(|c| c.set(c.get().saturating_add(bytes)));
}

/// The charge since the last call, reset to 0.
pub(crate) fn take() -> i64 {
    CHARGED.with(|c| c.replace(0))
}

/// A stored row: its values and the map entry holding it.
pub(crate) fn row_bytes(row: &[Value]) -> i64 {
    let values: usize = row.iter().map(crate::graph::value_bytes).sum();
    ENTRY_OVERHEAD_BYTES
        + (values + std::mem::size_of::<Vec<Value>>() + std::mem::size_of::<i64>()) as i64
}

/// A key entry of a keyed map (the key and the entry; what it maps to is charged apart).
pub(crate) fn key_bytes(key: &Key) -> i64 {
    let parts: i64 = key
        .0
        .iter()
        .map(|p| {
            std::mem::size_of::<KeyPart>() as i64
                + match p {
                    KeyPart::Decimal(s) | KeyPart::Text(s) | KeyPart::Other(s) => s.len() as i64,
                    KeyPart::Bytes(b) => b.len() as i64,
                    _ => 0,
                }
        })
        .sum();
    ENTRY_OVERHEAD_BYTES + std::mem::size_of::<Key>() as i64 + parts
}

/// `map[key]`, created (and its key charged) when missing.
pub(crate) fn entry<V: Default, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<Key, V, S>,
    key: Key,
) -> &mut V {
    map.entry(key).or_insert_with_key(|k| {
        charge(key_bytes(k));
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
        charge(-key_bytes(key));
    }
    removed
}
