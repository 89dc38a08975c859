//! Evaluation of [`plan::Expr`](larder_sql::plan::Expr) on rows with Postgres semantics.
//!
//! A plan expression is first *compiled* against the types of its input columns: compiling
//! validates column and parameter indices (so evaluation cannot index out of bounds) and
//! resolves the facts Postgres decides by type rather than by value — the integer width a
//! unary minus or `abs` overflows at, and whether a text operand is blank-padded `char(n)`.
//!
//! Evaluation follows Postgres: three-valued logic, `NULL` propagation, integer arithmetic
//! checked against the result width, exact `numeric` arithmetic with Postgres' result scales
//! (integers promoted), errors for division by zero and float overflow. Whatever
//! cannot be reproduced exactly (locale-dependent case folding, float
//! formatting, decimals beyond 38 digits) is an [`EvalError`]; callers turn it into poison, never into a guessed value.

use std::borrow::Cow;

use larder_sql::numeric::{Decimal, DecimalError};
use larder_sql::plan::{BinaryOp, Expr, Func, UnaryOp};
use larder_sql::value::{compare, SqlType, Value};

use crate::error::{EvalError, GraphError};
use crate::like::like_match;

mod datetime;
mod func;
mod logic;
mod numeric;
mod text;

pub(crate) use datetime::{days_from_civil, days_in_month, valid_date, valid_timestamp};
use func::{compile_func, eval_call, eval_case, func_type};
use logic::{and3, cmp_values, eval_and_or, eval_in_list};
use numeric::{arith, decimal_error, eval_abs, eval_neg};
pub(crate) use numeric::{check_int_for, round_decimal, Rounding};
use text::{eval_concat, eval_like};

/// Input description an expression is compiled against.
#[derive(Clone, Copy, Debug)]
pub struct ExprContext<'a> {
    /// Types of the input columns (`Expr::Column(i)` reads column `i`).
    pub columns: &'a [SqlType],
    /// Types of the parameter slots; `None` when parameters are not allowed (dataflow stages).
    pub params: Option<&'a [SqlType]>,
}

/// Integer widths Postgres checks overflow against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IntWidth {
    I16,
    I32,
    I64,
}

impl IntWidth {
    fn check(self, v: i64) -> Result<i64, EvalError> {
        let ok = match self {
            IntWidth::I16 => i16::try_from(v).is_ok(),
            IntWidth::I32 => i32::try_from(v).is_ok(),
            IntWidth::I64 => true,
        };
        if ok {
            Ok(v)
        } else {
            Err(EvalError::OutOfRange(self.name()))
        }
    }

    fn name(self) -> &'static str {
        match self {
            IntWidth::I16 => "smallint",
            IntWidth::I32 => "integer",
            IntWidth::I64 => "bigint",
        }
    }
}

/// How arithmetic of a given result type is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumKind {
    Int(IntWidth),
    Float4,
    Float8,
    /// Exact decimal arithmetic with Postgres' result scales.
    Numeric,
    /// Everything else: not evaluated here.
    Other,
}

