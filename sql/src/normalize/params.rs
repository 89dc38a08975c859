//! Binding a normalized query's parameter slots to values: the literals written in the
//! query and the values a client bound, each converted to the type of the column its slot is
//! compared with.

use std::collections::HashSet;

use super::{Literal, ParamSource, LIST_VALUES_MAX};
use crate::error::SqlError;
use crate::value::{Key, SqlType, Value};

/// Turns a query's parameter sources into values, one list per slot (several values for a
/// collapsed `IN` list; duplicates and NULLs removed from lists, since `x IN (1, 1, NULL)`
/// matches the same rows as `x IN (1)`). Literals are converted to the slot's type the way
/// Postgres coerces an untyped literal; bound client values that arrive as text for a
/// non-text slot are converted the same way.
pub fn resolve_params(
    params: &[ParamSource],
    bound: &dyn Fn(usize) -> Option<Value>,
    param_types: &[SqlType],
) -> Result<Vec<Vec<Value>>, SqlError> {
    if params.len() != param_types.len() {
        return Err(SqlError::ParamCount {
            params: params.len(),
            types: param_types.len(),
        });
    }
    params
        .iter()
        .zip(param_types)
        .map(|(source, ty)| match source {
            ParamSource::List(items) => {
                if items.len() > LIST_VALUES_MAX {
                    return Err(SqlError::Convert {
                        ty: type_name(ty).into(),
                        message: format!("IN list longer than {LIST_VALUES_MAX} values"),
                    });
                }
                let mut seen = HashSet::with_capacity(items.len());
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    let v = resolve_one(item, bound, ty)?;
                    if !v.is_null() && seen.insert(Key::from_values([&v])) {
                        values.push(v);
                    }
                }
                Ok(values)
            }
            single => Ok(vec![resolve_one(single, bound, ty)?]),
        })
        .collect()
}

/// The type of the slot the client's placeholder `$n` fills (its first use).
pub fn placeholder_slot_type<'a>(
    params: &[ParamSource],
    slot_types: &'a [SqlType],
    n: usize,
) -> Option<&'a SqlType> {
    fn uses(p: &ParamSource, n: usize) -> bool {
        match p {
            ParamSource::Placeholder(m) => *m == n,
            ParamSource::List(items) => items.iter().any(|i| uses(i, n)),
            ParamSource::Literal(_) => false,
        }
    }
    params
        .iter()
        .zip(slot_types)
        .find(|(p, _)| uses(p, n))
        .map(|(_, ty)| ty)
}

fn resolve_one(
    source: &ParamSource,
    bound: &dyn Fn(usize) -> Option<Value>,
    ty: &SqlType,
) -> Result<Value, SqlError> {
    match source {
        ParamSource::Literal(lit) => literal_value(lit, ty),
        ParamSource::Placeholder(n) => match bound(*n).ok_or(SqlError::MissingParam(*n))? {
            Value::Text(s) if !is_text_type(ty) => text_value(ty, &s),
            v => Ok(v),
        },
        ParamSource::List(_) => Err(SqlError::Convert {
            ty: type_name(ty).into(),
            message: "nested IN list".into(),
        }),
    }
}

fn is_text_type(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name
    )
}

/// Converts a literal to a value compared against a `ty` column. Numbers keep their exact
/// meaning: `int_col = 1.5` resolves to the numeric 1.5 (which matches no integer) rather
/// than to a truncated integer.
pub fn literal_value(lit: &Literal, ty: &SqlType) -> Result<Value, SqlError> {
    let mismatch = |what: &str| SqlError::Convert {
        ty: type_name(ty).into(),
        message: format!("{what} cannot be compared with {}", type_name(ty)),
    };
    match lit {
        Literal::Null => Ok(Value::Null),
        Literal::String(s) => text_value(ty, s),
        Literal::Bool(b) => match ty {
            SqlType::Bool => Ok(Value::Bool(*b)),
            _ => Err(mismatch("a boolean")),
        },
        Literal::Number(n) => match ty {
            SqlType::Int2 | SqlType::Int4 | SqlType::Int8 | SqlType::Numeric => {
                if let Ok(i) = n.parse::<i64>() {
                    Ok(Value::Int(i))
                } else if let Some(c) = crate::numeric::canonical_decimal(n) {
                    Ok(Value::Numeric(c))
                } else {
                    n.parse::<f64>()
                        .map(Value::Float)
                        .map_err(|_| mismatch("the number"))
                }
            }
            SqlType::Float4 | SqlType::Float8 => n
                .parse::<f64>()
                .map(Value::Float)
                .map_err(|_| mismatch("the number")),
            _ => Err(mismatch("a number")),
        },
    }
}

