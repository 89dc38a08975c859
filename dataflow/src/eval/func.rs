//! Functions: compilation of `Expr::Func` (arity and argument checks, static facts) and
//! evaluation of CASE, NULLIF, GREATEST/LEAST and the dispatch to the text, date/time and
//! numeric function families.

use super::datetime::{date_part, date_trunc, extract};
use super::numeric::{eval_mod, eval_rounding, Rounding};
use super::text::{eval_text_fn, text_fn_name};
use super::*;

/// The static result type of a function call, where Postgres would know it.
pub(super) fn func_type(func: Func, args: &[Expr], ctx: &ExprContext<'_>) -> Option<SqlType> {
    let first = || args.first().and_then(|a| infer_type(a, ctx));
    match func {
        Func::Coalesce | Func::Greatest | Func::Least => {
            args.iter().find_map(|a| infer_type(a, ctx))
        }
        Func::Case => args
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1 || *i + 1 == args.len())
            .find_map(|(_, a)| infer_type(a, ctx)),
        Func::Abs | Func::NullIf | Func::Mod => first(),
        Func::Length | Func::Strpos | Func::OctetLength => Some(SqlType::Int4),
        Func::StartsWith => Some(SqlType::Bool),
        Func::Lower
        | Func::Upper
        | Func::Substr
        | Func::Left
        | Func::Right
        | Func::Btrim
        | Func::Ltrim
        | Func::Rtrim
        | Func::Replace
        | Func::Concat
        | Func::ConcatWs
        | Func::Repeat
        | Func::Lpad
        | Func::Rpad
        | Func::Reverse
        | Func::SplitPart => Some(SqlType::Text),
        Func::DateTrunc => Some(SqlType::Timestamp),
        Func::Extract => Some(SqlType::Numeric),
        Func::DatePart => Some(SqlType::Float8),
        Func::Round | Func::Trunc | Func::Ceil | Func::Floor => match first() {
            Some(SqlType::Numeric) => Some(SqlType::Numeric),
            _ => Some(SqlType::Float8),
        },
    }
}

/// Allowed argument counts.
fn arity(func: Func) -> (usize, usize) {
    match func {
        Func::Coalesce | Func::Greatest | Func::Least | Func::Concat | Func::ConcatWs => {
            (1, usize::MAX)
        }
        Func::Case => (3, usize::MAX),
        Func::Abs
        | Func::Length
        | Func::Lower
        | Func::Upper
        | Func::Reverse
        | Func::OctetLength
        | Func::Ceil
        | Func::Floor => (1, 1),
        Func::Btrim | Func::Ltrim | Func::Rtrim | Func::Round | Func::Trunc => (1, 2),
        Func::Substr | Func::Lpad | Func::Rpad => (2, 3),
        Func::NullIf
        | Func::Left
        | Func::Right
        | Func::Strpos
        | Func::StartsWith
        | Func::Repeat
        | Func::DateTrunc
        | Func::Extract
        | Func::DatePart
        | Func::Mod => (2, 2),
        Func::Replace | Func::SplitPart => (3, 3),
    }
}

fn is_text_fn(func: Func) -> bool {
    text_fn_name(func) != "function"
}

/// The value of a constant argument (`None` if it reads columns or parameters); an argument
/// that fails to evaluate is an error: Postgres folds constants while planning, so the query
/// fails there even if the branch is never taken, and such a plan is refused.
fn constant_value(expr: &Expr, depth: usize) -> Result<Option<Value>, GraphError> {
    let empty = ExprContext {
        columns: &[],
        params: None,
    };
    let Ok(node) = compile_node(expr, &empty, depth) else {
        return Ok(None);
    };
    match eval_node(
        &node,
        &Env {
            row: &[],
            params: &[],
        },
    ) {
        Ok(v) => Ok(Some(v.into_owned())),
        Err(e) => Err(invalid(format!(
            "a constant CASE argument fails to evaluate ({e}); Postgres reports it when planning"
        ))),
    }
}

/// Postgres' constant folding of CASE: conditions in order; an arm with a constant false or
/// NULL condition is dropped unfolded, a constant true one ends the CASE (the rest and the
/// ELSE are never folded); the results of the other arms and the ELSE are folded.
fn check_case_constants(args: &[Expr], depth: usize) -> Result<(), GraphError> {
    let (pairs, else_) = args.split_at(args.len().saturating_sub(1));
    for pair in pairs.chunks(2) {
        let [cond, result] = pair else { break };
        match constant_value(cond, depth)? {
            Some(Value::Bool(true)) => {
                constant_value(result, depth)?;
                return Ok(());
            }
            Some(_) => continue,
            None => {
                constant_value(result, depth)?;
            }
        }
    }
    for e in else_ {
        constant_value(e, depth)?;
    }
    Ok(())
}

