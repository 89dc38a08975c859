//! Arithmetic on integers, floats and numerics, and the numeric functions.

use super::*;

pub(super) fn as_f64(v: &Value) -> Result<f64, EvalError> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(f) => Ok(*f),
        other => Err(EvalError::TypeMismatch(format!(
            "float arithmetic on {}",
            kind_name(other)
        ))),
    }
}

pub(super) fn arith(op: ArithOp, l: &Value, r: &Value, kind: NumKind) -> Result<Value, EvalError> {
    if l.is_null() || r.is_null() {
        return Ok(Value::Null);
    }
    match kind {
        NumKind::Int(w) => match (l, r) {
            (Value::Int(a), Value::Int(b)) => int_arith(op, *a, *b, w).map(Value::Int),
            _ => Err(EvalError::TypeMismatch(format!(
                "integer arithmetic on {} and {}",
                kind_name(l),
                kind_name(r)
            ))),
        },
        NumKind::Float8 => float_arith(op, as_f64(l)?, as_f64(r)?, false).map(Value::Float),
        NumKind::Float4 => float_arith(op, as_f64(l)?, as_f64(r)?, true).map(Value::Float),
        NumKind::Numeric => {
            let (a, b) = (decimal(l)?, decimal(r)?);
            let v = match op {
                ArithOp::Add => a.checked_add(b),
                ArithOp::Sub => a.checked_sub(b),
                ArithOp::Mul => a.checked_mul(b),
                ArithOp::Div => a.checked_div(b),
                ArithOp::Mod => a.checked_rem(b),
            };
            Ok(Value::Numeric(v.map_err(decimal_error)?.to_string()))
        }
        NumKind::Other => Err(EvalError::Unsupported(format!(
            "arithmetic on {} and {}",
            kind_name(l),
            kind_name(r)
        ))),
    }
}

/// A numeric operand; integers are promoted as Postgres does.
pub(super) fn decimal(v: &Value) -> Result<Decimal, EvalError> {
    match v {
        Value::Int(i) => Ok(Decimal::from_i128(i128::from(*i))),
        Value::Numeric(s) => Decimal::parse(s).map_err(decimal_error),
        other => Err(EvalError::TypeMismatch(format!(
            "numeric arithmetic on {}",
            kind_name(other)
        ))),
    }
}

pub(super) fn decimal_error(e: DecimalError) -> EvalError {
    match e {
        DecimalError::DivisionByZero => EvalError::DivisionByZero,
        // Postgres could compute these; we cannot exactly: unsupported, never approximate.
        DecimalError::Overflow => EvalError::Unsupported("numeric beyond 38 digits".into()),
        DecimalError::Invalid(s) => EvalError::Unsupported(format!("numeric value {s}")),
    }
}

pub(super) fn int_arith(op: ArithOp, a: i64, b: i64, w: IntWidth) -> Result<i64, EvalError> {
    let overflow = EvalError::OutOfRange(w.name());
    let v = match op {
        ArithOp::Add => a.checked_add(b),
        ArithOp::Sub => a.checked_sub(b),
        ArithOp::Mul => a.checked_mul(b),
        ArithOp::Div => {
            if b == 0 {
                return Err(EvalError::DivisionByZero);
            }
            // Rust's `/` truncates toward zero, like Postgres.
            a.checked_div(b)
        }
        ArithOp::Mod => {
            if b == 0 {
                return Err(EvalError::DivisionByZero);
            }
            // Postgres special-cases -1 so that MIN % -1 is 0 instead of an overflow.
            if b == -1 {
                Some(0)
            } else {
                Some(a % b)
            }
        }
    };
    w.check(v.ok_or(overflow)?)
}

pub(super) fn float_arith(op: ArithOp, a: f64, b: f64, single: bool) -> Result<f64, EvalError> {
    // NaN / 0 is NaN in Postgres; any other division by zero is an error.
    if matches!(op, ArithOp::Div) && b == 0.0 && !a.is_nan() {
        return Err(EvalError::DivisionByZero);
    }
    let name = if single { "real" } else { "double precision" };
    let (v, inf_in, zero_in) = if single {
        let (x, y) = (a as f32, b as f32);
        let v = match op {
            ArithOp::Add => x + y,
            ArithOp::Sub => x - y,
            ArithOp::Mul => x * y,
            ArithOp::Div => x / y,
            ArithOp::Mod => return Err(EvalError::Unsupported("% on floats".into())),
        };
        (
            v as f64,
            x.is_infinite() || y.is_infinite(),
            x == 0.0 || (y == 0.0 && matches!(op, ArithOp::Mul)),
        )
    } else {
        let v = match op {
            ArithOp::Add => a + b,
            ArithOp::Sub => a - b,
            ArithOp::Mul => a * b,
            ArithOp::Div => a / b,
            ArithOp::Mod => return Err(EvalError::Unsupported("% on floats".into())),
        };
        (
            v,
            a.is_infinite() || b.is_infinite(),
            a == 0.0 || (b == 0.0 && matches!(op, ArithOp::Mul)),
        )
    };
    if v.is_infinite() && !inf_in {
        return Err(EvalError::OutOfRange(name));
    }
    // Postgres reports underflow for products and quotients that round to zero.
    if v == 0.0 && !zero_in && matches!(op, ArithOp::Mul | ArithOp::Div) && !inf_in {
        return Err(EvalError::OutOfRange(name));
    }
    Ok(v)
}

pub(super) fn eval_neg(v: &Value, kind: NumKind) -> Result<Value, EvalError> {
    eval_sign_op(v, kind, "unary minus", i64::checked_neg, |f| -f)
}

