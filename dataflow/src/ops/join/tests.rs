//! Tests of the equi-join: in-memory sides, a side read from storage, LEFT joins.

use super::*;
use crate::ops::testutil::{consolidate, del, ins, int, ints, rows};

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

/// The right table as storage holds it before the transaction.
struct Right(Vec<Row>);

impl StoredRows for Right {
    fn rows(
        &self,
        _table: crate::graph::TableId,
        lookup: crate::stored::Lookup<'_>,
        limit: usize,
    ) -> Result<Vec<(Row, i64)>, StoredError> {
        let crate::stored::Lookup::Index { columns, values } = lookup else {
            panic!("no primary key here");
        };
        Ok(self
            .0
            .iter()
            .filter(|r| columns.iter().zip(values).all(|(&c, v)| &r[c] == v))
            .map(|r| (r.clone(), 1))
            .take(limit)
            .collect())
    }
}

/// `l LEFT JOIN r ON l.0 = r.1`, the right side read from storage.
fn stored_left_join() -> JoinOp {
    let mut j = JoinOp::new(JoinKind::Left, &[(0, 1)], 2, 2);
    j.set_stored_side(StoredSide {
        side: 1,
        table: crate::graph::TableId(0),
        columns: vec![1],
        primary_key: None,
        chain: Vec::new(),
    });
    j
}

/// Regression (graph_differential, stored joins, SEED=11): a right row of a LEFT join
/// reading its right side from storage looked its key up with the left side's `on`
/// columns. Matches come from storage before the transaction plus the overlay.
#[test]
fn left_join_reading_its_right_side_from_storage() {
    let null = Value::Null;
    let mut j = stored_left_join();
    let mut storage = Right(Vec::new());
    let out = j.process_stored(0, vec![ins(&[1, 10])], &storage, false);
    assert_eq!(
        consolidate(out),
        vec![(vec![int(1), int(10), null.clone(), null.clone()], 1)]
    );
    j.end_txn();
    // One transaction, two matches: the first retracts the padded row, the second not.
    let out = j.process_stored(1, vec![ins(&[100, 1]), ins(&[101, 1])], &storage, false);
    assert_eq!(
        consolidate(out),
        vec![
            (vec![int(1), int(10), null.clone(), null.clone()], -1),
            (ints(&[1, 10, 100, 1]), 1),
            (ints(&[1, 10, 101, 1]), 1),
        ]
    );
    j.end_txn();
    assert!(j.right.is_empty() && j.overlay.is_empty(), "nothing kept");
    storage.0 = vec![ints(&[100, 1]), ints(&[101, 1])];
    // A left row finds both in storage; deleting one of two keeps the key matched.
    let out = j.process_stored(0, vec![ins(&[1, 11])], &storage, false);
    assert_eq!(
        consolidate(out),
        rows(&[(&[1, 11, 100, 1], 1), (&[1, 11, 101, 1], 1)])
    );
    j.end_txn();
    let out = j.process_stored(1, vec![del(&[100, 1])], &storage, false);
    assert_eq!(
        consolidate(out),
        rows(&[(&[1, 10, 100, 1], -1), (&[1, 11, 100, 1], -1)])
    );
    // Deleting the last one in the same transaction pads both left rows again.
    let out = j.process_stored(1, vec![del(&[101, 1])], &storage, false);
    assert_eq!(
        consolidate(out),
        vec![
            (vec![int(1), int(10), null.clone(), null.clone()], 1),
            (ints(&[1, 10, 101, 1]), -1),
            (vec![int(1), int(11), null.clone(), null.clone()], 1),
            (ints(&[1, 11, 101, 1]), -1),
        ]
    );
    j.end_txn();
    storage.0.clear();
    // Listing for a new cache reads storage too.
    let listed = j.list_output(&storage).unwrap().unwrap();
    assert_eq!(
        consolidate(listed),
        vec![
            (vec![int(1), int(10), null.clone(), null.clone()], 1),
            (vec![int(1), int(11), null.clone(), null], 1),
        ]
    );
}

#[test]
fn a_storage_error_poisons_instead_of_guessing() {
    let mut j = stored_left_join();
    let out = j.process_stored(0, vec![ins(&[1, 10])], &NoStoredRows, false);
    assert_eq!(
        crate::ops::testutil::poisons(&out),
        vec![(vec![Some(int(1)), Some(int(10)), None, Some(int(1))], 1)]
    );
    assert_eq!(j.left.len(), 1, "the row is kept: the state stays exact");
}
