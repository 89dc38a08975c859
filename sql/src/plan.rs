//! What a cacheable SELECT lowers to: a graph of relational nodes the dataflow maintains, with
//! a reader on top. This is the contract between `sql` (which builds it) and `dataflow` (which
//! runs it).
//!
//! ```text
//!  relations[0]   relations[1]                 nodes, in topological order:
//!      |              |                          an input is always an earlier node
//!    Base           Base
//!      |              |
//!   Filter            |
//!       \            /
//!        Join(on a=b)                             (also SemiJoin, Union)
//!            |
//!        Aggregate / Distinct / Project / TopK ...
//!            |
//!        last node  ==>  reader keyed by `key`
//!                        read(params): lookup keys, residual(params), order_by,
//!                        offset/limit, output
//! ```
//!
//! Every node outputs a row of columns whose types are [`PlanNode::types`].
//! `Expr::Column(i)` means column `i` of the *input* of the node the expression sits in;
//! in `residual` it means column `i` of the last node (the reader's columns), as do `key`,
//! `order_by` and `output`.
//!
//! Only `residual` may hold [`Expr::Param`]s. A query literal that had to be evaluated below
//! the reader (for example a filter under an aggregate) is planned as a [`Expr::Literal`],
//! and its slot is listed in [`CachePlan::fixed_params`]: the cache answers only reads whose
//! parameter equals that literal.

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
    /// Searched `CASE`: args are `[cond1, then1, ..., condN, thenN, else]` (always an odd
    /// number, the `ELSE` is `NULL` when absent). Only the chosen branch is evaluated. The
    /// branches are already cast to the CASE's type; a simple `CASE x WHEN v` is lowered to
    /// `x = v` conditions.
    Case,
    /// `NULLIF(a, b)`: NULL when `a = b`, else `a` (already cast to the result type).
    NullIf,
    /// `GREATEST`/`LEAST` over arguments of one type; NULLs are ignored.
    Greatest,
    Least,
    // ---- text (arguments are text; `char(n)` is not accepted) ----
    /// `lower(text)`, `upper(text)`: ASCII letters only; other text is an evaluation error.
    Lower,
    Upper,
    /// `substr(s, from [, count])` / `substring(s FROM from [FOR count])`: characters.
    Substr,
    /// `left(s, n)`, `right(s, n)`: characters; negative `n` drops from the other end.
    Left,
    Right,
    /// `btrim`/`ltrim`/`rtrim(s [, chars])` (`trim(BOTH|LEADING|TRAILING ...)`).
    Btrim,
    Ltrim,
    Rtrim,
    /// `replace(s, from, to)`.
    Replace,
    /// `concat(...)`: text of every non-NULL argument (text, integer, numeric, boolean as
    /// `t`/`f`); never NULL.
    Concat,
    /// `concat_ws(sep, ...)`: NULL when `sep` is NULL, NULL arguments skipped.
    ConcatWs,
    /// `strpos(s, sub)` / `position(sub IN s)`: 1-based character position, 0 if absent.
    Strpos,
    /// `starts_with(s, prefix)` (bool).
    StartsWith,
    /// `repeat(s, n)`.
    Repeat,
    /// `lpad`/`rpad(s, len [, fill])`.
    Lpad,
    Rpad,
    /// `reverse(s)`: characters.
    Reverse,
    /// `split_part(s, delimiter, n)`; negative `n` counts from the end.
    SplitPart,
    /// `octet_length(text)`: bytes (int4).
    OctetLength,
    // ---- date/time ----
    /// `date_trunc(unit, timestamp)` (timestamp).
    DateTrunc,
    /// `extract(field FROM timestamp|date)` (numeric); args `[field text, value]`.
    Extract,
    /// `date_part(field, timestamp|date)` (float8).
    DatePart,
    // ---- numeric ----
    /// `round(x [, n])`: numeric (half away from zero, scale `max(n, 0)`) or float8 (ties
    /// to even).
    Round,
    /// `trunc(x [, n])`: numeric or float8.
    Trunc,
    /// `ceil`/`ceiling(x)`, `floor(x)`: numeric (scale 0) or float8.
    Ceil,
    Floor,
    /// `mod(a, b)` on integers of one width or numerics: as `%`.
    Mod,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrderKey {
    /// Index into the columns of the node (or reader) being ordered.
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputColumn {
    /// Index into the reader's columns (the last node's output).
    pub column: usize,
    pub name: String,
    pub ty: SqlType,
}

/// Index of a node in [`CachePlan::nodes`]; always smaller than the index of its user.
pub type NodeRef = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JoinKind {
    Inner,
    /// Every left row that matches nothing appears once, with NULL for the right columns.
    Left,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggFunc {
    /// `COUNT(*)` when `arg` is `None`, else `COUNT(col)`: non-NULL values. Type `int8`.
    Count,
    /// NULL when the group has no non-NULL value. `int2`/`int4` give `int8`; `int8` and
    /// `numeric` give `numeric`.
    Sum,
    /// NULL when the group has no non-NULL value. Integers and `numeric` give `numeric`, with
    /// Postgres' division scale.
    Avg,
    /// The input type; stays right when the current extreme is deleted.
    Min,
    Max,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub func: AggFunc,
    /// Input column; `None` only for `COUNT(*)`.
    pub arg: Option<usize>,
    /// `COUNT(DISTINCT col)`, `SUM(DISTINCT col)`, ...: each distinct non-NULL value once.
    pub distinct: bool,
}

/// A relational operator over earlier nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeOp {
    /// Every row of `relations[relation]`; the columns are the table's, in order.
    Base { relation: usize },
    /// Rows for which `predicate` is true (NULL and false drop the row).
    Filter { input: NodeRef, predicate: Expr },
    /// One output column per expression, computed from the input row.
    Project { input: NodeRef, exprs: Vec<Expr> },
    /// Equi-join: output is the left columns followed by the right columns. A row pairs with
    /// every row of the other side whose `on` columns are all equal (`on` = pairs of
    /// (left column, right column)); NULL never equals anything. `on` is never empty.
    Join {
        left: NodeRef,
        right: NodeRef,
        kind: JoinKind,
        on: Vec<(usize, usize)>,
    },
    /// `EXISTS`/`IN (SELECT ...)` (`anti = false`) or `NOT EXISTS`/`NOT IN` (`anti = true`):
    /// the left rows that have (or have no) right row with equal `on` columns. The output is
    /// the left columns. Each left row appears with its own multiplicity, never multiplied.
    ///
    /// `null_aware` gives `NOT IN`'s three-valued logic (only with one `on` pair): a left row
    /// passes only if the right side is empty, or its value is not NULL, no right value is
    /// NULL and none equals it.
    SemiJoin {
        left: NodeRef,
        right: NodeRef,
        on: Vec<(usize, usize)>,
        anti: bool,
        null_aware: bool,
    },
    /// One row per group: the `group_by` columns (in that order), then one column per
    /// aggregate. With an empty `group_by` there is exactly one row, even over no input
    /// (`COUNT` 0, the others NULL), as in SQL.
    Aggregate {
        input: NodeRef,
        group_by: Vec<usize>,
        aggregates: Vec<Aggregate>,
    },
    /// Each distinct row once.
    Distinct { input: NodeRef },
    /// Per group of equal `group_by` columns, the first `limit` rows by `order` (ties broken
    /// by comparing whole rows, so the choice is deterministic). It keeps the rest of the
    /// group, so a deleted row is replaced from below. Output columns = input columns.
    TopK {
        input: NodeRef,
        group_by: Vec<usize>,
        order: Vec<OrderKey>,
        limit: usize,
    },
    /// `UNION ALL` of inputs with the same column types (`UNION` is this plus `Distinct`).
    Union { inputs: Vec<NodeRef> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlanNode {
    pub op: NodeOp,
    /// Type of each output column.
    pub types: Vec<SqlType>,
}

/// A lowered SELECT: a node graph, and the reader over its last node.
#[derive(Clone, Debug, PartialEq)]
pub struct CachePlan {
    /// Tables the query reads, each once, in order of first use. `NodeOp::Base` indexes this.
    pub relations: Vec<TableRef>,
    /// Topologically ordered; the last node feeds the reader. Never empty.
    pub nodes: Vec<PlanNode>,
    /// Indices into the reader's columns that form the reader key.
    pub key: Vec<usize>,
    /// For each key column, the query parameter slot that supplies it. A slot may hold
    /// several values (an `IN` list): a read then looks up every combination.
    pub key_params: Vec<usize>,
    /// Predicate over the reader's columns and `Param`s, evaluated per read.
    pub residual: Option<Expr>,
    pub order_by: Vec<OrderKey>,
    pub offset: usize,
    pub limit: Option<usize>,
    pub output: Vec<OutputColumn>,
    /// Type of each parameter slot of the normalized query (used to decode client values).
    pub param_types: Vec<SqlType>,
    /// Slots planned as literals: a read is answered only when slot `.0` holds exactly the
    /// values `.1` (one value, or the values of a collapsed `IN` list, without NULLs or
    /// duplicates, in any order); otherwise it goes upstream.
    pub fixed_params: Vec<(usize, Vec<Value>)>,
    /// Key slots a read must give exactly one value (else it goes upstream): the key of a
    /// column the query does not output, under DISTINCT or an aggregate. Rows of different
    /// values there are not the query's answer for all of them together (an `IN` list merges
    /// their groups), so only one value at a time is answered.
    pub single_value_params: Vec<usize>,
    /// Set when the reader must answer a key without rows with a computed row (an aggregate
    /// without GROUP BY keyed on its WHERE equalities); see [`EmptyKeyRow`].
    pub empty_key_row: Option<EmptyKeyRow>,
    /// A range on one reader column that the residual also checks: the reader keeps an
    /// ordered index on that column per key, so a read visits only the rows in the range
    /// instead of all the key's rows. It only narrows; the residual stays the judge.
    pub range: Option<RangeSpec>,
    /// Per key column, the collation its text is compared by (MySQL's `_ci` and PAD SPACE
    /// rules); empty, or `None` for a column, means SQL equality of the values. Attached by
    /// the server after lowering, from the upstream's tables ([`crate::collation`]).
    pub key_collations: Vec<Option<std::sync::Arc<crate::collation::Collation>>>,
}

/// `column > $a`, `column <= $b`, `column BETWEEN $a AND $b`, ... on a reader column of a
/// type whose order Larder knows exactly (integers, numeric, date, timestamp, timestamptz,
/// text types bytewise). A NULL bound or column value is in no range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSpec {
    pub column: usize,
    pub lower: Option<RangeBound>,
    pub upper: Option<RangeBound>,
}

/// The type families a range read indexes: their order is known exactly (text bytewise). A
/// range's column and bounds are of one family. Lowering picks ranges by it and the dataflow
/// reads values in it, so the two always agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeFamily {
    Int,
    Numeric,
    Text,
    Date,
    Timestamp,
    TimestampTz,
}

impl RangeFamily {
    pub fn of(ty: &SqlType) -> Option<RangeFamily> {
        Some(match ty {
            SqlType::Int2 | SqlType::Int4 | SqlType::Int8 => RangeFamily::Int,
            SqlType::Numeric => RangeFamily::Numeric,
            SqlType::Text | SqlType::Varchar | SqlType::Name => RangeFamily::Text,
            SqlType::Date => RangeFamily::Date,
            SqlType::Timestamp => RangeFamily::Timestamp,
            SqlType::TimestampTz => RangeFamily::TimestampTz,
            _ => return None,
        })
    }
}

/// One end of a [`RangeSpec`]: the value of parameter slot `slot` (which must hold exactly
/// one value), included or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeBound {
    pub slot: usize,
    pub inclusive: bool,
}

