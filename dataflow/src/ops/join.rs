//! Equi-join (INNER and LEFT) over signed deltas.
//!
//! Each side keeps its rows with multiplicities, keyed by the SQL-equality key of its `on`
//! columns (rows with a NULL in them never match and are not kept). A delta on one side
//! joins with the *current* state of the other side, then updates its own state; processing
//! the left delta before the right one gives `ΔL⋈R + L'⋈ΔR`, the exact change, also when
//! both inputs are the same node (self-join). LEFT joins also emit a left row padded with
//! NULLs while its key has no right row, and retract that when the first match arrives.

use rustc_hash::FxHashMap;
use std::any::Any;
use std::collections::hash_map;

use larder_sql::plan::JoinKind;
use larder_sql::value::{Key, Row, Value};

use super::{bump, known, match_key, mem, Batch, Operator, Record, RowCounts};

/// The rows of one side that share a key.
#[derive(Debug, Default)]
struct KeyRows {
    rows: RowCounts,
    /// Sum of the multiplicities in `rows`.
    total: i64,
}

#[derive(Debug)]
pub struct JoinOp {
    kind: JoinKind,
    left_on: Vec<usize>,
    right_on: Vec<usize>,
    left_width: usize,
    right_width: usize,
    left: FxHashMap<Key, KeyRows>,
    right: FxHashMap<Key, KeyRows>,
    /// LEFT join only: left rows with a NULL in their `on` columns (they match nothing and
    /// are output padded with NULLs), kept so that [`Operator::current_output`] can list them.
    left_unmatchable: RowCounts,
}

fn concat(l: &[Value], r: &[Value]) -> Row {
    let mut row = Vec::with_capacity(l.len() + r.len());
    row.extend_from_slice(l);
    row.extend_from_slice(r);
    row
}

/// Adds `diff` copies of `row` under `key`, dropping the key when nothing is left.
/// Returns the key's total before and after.
fn store(side: &mut FxHashMap<Key, KeyRows>, key: Key, row: Row, diff: i64) -> (i64, i64) {
    match side.entry(key) {
        hash_map::Entry::Occupied(mut o) => {
            let e = o.get_mut();
            let old = e.total;
            bump(&mut e.rows, row, diff);
            e.total = e.total.saturating_add(diff);
            let new = e.total;
            if e.rows.is_empty() && e.total == 0 {
                mem::charge(-mem::key_bytes(o.key()));
                o.remove();
            }
            (old, new)
        }
        hash_map::Entry::Vacant(v) => {
            let mut e = KeyRows::default();
            bump(&mut e.rows, row, diff);
            e.total = diff;
            if !e.rows.is_empty() {
                mem::charge(mem::key_bytes(v.key()));
                v.insert(e);
            }
            (0, diff)
        }
    }
}

impl JoinOp {
    pub fn new(
        kind: JoinKind,
        on: &[(usize, usize)],
        left_width: usize,
        right_width: usize,
    ) -> JoinOp {
        assert!(
            !on.is_empty(),
            "plan validation guarantees a non-empty `on`"
        );
        JoinOp {
            kind,
            left_on: on.iter().map(|p| p.0).collect(),
            right_on: on.iter().map(|p| p.1).collect(),
            left_width,
            right_width,
            left: FxHashMap::default(),
            right: FxHashMap::default(),
            left_unmatchable: RowCounts::new(),
        }
    }

    fn nulls(&self) -> Vec<Value> {
        vec![Value::Null; self.right_width]
    }

    fn left_row(&mut self, row: Row, diff: i64, out: &mut Batch) {
        let Some(key) = match_key(&row, &self.left_on) else {
            if self.kind == JoinKind::Left {
                out.push(Record::Row {
                    row: concat(&row, &self.nulls()),
                    diff,
                });
                bump(&mut self.left_unmatchable, row, diff);
            }
            return;
        };
        let mut matched = false;
        if let Some(entry) = self.right.get(&key) {
            matched = entry.total > 0;
            for (r, &c) in &entry.rows {
                out.push(Record::Row {
                    row: concat(&row, &r.0),
                    diff: diff.saturating_mul(c),
                });
            }
        }
        if self.kind == JoinKind::Left && !matched {
            out.push(Record::Row {
                row: concat(&row, &self.nulls()),
                diff,
            });
        }
        store(&mut self.left, key, row, diff);
    }

