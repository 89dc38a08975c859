//! Three-valued logic, comparisons and IN lists.

use super::*;

pub(super) fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

pub(super) fn or3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

/// AND/OR with short circuit on the deciding value. An error on one side is forgiven only
/// when the other side alone decides the result (Postgres may evaluate in either order).
pub(super) fn eval_and_or<'a>(l: &'a Node, r: &'a Node, env: &Env<'a>, is_or: bool) -> Res<'a> {
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

pub(super) fn trimmed<'v>(v: &'v Value, bpchar: bool) -> Cow<'v, Value> {
    match v {
        Value::Text(s) if bpchar && s.ends_with(' ') => {
            Cow::Owned(Value::Text(s.trim_end_matches(' ').to_string()))
        }
        _ => Cow::Borrowed(v),
    }
}

/// Compares two non-NULL-checked values; `None` when either is NULL.
pub(super) fn cmp_values(
    op: CmpOp,
    l: &Value,
    r: &Value,
    bpchar: bool,
) -> Result<Option<bool>, EvalError> {
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

pub(super) fn eval_in_list<'a>(
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
    let mut compare = |x: &Value| -> Result<bool, EvalError> {
        match cmp_values(CmpOp::Eq, &v, x, bpchar)? {
            Some(true) => return Ok(true),
            Some(false) => {}
            None => saw_null = true,
        }
        Ok(false)
    };
    for item in list {
        // A parameter in an IN list stands for all of its slot's values (a collapsed list,
        // see `larder_sql::normalize`).
        if let Node::Param(i) = item {
            let values = env.params.get(*i).ok_or(EvalError::ParamMissing(*i))?;
            for x in values {
                if compare(x)? {
                    return Ok(Some(true));
                }
            }
            continue;
        }
        if compare(&*eval_node(item, env)?)? {
            return Ok(Some(true));
        }
    }
    Ok(if saw_null { None } else { Some(false) })
}