/// How the reader answers a key that has no row, for `SELECT count(*) FROM t WHERE k = $1`
/// planned as an Aggregate grouped by `k` and keyed on it: SQL returns one row even when
/// no row matches, but the Aggregate has no group for such a key.
///
/// For a key without rows (and not poisoned), the reader builds the row the `aggregate` node
/// has over no input (the key values in its group columns, `COUNT` 0, the other aggregates
/// NULL), computes every later node on it (each must be a `Project` of the node before it),
/// and treats the result as the key's only row: the residual, ORDER BY, OFFSET/LIMIT and
/// output then apply to it as to any row. With several key combinations (IN lists), each
/// one without rows gets its own row; a combination holding NULL matches no row and gets
/// one too.
///
/// The reader's key columns must be the Aggregate's group columns, each passed up unchanged
/// by the Projects, one key column per group column. Nothing above the Aggregate may drop
/// rows: a Filter there (HAVING) would make "filtered out" look like "no rows"; HAVING goes
/// to the residual instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmptyKeyRow {
    /// The Aggregate node (its output row over no input is the starting point).
    pub aggregate: NodeRef,
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

impl NodeOp {
    /// The nodes this one reads, in input order (a self-join lists one node twice).
    pub fn inputs(&self) -> Vec<NodeRef> {
        match self {
            NodeOp::Base { .. } => Vec::new(),
            NodeOp::Filter { input, .. }
            | NodeOp::Project { input, .. }
            | NodeOp::Aggregate { input, .. }
            | NodeOp::Distinct { input }
            | NodeOp::TopK { input, .. } => vec![*input],
            NodeOp::Join { left, right, .. } | NodeOp::SemiJoin { left, right, .. } => {
                vec![*left, *right]
            }
            NodeOp::Union { inputs } => inputs.clone(),
        }
    }
}

