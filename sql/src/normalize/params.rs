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
