//! Text operations: LIKE, `||` and the string functions.

use super::*;

pub(super) fn eval_like(
    v: &Value,
    p: &Value,
    case_insensitive: bool,
) -> Result<Option<bool>, EvalError> {
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

pub(super) fn text_of<'v>(v: &'v Value, bpchar: bool) -> Result<Option<Cow<'v, str>>, EvalError> {
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

pub(super) fn eval_concat<'a>(l: &'a TextArg, r: &'a TextArg, env: &Env<'a>) -> Res<'a> {
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

/// Largest text a string function may build; beyond it the row is poisoned (Postgres would
/// compute it, but a cache has no business holding it).
pub(crate) const TEXT_RESULT_MAX_BYTES: usize = 1 << 20;

pub(super) fn too_long(what: &str) -> EvalError {
    EvalError::Unsupported(format!("{what}() result larger than 1 MiB"))
}

pub(super) fn str_arg<'v>(v: &'v Value, what: &str) -> Result<&'v str, EvalError> {
    match v {
        Value::Text(s) => Ok(s),
        other => Err(EvalError::TypeMismatch(format!(
            "{what}() on {}",
            kind_name(other)
        ))),
    }
}

pub(super) fn int_arg(v: &Value, what: &str) -> Result<i64, EvalError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(EvalError::TypeMismatch(format!(
            "{what}() with {} argument",
            kind_name(other)
        ))),
    }
}

/// The first `n` characters of `s` (all of it when shorter).
pub(super) fn prefix_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `s` without its first `n` characters.
pub(super) fn skip_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[i..],
        None => "",
    }
}

pub(super) fn to_usize(n: i64) -> usize {
    usize::try_from(n.max(0)).unwrap_or(usize::MAX)
}

/// Postgres' `text_substring`: characters `from .. from + count` (1-based), clipped to the
/// string; a negative count is an error.
pub(super) fn substr(s: &str, from: i64, count: Option<i64>) -> Result<String, EvalError> {
    let start = from.max(1);
    let end = match count {
        Some(c) if c < 0 => {
            return Err(EvalError::InvalidInput(
                "negative substring length not allowed".into(),
            ))
        }
        Some(c) => from.saturating_add(c),
        None => i64::MAX,
    };
    if end <= start {
        return Ok(String::new());
    }
    let rest = skip_chars(s, to_usize(start - 1));
    Ok(prefix_chars(rest, to_usize(end - start)).to_string())
}

pub(super) fn trim_set<'s>(s: &'s str, set: &str, left: bool, right: bool) -> &'s str {
    let mut out = s;
    if left {
        out = out.trim_start_matches(|c| set.contains(c));
    }
    if right {
        out = out.trim_end_matches(|c| set.contains(c));
    }
    out
}

pub(super) fn pad(s: &str, len: i64, fill: &str, left: bool) -> Result<String, EvalError> {
    let len = to_usize(len);
    let body = prefix_chars(s, len);
    let have = body.chars().count();
    if fill.is_empty() || have >= len {
        return Ok(body.to_string());
    }
    let need = len - have;
    let fill_max = fill.chars().map(char::len_utf8).max().unwrap_or(1);
    if need.saturating_mul(fill_max).saturating_add(body.len()) > TEXT_RESULT_MAX_BYTES {
        return Err(too_long(if left { "lpad" } else { "rpad" }));
    }
    let padding: String = fill.chars().cycle().take(need).collect();
    Ok(if left {
        padding + body
    } else {
        format!("{body}{padding}")
    })
}

pub(super) fn split_part(s: &str, delim: &str, n: i64) -> Result<String, EvalError> {
    if n == 0 {
        return Err(EvalError::InvalidInput(
            "field position must not be zero".into(),
        ));
    }
    if s.is_empty() {
        return Ok(String::new());
    }
    if delim.is_empty() {
        return Ok(if n == 1 || n == -1 {
            s.to_string()
        } else {
            String::new()
        });
    }
    let fields: Vec<&str> = s.split(delim).collect();
    let idx = if n > 0 {
        usize::try_from(n - 1).ok()
    } else {
        usize::try_from(fields.len() as i64 + n).ok()
    };
    Ok(idx
        .and_then(|i| fields.get(i))
        .map_or_else(String::new, |f| f.to_string()))
}

/// The text `concat`/`concat_ws` use for an argument: its output form (`t`/`f` for booleans).
pub(super) fn concat_text(v: &Value) -> Result<Option<Cow<'_, str>>, EvalError> {
    Ok(match v {
        Value::Null => None,
        Value::Text(s) | Value::Numeric(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "t" } else { "f" })),
        other => {
            return Err(EvalError::Unsupported(format!(
                "concat() of {} (text form is session-dependent)",
                kind_name(other)
            )))
        }
    })
}

pub(super) fn concat_all<'v>(
    parts: impl Iterator<Item = &'v Value>,
    sep: &str,
    what: &str,
) -> Result<Value, EvalError> {
    let mut out = String::new();
    let mut first = true;
    for v in parts {
        if let Some(t) = concat_text(v)? {
            if !first {
                out.push_str(sep);
            }
            first = false;
            out.push_str(&t);
            if out.len() > TEXT_RESULT_MAX_BYTES {
                return Err(too_long(what));
            }
        }
    }
    Ok(Value::Text(out))
}

