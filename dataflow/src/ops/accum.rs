//! Aggregate accumulators: the per-group state of one aggregate, updated by signed values.
//!
//! Sums are exact: integers in `i128` (wrapping adds are exact as long as the true sum fits,
//! which it does for any realistic row count), numerics as [`Decimal`]s. Whatever cannot be
//! represented makes the value unknown (`Err`), which the aggregate turns into poison.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use larder_sql::numeric::Decimal;
use larder_sql::plan::AggFunc;
use larder_sql::value::{Key, Value};

use super::{bump, mem, RowCounts};
use crate::order::OrdValue;

/// The structurally first value with a positive count.
fn first_present(reps: &RowCounts) -> Option<Value> {
    reps.iter()
        .find(|(_, &c)| c > 0)
        .and_then(|(r, _)| r.0.first().cloned())
}

/// The value of an aggregate cannot be computed exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unknown;

/// How an aggregate folds its input, decided from the function and the input type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AccKind {
    CountStar,
    Count,
    /// Integer SUM; `numeric` result (for int8 input) or int8 (int2/int4 input).
    SumInt {
        numeric: bool,
    },
    SumNumeric,
    AvgInt,
    AvgNumeric,
    Min,
    Max,
}

#[derive(Debug)]
enum State {
    /// COUNT(*): the group's row count is passed in at read time.
    CountStar,
    Count,
    Int {
        sum: i128,
    },
    Numeric(NumericSum),
    Extreme(BTreeMap<OrdValue, i64>),
}

#[derive(Debug)]
struct NumericSum {
    /// Exact sum; its scale only grows (the largest scale seen while the group lived).
    sum: Decimal,
    /// Multiset of the input scales: the result shows the largest current one.
    scales: BTreeMap<u32, i64>,
    /// The sum overflowed: unknown until the group empties.
    overflowed: bool,
}

/// A numeric sum's entry for one input scale.
const SCALE_ENTRY_BYTES: i64 = 40;

/// One aggregate of one group.
#[derive(Debug)]
pub(crate) struct Accumulator {
    kind: AccKind,
    state: State,
    /// Net count of non-NULL values folded in.
    values: i64,
    /// Net count of values that could not be folded (not a number).
    bad: i64,
    /// `DISTINCT`: the representations of each SQL-distinct value, with counts.
    distinct: Option<FxHashMap<Key, RowCounts>>,
}

impl Accumulator {
    pub(crate) fn new(kind: AccKind, distinct: bool) -> Accumulator {
        let state = match kind {
            AccKind::CountStar => State::CountStar,
            AccKind::Count => State::Count,
            AccKind::SumInt { .. } | AccKind::AvgInt => State::Int { sum: 0 },
            AccKind::SumNumeric | AccKind::AvgNumeric => State::Numeric(NumericSum {
                sum: Decimal::ZERO,
                scales: BTreeMap::new(),
                overflowed: false,
            }),
            AccKind::Min | AccKind::Max => State::Extreme(BTreeMap::new()),
        };
        Accumulator {
            kind,
            state,
            values: 0,
            bad: 0,
            distinct: distinct.then(FxHashMap::default),
        }
    }

    /// The bytes charged for what it keeps now (its values, scales and distinct
    /// representations): what forgetting it frees.
    pub(crate) fn charged_bytes(&self) -> i64 {
        let state = match &self.state {
            State::Numeric(n) => n.scales.len() as i64 * SCALE_ENTRY_BYTES,
            State::Extreme(values) => {
                mem::counts_bytes::<OrdValue>(values.keys().map(|v| std::slice::from_ref(&v.0)))
            }
            _ => 0,
        };
        let distinct: i64 = self
            .distinct
            .iter()
            .flatten()
            .map(|(k, reps)| {
                mem::key_bytes(k)
                    + mem::slot_bytes::<Key, RowCounts>()
                    + mem::counts_bytes::<crate::order::OrdRow>(reps.keys().map(|r| r.0.as_slice()))
            })
            .sum();
        state + distinct
    }

    /// Folds in `diff` copies of `value` (the argument; ignored by COUNT(*)).
    pub(crate) fn update(&mut self, value: &Value, diff: i64) {
        if matches!(self.state, State::CountStar) || value.is_null() {
            return;
        }
        let Some(distinct) = &mut self.distinct else {
            self.fold(value, diff);
            return;
        };
        // Each SQL-distinct value counts once, folded as its first present representation.
        let key = Key::from_values([value]);
        let reps = mem::entry(distinct, key.clone());
        let before = first_present(reps);
        bump(reps, vec![value.clone()], diff);
        let after = first_present(reps);
        if reps.is_empty() {
            mem::remove(distinct, &key);
        }
        if before != after {
            if let Some(old) = before {
                self.fold(&old, -1);
            }
            if let Some(new) = after {
                self.fold(&new, 1);
            }
        }
    }

