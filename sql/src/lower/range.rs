//! Range reads: a residual's comparisons of one reader column with parameters, recognized so
//! that the reader can visit only the rows in the range ([`RangeSpec`]). The residual keeps
//! them, so a range only ever narrows what is checked.

use crate::plan::{BinaryOp, Expr, RangeBound, RangeFamily, RangeSpec};
use crate::value::SqlType;

fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::Binary {
            op: BinaryOp::And,
            left,
            right,
            ..
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        other => out.push(other),
    }
}

/// (column, lower, upper) bounds one conjunct puts on a column.
type Bounds = (usize, Option<RangeBound>, Option<RangeBound>);

fn bounds_of(e: &Expr) -> Option<Bounds> {
    let bound = |slot: usize, inclusive: bool| Some(RangeBound { slot, inclusive });
    match e {
        Expr::Binary {
            op, left, right, ..
        } => {
            let (column, slot, op) = match (&**left, &**right) {
                (Expr::Column(c), Expr::Param(k)) => (*c, *k, *op),
                (Expr::Param(k), Expr::Column(c)) => (*c, *k, flip(*op)?),
                _ => return None,
            };
            match op {
                BinaryOp::Gt => Some((column, bound(slot, false), None)),
                BinaryOp::GtEq => Some((column, bound(slot, true), None)),
                BinaryOp::Lt => Some((column, None, bound(slot, false))),
                BinaryOp::LtEq => Some((column, None, bound(slot, true))),
                _ => None,
            }
        }
        Expr::Between {
            expr,
            low,
            high,
            negated: false,
        } => match (&**expr, &**low, &**high) {
            (Expr::Column(c), Expr::Param(a), Expr::Param(b)) => {
                Some((*c, bound(*a, true), bound(*b, true)))
            }
            _ => None,
        },
        _ => None,
    }
}

/// `$k < col` is `col > $k`.
fn flip(op: BinaryOp) -> Option<BinaryOp> {
    Some(match op {
        BinaryOp::Lt => BinaryOp::Gt,
        BinaryOp::LtEq => BinaryOp::GtEq,
        BinaryOp::Gt => BinaryOp::Lt,
        BinaryOp::GtEq => BinaryOp::LtEq,
        _ => return None,
    })
}

/// The range a residual puts on one reader column, if any: the first column compared with a
/// parameter, with the first lower and the first upper bound found for it.
pub(super) fn range_of(
    residual: Option<&Expr>,
    reader_types: &[SqlType],
    param_types: &[SqlType],
) -> Option<RangeSpec> {
    let mut parts = Vec::new();
    conjuncts(residual?, &mut parts);
    let mut range: Option<RangeSpec> = None;
    for (column, lower, upper) in parts.into_iter().filter_map(bounds_of) {
        let col_family = RangeFamily::of(reader_types.get(column)?)?;
        let same = |b: &Option<RangeBound>| {
            b.is_none_or(|b| param_types.get(b.slot).and_then(RangeFamily::of) == Some(col_family))
        };
        if !same(&lower) || !same(&upper) {
            continue;
        }
        match &mut range {
            None => {
                range = Some(RangeSpec {
                    column,
                    lower,
                    upper,
                })
            }
            Some(r) if r.column == column => {
                r.lower = r.lower.or(lower);
                r.upper = r.upper.or(upper);
            }
            Some(_) => {}
        }
    }
    range
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(op: BinaryOp, l: Expr, r: Expr) -> Expr {
        Expr::Binary {
            op,
            left: Box::new(l),
            right: Box::new(r),
            ty: SqlType::Bool,
        }
    }

    fn and(a: Expr, b: Expr) -> Expr {
        cmp(BinaryOp::And, a, b)
    }

    #[test]
    fn comparisons_with_parameters_make_a_range_on_one_column() {
        use Expr::{Column as C, Param as P};
        let types = [SqlType::Int4, SqlType::Text, SqlType::Float8];
        let params = [SqlType::Int4, SqlType::Int8, SqlType::Text, SqlType::Float8];
        // 0 >= $0 AND $1 > col0 AND col1 < $2
        let e = and(
            and(
                cmp(BinaryOp::GtEq, C(0), P(0)),
                cmp(BinaryOp::Gt, P(1), C(0)),
            ),
            cmp(BinaryOp::Lt, C(1), P(2)),
        );
        let r = range_of(Some(&e), &types, &params).unwrap();
        assert_eq!(r.column, 0);
        assert_eq!(
            r.lower,
            Some(RangeBound {
                slot: 0,
                inclusive: true
            })
        );
        assert_eq!(
            r.upper,
            Some(RangeBound {
                slot: 1,
                inclusive: false
            })
        );
        // Floats (NaN, -0) and mixed families are left to the residual alone.
        let e = cmp(BinaryOp::Gt, C(2), P(3));
        assert_eq!(range_of(Some(&e), &types, &params), None);
        let e = cmp(BinaryOp::Gt, C(0), P(2));
        assert_eq!(range_of(Some(&e), &types, &params), None);
        let e = Expr::Between {
            expr: Box::new(C(1)),
            low: Box::new(P(2)),
            high: Box::new(P(2)),
            negated: false,
        };
        let r = range_of(Some(&e), &types, &params).unwrap();
        assert_eq!(
            (r.column, r.lower.unwrap().slot, r.upper.unwrap().slot),
            (1, 2, 2)
        );
        // OR is not a range.
        let e = cmp(
            BinaryOp::Or,
            cmp(BinaryOp::Gt, C(0), P(0)),
            cmp(BinaryOp::Lt, C(0), P(1)),
        );
        assert_eq!(range_of(Some(&e), &types, &params), None);
    }
}
