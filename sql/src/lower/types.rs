//! Type rules: SQL type names, comparison families, arithmetic and common types, and the
//! names Postgres gives to output columns.

use sqlparser::ast::{DataType, ExactNumberInfo, Expr as AExpr, TimezoneInfo, Value as AstValue};

use super::unsupported;
use crate::error::Unsupported;
use crate::plan::BinaryOp;
use crate::value::SqlType;

pub(super) fn type_name(ty: &SqlType) -> &'static str {
    crate::pgtypes::type_name(ty)
}

/// Type families whose members compare with each other.
pub(super) fn family(ty: &SqlType) -> Result<u8, Unsupported> {
    use SqlType as S;
    Ok(match ty {
        S::Int2 | S::Int4 | S::Int8 | S::Float4 | S::Float8 | S::Numeric => 0,
        S::Text | S::Varchar | S::Name => 1,
        S::Bool => 2,
        S::Bytea => 3,
        S::Date => 4,
        S::Time => 5,
        S::Timestamp => 6,
        S::TimestampTz => 7,
        S::Uuid => 8,
        S::Bpchar => {
            return Err(unsupported(
                "comparisons on char(n) values are not supported yet (padding semantics)",
            ))
        }
        S::Json | S::Jsonb => {
            return Err(unsupported("comparisons on json values are not supported"))
        }
        S::Array(_) => {
            return Err(unsupported(
                "comparisons on array values are not supported yet",
            ))
        }
    })
}

pub(super) fn comparable(a: &SqlType, b: &SqlType) -> Result<(), Unsupported> {
    if family(a)? == family(b)? {
        Ok(())
    } else {
        Err(unsupported(format!(
            "comparison between {} and {} is not supported",
            type_name(a),
            type_name(b)
        )))
    }
}

/// Whether a column can be a reader key: equality on it must be plain value equality.
pub(super) fn keyable(ty: &SqlType) -> bool {
    family(ty).is_ok()
}

pub(super) fn text_operand(ty: &SqlType, what: &str) -> Result<(), Unsupported> {
    match ty {
        SqlType::Text | SqlType::Varchar | SqlType::Name => Ok(()),
        other => Err(unsupported(format!(
            "{what} on {} values is not supported",
            type_name(other)
        ))),
    }
}

pub(super) fn arithmetic_type(
    op: BinaryOp,
    a: &SqlType,
    b: &SqlType,
) -> Result<SqlType, Unsupported> {
    use SqlType as S;
    let is_int = |t: &SqlType| matches!(t, S::Int2 | S::Int4 | S::Int8);
    let is_float = |t: &SqlType| matches!(t, S::Float4 | S::Float8);
    // numeric with numeric or an integer is exact numeric arithmetic (Postgres casts the
    // integer); with a float Postgres computes in float8 instead, which is not supported.
    if matches!(a, S::Numeric) || matches!(b, S::Numeric) {
        let exact = |t: &SqlType| matches!(t, S::Numeric) || is_int(t);
        if exact(a) && exact(b) {
            return Ok(S::Numeric);
        }
        return Err(unsupported(
            "arithmetic mixing numeric and floating-point values is not supported",
        ));
    }
    for t in [a, b] {
        if !is_int(t) && !is_float(t) {
            return Err(unsupported(format!(
                "arithmetic on {} values is not supported yet",
                type_name(t)
            )));
        }
    }
    if is_float(a) || is_float(b) {
        if op == BinaryOp::Mod {
            return Err(unsupported("% on floating-point values is not supported"));
        }
        return Ok(if *a == S::Float4 && *b == S::Float4 {
            S::Float4
        } else {
            S::Float8
        });
    }
    Ok(match (a, b) {
        (S::Int2, S::Int2) => S::Int2,
        (S::Int8, _) | (_, S::Int8) => S::Int8,
        _ => S::Int4,
    })
}

/// The result type of `COALESCE` over two argument types.
pub(super) fn common_type(a: &SqlType, b: &SqlType) -> Result<SqlType, Unsupported> {
    use SqlType as S;
    if a == b {
        return Ok(a.clone());
    }
    let rank = |t: &SqlType| match t {
        S::Int2 => Some(0),
        S::Int4 => Some(1),
        S::Int8 => Some(2),
        S::Numeric => Some(3),
        S::Float4 => Some(4),
        S::Float8 => Some(5),
        _ => None,
    };
    match (rank(a), rank(b)) {
        (Some(x), Some(y)) => Ok(if x >= y { a.clone() } else { b.clone() }),
        _ if family(a).ok() == Some(1) && family(b).ok() == Some(1) => Ok(S::Text),
        _ => Err(unsupported(format!(
            "coalesce() of {} and {} is not supported",
            type_name(a),
            type_name(b)
        ))),
    }
}