impl CachePlan {
    /// The reader's column types (the last node's output).
    pub fn reader_types(&self) -> &[SqlType] {
        self.nodes.last().map(|n| n.types.as_slice()).unwrap_or(&[])
    }

    /// The base-table column (relation, column) that column `column` of node `node` passes on
    /// unchanged, through filters, plain projections, joins, semi-joins, DISTINCT, TopK and
    /// aggregates' group columns; `None` for a computed column or a UNION's.
    pub fn column_origin(&self, node: NodeRef, column: usize) -> Option<(usize, usize)> {
        let mut at = (node, column);
        loop {
            let (n, c) = at;
            at = match &self.nodes.get(n)?.op {
                NodeOp::Base { relation } => return Some((*relation, c)),
                NodeOp::Filter { input, .. }
                | NodeOp::SemiJoin { left: input, .. }
                | NodeOp::Distinct { input }
                | NodeOp::TopK { input, .. } => (*input, c),
                NodeOp::Project { input, exprs } => match exprs.get(c)? {
                    Expr::Column(i) => (*input, *i),
                    _ => return None,
                },
                NodeOp::Join { left, right, .. } => {
                    let width = self.nodes.get(*left)?.types.len();
                    if c < width {
                        (*left, c)
                    } else {
                        (*right, c - width)
                    }
                }
                NodeOp::Aggregate {
                    input, group_by, ..
                } => (*input, *group_by.get(c)?),
                NodeOp::Union { .. } => return None,
            };
        }
    }