    fn fold(&mut self, value: &Value, diff: i64) {
        self.values = self.values.saturating_add(diff);
        match &mut self.state {
            State::CountStar | State::Count => {}
            State::Int { sum } => match value {
                Value::Int(i) => *sum = sum.wrapping_add(i128::from(*i) * i128::from(diff)),
                _ => self.bad = self.bad.saturating_add(diff),
            },
            State::Numeric(n) => {
                let parsed = match value {
                    Value::Numeric(s) => Decimal::parse(s).ok(),
                    Value::Int(i) => Some(Decimal::from_i128(i128::from(*i))),
                    _ => None,
                };
                match parsed {
                    Some(d) => {
                        let scales = &mut n.scales;
                        let c = scales.entry(d.scale()).or_insert_with(|| {
                            mem::charge(SCALE_ENTRY_BYTES);
                            0
                        });
                        *c = c.saturating_add(diff);
                        if *c == 0 {
                            scales.remove(&d.scale());
                            mem::charge(-SCALE_ENTRY_BYTES);
                        }
                        match d
                            .checked_mul(Decimal::from_i128(i128::from(diff)))
                            .and_then(|t| n.sum.checked_add(t))
                        {
                            Ok(s) => n.sum = s,
                            Err(_) => n.overflowed = true,
                        }
                    }
                    None => self.bad = self.bad.saturating_add(diff),
                }
            }
            State::Extreme(values) => {
                let key = OrdValue(value.clone());
                let was_empty = values.is_empty();
                let c = values.entry(key.clone()).or_insert_with(|| {
                    mem::charge(mem::row_bytes(std::slice::from_ref(value)));
                    0
                });
                *c = c.saturating_add(diff);
                if *c == 0 {
                    values.remove(&key);
                    mem::charge(-mem::row_bytes(std::slice::from_ref(value)));
                }
                mem::charge_first_node::<OrdValue>(was_empty, values.is_empty());
            }
        }
        if self.values == 0 {
            // Empty again: start over exactly (forgets a past overflow).
            match &mut self.state {
                State::Int { sum } => *sum = 0,
                State::Numeric(n) => {
                    n.sum = Decimal::ZERO;
                    n.overflowed = false;
                }
                _ => {}
            }
        }
    }

    /// The aggregate's value for a group of `rows` rows.
    pub(crate) fn value(&self, rows: i64) -> Result<Value, Unknown> {
        if self.bad != 0 || self.values < 0 || rows < 0 {
            return Err(Unknown);
        }
        let empty = self.values == 0;
        Ok(match (&self.state, self.kind) {
            (State::CountStar, _) => Value::Int(rows),
            (State::Count, _) => Value::Int(self.values),
            _ if empty => Value::Null,
            (State::Int { sum }, AccKind::SumInt { numeric: false }) => {
                Value::Int(i64::try_from(*sum).map_err(|_| Unknown)?)
            }
            (State::Int { sum }, AccKind::SumInt { numeric: true }) => {
                Value::Numeric(sum.to_string())
            }
            (State::Int { sum }, _) => {
                let avg = Decimal::from_i128(*sum)
                    .checked_div(Decimal::from_i128(i128::from(self.values)))
                    .map_err(|_| Unknown)?;
                Value::Numeric(avg.to_string())
            }
            (State::Numeric(n), kind) => {
                if n.overflowed {
                    return Err(Unknown);
                }
                let scale = n.scales.keys().next_back().copied().unwrap_or(0);
                let sum = n.sum.with_scale(scale).map_err(|_| Unknown)?;
                let v = if kind == AccKind::AvgNumeric {
                    sum.checked_div(Decimal::from_i128(i128::from(self.values)))
                        .map_err(|_| Unknown)?
                } else {
                    sum
                };
                Value::Numeric(v.to_string())
            }
            (State::Extreme(values), kind) => {
                let entry = if kind == AccKind::Min {
                    values.iter().next()
                } else {
                    values.iter().next_back()
                };
                match entry {
                    Some((v, &c)) if c > 0 => v.0.clone(),
                    _ => return Err(Unknown),
                }
            }
        })
    }
}

