//! Range reads ([`larder_sql::plan::RangeSpec`]): per reader key, an ordered index of rows by
//! one column, so `col > $1 AND col <= $2` visits only the rows in the range. The residual
//! still checks every row visited, so the index only has to never leave out a row that is in
//! the range: values order here exactly as Postgres orders them for the indexed types.

use std::cmp::Ordering;

use larder_sql::numeric::cmp_decimal_text;
use larder_sql::plan::{RangeBound, RangeFamily, RangeSpec};
use larder_sql::value::{SqlType, Value};

use crate::error::GraphError;

/// A value of an indexed column, ordered as Postgres orders it. NULL is never indexed (it is
/// in no range).
#[derive(Clone, Debug)]
pub(crate) enum RangeValue {
    Int(i64),
    /// Canonical decimal text; `NaN` sorts after every number, as in Postgres.
    Numeric(String),
    NumericNaN,
    /// Bytewise, which is the text order the server allows ranges under (C collation).
    Text(String),
    Date(i32),
    Time(i64),
}

/// Where a row goes in the index.
pub(crate) enum Indexed {
    /// NULL: in no range, not indexed.
    Null,
    At(RangeValue),
    /// A value the index cannot place exactly (numeric infinity, say): visited by every
    /// range read, the residual decides.
    Unplaced,
}

impl RangeValue {
    /// `v` read as a value of `kind`; `None` when it cannot be placed exactly.
    pub(crate) fn of(v: &Value, kind: RangeFamily) -> Option<RangeValue> {
        Some(match (kind, v) {
            (RangeFamily::Int, Value::Int(i)) => RangeValue::Int(*i),
            (RangeFamily::Numeric, Value::Int(i)) => RangeValue::Numeric(i.to_string()),
            (RangeFamily::Numeric, Value::Numeric(n)) if n == "NaN" => RangeValue::NumericNaN,
            (RangeFamily::Numeric, Value::Numeric(n)) => {
                // Only plain decimals are placed (not infinities).
                cmp_decimal_text(n, "0")?;
                RangeValue::Numeric(n.clone())
            }
            (RangeFamily::Text, Value::Text(s)) => RangeValue::Text(s.clone()),
            (RangeFamily::Date, Value::Date(d)) => RangeValue::Date(*d),
            (RangeFamily::Timestamp, Value::Timestamp(t))
            | (RangeFamily::TimestampTz, Value::TimestampTz(t)) => RangeValue::Time(*t),
            _ => return None,
        })
    }

    /// Where a row whose indexed column holds `v` goes.
    pub(crate) fn place(v: Option<&Value>, kind: RangeFamily) -> Indexed {
        match v {
            None | Some(Value::Null) => Indexed::Null,
            Some(v) => RangeValue::of(v, kind).map_or(Indexed::Unplaced, Indexed::At),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            RangeValue::Int(_) => 0,
            RangeValue::Numeric(_) => 1,
            RangeValue::NumericNaN => 2,
            RangeValue::Text(_) => 3,
            RangeValue::Date(_) => 4,
            RangeValue::Time(_) => 5,
        }
    }
}

impl Ord for RangeValue {
    fn cmp(&self, other: &Self) -> Ordering {
        use RangeValue as R;
        match (self, other) {
            (R::Int(a), R::Int(b)) => a.cmp(b),
            (R::Numeric(a), R::Numeric(b)) => cmp_decimal_text(a, b).unwrap_or_else(|| a.cmp(b)),
            (R::Text(a), R::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (R::Date(a), R::Date(b)) => a.cmp(b),
            (R::Time(a), R::Time(b)) => a.cmp(b),
            // One column holds one type; across kinds any fixed order will do.
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl PartialOrd for RangeValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for RangeValue {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for RangeValue {}

/// The read side of a [`RangeSpec`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RangeRead {
    pub(crate) column: usize,
    pub(crate) kind: RangeFamily,
    pub(crate) lower: Option<RangeBound>,
    pub(crate) upper: Option<RangeBound>,
}

impl RangeRead {
    /// Checks a plan's range against the reader's column types and parameter slots.
    pub(crate) fn compile(
        spec: &RangeSpec,
        reader_types: &[SqlType],
        slots: usize,
    ) -> Result<RangeRead, GraphError> {
        let invalid = |m: String| GraphError::InvalidPlan(format!("range: {m}"));
        let ty = reader_types
            .get(spec.column)
            .ok_or_else(|| invalid(format!("column {} out of range", spec.column)))?;
        let kind = RangeFamily::of(ty)
            .ok_or_else(|| invalid(format!("column type {ty:?} is not indexed")))?;
        if spec.lower.is_none() && spec.upper.is_none() {
            return Err(invalid("no bound".into()));
        }
        for b in [spec.lower, spec.upper].into_iter().flatten() {
            if b.slot >= slots {
                return Err(invalid(format!("param slot {} out of range", b.slot)));
            }
        }
        Ok(RangeRead {
            column: spec.column,
            kind,
            lower: spec.lower,
            upper: spec.upper,
        })
    }

    /// What a read with these parameters visits: `Everything` when a bound is not exactly one
    /// value the index can compare (the residual then decides every row).
    pub(crate) fn visit(&self, params: &[Vec<Value>]) -> Visit {
        use std::ops::Bound;
        let bound = |b: Option<RangeBound>| -> Option<Bound<RangeValue>> {
            let Some(b) = b else {
                return Some(Bound::Unbounded);
            };
            let [v] = params.get(b.slot)?.as_slice() else {
                return None;
            };
            let v = RangeValue::of(v, self.kind)?;
            Some(if b.inclusive {
                Bound::Included(v)
            } else {
                Bound::Excluded(v)
            })
        };
        let (Some(lower), Some(upper)) = (bound(self.lower), bound(self.upper)) else {
            return Visit::Everything;
        };
        // An empty or inverted range (on which BTreeMap::range would panic).
        let empty = match (&lower, &upper) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a >= b
            }
            _ => false,
        };
        if empty {
            Visit::Nothing
        } else {
            Visit::Range(lower, upper)
        }
    }
}

/// What one read visits of an indexed reader.
pub(crate) enum Visit {
    Everything,
    Nothing,
    Range(std::ops::Bound<RangeValue>, std::ops::Bound<RangeValue>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_values_order_numerically_whatever_their_scale() {
        let n = |s: &str| RangeValue::of(&Value::Numeric(s.into()), RangeFamily::Numeric).unwrap();
        assert_eq!(n("10.00"), n("10"));
        assert!(n("9.99") < n("10"));
        assert!(n("-1.05") < n("0.5"));
        assert!(n("120.99") < n("NaN"));
        let read = RangeRead {
            column: 0,
            kind: RangeFamily::Numeric,
            lower: Some(RangeBound {
                slot: 0,
                inclusive: true,
            }),
            upper: Some(RangeBound {
                slot: 1,
                inclusive: true,
            }),
        };
        // An integer literal bound on a numeric column is read as a numeric.
        let params = vec![vec![Value::Int(10)], vec![Value::Numeric("10".into())]];
        let Visit::Range(lo, hi) = read.visit(&params) else {
            panic!("not a range")
        };
        let mut index = std::collections::BTreeMap::new();
        index.insert(n("10.00"), 1);
        index.insert(n("9.99"), 2);
        assert_eq!(
            index.range((lo, hi)).map(|(_, v)| *v).collect::<Vec<_>>(),
            vec![1]
        );
    }
}