fn num_kind(ty: Option<&SqlType>) -> NumKind {
    match ty {
        Some(SqlType::Int2) => NumKind::Int(IntWidth::I16),
        Some(SqlType::Int4) => NumKind::Int(IntWidth::I32),
        Some(SqlType::Int8) => NumKind::Int(IntWidth::I64),
        Some(SqlType::Float4) => NumKind::Float4,
        Some(SqlType::Float8) => NumKind::Float8,
        Some(SqlType::Numeric) => NumKind::Numeric,
        _ => NumKind::Other,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// A text operand: `bpchar` values drop trailing blanks when used as text, as in Postgres.
#[derive(Clone, Debug)]
struct TextArg {
    expr: Box<Node>,
    bpchar: bool,
}

#[derive(Clone, Debug)]
enum Node {
    Column(usize),
    Literal(Value),
    Param(usize),
    Not(Box<Node>),
    Neg(Box<Node>, NumKind),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp {
        op: CmpOp,
        left: Box<Node>,
        right: Box<Node>,
        bpchar: bool,
    },
    Arith {
        op: ArithOp,
        left: Box<Node>,
        right: Box<Node>,
        kind: NumKind,
    },
    Concat(TextArg, TextArg),
    IsNull {
        expr: Box<Node>,
        negated: bool,
    },
    InList {
        expr: Box<Node>,
        list: Vec<Node>,
        negated: bool,
        bpchar: bool,
    },
    Between {
        expr: Box<Node>,
        low: Box<Node>,
        high: Box<Node>,
        negated: bool,
        bpchar: bool,
    },
    Like {
        expr: Box<Node>,
        pattern: Box<Node>,
        negated: bool,
        case_insensitive: bool,
    },
    Coalesce(Vec<Node>),
    Abs(Box<Node>, NumKind),
    Length(TextArg),
    Cast {
        expr: Box<Node>,
        ty: SqlType,
        from_bpchar: bool,
    },
    /// Searched CASE: the first branch whose condition is true, else `else_`.
    Case {
        branches: Vec<(Node, Node)>,
        else_: Box<Node>,
    },
    /// Any other function; `kind` is the numeric kind of the first argument.
    Call {
        func: Func,
        args: Vec<Node>,
        kind: NumKind,
    },
    /// `date ± int`, `date - date`.
    DateArith {
        op: ArithOp,
        left: Box<Node>,
        right: Box<Node>,
    },
}

/// An expression ready to be evaluated on rows of the context it was compiled for.
#[derive(Clone, Debug)]
pub struct CompiledExpr {
    root: Node,
}

/// Nesting deeper than this is refused at compile time (evaluation is recursive).
const EXPR_DEPTH_MAX: usize = 256;

impl CompiledExpr {
    /// Validates `expr` against `ctx` and prepares it for evaluation.
    pub fn compile(expr: &Expr, ctx: &ExprContext<'_>) -> Result<CompiledExpr, GraphError> {
        Ok(CompiledExpr {
            root: compile_node(expr, ctx, 0)?,
        })
    }

    /// Evaluates on `row`; `params[i]` is parameter slot `i` (it must hold exactly one value
    /// when the expression reads it).
    pub fn eval<'a>(
        &'a self,
        row: &'a [Value],
        params: &'a [Vec<Value>],
    ) -> Result<Cow<'a, Value>, EvalError> {
        eval_node(&self.root, &Env { row, params })
    }

    /// Evaluates a predicate: `Some(true)`, `Some(false)` or `None` for SQL NULL.
    pub fn eval_predicate(
        &self,
        row: &[Value],
        params: &[Vec<Value>],
    ) -> Result<Option<bool>, EvalError> {
        truth(&*self.eval(row, params)?)
    }
}

fn invalid(msg: impl Into<String>) -> GraphError {
    GraphError::InvalidPlan(msg.into())
}

/// The static type of an expression where Postgres would know it; `None` for untyped NULL.
fn infer_type(expr: &Expr, ctx: &ExprContext<'_>) -> Option<SqlType> {
    match expr {
        Expr::Column(i) => ctx.columns.get(*i).cloned(),
        Expr::Literal(v) => match v {
            Value::Null => None,
            Value::Bool(_) => Some(SqlType::Bool),
            Value::Int(i) if i32::try_from(*i).is_ok() => Some(SqlType::Int4),
            Value::Int(_) => Some(SqlType::Int8),
            Value::Float(_) => Some(SqlType::Float8),
            Value::Numeric(_) => Some(SqlType::Numeric),
            Value::Text(_) => Some(SqlType::Text),
            Value::Date(_) => Some(SqlType::Date),
            Value::Timestamp(_) => Some(SqlType::Timestamp),
            Value::TimestampTz(_) => Some(SqlType::TimestampTz),
            Value::Time(_) => Some(SqlType::Time),
            _ => None,
        },
        Expr::Param(i) => ctx.params.and_then(|p| p.get(*i)).cloned(),
        Expr::Unary {
            op: UnaryOp::Not, ..
        } => Some(SqlType::Bool),
        Expr::Unary {
            op: UnaryOp::Neg,
            expr,
        } => infer_type(expr, ctx),
        Expr::Binary { ty, .. } => Some(ty.clone()),
        Expr::IsNull { .. } | Expr::InList { .. } | Expr::Between { .. } | Expr::Like { .. } => {
            Some(SqlType::Bool)
        }
        Expr::Func { func, args } => func_type(*func, args, ctx),
        Expr::Cast { ty, .. } => Some(ty.clone()),
    }
}

fn is_bpchar(expr: &Expr, ctx: &ExprContext<'_>) -> bool {
    infer_type(expr, ctx) == Some(SqlType::Bpchar)
}

fn boxed(expr: &Expr, ctx: &ExprContext<'_>, depth: usize) -> Result<Box<Node>, GraphError> {
    Ok(Box::new(compile_node(expr, ctx, depth + 1)?))
}

