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
        Expr::Func {
            func: Func::Coalesce,
            args,
        } => args.iter().find_map(|a| infer_type(a, ctx)),
        Expr::Func {
            func: Func::Abs,
            args,
        } => args.first().and_then(|a| infer_type(a, ctx)),
        Expr::Func {
            func: Func::Length, ..
        } => Some(SqlType::Int4),
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
    let arith = |op| Node::Arith {
        op,
        left: l.clone(),
        right: r.clone(),
        kind: num_kind(Some(ty)),
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

fn compile_func(
    func: Func,
    args: &[Expr],
    ctx: &ExprContext<'_>,
    depth: usize,
) -> Result<Node, GraphError> {
    let one = |name: &str| -> Result<&Expr, GraphError> {
        match args {
            [a] => Ok(a),
            _ => Err(invalid(format!("{name} takes one argument"))),
        }
    };
    Ok(match func {
        Func::Coalesce => {
            if args.is_empty() {
                return Err(invalid("COALESCE needs arguments"));
            }
            Node::Coalesce(
                args.iter()
                    .map(|a| compile_node(a, ctx, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        Func::Abs => {
            let a = one("abs")?;
            Node::Abs(boxed(a, ctx, depth)?, num_kind(infer_type(a, ctx).as_ref()))
        }
        Func::Length => {
            let a = one("length")?;
            Node::Length(TextArg {
                expr: boxed(a, ctx, depth)?,
                bpchar: is_bpchar(a, ctx),
            })
        }
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
    }
}

fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

fn or3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

/// AND/OR with short circuit on the deciding value. An error on one side is forgiven only
/// when the other side alone decides the result (Postgres may evaluate in either order).
fn eval_and_or<'a>(l: &'a Node, r: &'a Node, env: &Env<'a>, is_or: bool) -> Res<'a> {
    let decisive = is_or;
    let left = eval_node(l, env).and_then(|v| truth(&v));
    if left == Ok(Some(decisive)) {
        return owned(Value::Bool(decisive));
    }
    let right = eval_node(r, env).and_then(|v| truth(&v));
    if right == Ok(Some(decisive)) {
        return owned(Value::Bool(decisive));
    }
    let (a, b) = (left?, right?);
    owned(bool_value(if is_or { or3(a, b) } else { and3(a, b) }))
}

fn trimmed<'v>(v: &'v Value, bpchar: bool) -> Cow<'v, Value> {
    match v {
        Value::Text(s) if bpchar && s.ends_with(' ') => {
            Cow::Owned(Value::Text(s.trim_end_matches(' ').to_string()))
        }
        _ => Cow::Borrowed(v),
    }
}

/// Compares two non-NULL-checked values; `None` when either is NULL.
fn cmp_values(op: CmpOp, l: &Value, r: &Value, bpchar: bool) -> Result<Option<bool>, EvalError> {
    if l.is_null() || r.is_null() {
        return Ok(None);
    }
    let (l, r) = (trimmed(l, bpchar), trimmed(r, bpchar));
    let ord = compare(&l, &r).ok_or_else(|| {
        EvalError::TypeMismatch(format!("compare {} with {}", kind_name(&l), kind_name(&r)))
    })?;
    use std::cmp::Ordering::*;
    Ok(Some(match op {
        CmpOp::Eq => ord == Equal,
        CmpOp::NotEq => ord != Equal,
        CmpOp::Lt => ord == Less,
        CmpOp::LtEq => ord != Greater,
        CmpOp::Gt => ord == Greater,
        CmpOp::GtEq => ord != Less,
    }))
}

fn eval_in_list<'a>(
    expr: &'a Node,
    list: &'a [Node],
    bpchar: bool,
    env: &Env<'a>,
) -> Result<Option<bool>, EvalError> {
    let v = eval_node(expr, env)?;
    if v.is_null() {
        return Ok(None);
    }
    let mut saw_null = false;
    for item in list {
        let x = eval_node(item, env)?;
        match cmp_values(CmpOp::Eq, &v, &x, bpchar)? {
            Some(true) => return Ok(Some(true)),
            Some(false) => {}
            None => saw_null = true,
        }
    }
    Ok(if saw_null { None } else { Some(false) })
}

fn eval_like(v: &Value, p: &Value, case_insensitive: bool) -> Result<Option<bool>, EvalError> {
    match (v, p) {
        (Value::Null, _) | (_, Value::Null) => Ok(None),
        (Value::Text(s), Value::Text(pat)) => {
            if case_insensitive {
                if !s.is_ascii() || !pat.is_ascii() {
                    return Err(EvalError::Unsupported(
                        "ILIKE on non-ASCII text depends on the locale".into(),
                    ));
                }
                let s = s.to_ascii_lowercase();
                let pat = pat.to_ascii_lowercase();
                like_match(&s, &pat).map(Some)
            } else {
                like_match(s, pat).map(Some)
            }
        }
        (a, b) => Err(EvalError::TypeMismatch(format!(
            "{} LIKE {}",
            kind_name(a),
            kind_name(b)
        ))),
    }
}

fn text_of<'v>(v: &'v Value, bpchar: bool) -> Result<Option<Cow<'v, str>>, EvalError> {
    Ok(match v {
        Value::Null => None,
        Value::Text(s) if bpchar => Some(Cow::Borrowed(s.trim_end_matches(' '))),
        Value::Text(s) | Value::Numeric(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        other => {
            return Err(EvalError::Unsupported(format!(
                "|| on {} (text form is ambiguous)",
                kind_name(other)
            )))
        }
    })
}

