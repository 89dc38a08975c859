//! Semi-join and anti-join (`EXISTS`/`IN`, `NOT EXISTS`/`NOT IN`) over signed deltas.
//!
//! The left rows are kept with their multiplicities, keyed by their `on` columns; the right
//! side only needs a count per key (plus, for `NOT IN`, the number of NULL keys and of all
//! rows). A left row is emitted with its own multiplicity while it passes, never multiplied
//! by its number of matches; when a right change flips whether a key passes, the left rows
//! of that key are emitted or retracted.

use rustc_hash::FxHashMap;
use std::any::Any;

use larder_sql::value::{Key, Row, Value};

use super::{bump, known, match_key, mem, poison_with, Batch, Operator, Record, RowCounts};

#[derive(Debug)]
pub struct SemiJoinOp {
    left_on: Vec<usize>,
    right_on: Vec<usize>,
    anti: bool,
    /// `NOT IN` three-valued logic (only meaningful with `anti`).
    null_aware: bool,
    left_width: usize,
    /// Left rows by key. Rows with a NULL key are kept in `left_null` when they can pass
    /// (`anti`): `NOT IN` may change their outcome, and [`Operator::current_output`] lists
    /// them.
    left: FxHashMap<Key, RowCounts>,
    left_null: RowCounts,
    /// Right rows per non-NULL key.
    right: FxHashMap<Key, i64>,
    right_nulls: i64,
    right_total: i64,
}

impl SemiJoinOp {
    pub fn new(
        on: &[(usize, usize)],
        anti: bool,
        null_aware: bool,
        left_width: usize,
    ) -> SemiJoinOp {
        assert!(
            !on.is_empty(),
            "plan validation guarantees a non-empty `on`"
        );
        SemiJoinOp {
            left_on: on.iter().map(|p| p.0).collect(),
            right_on: on.iter().map(|p| p.1).collect(),
            anti,
            // `x IN (...)` used as a filter drops NULL and false alike: plain semi-join.
            null_aware: null_aware && anti,
            left_width,
            left: FxHashMap::default(),
            left_null: RowCounts::new(),
            right: FxHashMap::default(),
            right_nulls: 0,
            right_total: 0,
        }
    }

    fn right_count(&self, key: &Key) -> i64 {
        self.right.get(key).copied().unwrap_or(0)
    }

    /// Whether a left row passes, given its key's right count (`None`: NULL left key).
    fn passes(&self, total: i64, nulls: i64, count: Option<i64>) -> bool {
        if self.null_aware {
            total <= 0 || (count.is_some_and(|c| c <= 0) && nulls <= 0)
        } else {
            count.is_some_and(|c| c > 0) != self.anti
        }
    }

    fn left_row(&mut self, row: Row, diff: i64, out: &mut Batch) {
        let key = match_key(&row, &self.left_on);
        let count = key.as_ref().map(|k| self.right_count(k));
        if self.passes(self.right_total, self.right_nulls, count) {
            out.push(Record::Row {
                row: row.clone(),
                diff,
            });
        }
        match key {
            Some(key) => {
                let rows = mem::entry(&mut self.left, key.clone());
                bump(rows, row, diff);
                if rows.is_empty() {
                    mem::remove(&mut self.left, &key);
                }
            }
            None if self.anti => {
                bump(&mut self.left_null, row, diff);
            }
            None => {}
        }
    }

    fn right_row(&mut self, row: &[Value], diff: i64, out: &mut Batch) {
        let key = match_key(row, &self.right_on);
        if key.is_none() && !self.null_aware {
            return;
        }
        let (old_total, old_nulls) = (self.right_total, self.right_nulls);
        let old_count = key.as_ref().map(|k| self.right_count(k));
        self.right_total = self.right_total.saturating_add(diff);
        match &key {
            Some(k) => {
                let c = mem::entry(&mut self.right, k.clone());
                *c = c.saturating_add(diff);
                if *c == 0 {
                    mem::remove(&mut self.right, k);
                }
            }
            None => self.right_nulls = self.right_nulls.saturating_add(diff),
        }
        let global_flip = self.null_aware
            && ((old_total <= 0) != (self.right_total <= 0)
                || (old_nulls <= 0) != (self.right_nulls <= 0));
        let emit = |rows: &RowCounts, old: bool, new: bool, out: &mut Batch| {
            if old != new {
                let sign = if new { 1 } else { -1 };
                out.extend(rows.iter().map(|(r, &c)| Record::Row {
                    row: r.0.clone(),
                    diff: sign * c,
                }));
            }
        };
        if global_flip {
            for (k, rows) in &self.left {
                let now = self.right_count(k);
                let before = if Some(k) == key.as_ref() {
                    old_count.unwrap_or(now)
                } else {
                    now
                };
                let old = self.passes(old_total, old_nulls, Some(before));
                let new = self.passes(self.right_total, self.right_nulls, Some(now));
                emit(rows, old, new, out);
            }
            let old = self.passes(old_total, old_nulls, None);
            let new = self.passes(self.right_total, self.right_nulls, None);
            emit(&self.left_null, old, new, out);
        } else if let (Some(k), Some(before)) = (&key, old_count) {
            if let Some(rows) = self.left.get(k) {
                let old = self.passes(old_total, old_nulls, Some(before));
                let new = self.passes(
                    self.right_total,
                    self.right_nulls,
                    Some(self.right_count(k)),
                );
                emit(rows, old, new, out);
            }
        }
    }

