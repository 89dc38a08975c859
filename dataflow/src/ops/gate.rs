//! How the one stateful operator of a partial cache (an aggregate or a TopK grouped by the
//! reader key, or a join keeping its input from the key's table) keeps state only for the
//! keys its reader holds.
//!
//! The operator's groups are the reader's keys, in another column order (a join's "group"
//! is the key its input row has, [`Gate::holds_row`]). A change to a group
//! the operator does not have is passed on only when the reader holds the group's key (a
//! filled key whose group is empty now); otherwise it is a hole's change and is dropped, as
//! the reader drops it. A fill tells the gate which keys it fills before their rows run
//! through the operator (readers see those keys only once the fill publishes them with
//! their rows), and an eviction makes the operator forget the group
//! ([`super::Operator::forget_key`]) as the reader forgets the key: so a group exists only
//! while its key is held, and is built from all of the key's rows (the fill) and every later
//! change (see `graph/partial.rs` for why none is missed or doubled).

use larder_sql::value::{Key, KeyPart, Value};
use rustc_hash::FxHashSet;

use crate::reader::ReaderHandle;

#[derive(Clone, Debug)]
pub struct Gate {
    reader: ReaderHandle,
    /// For each part of the reader key, its position in the operator's group key (a join's:
    /// in its input row from the key's table).
    parts: Vec<usize>,
    /// The reader keys a fill is running through the operator now (held once it publishes).
    filling: FxHashSet<Key>,
}

impl Gate {
    /// `parts`: for each part of the reader key, its position in the group key (a
    /// permutation).
    pub(crate) fn new(reader: ReaderHandle, parts: Vec<usize>) -> Gate {
        debug_assert!({
            let mut sorted = parts.clone();
            sorted.sort_unstable();
            sorted.into_iter().eq(0..parts.len())
        });
        Gate::on_rows(reader, parts)
    }

    /// A join's gate: `positions`, for each part of the reader key, its column in the join's
    /// input row from the key's table.
    pub(crate) fn on_rows(reader: ReaderHandle, positions: Vec<usize>) -> Gate {
        Gate {
            reader,
            parts: positions,
            filling: FxHashSet::default(),
        }
    }

    /// The reader key of a join input row (see [`Gate::on_rows`]).
    pub(crate) fn key_of_row(&self, row: &[Value]) -> Key {
        Key(self
            .parts
            .iter()
            .map(|&p| row.get(p).map_or(KeyPart::Null, KeyPart::from_value))
            .collect())
    }

    /// Whether the reader holds the key of a join input row, or a fill is filling it.
    pub(crate) fn holds_row(&self, row: &[Value]) -> bool {
        let key = self.key_of_row(row);
        self.filling.contains(&key) || self.reader.holds(&key)
    }

    /// Whether the reader holds the key of `group`, or a fill is filling it.
    pub(crate) fn holds(&self, group: &Key) -> bool {
        let key = Key(self
            .parts
            .iter()
            .filter_map(|&p| group.0.get(p).cloned())
            .collect());
        self.filling.contains(&key) || self.reader.holds(&key)
    }

    /// A fill of `keys` (reader keys) starts: their rows pass until [`Gate::filled`].
    pub(crate) fn filling(&mut self, keys: FxHashSet<Key>) {
        self.filling = keys;
    }

    /// The fill ended: its keys are held by the reader as published from now on.
    pub(crate) fn filled(&mut self) {
        self.filling = FxHashSet::default();
    }

    /// Whether an operator keeps changes to the group `group`: always without a gate; with
    /// one, when it has the group (`has`) or the reader holds its key.
    pub(crate) fn keeps(gate: Option<&Gate>, group: &Key, has: impl FnOnce() -> bool) -> bool {
        gate.is_none_or(|g| has() || g.holds(group))
    }

    /// The group an operator forgets when the reader forgets `key` (`None` without a gate).
    pub(crate) fn forgotten(gate: Option<&Gate>, key: &Key) -> Option<Key> {
        gate.map(|g| g.group_of(key))
    }

    /// The group key of a reader key.
    fn group_of(&self, key: &Key) -> Key {
        let mut parts = vec![larder_sql::value::KeyPart::Null; self.parts.len()];
        for (part, &p) in key.0.iter().zip(&self.parts) {
            if let Some(slot) = parts.get_mut(p) {
                *slot = part.clone();
            }
        }
        Key(parts)
    }
}