/// Converts text (an untyped literal or a text-bound parameter) to a value of type `ty`,
/// with Postgres' input rules ([`crate::pgtypes::parse_text`]).
pub fn text_value(ty: &SqlType, s: &str) -> Result<Value, SqlError> {
    crate::pgtypes::parse_text(ty, s).map_err(|e| SqlError::Convert {
        ty: type_name(ty).into(),
        message: e.to_string(),
    })
}

fn type_name(ty: &SqlType) -> &'static str {
    crate::pgtypes::type_name(ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{normalize, Normalized};
    use crate::statement::Dialect;

    fn pg(sql: &str) -> Normalized {
        normalize(sql, Dialect::Postgres).unwrap()
    }

    #[test]
    fn resolve_literals_placeholders_and_lists() {
        let n = pg(
            "SELECT * FROM t WHERE a = $1 AND b IN (3, 3, 4, NULL, $2) AND c = 'hi' AND d = '7'",
        );
        let bound = |i: usize| match i {
            1 => Some(Value::Int(10)),
            2 => Some(Value::Text("5".into())),
            _ => None,
        };
        let types = [SqlType::Int8, SqlType::Int4, SqlType::Text, SqlType::Int2];
        let v = resolve_params(&n.params, &bound, &types).unwrap();
        assert_eq!(
            v,
            vec![
                vec![Value::Int(10)],
                vec![Value::Int(3), Value::Int(4), Value::Int(5)],
                vec![Value::Text("hi".into())],
                vec![Value::Int(7)],
            ]
        );
        assert_eq!(
            resolve_params(&n.params, &|_| None, &types),
            Err(SqlError::MissingParam(1))
        );
        assert!(matches!(
            resolve_params(&n.params, &bound, &types[..2]),
            Err(SqlError::ParamCount { .. })
        ));
    }

    #[test]
    fn literal_conversions() {
        use Literal as L;
        let num = |s: &str| L::Number(s.into());
        let str_ = |s: &str| L::String(s.into());
        assert_eq!(
            literal_value(&num("1.5"), &SqlType::Int4),
            Ok(Value::Numeric("1.5".into()))
        );
        assert_eq!(
            literal_value(&num("2.0"), &SqlType::Int4),
            Ok(Value::Numeric("2".into()))
        );
        assert_eq!(
            literal_value(&num("2"), &SqlType::Float8),
            Ok(Value::Float(2.0))
        );
        assert!(literal_value(&num("2"), &SqlType::Text).is_err());
        assert!(literal_value(&L::Bool(true), &SqlType::Int4).is_err());
        assert_eq!(
            literal_value(&L::Bool(true), &SqlType::Bool),
            Ok(Value::Bool(true))
        );
        assert!(literal_value(&str_("99999"), &SqlType::Int2).is_err());
        assert_eq!(
            literal_value(&str_(" 12 "), &SqlType::Int2),
            Ok(Value::Int(12))
        );
        assert_eq!(
            literal_value(&str_("yes"), &SqlType::Bool),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            literal_value(&str_("f"), &SqlType::Bool),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            literal_value(&str_("2000-01-02"), &SqlType::Date),
            Ok(Value::Date(1))
        );
        assert_eq!(
            literal_value(&str_("1999-12-31"), &SqlType::Date),
            Ok(Value::Date(-1))
        );
        assert!(literal_value(&str_("2023-02-29"), &SqlType::Date).is_err());
        assert_eq!(
            literal_value(&str_("2000-01-01 00:00:01.5"), &SqlType::Timestamp),
            Ok(Value::Timestamp(1_500_000))
        );
        assert_eq!(
            literal_value(&str_("2000-01-02T01:00"), &SqlType::Timestamp),
            Ok(Value::Timestamp((24 + 1) * 3_600_000_000))
        );
        assert_eq!(
            literal_value(
                &str_("00000000-0000-0000-0000-0000000000ff"),
                &SqlType::Uuid
            ),
            Ok(Value::Uuid({
                let mut u = [0u8; 16];
                u[15] = 255;
                u
            }))
        );
        assert_eq!(
            literal_value(&str_("-0.50"), &SqlType::Numeric),
            Ok(Value::Numeric("-0.50".into()))
        );
        assert!(literal_value(&str_("12:00"), &SqlType::TimestampTz).is_err());
    }
}