    fn right_row(&mut self, row: Row, diff: i64, out: &mut Batch) {
        let Some(key) = match_key(&row, &self.right_on) else {
            return;
        };
        if let Some(entry) = self.left.get(&key) {
            for (l, &c) in &entry.rows {
                out.push(Record::Row {
                    row: concat(&l.0, &row),
                    diff: diff.saturating_mul(c),
                });
            }
        }
        let (old, new) = store(&mut self.right, key.clone(), row, diff);
        if self.kind == JoinKind::Left && (old > 0) != (new > 0) {
            let sign = if new > 0 { -1 } else { 1 };
            if let Some(entry) = self.left.get(&key) {
                let nulls = self.nulls();
                for (l, &c) in &entry.rows {
                    out.push(Record::Row {
                        row: concat(&l.0, &nulls),
                        diff: sign * c,
                    });
                }
            }
        }
    }

    /// A poison row on either side: the joined rows it may produce share its known columns
    /// and, through `on`, the other side's key columns.
    fn poison(&self, input: usize, row: Vec<Option<Value>>, diff: i64, out: &mut Batch) {
        let (own_on, other_on) = if input == 0 {
            (&self.left_on, &self.right_on)
        } else {
            (&self.right_on, &self.left_on)
        };
        let key = known(&row, own_on);
        let null_key = key.as_ref().is_some_and(|k| k.iter().any(Value::is_null));
        if null_key && !(input == 0 && self.kind == JoinKind::Left) {
            // Matches nothing, whatever the unknown columns are.
            return;
        }
        let other_width = if input == 0 {
            self.right_width
        } else {
            self.left_width
        };
        let mut other = vec![None; other_width];
        if let (Some(key), false) = (key, null_key) {
            for (&c, v) in other_on.iter().zip(key) {
                other[c] = Some(v);
            }
        }
        let row = if input == 0 {
            row.into_iter().chain(other).collect()
        } else {
            other.into_iter().chain(row).collect()
        };
        out.push(Record::Poison { row, diff });
    }
}