pub(super) fn eval_abs(v: &Value, kind: NumKind) -> Result<Value, EvalError> {
    eval_sign_op(v, kind, "abs", i64::checked_abs, f64::abs)
}

/// Unary minus and `abs`: integers overflow-checked against the expression's width (in
/// Postgres `-(-32768::int2)` is an error), floats never overflow.
pub(super) fn eval_sign_op(
    v: &Value,
    kind: NumKind,
    what: &str,
    int_op: fn(i64) -> Option<i64>,
    float_op: fn(f64) -> f64,
) -> Result<Value, EvalError> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Int(i) => {
            let w = match kind {
                NumKind::Int(w) => w,
                _ => IntWidth::I64,
            };
            let n = int_op(*i).ok_or(EvalError::OutOfRange(w.name()))?;
            w.check(n).map(Value::Int)
        }
        Value::Float(f) => Ok(Value::Float(float_op(*f))),
        Value::Numeric(s) => {
            let d = Decimal::parse(s).map_err(decimal_error)?;
            let r = if what == "abs" { d.abs() } else { d.negated() };
            Ok(Value::Numeric(r.to_string()))
        }
        other => Err(EvalError::Unsupported(format!(
            "{what} on {}",
            kind_name(other)
        ))),
    }
}

/// Range check of an integer against the width of `ty` (used by casts).
pub(crate) fn check_int_for(ty: &SqlType, v: i64) -> Result<i64, EvalError> {
    match num_kind(Some(ty)) {
        NumKind::Int(w) => w.check(v),
        _ => Ok(v),
    }
}

/// How a numeric function rounds to a number of fractional digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rounding {
    /// Half away from zero (numeric `round`, numeric to integer casts).
    HalfAway,
    /// Toward zero (`trunc`).
    Trunc,
    /// Toward +infinity (`ceil`).
    Ceil,
    /// Toward -infinity (`floor`).
    Floor,
}

/// `d` rounded to `scale` fractional digits (negative: to tens, hundreds, ...); the result
/// shows `max(scale, 0)` digits, as Postgres' `round`/`trunc` do.
pub(crate) fn round_decimal(d: Decimal, scale: i64, mode: Rounding) -> Result<Decimal, EvalError> {
    let out_scale = u32::try_from(scale.max(0)).map_err(|_| EvalError::OutOfRange("numeric"))?;
    let cur = i64::from(d.scale());
    if scale >= cur {
        return d.with_scale(out_scale).map_err(decimal_error);
    }
    // Drop `cur - scale` digits; beyond 38 digits the value rounds to zero.
    let drop = cur - scale;
    let m = d.mantissa();
    let (q, adjust) = match u32::try_from(drop).ok().and_then(|e| 10i128.checked_pow(e)) {
        Some(f) => {
            let rem = m % f;
            let adjust = match mode {
                Rounding::Trunc => 0,
                Rounding::HalfAway => {
                    if rem != 0 && rem.unsigned_abs() >= f.unsigned_abs() - rem.unsigned_abs() {
                        rem.signum()
                    } else {
                        0
                    }
                }
                Rounding::Ceil => i128::from(rem > 0),
                Rounding::Floor => -i128::from(rem < 0),
            };
            (m / f, adjust)
        }
        // 10^drop exceeds every mantissa (< 10^38): less than half a unit.
        None => (
            0,
            match mode {
                Rounding::Trunc | Rounding::HalfAway => 0,
                Rounding::Ceil => i128::from(m > 0),
                Rounding::Floor => -i128::from(m < 0),
            },
        ),
    };
    let q = q + adjust;
    // q is in units of 10^-scale; rescale to out_scale (= scale when scale >= 0).
    let mantissa = if scale < 0 {
        let e = u32::try_from(-scale).map_err(|_| EvalError::OutOfRange("numeric"))?;
        if q == 0 {
            0
        } else {
            10i128
                .checked_pow(e)
                .and_then(|f| q.checked_mul(f))
                .ok_or_else(|| decimal_error(DecimalError::Overflow))?
        }
    } else {
        q
    };
    Decimal::new(mantissa, out_scale).map_err(decimal_error)
}

/// `round`/`trunc` (with an optional digit count), `ceil`, `floor` on numeric or float8.
pub(super) fn eval_rounding(
    mode: Rounding,
    v: &Value,
    digits: Option<&Value>,
) -> Result<Value, EvalError> {
    let scale = match digits {
        None => 0,
        Some(Value::Null) => return Ok(Value::Null),
        Some(Value::Int(n)) => (*n).clamp(-2000, 2000),
        Some(other) => {
            return Err(EvalError::TypeMismatch(format!(
                "rounding digits of type {}",
                kind_name(other)
            )))
        }
    };
    match v {
        Value::Null => Ok(Value::Null),
        Value::Numeric(s) => {
            let d = Decimal::parse(s).map_err(decimal_error)?;
            let r = round_decimal(d, scale, mode)?;
            // Postgres never shows -0 (Display does not either).
            Ok(Value::Numeric(r.to_string()))
        }
        Value::Float(_) | Value::Int(_) if digits.is_none() => {
            let f = as_f64(v)?;
            Ok(Value::Float(match mode {
                // rint(): ties to even.
                Rounding::HalfAway => f.round_ties_even(),
                Rounding::Trunc => f.trunc(),
                Rounding::Ceil => f.ceil(),
                Rounding::Floor => f.floor(),
            }))
        }
        other => Err(EvalError::TypeMismatch(format!(
            "rounding of {}",
            kind_name(other)
        ))),
    }
}

/// `mod(a, b)`: integers (checked against the width) or numerics, like `%`.
pub(super) fn eval_mod(l: &Value, r: &Value, kind: NumKind) -> Result<Value, EvalError> {
    arith(ArithOp::Mod, l, r, kind)
}