    /// For each relation, the base-table columns the query reads anywhere (filters, join and
    /// group columns, aggregate arguments, projections, and everything the reader keeps):
    /// what column privileges must cover. Sorted, unique.
    pub fn relation_columns_read(&self) -> Vec<Vec<usize>> {
        let top = vec![true; self.reader_types().len()];
        let needed = self.columns_needed(top, false);
        let mut read: Vec<Vec<usize>> = vec![Vec::new(); self.relations.len()];
        for (node, need) in self.nodes.iter().zip(&needed) {
            if let NodeOp::Base { relation } = node.op {
                if let Some(cols) = read.get_mut(relation) {
                    cols.extend((0..need.len()).filter(|&i| need[i]));
                }
            }
        }
        for cols in &mut read {
            cols.sort_unstable();
            cols.dedup();
        }
        read
    }

    /// For each node, which of its output columns something above it reads, given which of
    /// the last node's columns are read (`top`). Postgres checks every column a SELECT list
    /// names, so a Project reads all its expressions' columns. DISTINCT reads whole input
    /// rows; with `whole_rows`, so do TopK (ties are broken by whole rows) and UNION, as
    /// narrowing their inputs would change which rows they output; without it they read only
    /// what is read of them (and TopK its group and order columns).
    pub fn columns_needed(&self, top: Vec<bool>, whole_rows: bool) -> Vec<Vec<bool>> {
        // needed[n] = columns of node n's output that something above reads.
        let mut needed: Vec<Vec<bool>> = self
            .nodes
            .iter()
            .map(|n| vec![false; n.types.len()])
            .collect();
        if let Some(last) = needed.last_mut() {
            for (slot, t) in last.iter_mut().zip(top) {
                *slot = t;
            }
        }
        for n in (0..self.nodes.len()).rev() {
            let out = std::mem::take(&mut needed[n]);
            let mut need = |node: NodeRef, col: usize| {
                if let Some(c) = needed.get_mut(node).and_then(|cols| cols.get_mut(col)) {
                    *c = true;
                }
            };
            let used = |i: usize| out.get(i).copied().unwrap_or(false);
            let width = |node: NodeRef| self.nodes.get(node).map_or(0, |x| x.types.len());
            match &self.nodes[n].op {
                NodeOp::Base { .. } => {}
                NodeOp::Filter { input, predicate } => {
                    predicate.for_each_column(&mut |i| need(*input, i));
                    (0..out.len())
                        .filter(|&i| used(i))
                        .for_each(|i| need(*input, i));
                }
                NodeOp::Project { input, exprs } => exprs
                    .iter()
                    .for_each(|e| e.for_each_column(&mut |i| need(*input, i))),
                NodeOp::Join {
                    left, right, on, ..
                } => {
                    let left_width = width(*left);
                    for &(l, r) in on {
                        need(*left, l);
                        need(*right, r);
                    }
                    for i in (0..out.len()).filter(|&i| used(i)) {
                        if i < left_width {
                            need(*left, i);
                        } else {
                            need(*right, i - left_width);
                        }
                    }
                }
                NodeOp::SemiJoin {
                    left, right, on, ..
                } => {
                    for &(l, r) in on {
                        need(*left, l);
                        need(*right, r);
                    }
                    (0..out.len())
                        .filter(|&i| used(i))
                        .for_each(|i| need(*left, i));
                }
                NodeOp::Aggregate {
                    input,
                    group_by,
                    aggregates,
                } => {
                    group_by.iter().for_each(|&g| need(*input, g));
                    aggregates
                        .iter()
                        .filter_map(|a| a.arg)
                        .for_each(|a| need(*input, a));
                }
                NodeOp::Distinct { input } => (0..width(*input)).for_each(|i| need(*input, i)),
                NodeOp::TopK { input, .. } if whole_rows => {
                    (0..width(*input)).for_each(|i| need(*input, i))
                }
                NodeOp::TopK {
                    input,
                    group_by,
                    order,
                    ..
                } => {
                    group_by.iter().for_each(|&g| need(*input, g));
                    order.iter().for_each(|o| need(*input, o.column));
                    (0..out.len())
                        .filter(|&i| used(i))
                        .for_each(|i| need(*input, i));
                }
                NodeOp::Union { inputs } => {
                    for &input in inputs {
                        (0..width(input))
                            .filter(|&i| whole_rows || used(i))
                            .for_each(|i| need(input, i));
                    }
                }
            }
            needed[n] = out;
        }
        needed
    }
}