impl Operator for JoinOp {
    fn name(&self) -> &'static str {
        "join"
    }

    fn process(&mut self, input: usize, batch: Batch) -> Batch {
        let mut out = Vec::new();
        for record in batch {
            match record {
                Record::Row { row, diff } if input == 0 => self.left_row(row, diff, &mut out),
                Record::Row { row, diff } => self.right_row(row, diff, &mut out),
                Record::Poison { row, diff } => self.poison(input, row, diff, &mut out),
            }
        }
        out
    }

    fn current_output(&self) -> Option<Batch> {
        let mut out = Vec::new();
        let nulls = self.nulls();
        for (key, left) in &self.left {
            let right = self.right.get(key);
            let matched = right.is_some_and(|r| r.total > 0);
            for (l, &lc) in &left.rows {
                for (r, &rc) in right.iter().flat_map(|r| &r.rows) {
                    out.push(Record::Row {
                        row: concat(&l.0, &r.0),
                        diff: lc.saturating_mul(rc),
                    });
                }
                if self.kind == JoinKind::Left && !matched {
                    out.push(Record::Row {
                        row: concat(&l.0, &nulls),
                        diff: lc,
                    });
                }
            }
        }
        for (l, &c) in &self.left_unmatchable {
            out.push(Record::Row {
                row: concat(&l.0, &nulls),
                diff: c,
            });
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
    use crate::ops::testutil::{consolidate, del, ins, int, rows};

    fn op(kind: JoinKind) -> JoinOp {
        JoinOp::new(kind, &[(0, 0)], 2, 2)
    }

    #[test]
    fn inner_join_inserts_deletes_duplicates_and_nulls() {
        let mut j = op(JoinKind::Inner);
        assert!(j.process(0, vec![ins(&[1, 10]), ins(&[1, 10])]).is_empty());
        let out = j.process(1, vec![ins(&[1, 20]), ins_null_key()]);
        assert_eq!(consolidate(out), rows(&[(&[1, 10, 1, 20], 2)]));
        let out = j.process(0, vec![del(&[1, 10])]);
        assert_eq!(consolidate(out), rows(&[(&[1, 10, 1, 20], -1)]));
        let out = j.process(1, vec![del(&[1, 20])]);
        assert_eq!(consolidate(out), rows(&[(&[1, 10, 1, 20], -1)]));
        assert!(j.left.len() == 1 && j.right.is_empty(), "state freed");
        j.process(0, vec![del(&[1, 10])]);
        assert!(j.left.is_empty());
    }

    fn ins_null_key() -> Record {
        Record::Row {
            row: vec![Value::Null, int(5)],
            diff: 1,
        }
    }

    #[test]
    fn left_join_match_and_unmatch_transitions() {
        let mut j = op(JoinKind::Left);
        let null = Value::Null;
        let out = j.process(0, vec![ins(&[1, 10]), ins_null_key()]);
        assert_eq!(
            consolidate(out),
            vec![
                (vec![null.clone(), int(5), null.clone(), null.clone()], 1),
                (vec![int(1), int(10), null.clone(), null.clone()], 1),
            ]
        );
        // First match retracts the padded row.
        let out = j.process(1, vec![ins(&[1, 20])]);
        assert_eq!(
            consolidate(out),
            vec![
                (vec![int(1), int(10), null.clone(), null.clone()], -1),
                (vec![int(1), int(10), int(1), int(20)], 1),
            ]
        );
        // A second match changes nothing about padding.
        let out = j.process(1, vec![ins(&[1, 21])]);
        assert_eq!(consolidate(out), rows(&[(&[1, 10, 1, 21], 1)]));
        let out = j.process(1, vec![del(&[1, 20]), del(&[1, 21])]);
        assert_eq!(
            consolidate(out),
            vec![
                (vec![int(1), int(10), null.clone(), null.clone()], 1),
                (vec![int(1), int(10), int(1), int(20)], -1),
                (vec![int(1), int(10), int(1), int(21)], -1),
            ]
        );
    }

    #[test]
    fn self_join_same_batch_on_both_inputs() {
        // t JOIN t ON a = a, inserting two rows with the same key in one batch: 4 pairs.
        let mut j = op(JoinKind::Inner);
        let batch = vec![ins(&[1, 1]), ins(&[1, 2])];
        let mut out = j.process(0, batch.clone());
        out.extend(j.process(1, batch));
        assert_eq!(
            consolidate(out),
            rows(&[
                (&[1, 1, 1, 1], 1),
                (&[1, 1, 1, 2], 1),
                (&[1, 2, 1, 1], 1),
                (&[1, 2, 1, 2], 1)
            ])
        );
        // Deleting one of them in one batch retracts exactly the three pairs it was in.
        let batch = vec![del(&[1, 1])];
        let mut out = j.process(0, batch.clone());
        out.extend(j.process(1, batch));
        assert_eq!(
            consolidate(out),
            rows(&[
                (&[1, 1, 1, 1], -1),
                (&[1, 1, 1, 2], -1),
                (&[1, 2, 1, 1], -1)
            ])
        );
    }

    #[test]
    fn poison_keeps_the_key_and_clears() {
        let mut j = op(JoinKind::Inner);
        let p = vec![Some(int(3)), None];
        let out = j.process(
            0,
            vec![Record::Poison {
                row: p.clone(),
                diff: 1,
            }],
        );
        assert_eq!(
            out,
            vec![Record::Poison {
                row: vec![Some(int(3)), None, Some(int(3)), None],
                diff: 1
            }]
        );
        let out = j.process(0, vec![Record::Poison { row: p, diff: -1 }]);
        assert_eq!(
            out[0],
            Record::Poison {
                row: vec![Some(int(3)), None, Some(int(3)), None],
                diff: -1
            }
        );
        assert!(j.left.is_empty(), "poison is never stored");
    }
}
