//! Row orderings.
//!
//! Two orders are needed: the plan's `ORDER BY` (SQL comparison, `DESC`, `NULLS FIRST/LAST`),
//! and a *total structural* order that breaks its ties deterministically and decides when two
//! rows are "the same row" of a multiset. The structural order compares values exactly
//! (floats by bit pattern, numerics by their text), so a `Delete` removes precisely the row
//! that was inserted, and the tie order of a read never depends on insertion history.

use std::cmp::Ordering;
use std::sync::Arc;

use larder_sql::plan::OrderKey;
use larder_sql::value::{compare, Value};

fn kind_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) => 2,
        Value::Float(_) => 3,
        Value::Numeric(_) => 4,
        Value::Text(_) => 5,
        Value::Bytes(_) => 6,
        Value::Date(_) => 7,
        Value::Time(_) => 8,
        Value::Timestamp(_) => 9,
        Value::TimestampTz(_) => 10,
        Value::Uuid(_) => 11,
        Value::Json(_) => 12,
        Value::Array(_) => 13,
        Value::Unrepresentable(_) => 14,
    }
}

/// A total order on values that equals `Equal` only for identical values.
pub fn structural_cmp(a: &Value, b: &Value) -> Ordering {
    use Value::*;
    match (a, b) {
        (Null, Null) => Ordering::Equal,
        (Bool(x), Bool(y)) => x.cmp(y),
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => x.total_cmp(y),
        (Numeric(x), Numeric(y)) | (Text(x), Text(y)) | (Json(x), Json(y)) => x.cmp(y),
        (Bytes(x), Bytes(y)) => x.cmp(y),
        (Date(x), Date(y)) => x.cmp(y),
        (Time(x), Time(y)) | (Timestamp(x), Timestamp(y)) | (TimestampTz(x), TimestampTz(y)) => {
            x.cmp(y)
        }
        (Uuid(x), Uuid(y)) => x.cmp(y),
        (Array(x), Array(y)) => structural_cmp_row(x, y),
        (Unrepresentable(x), Unrepresentable(y)) => x.cmp(y),
        _ => kind_rank(a).cmp(&kind_rank(b)),
    }
}

/// Lexicographic [`structural_cmp`] over rows.
pub fn structural_cmp_row(a: &[Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match structural_cmp(x, y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    a.len().cmp(&b.len())
}

const NULL: Value = Value::Null;

/// Compares two rows by the `ORDER BY` keys only (ties are `Equal`).
pub fn order_by_cmp(keys: &[OrderKey], a: &[Value], b: &[Value]) -> Ordering {
    for k in keys {
        let x = a.get(k.column).unwrap_or(&NULL);
        let y = b.get(k.column).unwrap_or(&NULL);
        let o = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) if k.nulls_first => Ordering::Less,
            (true, false) => Ordering::Greater,
            (false, true) if k.nulls_first => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                // Values of one column share a kind, so `compare` answers; the structural
                // fallback only keeps the order total for malformed data.
                let o = compare(x, y).unwrap_or_else(|| structural_cmp(x, y));
                if k.descending {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// `ORDER BY`, then the structural tie-break: the order rows of one reader key are kept in.
pub fn full_cmp(keys: &[OrderKey], a: &[Value], b: &[Value]) -> Ordering {
    order_by_cmp(keys, a, b).then_with(|| structural_cmp_row(a, b))
}

/// A materialized row together with the ordering it sorts by, so it can live in a `BTreeMap`.
/// The ordering is shared by every row of a reader (one pointer per row).
#[derive(Clone, Debug)]
pub(crate) struct SortedRow {
    pub(crate) order: Arc<[OrderKey]>,
    pub(crate) row: Arc<[Value]>,
}

impl PartialEq for SortedRow {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SortedRow {}

impl PartialOrd for SortedRow {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortedRow {
    fn cmp(&self, other: &Self) -> Ordering {
        full_cmp(&self.order, &self.row, &other.row)
    }
}

/// A row ordered structurally: the key of the row multisets operators keep.
#[derive(Clone, Debug)]
pub(crate) struct OrdRow(pub(crate) Vec<Value>);

impl PartialEq for OrdRow {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OrdRow {}

impl PartialOrd for OrdRow {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdRow {
    fn cmp(&self, other: &Self) -> Ordering {
        structural_cmp_row(&self.0, &other.0)
    }
}

/// A single value ordered by SQL comparison, ties broken structurally (MIN/MAX multisets).
#[derive(Clone, Debug)]
pub(crate) struct OrdValue(pub(crate) Value);

impl PartialEq for OrdValue {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OrdValue {}

impl PartialOrd for OrdValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdValue {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
            .unwrap_or(Ordering::Equal)
            .then_with(|| structural_cmp(&self.0, &other.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(column: usize, descending: bool, nulls_first: bool) -> OrderKey {
        OrderKey {
            column,
            descending,
            nulls_first,
        }
    }

    #[test]
    fn nulls_and_direction() {
        let rows = [vec![Value::Int(2)], vec![Value::Null], vec![Value::Int(1)]];
        let mut asc = rows.to_vec();
        asc.sort_by(|a, b| full_cmp(&[key(0, false, false)], a, b));
        assert_eq!(asc, vec![rows[2].clone(), rows[0].clone(), rows[1].clone()]);
        let mut desc_nf = rows.to_vec();
        desc_nf.sort_by(|a, b| full_cmp(&[key(0, true, true)], a, b));
        assert_eq!(
            desc_nf,
            vec![rows[1].clone(), rows[0].clone(), rows[2].clone()]
        );
    }

    #[test]
    fn structural_distinguishes_what_sql_equates() {
        assert_eq!(
            compare(&Value::Float(0.0), &Value::Float(-0.0)),
            Some(Ordering::Equal)
        );
        assert_ne!(
            structural_cmp(&Value::Float(0.0), &Value::Float(-0.0)),
            Ordering::Equal
        );
        assert_eq!(
            structural_cmp(&Value::Float(f64::NAN), &Value::Float(f64::NAN)),
            Ordering::Equal
        );
    }
}