pub(super) fn compile_func(
    func: Func,
    args: &[Expr],
    ctx: &ExprContext<'_>,
    depth: usize,
) -> Result<Node, GraphError> {
    let (min, max) = arity(func);
    if args.len() < min || args.len() > max || (func == Func::Case && args.len().is_multiple_of(2))
    {
        return Err(invalid(format!("{func:?} with {} arguments", args.len())));
    }
    let compile_all = || -> Result<Vec<Node>, GraphError> {
        args.iter()
            .map(|a| compile_node(a, ctx, depth + 1))
            .collect()
    };
    let first_kind = num_kind(args.first().and_then(|a| infer_type(a, ctx)).as_ref());
    Ok(match func {
        Func::Coalesce => Node::Coalesce(compile_all()?),
        Func::Abs => Node::Abs(boxed(&args[0], ctx, depth)?, first_kind),
        Func::Length => Node::Length(TextArg {
            expr: boxed(&args[0], ctx, depth)?,
            bpchar: is_bpchar(&args[0], ctx),
        }),
        Func::Case => {
            check_case_constants(args, depth + 1)?;
            let mut nodes = compile_all()?;
            let else_ = Box::new(nodes.pop().ok_or_else(|| invalid("CASE without ELSE"))?);
            let mut branches = Vec::with_capacity(nodes.len() / 2);
            let mut it = nodes.into_iter();
            while let (Some(c), Some(r)) = (it.next(), it.next()) {
                branches.push((c, r));
            }
            Node::Case { branches, else_ }
        }
        _ => {
            if is_text_fn(func) && args.iter().any(|a| is_bpchar(a, ctx)) {
                return Err(invalid(format!(
                    "{}() on char(n) values",
                    text_fn_name(func)
                )));
            }
            Node::Call {
                func,
                args: compile_all()?,
                kind: first_kind,
            }
        }
    })
}

pub(super) fn eval_case<'a>(
    branches: &'a [(Node, Node)],
    else_: &'a Node,
    env: &Env<'a>,
) -> Res<'a> {
    for (cond, result) in branches {
        if truth(&*eval_node(cond, env)?)? == Some(true) {
            return eval_node(result, env);
        }
    }
    eval_node(else_, env)
}

/// GREATEST/LEAST: the extreme non-NULL argument, NULL when all are NULL.
fn extreme<'a>(args: Vec<Cow<'a, Value>>, greatest: bool) -> Res<'a> {
    let mut best: Option<Cow<'a, Value>> = None;
    for v in args {
        if v.is_null() {
            continue;
        }
        best = Some(match best {
            None => v,
            Some(b) => {
                let ord = compare(&v, &b).ok_or_else(|| {
                    EvalError::TypeMismatch(format!(
                        "compare {} with {}",
                        kind_name(&v),
                        kind_name(&b)
                    ))
                })?;
                let better = if greatest {
                    ord == std::cmp::Ordering::Greater
                } else {
                    ord == std::cmp::Ordering::Less
                };
                if better {
                    v
                } else {
                    b
                }
            }
        });
    }
    Ok(best.unwrap_or(Cow::Owned(Value::Null)))
}

pub(super) fn eval_call<'a>(func: Func, args: &'a [Node], kind: NumKind, env: &Env<'a>) -> Res<'a> {
    let mut vals = Vec::with_capacity(args.len());
    for a in args {
        vals.push(eval_node(a, env)?);
    }
    match func {
        Func::NullIf => {
            let (a, b) = (&vals[0], &vals[1]);
            if cmp_values(CmpOp::Eq, a, b, false)? == Some(true) {
                owned(Value::Null)
            } else {
                Ok(vals.swap_remove(0))
            }
        }
        Func::Greatest => extreme(vals, true),
        Func::Least => extreme(vals, false),
        Func::DateTrunc => owned(date_trunc(&vals[0], &vals[1])?),
        Func::Extract => owned(extract(&vals[0], &vals[1])?),
        Func::DatePart => owned(date_part(&vals[0], &vals[1])?),
        Func::Round | Func::Trunc | Func::Ceil | Func::Floor => {
            let mode = match func {
                Func::Round => Rounding::HalfAway,
                Func::Trunc => Rounding::Trunc,
                Func::Ceil => Rounding::Ceil,
                _ => Rounding::Floor,
            };
            owned(eval_rounding(mode, &vals[0], vals.get(1).map(|v| &**v))?)
        }
        Func::Mod => owned(eval_mod(&vals[0], &vals[1], kind)?),
        f if is_text_fn(f) => owned(eval_text_fn(f, &vals)?),
        other => Err(EvalError::TypeMismatch(format!("{other:?} is not a call"))),
    }
}