/// Maps a SQL type name to a [`SqlType`]; refuses types with modifiers that would change
/// values (`varchar(10)`, `numeric(10,2)`).
pub fn sql_type_of(dt: &DataType) -> Result<SqlType, Unsupported> {
    use SqlType as S;
    Ok(match dt {
        DataType::SmallInt(None) | DataType::Int2(None) => S::Int2,
        DataType::Int(None) | DataType::Integer(None) | DataType::Int4(None) => S::Int4,
        DataType::BigInt(None) | DataType::Int8(None) => S::Int8,
        DataType::Real | DataType::Float4 => S::Float4,
        DataType::DoublePrecision | DataType::Float8 | DataType::Double(ExactNumberInfo::None) => {
            S::Float8
        }
        DataType::Numeric(ExactNumberInfo::None) | DataType::Decimal(ExactNumberInfo::None) => {
            S::Numeric
        }
        DataType::Text => S::Text,
        DataType::Varchar(None)
        | DataType::CharacterVarying(None)
        | DataType::CharVarying(None) => S::Varchar,
        DataType::Bool | DataType::Boolean => S::Bool,
        DataType::Date => S::Date,
        DataType::Time(None, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => S::Time,
        DataType::Timestamp(None, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            S::Timestamp
        }
        DataType::Timestamp(None, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => S::TimestampTz,
        DataType::Uuid => S::Uuid,
        DataType::Bytea => S::Bytea,
        DataType::JSON => S::Json,
        DataType::JSONB => S::Jsonb,
        DataType::Custom(name, mods) if mods.is_empty() => {
            match name.to_string().to_lowercase().as_str() {
                "name" => S::Name,
                "timestamptz" => S::TimestampTz,
                "int2" => S::Int2,
                "int4" => S::Int4,
                "int8" => S::Int8,
                "float4" => S::Float4,
                "float8" => S::Float8,
                "bool" => S::Bool,
                "varchar" => S::Varchar,
                other => return Err(unsupported(format!("type {other} is not supported"))),
            }
        }
        other => return Err(unsupported(format!("type {other} is not supported"))),
    })
}

/// Postgres' internal type name, which it uses to name a cast's output column.
pub(super) fn short_type_name(ty: &SqlType) -> &'static str {
    use SqlType as S;
    match ty {
        S::Bool => "bool",
        S::Int2 => "int2",
        S::Int4 => "int4",
        S::Int8 => "int8",
        S::Float4 => "float4",
        S::Float8 => "float8",
        S::Numeric => "numeric",
        S::Text => "text",
        S::Varchar => "varchar",
        S::Bpchar => "bpchar",
        S::Name => "name",
        S::Bytea => "bytea",
        S::Date => "date",
        S::Time => "time",
        S::Timestamp => "timestamp",
        S::TimestampTz => "timestamptz",
        S::Uuid => "uuid",
        S::Json => "json",
        S::Jsonb => "jsonb",
        S::Array(_) => "array",
    }
}

/// Postgres' `FigureColname`: the output name of an unaliased SELECT item with its
/// strength (2: column or function name, 1: type name of a cast). `None` means `?column?`.
pub(super) fn figure_colname(e: &AExpr) -> Option<(String, u8)> {
    match e {
        AExpr::Nested(inner) => figure_colname(inner),
        AExpr::Identifier(i) => Some((i.value.clone(), 2)),
        AExpr::CompoundIdentifier(parts) => parts.last().map(|i| (i.value.clone(), 2)),
        AExpr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| (i.value.to_lowercase(), 2)),
        AExpr::Cast {
            expr, data_type, ..
        } => match figure_colname(expr) {
            Some((name, 2)) => Some((name, 2)),
            _ => sql_type_of(data_type)
                .ok()
                .map(|t| (short_type_name(&t).to_string(), 1)),
        },
        AExpr::TypedString(ts) => sql_type_of(&ts.data_type)
            .ok()
            .map(|t| (short_type_name(&t).to_string(), 1)),
        AExpr::Value(v) if matches!(v.value, AstValue::Boolean(_)) => Some(("bool".into(), 1)),
        AExpr::Case { .. } => Some(("case".into(), 1)),
        AExpr::Substring { .. } => Some(("substring".into(), 2)),
        AExpr::Trim { trim_where, .. } => Some((
            match trim_where {
                Some(sqlparser::ast::TrimWhereField::Leading) => "ltrim",
                Some(sqlparser::ast::TrimWhereField::Trailing) => "rtrim",
                _ => "btrim",
            }
            .into(),
            2,
        )),
        AExpr::Position { .. } => Some(("position".into(), 2)),
        AExpr::Extract { .. } => Some(("extract".into(), 2)),
        AExpr::Ceil { .. } => Some(("ceil".into(), 2)),
        AExpr::Floor { .. } => Some(("floor".into(), 2)),
        _ => None,
    }
}

/// The type two values are converted to before they are compared or combined (a join
/// column pair, UNION branches), as Postgres resolves it: integers widen, integers with
/// `numeric` give `numeric`, anything with a float gives `float8`, text types give `text`.
/// `None` when Postgres would not match the types implicitly.
fn resolved_type(a: &SqlType, b: &SqlType) -> Option<SqlType> {
    use SqlType as S;
    if a == b {
        return Some(a.clone());
    }
    let rank = |t: &SqlType| match t {
        S::Int2 => Some(0),
        S::Int4 => Some(1),
        S::Int8 => Some(2),
        S::Numeric => Some(3),
        S::Float4 | S::Float8 => Some(4),
        _ => None,
    };
    let text = |t: &SqlType| matches!(t, S::Text | S::Varchar | S::Name);
    match (rank(a), rank(b)) {
        (Some(4), Some(_)) | (Some(_), Some(4)) => Some(S::Float8),
        (Some(x), Some(y)) => Some(if x >= y { a.clone() } else { b.clone() }),
        _ if text(a) && text(b) => Some(S::Text),
        _ => None,
    }
}

/// The common type of a join column pair.
pub(super) fn join_type(a: &SqlType, b: &SqlType) -> Result<SqlType, Unsupported> {
    comparable(a, b)?;
    resolved_type(a, b).ok_or_else(|| {
        unsupported(format!(
            "join on {} and {} columns is not supported",
            type_name(a),
            type_name(b)
        ))
    })
}

/// The common type of a column of UNION branches.
pub(super) fn union_type(a: &SqlType, b: &SqlType) -> Result<SqlType, Unsupported> {
    resolved_type(a, b).ok_or_else(|| {
        unsupported(format!(
            "UNION types {} and {} cannot be matched",
            type_name(a),
            type_name(b)
        ))
    })
}
