//! Dialect-neutral values, column types and table schemas.
//!
//! Every crate speaks these types: replication produces them, the dataflow computes on them,
//! the adapter encodes them onto the wire, and the server stores them. A `Value` carries no
//! type of its own; the `SqlType` of the column it sits in says how to print or encode it.

use std::cmp::Ordering;

/// Column types Larder can replicate and serve. Anything else makes its table "not replicated"
/// with a reason, and queries on it go upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    /// `varchar(n)`; the length limit lives in the column's `typmod`.
    Varchar,
    /// `char(n)`: blank-padded; values are stored padded, as Postgres prints them.
    Bpchar,
    /// Postgres `name`.
    Name,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
    Jsonb,
    /// One-dimensional array of the element type.
    Array(Box<SqlType>),
}

/// A single SQL value. Integers of every width are `Int`, both float widths are `Float`.
/// `PartialEq` is structural (for tests and plans); SQL equality is [`sql_eq`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Canonical decimal text as Postgres prints it (`-12.340`, `NaN`); scale is preserved.
    Numeric(String),
    /// text, varchar, bpchar, name
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 2000-01-01 (the Postgres epoch). `i32::MIN`/`i32::MAX` are -infinity/infinity.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since 2000-01-01 00:00:00. `i64::MIN`/`i64::MAX` are -infinity/infinity.
    Timestamp(i64),
    /// Microseconds since 2000-01-01 00:00:00 UTC.
    TimestampTz(i64),
    Uuid([u8; 16]),
    /// json or jsonb, as text (jsonb text is the server's normalized form).
    Json(String),
    /// Elements of a one-dimensional array; `Value::Null` for NULL elements.
    Array(Vec<Value>),
    /// A value the upstream has but Larder cannot represent exactly (e.g. an array whose lower
    /// bound is not 1), kept as the upstream's text. It is stored so replication never stops
    /// on it, compares with nothing, and cannot be encoded: a read that needs it goes upstream.
    Unrepresentable(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// One row: values in column order.
pub type Row = Vec<Value>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: SqlType,
    /// The upstream's own type id (a Postgres type OID); kept so the wire answer matches.
    pub type_oid: u32,
    /// Type modifier as the upstream reports it (`-1` when none).
    pub typmod: i32,
}

/// A replicated table's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    /// Postgres schema (namespace) or MySQL database.
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Indices of the columns that identify a row (primary key or replica identity).
    /// Empty means "whole row" (REPLICA IDENTITY FULL without a key).
    pub key: Vec<usize>,
}

impl TableSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// Total order used for sorting and range comparisons, following Postgres semantics for
/// non-NULL values of the same type (text compares bytewise, i.e. the "C" collation).
/// NULL sorts after every value (Postgres' default `NULLS LAST` for ascending order).
/// Returns `None` when the two values are not comparable (different kinds).
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    use Value::*;
    Some(match (a, b) {
        (Null, Null) => Ordering::Equal,
        (Null, _) => Ordering::Greater,
        (_, Null) => Ordering::Less,
        (Bool(x), Bool(y)) => x.cmp(y),
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => float_cmp(*x, *y),
        (Int(x), Float(y)) => float_cmp(*x as f64, *y),
        (Float(x), Int(y)) => float_cmp(*x, *y as f64),
        (Numeric(x), Numeric(y)) => crate::numeric::cmp_decimal_text(x, y)?,
        (Numeric(x), Int(y)) => crate::numeric::cmp_decimal_text(x, &y.to_string())?,
        (Int(x), Numeric(y)) => crate::numeric::cmp_decimal_text(&x.to_string(), y)?,
        (Text(x), Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bytes(x), Bytes(y)) => x.cmp(y),
        (Date(x), Date(y)) => x.cmp(y),
        (Time(x), Time(y)) => x.cmp(y),
        (Timestamp(x), Timestamp(y)) => x.cmp(y),
        (TimestampTz(x), TimestampTz(y)) => x.cmp(y),
        (Uuid(x), Uuid(y)) => x.cmp(y),
        (Array(x), Array(y)) => {
            for (l, r) in x.iter().zip(y.iter()) {
                match compare(l, r)? {
                    Ordering::Equal => continue,
                    other => return Some(other),
                }
            }
            x.len().cmp(&y.len())
        }
        _ => return None,
    })
}

/// Postgres orders NaN above every other float and equal to itself.
fn float_cmp(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// SQL equality for keys and `=`: `None` if either side is NULL (unknown) or not comparable.
pub fn sql_eq(a: &Value, b: &Value) -> Option<bool> {
    if a.is_null() || b.is_null() {
        return None;
    }
    compare(a, b).map(|o| o == Ordering::Equal)
}

/// A hashable, equality-comparable key built from values; used to group rows by reader key.
/// Two keys are equal exactly when their values are SQL-equal (numerics are canonicalized).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub Vec<KeyPart>);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPart {
    Null,
    Bool(bool),
    Int(i64),
    /// Floats by bit pattern after canonicalizing -0.0 to 0.0 and NaNs to one NaN.
    Float(u64),
    /// Numerics that are not integral, canonicalized (no trailing zeros).
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    Other(String),
}

impl KeyPart {
    pub fn from_value(v: &Value) -> KeyPart {
        match v {
            Value::Null => KeyPart::Null,
            Value::Bool(b) => KeyPart::Bool(*b),
            Value::Int(i) => KeyPart::Int(*i),
            Value::Float(f) => {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    KeyPart::Int(*f as i64)
                } else if f.is_nan() {
                    KeyPart::Float(f64::NAN.to_bits())
                } else {
                    KeyPart::Float(f.to_bits())
                }
            }
            Value::Numeric(s) => match crate::numeric::canonical_decimal(s) {
                Some(c) => match c.parse::<i64>() {
                    Ok(i) => KeyPart::Int(i),
                    Err(_) => KeyPart::Decimal(c),
                },
                None => KeyPart::Decimal(s.clone()),
            },
            Value::Text(s) | Value::Json(s) => KeyPart::Text(s.clone()),
            Value::Bytes(b) => KeyPart::Bytes(b.clone()),
            Value::Uuid(u) => KeyPart::Bytes(u.to_vec()),
            Value::Date(d) => KeyPart::Int(*d as i64),
            Value::Time(t) | Value::Timestamp(t) | Value::TimestampTz(t) => KeyPart::Int(*t),
            Value::Array(_) | Value::Unrepresentable(_) => KeyPart::Other(format!("{v:?}")),
        }
    }
}

impl Key {
    pub fn from_values<'a>(values: impl IntoIterator<Item = &'a Value>) -> Key {
        Key(values.into_iter().map(KeyPart::from_value).collect())
    }
}