    fn right_poison(&self, row: &[Option<Value>], diff: i64, out: &mut Batch) {
        let key = known(row, &self.right_on);
        let poison = match key {
            // An unknown NOT IN row can change every left row's outcome.
            _ if self.null_aware => vec![None; self.left_width],
            Some(k) if k.iter().any(Value::is_null) => return,
            Some(k) => poison_with(self.left_width, &self.left_on, &k),
            None => vec![None; self.left_width],
        };
        out.push(Record::Poison { row: poison, diff });
    }
}

impl Operator for SemiJoinOp {
    fn name(&self) -> &'static str {
        if self.anti {
            "anti-join"
        } else {
            "semi-join"
        }
    }

    fn process(&mut self, input: usize, batch: Batch) -> Batch {
        let mut out = Vec::new();
        for record in batch {
            match (input, record) {
                (0, Record::Row { row, diff }) => self.left_row(row, diff, &mut out),
                (_, Record::Row { row, diff }) => self.right_row(&row, diff, &mut out),
                // Whether an unknown left row passes is unknown: its known columns say
                // which output it may affect.
                (0, poison @ Record::Poison { .. }) => out.push(poison),
                (_, Record::Poison { row, diff }) => self.right_poison(&row, diff, &mut out),
            }
        }
        out
    }

    fn current_output(&self) -> Option<Batch> {
        let (total, nulls) = (self.right_total, self.right_nulls);
        let mut out = Vec::new();
        let mut emit = |rows: &RowCounts| {
            out.extend(rows.iter().map(|(r, &c)| Record::Row {
                row: r.0.clone(),
                diff: c,
            }))
        };
        for (key, rows) in &self.left {
            if self.passes(total, nulls, Some(self.right_count(key))) {
                emit(rows);
            }
        }
        if self.passes(total, nulls, None) {
            emit(&self.left_null);
        }
        Some(out)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{consolidate, del, ins, int, poisons, rows};

    fn null_row(other: i64) -> Record {
        Record::Row {
            row: vec![Value::Null, int(other)],
            diff: 1,
        }
    }

    #[test]
    fn semi_join_keeps_left_multiplicity() {
        let mut s = SemiJoinOp::new(&[(0, 0)], false, false, 2);
        assert!(s.process(0, vec![ins(&[1, 1]), ins(&[1, 1])]).is_empty());
        let out = s.process(1, vec![ins(&[1, 7]), ins(&[1, 8]), ins(&[1, 9])]);
        assert_eq!(consolidate(out), rows(&[(&[1, 1], 2)]));
        assert!(s.process(1, vec![del(&[1, 7]), del(&[1, 8])]).is_empty());
        let out = s.process(1, vec![del(&[1, 9])]);
        assert_eq!(consolidate(out), rows(&[(&[1, 1], -2)]));
        s.process(0, vec![del(&[1, 1]), del(&[1, 1])]);
        assert!(s.left.is_empty() && s.right.is_empty(), "state freed");
    }

    #[test]
    fn anti_join_and_null_keys() {
        let mut s = SemiJoinOp::new(&[(0, 0)], true, false, 2);
        let out = s.process(0, vec![ins(&[1, 1]), null_row(2)]);
        assert_eq!(
            out.len(),
            2,
            "NOT EXISTS keeps unmatched rows, NULL keys included"
        );
        let out = s.process(1, vec![ins(&[1, 0]), null_row(3)]);
        assert_eq!(consolidate(out), rows(&[(&[1, 1], -1)]));
        let out = s.process(1, vec![del(&[1, 0])]);
        assert_eq!(consolidate(out), rows(&[(&[1, 1], 1)]));
    }

    #[test]
    fn null_aware_not_in_with_nulls_on_both_sides() {
        let mut s = SemiJoinOp::new(&[(0, 0)], true, true, 2);
        // Right side empty: everything passes, NULL left values too.
        let out = s.process(0, vec![ins(&[1, 1]), ins(&[2, 2]), null_row(3)]);
        assert_eq!(out.len(), 3);
        // A non-NULL right value: NULL left value becomes unknown (dropped), 1 is matched.
        let out = s.process(1, vec![ins(&[1, 0])]);
        let mut expect = vec![(vec![Value::Null, int(3)], -1), (vec![int(1), int(1)], -1)];
        expect.sort_by(|a, b| crate::order::structural_cmp_row(&a.0, &b.0));
        assert_eq!(consolidate(out), expect);
        // A NULL right value: nothing passes any more.
        let out = s.process(1, vec![null_row(9)]);
        assert_eq!(consolidate(out), rows(&[(&[2, 2], -1)]));
        // Removing the NULL brings 2 back; removing everything brings all back.
        let out = s.process(
            1,
            vec![Record::Row {
                row: vec![Value::Null, int(9)],
                diff: -1,
            }],
        );
        assert_eq!(consolidate(out), rows(&[(&[2, 2], 1)]));
        let out = s.process(1, vec![del(&[1, 0])]);
        assert_eq!(consolidate(out).len(), 2);
        // Left NULL rows inserted while the right side is non-empty do not pass.
        s.process(1, vec![ins(&[5, 0])]);
        assert!(s.process(0, vec![null_row(4)]).is_empty());
    }

    #[test]
    fn right_poison_poisons_the_key_or_everything() {
        let mut s = SemiJoinOp::new(&[(0, 0)], false, false, 2);
        let out = s.process(
            1,
            vec![Record::Poison {
                row: vec![Some(int(4)), None],
                diff: 1,
            }],
        );
        assert_eq!(poisons(&out), vec![(vec![Some(int(4)), None], 1)]);
        let mut na = SemiJoinOp::new(&[(0, 0)], true, true, 2);
        let out = na.process(
            1,
            vec![Record::Poison {
                row: vec![Some(int(4)), None],
                diff: -1,
            }],
        );
        assert_eq!(poisons(&out), vec![(vec![None, None], -1)]);
    }
}
