//! What a cacheable SELECT lowers to: a plan the dataflow turns into operators.
//!
//! Shape of every single-table plan (this is the contract between `sql` and `dataflow`):
//!
//! ```text
//! base table rows --filter(param-free)--> materialize exprs --> reader keyed by `key`
//!                                                               |
//!          read(params): lookup keys, residual(params), order_by, offset/limit, output
//! ```
//!
//! `Expr::Column(i)` means column `i` of the *input* of the stage the expression sits in:
//! base-table columns for `filter` and `materialized`, materialized columns for `residual`,
//! `order_by` and `output`.

use crate::value::{SqlType, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Column(usize),
    Literal(Value),
    /// A query parameter (0-based slot of the normalized query); only in `residual`.
    Param(usize),
    Unary {
        op: UnaryOp,
        expr: Box<Expr>,
    },
    /// `ty` is the result type; arithmetic checks overflow against it as Postgres does.
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
        ty: SqlType,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        negated: bool,
        case_insensitive: bool,
    },
    Func {
        func: Func,
        args: Vec<Expr>,
    },
    Cast {
        expr: Box<Expr>,
        ty: SqlType,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    And,
    Or,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    /// `||` on text
    Concat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Coalesce,
    Abs,
    /// `length`/`char_length` on text: characters
    Length,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderKey {
    /// Index into the materialized columns.
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputColumn {
    /// Index into the materialized columns.
    pub column: usize,
    pub name: String,
    pub ty: SqlType,
}

/// A lowered single-table SELECT.
#[derive(Clone, Debug, PartialEq)]
pub struct CachePlan {
    pub table: TableRef,
    /// Parameter-free predicate over base columns, applied in the dataflow.
    pub filter: Option<Expr>,
    /// Columns the reader keeps, computed from base columns in the dataflow.
    pub materialized: Vec<Expr>,
    /// Types of the materialized columns (same length as `materialized`).
    pub materialized_types: Vec<SqlType>,
    /// Indices into `materialized` that form the reader key.
    pub key: Vec<usize>,
    /// For each key column, the query parameter slot that supplies it. A slot may hold
    /// several values (an `IN` list): a read then looks up every combination.
    pub key_params: Vec<usize>,
    /// Predicate over materialized columns and `Param`s, evaluated per read.
    pub residual: Option<Expr>,
    pub order_by: Vec<OrderKey>,
    pub offset: usize,
    pub limit: Option<usize>,
    pub output: Vec<OutputColumn>,
    /// Type of each parameter slot of the normalized query (used to decode client values).
    pub param_types: Vec<SqlType>,
}

impl Expr {
    /// Calls `f` with every `Column(i)` index in this expression.
    pub fn for_each_column(&self, f: &mut impl FnMut(usize)) {
        match self {
            Expr::Column(i) => f(*i),
            Expr::Literal(_) | Expr::Param(_) => {}
            Expr::Unary { expr, .. } | Expr::IsNull { expr, .. } | Expr::Cast { expr, .. } => {
                expr.for_each_column(f)
            }
            Expr::Binary { left, right, .. } => {
                left.for_each_column(f);
                right.for_each_column(f);
            }
            Expr::InList { expr, list, .. } => {
                expr.for_each_column(f);
                list.iter().for_each(|e| e.for_each_column(f));
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                expr.for_each_column(f);
                low.for_each_column(f);
                high.for_each_column(f);
            }
            Expr::Like { expr, pattern, .. } => {
                expr.for_each_column(f);
                pattern.for_each_column(f);
            }
            Expr::Func { args, .. } => args.iter().for_each(|e| e.for_each_column(f)),
        }
    }
}

impl CachePlan {
    /// Base-table columns the query reads anywhere (filter, projections, and through them the
    /// key, residual, order and output): what column privileges must cover. Sorted, unique.
    pub fn base_columns_read(&self) -> Vec<usize> {
        let mut cols = Vec::new();
        let mut add = |i: usize| {
            if !cols.contains(&i) {
                cols.push(i);
            }
        };
        if let Some(f) = &self.filter {
            f.for_each_column(&mut add);
        }
        for e in &self.materialized {
            e.for_each_column(&mut add);
        }
        cols.sort_unstable();
        cols
    }
}