impl AccKind {
    /// How `func` folds an input of type `ty`, with its result type; `None` if unsupported.
    pub(crate) fn for_input(
        func: AggFunc,
        ty: Option<&larder_sql::value::SqlType>,
    ) -> Option<(AccKind, larder_sql::value::SqlType)> {
        use larder_sql::value::SqlType as T;
        Some(match (func, ty) {
            (AggFunc::Count, None) => (AccKind::CountStar, T::Int8),
            (AggFunc::Count, Some(_)) => (AccKind::Count, T::Int8),
            (AggFunc::Sum, Some(T::Int2 | T::Int4)) => {
                (AccKind::SumInt { numeric: false }, T::Int8)
            }
            (AggFunc::Sum, Some(T::Int8)) => (AccKind::SumInt { numeric: true }, T::Numeric),
            (AggFunc::Sum, Some(T::Numeric)) => (AccKind::SumNumeric, T::Numeric),
            (AggFunc::Avg, Some(T::Int2 | T::Int4 | T::Int8)) => (AccKind::AvgInt, T::Numeric),
            (AggFunc::Avg, Some(T::Numeric)) => (AccKind::AvgNumeric, T::Numeric),
            (AggFunc::Min, Some(t)) => (AccKind::Min, t.clone()),
            (AggFunc::Max, Some(t)) => (AccKind::Max, t.clone()),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Value {
        Value::Numeric(s.into())
    }

    #[test]
    fn avg_of_integers_uses_postgres_division_scale() {
        let mut a = Accumulator::new(AccKind::AvgInt, false);
        assert_eq!(a.value(0), Ok(Value::Null));
        a.update(&Value::Int(1), 1);
        a.update(&Value::Int(2), 1);
        assert_eq!(a.value(2), Ok(num("1.5000000000000000")));
        a.update(&Value::Int(4), 1);
        assert_eq!(a.value(3), Ok(num("2.3333333333333333")));
    }

    #[test]
    fn numeric_sum_shows_the_largest_current_scale() {
        let mut a = Accumulator::new(AccKind::SumNumeric, false);
        a.update(&num("1.5"), 1);
        a.update(&num("2.250"), 1);
        assert_eq!(a.value(2), Ok(num("3.750")));
        a.update(&num("2.250"), -1);
        assert_eq!(a.value(1), Ok(num("1.5")));
        a.update(&num("1.5"), -1);
        assert_eq!(a.value(0), Ok(Value::Null));
        a.update(&num("NaN"), 1);
        assert_eq!(a.value(1), Err(Unknown));
        a.update(&num("NaN"), -1);
        assert_eq!(a.value(0), Ok(Value::Null));
    }

    #[test]
    fn int4_sum_overflowing_int8_is_unknown_until_it_fits_again() {
        let mut a = Accumulator::new(AccKind::SumInt { numeric: false }, false);
        a.update(&Value::Int(i64::MAX), 1);
        a.update(&Value::Int(1), 1);
        assert_eq!(a.value(2), Err(Unknown));
        a.update(&Value::Int(1), -1);
        assert_eq!(a.value(1), Ok(Value::Int(i64::MAX)));
    }

    #[test]
    fn min_max_survive_deleting_the_extreme() {
        let mut min = Accumulator::new(AccKind::Min, false);
        let mut max = Accumulator::new(AccKind::Max, false);
        for v in [3, 1, 1, 5] {
            min.update(&Value::Int(v), 1);
            max.update(&Value::Int(v), 1);
        }
        min.update(&Value::Int(1), -1);
        assert_eq!(min.value(3), Ok(Value::Int(1)), "one copy of 1 left");
        min.update(&Value::Int(1), -1);
        assert_eq!(min.value(2), Ok(Value::Int(3)));
        max.update(&Value::Int(5), -1);
        assert_eq!(max.value(3), Ok(Value::Int(3)));
    }

    #[test]
    fn distinct_counts_and_sums_each_value_once() {
        let mut c = Accumulator::new(AccKind::Count, true);
        let mut s = Accumulator::new(AccKind::SumInt { numeric: false }, true);
        for v in [2, 2, 3] {
            c.update(&Value::Int(v), 1);
            s.update(&Value::Int(v), 1);
        }
        c.update(&Value::Null, 1);
        assert_eq!(c.value(4), Ok(Value::Int(2)));
        assert_eq!(s.value(3), Ok(Value::Int(5)));
        s.update(&Value::Int(2), -1);
        assert_eq!(s.value(2), Ok(Value::Int(5)), "one 2 is left");
        s.update(&Value::Int(2), -1);
        assert_eq!(s.value(1), Ok(Value::Int(3)));
    }
}
