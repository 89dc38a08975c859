//! `DISTINCT`: each SQL-distinct row once, by multiplicity counting (emitted when its first
//! copy arrives, retracted when its last copy goes).

use rustc_hash::FxHashMap;
use std::any::Any;

use larder_sql::value::{Key, Row};

use super::{bump, mem, Batch, Operator, Record, RowCounts};

#[derive(Debug, Default)]
pub struct DistinctOp {
    /// Row key -> the representations seen with that key (SQL-equal rows can differ, e.g.
    /// `1.5` and `1.50`), with multiplicities. The output shows the structurally first one
    /// that is present, so it always exists in the input.
    rows: FxHashMap<Key, RowCounts>,
}

impl DistinctOp {
    pub fn new() -> DistinctOp {
        DistinctOp::default()
    }
}

/// The row a key outputs: its first representation with a positive count.
fn representative(reps: Option<&RowCounts>) -> Option<Row> {
    reps?.iter().find(|(_, &c)| c > 0).map(|(r, _)| r.0.clone())
}

impl Operator for DistinctOp {
    fn name(&self) -> &'static str {
        "distinct"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        let mut out = Vec::new();
        // Output of every touched key before this batch.
        let mut before: Vec<(Key, Option<Row>)> = Vec::new();
        for record in batch {
            let (row, diff) = match record {
                Record::Row { row, diff } => (row, diff),
                // An unknown row may or may not be a new distinct row.
                poison @ Record::Poison { .. } => {
                    out.push(poison);
                    continue;
                }
            };
            let key = Key::from_values(&row);
            if !before.iter().any(|(k, _)| *k == key) {
                before.push((key.clone(), representative(self.rows.get(&key))));
            }
            let reps = mem::entry(&mut self.rows, key.clone());
            bump(reps, row, diff);
            if reps.is_empty() {
                mem::remove(&mut self.rows, &key);
            }
        }
        for (key, old) in before {
            let new = representative(self.rows.get(&key));
            if old != new {
                out.extend(old.map(|row| Record::Row { row, diff: -1 }));
                out.extend(new.map(|row| Record::Row { row, diff: 1 }));
            }
        }
        out
    }

    fn current_output(&self) -> Option<Batch> {
        Some(
            self.rows
                .values()
                .filter_map(|reps| representative(Some(reps)))
                .map(|row| Record::Row { row, diff: 1 })
                .collect(),
        )
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{consolidate, del, ins, rows};

    #[test]
    fn emits_on_first_copy_and_retracts_on_last() {
        let mut d = DistinctOp::new();
        let out = d.process(0, vec![ins(&[1]), ins(&[1]), ins(&[2])]);
        assert_eq!(consolidate(out), rows(&[(&[1], 1), (&[2], 1)]));
        assert!(d.process(0, vec![del(&[1])]).is_empty());
        let out = d.process(0, vec![del(&[1]), del(&[2])]);
        assert_eq!(consolidate(out), rows(&[(&[1], -1), (&[2], -1)]));
        assert!(d.rows.is_empty(), "state freed");
        // Insert and delete in one batch: nothing net.
        let out = d.process(0, vec![ins(&[3]), del(&[3])]);
        assert!(consolidate(out).is_empty());
    }

    #[test]
    fn shows_a_representation_that_is_present() {
        let num = |s: &str| vec![larder_sql::value::Value::Numeric(s.into())];
        let mut d = DistinctOp::new();
        let out = d.process(
            0,
            vec![Record::Row {
                row: num("1.50"),
                diff: 1,
            }],
        );
        assert_eq!(consolidate(out), vec![(num("1.50"), 1)]);
        // An SQL-equal row with another scale: still one row, shown as the structurally
        // first representation present ("1.5" < "1.50").
        let out = d.process(
            0,
            vec![Record::Row {
                row: num("1.5"),
                diff: 1,
            }],
        );
        assert_eq!(consolidate(out), vec![(num("1.5"), 1), (num("1.50"), -1)]);
        assert!(d
            .process(
                0,
                vec![Record::Row {
                    row: num("1.50"),
                    diff: -1
                }]
            )
            .is_empty());
        // Once 1.5 is gone, nothing is left.
        let out = d.process(
            0,
            vec![Record::Row {
                row: num("1.5"),
                diff: -1,
            }],
        );
        assert_eq!(consolidate(out), vec![(num("1.5"), -1)]);
        assert!(d.rows.is_empty());
    }
}
