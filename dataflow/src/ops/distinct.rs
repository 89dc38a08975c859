//! `DISTINCT`: each SQL-distinct row once, by multiplicity counting.

use std::any::Any;
use std::collections::hash_map;
use std::collections::HashMap;

use larder_sql::value::{Key, Row};

use super::{Batch, Operator, Record};

#[derive(Debug, Default)]
pub struct DistinctOp {
    /// Row key -> (the row first seen with that key, multiplicity). Never zero.
    rows: HashMap<Key, (Row, i64)>,
}

impl DistinctOp {
    pub fn new() -> DistinctOp {
        DistinctOp::default()
    }
}

impl Operator for DistinctOp {
    fn name(&self) -> &'static str {
        "distinct"
    }

    fn process(&mut self, _input: usize, batch: Batch) -> Batch {
        let mut out = Vec::new();
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
            let (old, new, rep) = match self.rows.entry(key) {
                hash_map::Entry::Occupied(mut o) => {
                    let old = o.get().1;
                    let new = old.saturating_add(diff);
                    if new == 0 {
                        let (rep, _) = o.remove();
                        (old, new, rep)
                    } else {
                        o.get_mut().1 = new;
                        (old, new, o.get().0.clone())
                    }
                }
                hash_map::Entry::Vacant(v) => {
                    if diff != 0 {
                        v.insert((row.clone(), diff));
                    }
                    (0, diff, row)
                }
            };
            if (old > 0) != (new > 0) {
                out.push(Record::Row {
                    row: rep,
                    diff: if new > 0 { 1 } else { -1 },
                });
            }
        }
        out
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
}