/// Case mapping: exact only for ASCII, since Postgres maps other letters by the database's
/// locale (and not at all under `C`).
pub(super) fn ascii_case(s: &str, upper: bool) -> Result<String, EvalError> {
    if !s.is_ascii() {
        return Err(EvalError::Unsupported(format!(
            "{}() of non-ASCII text depends on the database's locale",
            if upper { "upper" } else { "lower" }
        )));
    }
    Ok(if upper {
        s.to_ascii_uppercase()
    } else {
        s.to_ascii_lowercase()
    })
}

/// The string functions. `args` were checked for arity at compile time; NULL handling is
/// done here (all are strict except `concat` and `concat_ws`).
pub(super) fn eval_text_fn(func: Func, args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let name = text_fn_name(func);
    match func {
        Func::Concat => return concat_all(args.iter().map(|a| &**a), "", name),
        Func::ConcatWs => {
            let Some((sep, rest)) = args.split_first() else {
                return Err(EvalError::TypeMismatch(
                    "concat_ws() without arguments".into(),
                ));
            };
            if sep.is_null() {
                return Ok(Value::Null);
            }
            let sep = str_arg(sep, name)?;
            return concat_all(rest.iter().map(|a| &**a), sep, name);
        }
        _ => {}
    }
    if args.iter().any(|a| a.is_null()) {
        return Ok(Value::Null);
    }
    let s = |i: usize| -> Result<&str, EvalError> {
        args.get(i).map_or(
            Err(EvalError::TypeMismatch(format!("{name}() arity"))),
            |v| str_arg(v, name),
        )
    };
    let n = |i: usize| -> Result<i64, EvalError> {
        args.get(i).map_or(
            Err(EvalError::TypeMismatch(format!("{name}() arity"))),
            |v| int_arg(v, name),
        )
    };
    let text = |t: String| Ok(Value::Text(t));
    match func {
        Func::Lower => text(ascii_case(s(0)?, false)?),
        Func::Upper => text(ascii_case(s(0)?, true)?),
        Func::Substr => {
            let count = if args.len() > 2 { Some(n(2)?) } else { None };
            text(substr(s(0)?, n(1)?, count)?)
        }
        Func::Left | Func::Right => {
            let (st, k) = (s(0)?, n(1)?);
            let len = st.chars().count() as i64;
            let keep = if k >= 0 { k.min(len) } else { (len + k).max(0) };
            text(if func == Func::Left {
                prefix_chars(st, to_usize(keep)).to_string()
            } else {
                skip_chars(st, to_usize(len - keep)).to_string()
            })
        }
        Func::Btrim | Func::Ltrim | Func::Rtrim => {
            let set = if args.len() > 1 { s(1)? } else { " " };
            let (l, r) = (func != Func::Rtrim, func != Func::Ltrim);
            text(trim_set(s(0)?, set, l, r).to_string())
        }
        Func::Replace => {
            let (st, from, to) = (s(0)?, s(1)?, s(2)?);
            if from.is_empty() {
                return text(st.to_string());
            }
            let hits = st.matches(from).count();
            let grow = to.len().saturating_sub(from.len()).saturating_mul(hits);
            if st.len().saturating_add(grow) > TEXT_RESULT_MAX_BYTES {
                return Err(too_long(name));
            }
            text(st.replace(from, to))
        }
        Func::Strpos => {
            let (st, sub) = (s(0)?, s(1)?);
            Ok(Value::Int(match st.find(sub) {
                Some(i) => st[..i].chars().count() as i64 + 1,
                None => 0,
            }))
        }
        Func::StartsWith => Ok(Value::Bool(s(0)?.starts_with(s(1)?))),
        Func::Repeat => {
            let (st, k) = (s(0)?, to_usize(n(1)?));
            if st.len().saturating_mul(k) > TEXT_RESULT_MAX_BYTES {
                return Err(too_long(name));
            }
            text(st.repeat(k))
        }
        Func::Lpad | Func::Rpad => {
            let fill = if args.len() > 2 { s(2)? } else { " " };
            text(pad(s(0)?, n(1)?, fill, func == Func::Lpad)?)
        }
        Func::Reverse => text(s(0)?.chars().rev().collect()),
        Func::SplitPart => text(split_part(s(0)?, s(1)?, n(2)?)?),
        Func::OctetLength => Ok(Value::Int(match &*args[0] {
            Value::Bytes(b) => b.len() as i64,
            _ => s(0)?.len() as i64,
        })),
        other => Err(EvalError::TypeMismatch(format!(
            "{other:?} is not a text function"
        ))),
    }
}

/// The SQL name of a string function (for messages).
pub(super) fn text_fn_name(func: Func) -> &'static str {
    match func {
        Func::Lower => "lower",
        Func::Upper => "upper",
        Func::Substr => "substr",
        Func::Left => "left",
        Func::Right => "right",
        Func::Btrim => "btrim",
        Func::Ltrim => "ltrim",
        Func::Rtrim => "rtrim",
        Func::Replace => "replace",
        Func::Concat => "concat",
        Func::ConcatWs => "concat_ws",
        Func::Strpos => "strpos",
        Func::StartsWith => "starts_with",
        Func::Repeat => "repeat",
        Func::Lpad => "lpad",
        Func::Rpad => "rpad",
        Func::Reverse => "reverse",
        Func::SplitPart => "split_part",
        Func::OctetLength => "octet_length",
        _ => "function",
    }
}
