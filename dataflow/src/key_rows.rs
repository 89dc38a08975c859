//! The rows of one reader key, with their counts.
//!
//! Nearly every key of a reader keyed on a unique column holds one row, and a `BTreeMap`
//! allocates a whole node for its first entry (room for eleven: about 450 bytes here, in each
//! of the two left-right copies). One row is therefore kept inline; a second turns the set
//! into a map, and the map turns back when one row is left.

use std::collections::btree_map;
use std::collections::BTreeMap;

use crate::order::SortedRow;

/// Row -> count, ordered by the rows' order. Counts are never zero.
#[derive(Clone, Debug, Default)]
pub(crate) enum RowSet {
    #[default]
    Empty,
    One(SortedRow, i64),
    Many(BTreeMap<SortedRow, i64>),
}

impl RowSet {
    pub(crate) fn single(row: SortedRow) -> RowSet {
        RowSet::One(row, 1)
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, RowSet::Empty)
    }

    /// The count of `row` (0 when absent).
    pub(crate) fn get(&self, row: &SortedRow) -> i64 {
        match self {
            RowSet::Empty => 0,
            RowSet::One(r, c) if r == row => *c,
            RowSet::One(..) => 0,
            RowSet::Many(map) => map.get(row).copied().unwrap_or(0),
        }
    }

    /// Adds `diff` to the count of `row`; returns its count before and after.
    pub(crate) fn update(&mut self, row: SortedRow, diff: i64) -> (i64, i64) {
        if diff == 0 {
            let c = self.get(&row);
            return (c, c);
        }
        match std::mem::take(self) {
            RowSet::Empty => {
                *self = RowSet::One(row, diff);
                (0, diff)
            }
            RowSet::One(r, c) if r == row => {
                let new = c.saturating_add(diff);
                if new != 0 {
                    *self = RowSet::One(r, new);
                }
                (c, new)
            }
            RowSet::One(r, c) => {
                *self = RowSet::Many(BTreeMap::from([(r, c), (row, diff)]));
                (0, diff)
            }
            RowSet::Many(mut map) => {
                let counts = match map.entry(row) {
                    btree_map::Entry::Occupied(mut o) => {
                        let old = *o.get();
                        let new = old.saturating_add(diff);
                        if new == 0 {
                            o.remove();
                        } else {
                            *o.get_mut() = new;
                        }
                        (old, new)
                    }
                    btree_map::Entry::Vacant(v) => {
                        v.insert(diff);
                        (0, diff)
                    }
                };
                *self = if map.len() == 1 {
                    let (r, c) = map.pop_first().expect("one entry");
                    RowSet::One(r, c)
                } else {
                    RowSet::Many(map)
                };
                counts
            }
        }
    }

    /// The rows and their counts, in the rows' order.
    pub(crate) fn iter(&self) -> RowSetIter<'_> {
        match self {
            RowSet::Empty => RowSetIter::One(None),
            RowSet::One(r, c) => RowSetIter::One(Some((r, c))),
            RowSet::Many(map) => RowSetIter::Many(map.iter()),
        }
    }
}

pub(crate) enum RowSetIter<'a> {
    One(Option<(&'a SortedRow, &'a i64)>),
    Many(btree_map::Iter<'a, SortedRow, i64>),
}

impl<'a> Iterator for RowSetIter<'a> {
    type Item = (&'a SortedRow, &'a i64);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            RowSetIter::One(one) => one.take(),
            RowSetIter::Many(it) => it.next(),
        }
    }
}

impl<'a> IntoIterator for &'a RowSet {
    type Item = (&'a SortedRow, &'a i64);
    type IntoIter = RowSetIter<'a>;

    fn into_iter(self) -> RowSetIter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use larder_sql::value::Value;

    use super::*;

    fn row(i: i64) -> SortedRow {
        SortedRow {
            order: Arc::from(Vec::new()),
            row: Arc::from(vec![Value::Int(i)]),
        }
    }

    /// The same updates on a `RowSet` and on a plain map give the same counts, in order.
    #[test]
    fn matches_a_map_through_every_shape() {
        let mut set = RowSet::default();
        let mut map: BTreeMap<SortedRow, i64> = BTreeMap::new();
        let mut x: u64 = 7;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = row((x % 4) as i64);
            let diff = [1, -1, 2, -2, 1][(x >> 8) as usize % 5];
            let old = map.get(&r).copied().unwrap_or(0);
            let new = old + diff;
            if new == 0 {
                map.remove(&r);
            } else {
                map.insert(r.clone(), new);
            }
            assert_eq!(set.update(r, diff), (old, new));
            let got: Vec<(SortedRow, i64)> = set.iter().map(|(r, c)| (r.clone(), *c)).collect();
            let want: Vec<(SortedRow, i64)> = map.iter().map(|(r, c)| (r.clone(), *c)).collect();
            assert_eq!(got, want);
            assert_eq!(set.is_empty(), map.is_empty());
            assert!(
                !matches!(&set, RowSet::Many(m) if m.len() < 2),
                "a map of one row"
            );
        }
    }
}