fn eval_concat<'a>(l: &'a TextArg, r: &'a TextArg, env: &Env<'a>) -> Res<'a> {
    let lv = eval_node(&l.expr, env)?;
    let rv = eval_node(&r.expr, env)?;
    let (a, b) = (text_of(&lv, l.bpchar)?, text_of(&rv, r.bpchar)?);
    match (a, b) {
        (Some(a), Some(b)) => {
            let mut s = String::with_capacity(a.len() + b.len());
            s.push_str(&a);
            s.push_str(&b);
            owned(Value::Text(s))
        }
        _ => owned(Value::Null),
    }
}

fn as_f64(v: &Value) -> Result<f64, EvalError> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(f) => Ok(*f),
        other => Err(EvalError::TypeMismatch(format!(
            "float arithmetic on {}",
            kind_name(other)
        ))),
    }
}

fn arith(op: ArithOp, l: &Value, r: &Value, kind: NumKind) -> Result<Value, EvalError> {
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
fn decimal(v: &Value) -> Result<Decimal, EvalError> {
    match v {
        Value::Int(i) => Ok(Decimal::from_i128(i128::from(*i))),
        Value::Numeric(s) => Decimal::parse(s).map_err(decimal_error),
        other => Err(EvalError::TypeMismatch(format!(
            "numeric arithmetic on {}",
            kind_name(other)
        ))),
    }
}

fn decimal_error(e: DecimalError) -> EvalError {
    match e {
        DecimalError::DivisionByZero => EvalError::DivisionByZero,
        // Postgres could compute these; we cannot exactly: unsupported, never approximate.
        DecimalError::Overflow => EvalError::Unsupported("numeric beyond 38 digits".into()),
        DecimalError::Invalid(s) => EvalError::Unsupported(format!("numeric value {s}")),
    }
}

fn int_arith(op: ArithOp, a: i64, b: i64, w: IntWidth) -> Result<i64, EvalError> {
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

fn float_arith(op: ArithOp, a: f64, b: f64, single: bool) -> Result<f64, EvalError> {
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

fn eval_neg(v: &Value, kind: NumKind) -> Result<Value, EvalError> {
    eval_sign_op(v, kind, "unary minus", i64::checked_neg, |f| -f)
}

fn eval_abs(v: &Value, kind: NumKind) -> Result<Value, EvalError> {
    eval_sign_op(v, kind, "abs", i64::checked_abs, f64::abs)
}

/// Unary minus and `abs`: integers overflow-checked against the expression's width (in
/// Postgres `-(-32768::int2)` is an error), floats never overflow.
fn eval_sign_op(
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