fn compile_node(expr: &Expr, ctx: &ExprContext<'_>, depth: usize) -> Result<Node, GraphError> {
    if depth > EXPR_DEPTH_MAX {
        return Err(invalid("expression nested too deeply"));
    }
    Ok(match expr {
        Expr::Column(i) => {
            if *i >= ctx.columns.len() {
                return Err(invalid(format!("column {i} out of range")));
            }
            Node::Column(*i)
        }
        Expr::Literal(v) => Node::Literal(v.clone()),
        Expr::Param(i) => match ctx.params {
            None => return Err(invalid("parameter in a dataflow expression")),
            Some(p) if *i >= p.len() => return Err(invalid(format!("param {i} out of range"))),
            Some(_) => Node::Param(*i),
        },
        Expr::Unary { op, expr: inner } => match op {
            UnaryOp::Not => Node::Not(boxed(inner, ctx, depth)?),
            UnaryOp::Neg => Node::Neg(
                boxed(inner, ctx, depth)?,
                num_kind(infer_type(inner, ctx).as_ref()),
            ),
        },
        Expr::Binary {
            op,
            left,
            right,
            ty,
        } => compile_binary(*op, left, right, ty, ctx, depth)?,
        Expr::IsNull { expr, negated } => Node::IsNull {
            expr: boxed(expr, ctx, depth)?,
            negated: *negated,
        },
        Expr::InList {
            expr: inner,
            list,
            negated,
        } => Node::InList {
            bpchar: is_bpchar(inner, ctx) || list.iter().any(|e| is_bpchar(e, ctx)),
            expr: boxed(inner, ctx, depth)?,
            list: list
                .iter()
                .map(|e| compile_node(e, ctx, depth + 1))
                .collect::<Result<_, _>>()?,
            negated: *negated,
        },
        Expr::Between {
            expr: inner,
            low,
            high,
            negated,
        } => Node::Between {
            bpchar: [inner, low, high].iter().any(|e| is_bpchar(e, ctx)),
            expr: boxed(inner, ctx, depth)?,
            low: boxed(low, ctx, depth)?,
            high: boxed(high, ctx, depth)?,
            negated: *negated,
        },
        Expr::Like {
            expr: inner,
            pattern,
            negated,
            case_insensitive,
        } => {
            // Postgres matches char(n) with its blank padding (`'ab'::char(4) LIKE 'ab'` is
            // false), which is how the values are stored: no special case.
            Node::Like {
                expr: boxed(inner, ctx, depth)?,
                pattern: boxed(pattern, ctx, depth)?,
                negated: *negated,
                case_insensitive: *case_insensitive,
            }
        }
        Expr::Func { func, args } => compile_func(*func, args, ctx, depth)?,
        Expr::Cast { expr: inner, ty } => Node::Cast {
            from_bpchar: is_bpchar(inner, ctx),
            expr: boxed(inner, ctx, depth)?,
            ty: ty.clone(),
        },
    })
}

fn compile_binary(
    op: BinaryOp,
    left: &Expr,
    right: &Expr,
    ty: &SqlType,
    ctx: &ExprContext<'_>,
    depth: usize,
) -> Result<Node, GraphError> {
    let l = boxed(left, ctx, depth)?;
    let r = boxed(right, ctx, depth)?;
    let cmp = |op| Node::Cmp {
        op,
        bpchar: is_bpchar(left, ctx) || is_bpchar(right, ctx),
        left: l.clone(),
        right: r.clone(),
    };
    let is_date = |e: &Expr| infer_type(e, ctx) == Some(SqlType::Date);
    let date_arith =
        *ty == SqlType::Date || (op == BinaryOp::Sub && is_date(left) && is_date(right));
    let arith = |op| {
        if date_arith {
            Node::DateArith {
                op,
                left: l.clone(),
                right: r.clone(),
            }
        } else {
            Node::Arith {
                op,
                left: l.clone(),
                right: r.clone(),
                kind: num_kind(Some(ty)),
            }
        }
    };
    Ok(match op {
        BinaryOp::And => Node::And(l, r),
        BinaryOp::Or => Node::Or(l, r),
        BinaryOp::Eq => cmp(CmpOp::Eq),
        BinaryOp::NotEq => cmp(CmpOp::NotEq),
        BinaryOp::Lt => cmp(CmpOp::Lt),
        BinaryOp::LtEq => cmp(CmpOp::LtEq),
        BinaryOp::Gt => cmp(CmpOp::Gt),
        BinaryOp::GtEq => cmp(CmpOp::GtEq),
        BinaryOp::Add => arith(ArithOp::Add),
        BinaryOp::Sub => arith(ArithOp::Sub),
        BinaryOp::Mul => arith(ArithOp::Mul),
        BinaryOp::Div => arith(ArithOp::Div),
        BinaryOp::Mod => arith(ArithOp::Mod),
        BinaryOp::Concat => Node::Concat(
            TextArg {
                expr: l.clone(),
                bpchar: is_bpchar(left, ctx),
            },
            TextArg {
                expr: r.clone(),
                bpchar: is_bpchar(right, ctx),
            },
        ),
    })
}

struct Env<'a> {
    row: &'a [Value],
    params: &'a [Vec<Value>],
}

type Res<'a> = Result<Cow<'a, Value>, EvalError>;

fn owned<'a>(v: Value) -> Res<'a> {
    Ok(Cow::Owned(v))
}

