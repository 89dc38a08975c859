//! Helpers for operator unit tests.

use larder_sql::value::{Row, Value};

use super::{Batch, Record};
use crate::order::structural_cmp_row;

pub(crate) fn int(i: i64) -> Value {
    Value::Int(i)
}

pub(crate) fn ints(v: &[i64]) -> Row {
    v.iter().map(|&i| int(i)).collect()
}

pub(crate) fn ins(v: &[i64]) -> Record {
    Record::Row {
        row: ints(v),
        diff: 1,
    }
}

pub(crate) fn del(v: &[i64]) -> Record {
    Record::Row {
        row: ints(v),
        diff: -1,
    }
}

pub(crate) fn rows(v: &[(&[i64], i64)]) -> Vec<(Row, i64)> {
    let mut out: Vec<(Row, i64)> = v.iter().map(|(r, d)| (ints(r), *d)).collect();
    out.sort_by(|a, b| structural_cmp_row(&a.0, &b.0));
    out
}

/// Net change per row (zero dropped), sorted structurally. Panics on poison.
pub(crate) fn consolidate(batch: Batch) -> Vec<(Row, i64)> {
    let mut out: Vec<(Row, i64)> = Vec::new();
    for record in batch {
        match record {
            Record::Row { row, diff } => match out.iter_mut().find(|(r, _)| *r == row) {
                Some((_, d)) => *d += diff,
                None => out.push((row, diff)),
            },
            Record::Poison { .. } => panic!("unexpected poison in {record:?}"),
        }
    }
    out.retain(|(_, d)| *d != 0);
    out.sort_by(|a, b| structural_cmp_row(&a.0, &b.0));
    out
}

/// The poison records of a batch, as (row, diff).
pub(crate) fn poisons(batch: &Batch) -> Vec<(Vec<Option<Value>>, i64)> {
    batch
        .iter()
        .filter_map(|r| match r {
            Record::Poison { row, diff } => Some((row.clone(), *diff)),
            Record::Row { .. } => None,
        })
        .collect()
}