/// SQL truth value of a boolean-typed result.
fn truth(v: &Value) -> Result<Option<bool>, EvalError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(EvalError::TypeMismatch(format!(
            "expected boolean, got {}",
            kind_name(other)
        ))),
    }
}

fn bool_value(b: Option<bool>) -> Value {
    b.map_or(Value::Null, Value::Bool)
}

pub(crate) fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Int(_) => "integer",
        Value::Float(_) => "float",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytea",
        Value::Date(_) => "date",
        Value::Time(_) => "time",
        Value::Timestamp(_) => "timestamp",
        Value::TimestampTz(_) => "timestamptz",
        Value::Uuid(_) => "uuid",
        Value::Json(_) => "json",
        Value::Array(_) => "array",
        Value::Unrepresentable(_) => "unrepresentable value",
    }
}

fn eval_node<'a>(node: &'a Node, env: &Env<'a>) -> Res<'a> {
    match node {
        Node::Column(i) => env
            .row
            .get(*i)
            .map(Cow::Borrowed)
            .ok_or(EvalError::ColumnOutOfRange(*i)),
        Node::Literal(v) => Ok(Cow::Borrowed(v)),
        Node::Param(i) => match env.params.get(*i).map(Vec::as_slice) {
            None => Err(EvalError::ParamMissing(*i)),
            Some([v]) => Ok(Cow::Borrowed(v)),
            Some(_) => Err(EvalError::ParamNotSingle(*i)),
        },
        Node::Not(e) => owned(bool_value(truth(&*eval_node(e, env)?)?.map(|b| !b))),
        Node::Neg(e, kind) => eval_neg(&*eval_node(e, env)?, *kind).and_then(owned),
        Node::And(l, r) => eval_and_or(l, r, env, false),
        Node::Or(l, r) => eval_and_or(l, r, env, true),
        Node::Cmp {
            op,
            left,
            right,
            bpchar,
        } => {
            let l = eval_node(left, env)?;
            let r = eval_node(right, env)?;
            owned(bool_value(cmp_values(*op, &l, &r, *bpchar)?))
        }
        Node::Arith {
            op,
            left,
            right,
            kind,
        } => {
            let l = eval_node(left, env)?;
            let r = eval_node(right, env)?;
            owned(arith(*op, &l, &r, *kind)?)
        }
        Node::Concat(l, r) => eval_concat(l, r, env),
        Node::IsNull { expr, negated } => {
            owned(Value::Bool(eval_node(expr, env)?.is_null() != *negated))
        }
        Node::InList {
            expr,
            list,
            negated,
            bpchar,
        } => {
            let found = eval_in_list(expr, list, *bpchar, env)?;
            owned(bool_value(found.map(|b| b != *negated)))
        }
        Node::Between {
            expr,
            low,
            high,
            negated,
            bpchar,
        } => {
            let v = eval_node(expr, env)?;
            let lo = eval_node(low, env)?;
            let hi = eval_node(high, env)?;
            let ge = cmp_values(CmpOp::GtEq, &v, &lo, *bpchar)?;
            let le = cmp_values(CmpOp::LtEq, &v, &hi, *bpchar)?;
            owned(bool_value(and3(ge, le).map(|b| b != *negated)))
        }
        Node::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
        } => {
            let v = eval_node(expr, env)?;
            let p = eval_node(pattern, env)?;
            owned(bool_value(
                eval_like(&v, &p, *case_insensitive)?.map(|b| b != *negated),
            ))
        }
        Node::Coalesce(args) => {
            for a in args {
                let v = eval_node(a, env)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            owned(Value::Null)
        }
        Node::Abs(e, kind) => eval_abs(&*eval_node(e, env)?, *kind).and_then(owned),
        Node::Length(arg) => {
            let v = eval_node(&arg.expr, env)?;
            owned(match &*v {
                Value::Null => Value::Null,
                Value::Text(s) => {
                    let s = if arg.bpchar {
                        s.trim_end_matches(' ')
                    } else {
                        s
                    };
                    Value::Int(s.chars().count() as i64)
                }
                Value::Bytes(b) => Value::Int(b.len() as i64),
                other => {
                    return Err(EvalError::TypeMismatch(format!(
                        "length of {}",
                        kind_name(other)
                    )))
                }
            })
        }
        Node::Cast {
            expr,
            ty,
            from_bpchar,
        } => {
            let v = eval_node(expr, env)?;
            owned(crate::cast::cast(&v, ty, *from_bpchar)?)
        }
        Node::Case { branches, else_ } => eval_case(branches, else_, env),
        Node::Call { func, args, kind } => eval_call(*func, args, *kind, env),
        Node::DateArith { op, left, right } => {
            let l = eval_node(left, env)?;
            let r = eval_node(right, env)?;
            owned(datetime::date_arith(*op, &l, &r)?)
        }
    }
}
