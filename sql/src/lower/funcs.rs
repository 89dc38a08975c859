//! Lowering of CASE, NULLIF, GREATEST/LEAST and the string, date/time and numeric functions,
//! typed as Postgres types them (function resolution with implicit casts, UNION/CASE type
//! resolution). Whatever cannot be typed or computed exactly is refused with its reason.

use sqlparser::ast::{CaseWhen, CeilFloorKind, DateTimeField, Expr as AExpr, TrimWhereField};

use super::types::{comparable, text_operand, type_name};
use super::util::{is_untyped, strip_nested};
use super::{unsupported, Lowerer, Typed};
use crate::datetime_unit::{date_field, truncatable, unit};
use crate::error::Unsupported;
use crate::plan::{BinaryOp, Expr, Func};
use crate::value::{SqlType, Value};

/// Position of a type in Postgres' numeric implicit-cast chain.
fn numeric_rank(t: &SqlType) -> Option<u8> {
    Some(match t {
        SqlType::Int2 => 0,
        SqlType::Int4 => 1,
        SqlType::Int8 => 2,
        SqlType::Numeric => 3,
        SqlType::Float4 => 4,
        SqlType::Float8 => 5,
        _ => return None,
    })
}

fn is_int(t: &SqlType) -> bool {
    matches!(t, SqlType::Int2 | SqlType::Int4 | SqlType::Int8)
}

fn is_string(t: &SqlType) -> bool {
    matches!(t, SqlType::Text | SqlType::Varchar | SqlType::Name)
}

/// Postgres' `select_common_type` over the types we have: within the numeric category the
/// type every other one implicitly casts to; among text types the first `text`, or else the
/// first type (`varchar` and `text` cast to each other, so neither wins over the other);
/// otherwise all types must be equal. `name` mixed with other text types is refused (its
/// 63-byte truncation would apply).
pub(super) fn common_type_of(types: &[SqlType], what: &str) -> Result<SqlType, Unsupported> {
    let Some(first) = types.first() else {
        return Ok(SqlType::Text);
    };
    let refuse = |a: &SqlType, b: &SqlType| {
        unsupported(format!(
            "{what} of {} and {} is not supported",
            type_name(a),
            type_name(b)
        ))
    };
    let mut p = first.clone();
    for t in &types[1..] {
        if *t == p {
            continue;
        }
        match (numeric_rank(&p), numeric_rank(t)) {
            (Some(a), Some(b)) => {
                if p != SqlType::Float8 && b > a {
                    p = t.clone();
                }
            }
            _ if is_string(&p) && is_string(t) => {
                if p == SqlType::Name || *t == SqlType::Name {
                    return Err(refuse(&p, t));
                }
                // text is preferred; varchar and text coerce both ways: the first stays.
            }
            _ => return Err(refuse(&p, t)),
        }
    }
    Ok(p)
}

/// `t` converted to `target` by an implicit cast, as Postgres applies one to a function
/// argument or a CASE branch.
pub(super) fn coerce(t: Typed, target: &SqlType, what: &str) -> Result<Expr, Unsupported> {
    if t.ty == *target || (is_string(&t.ty) && matches!(target, SqlType::Text | SqlType::Varchar)) {
        return Ok(t.expr);
    }
    if let Expr::Literal(Value::Null) = t.expr {
        return Ok(t.expr);
    }
    match (numeric_rank(&t.ty), numeric_rank(target)) {
        // Integer widening changes no value.
        (Some(a), Some(b)) if a < b && is_int(target) => Ok(t.expr),
        (Some(a), Some(b)) if a < b => Ok(Expr::Cast {
            expr: Box::new(t.expr),
            ty: target.clone(),
        }),
        _ => Err(unsupported(format!(
            "{what} does not accept {} where {} is expected",
            type_name(&t.ty),
            type_name(target)
        ))),
    }
}

fn func(func: Func, args: Vec<Expr>, ty: SqlType) -> Typed {
    Typed {
        expr: Expr::Func { func, args },
        ty,
    }
}

/// The constant text of a unit argument (`date_trunc('day', ...)`).
fn unit_literal(e: &Expr, what: &str) -> Result<String, Unsupported> {
    match e {
        Expr::Literal(Value::Text(s)) => Ok(s.to_ascii_lowercase()),
        _ => Err(unsupported(format!(
            "{what}() needs a literal unit to be cached"
        ))),
    }
}

impl Lowerer<'_, '_> {
    fn text_arg(&mut self, arg: &AExpr, what: &str) -> Result<Expr, Unsupported> {
        let t = self.expr(arg, Some(&SqlType::Text))?;
        text_operand(&t.ty, &format!("{what}()"))?;
        Ok(t.expr)
    }

    /// An `integer` argument (`int2` widens; `int8` has no implicit cast to it).
    fn int_arg(&mut self, arg: &AExpr, what: &str) -> Result<Expr, Unsupported> {
        let t = self.expr(arg, Some(&SqlType::Int4))?;
        match t.ty {
            SqlType::Int2 | SqlType::Int4 => Ok(t.expr),
            ref other => Err(unsupported(format!(
                "{what}() does not accept {} where integer is expected",
                type_name(other)
            ))),
        }
    }

    /// Lowers `args` to one common type (CASE results, GREATEST/LEAST): typed arguments decide
    /// it, untyped literals then take it (all untyped: text).
    fn common_args(
        &mut self,
        args: &[&AExpr],
        what: &str,
    ) -> Result<(Vec<Expr>, SqlType), Unsupported> {
        let mut typed: Vec<Option<Typed>> = Vec::with_capacity(args.len());
        let mut types = Vec::new();
        for arg in args {
            if is_untyped(arg) {
                typed.push(None);
            } else {
                let t = self.expr(arg, None)?;
                types.push(t.ty.clone());
                typed.push(Some(t));
            }
        }
        let common = common_type_of(&types, what)?;
        let mut out = Vec::with_capacity(args.len());
        for (arg, t) in args.iter().zip(typed) {
            let t = match t {
                Some(t) => t,
                None => self.expr(arg, Some(&common))?,
            };
            out.push(coerce(t, &common, what)?);
        }
        Ok((out, common))
    }

    pub(super) fn case(
        &mut self,
        operand: Option<&AExpr>,
        conditions: &[CaseWhen],
        else_result: Option<&AExpr>,
    ) -> Result<Typed, Unsupported> {
        let subject = match operand {
            Some(o) => Some(self.expr(o, None)?),
            None => None,
        };
        let mut conds = Vec::with_capacity(conditions.len());
        for w in conditions {
            let cond = match &subject {
                Some(x) => {
                    let v = self.expr(&w.condition, Some(&x.ty))?;
                    comparable(&x.ty, &v.ty)?;
                    Expr::Binary {
                        op: BinaryOp::Eq,
                        left: Box::new(x.expr.clone()),
                        right: Box::new(v.expr),
                        ty: SqlType::Bool,
                    }
                }
                None => {
                    let c = self.expr(&w.condition, Some(&SqlType::Bool))?;
                    if c.ty != SqlType::Bool {
                        return Err(unsupported("argument of CASE/WHEN must be boolean"));
                    }
                    c.expr
                }
            };
            conds.push(cond);
        }
        // Postgres resolves the type with the ELSE result first, then the WHEN results.
        let null = AExpr::Value(sqlparser::ast::Value::Null.into());
        let mut results: Vec<&AExpr> = vec![else_result.unwrap_or(&null)];
        results.extend(conditions.iter().map(|w| &w.result));
        let (mut lowered, ty) = self.common_args(&results, "CASE")?;
        let else_expr = lowered.remove(0);
        let mut args = Vec::with_capacity(conds.len() * 2 + 1);
        for (c, r) in conds.into_iter().zip(lowered) {
            args.push(c);
            args.push(r);
        }
        args.push(else_expr);
        Ok(func(Func::Case, args, ty))
    }

    pub(super) fn nullif(&mut self, args: &[&AExpr]) -> Result<Typed, Unsupported> {
        let [a, b] = args else {
            return Err(unsupported("nullif() takes two arguments"));
        };
        let (l, r) = self.operands(a, b, None)?;
        comparable(&l.ty, &r.ty)?;
        // The result is the left operand of the `=` Postgres picks: cross-type integer and
        // float operators keep it, integer = numeric promotes it to numeric, text types
        // compare as text.
        use SqlType as S;
        let ty = match (&l.ty, &r.ty) {
            (x, y) if x == y => x.clone(),
            (x, y) if is_int(x) && is_int(y) => x.clone(),
            (S::Float4 | S::Float8, S::Float4 | S::Float8) => l.ty.clone(),
            (x, S::Numeric) if is_int(x) => S::Numeric,
            (S::Numeric, y) if is_int(y) => S::Numeric,
            (x, y) if is_string(x) && is_string(y) && *x != S::Name && *y != S::Name => S::Text,
            (x, y) => {
                return Err(unsupported(format!(
                    "nullif() of {} and {} is not supported",
                    type_name(x),
                    type_name(y)
                )))
            }
        };
        let ty = if l.ty == S::Varchar { S::Text } else { ty };
        let left = coerce(l, &ty, "nullif()")?;
        Ok(func(Func::NullIf, vec![left, r.expr], ty))
    }

    pub(super) fn substring(
        &mut self,
        s: &AExpr,
        from: Option<&AExpr>,
        count: Option<&AExpr>,
        name: &str,
    ) -> Result<Typed, Unsupported> {
        // substring(text FROM text) is the regular-expression form.
        let stringy = |a: &&AExpr| {
            is_untyped(a)
                && !matches!(strip_nested(a), AExpr::Value(v) if v.value == sqlparser::ast::Value::Null)
        };
        if [from, count].iter().flatten().any(stringy) {
            return Err(unsupported(
                "substring() with an untyped argument (the regular-expression form) is not supported",
            ));
        }
        let mut args = vec![self.text_arg(s, name)?];
        args.push(match from {
            Some(f) => self.int_arg(f, name)?,
            None => Expr::Literal(Value::Int(1)),
        });
        if let Some(c) = count {
            args.push(self.int_arg(c, name)?);
        }
        Ok(func(Func::Substr, args, SqlType::Text))
    }

    pub(super) fn trim(
        &mut self,
        s: &AExpr,
        where_: Option<&TrimWhereField>,
        what: Option<&AExpr>,
    ) -> Result<Typed, Unsupported> {
        let f = match where_ {
            None | Some(TrimWhereField::Both) => Func::Btrim,
            Some(TrimWhereField::Leading) => Func::Ltrim,
            Some(TrimWhereField::Trailing) => Func::Rtrim,
        };
        let mut args = vec![self.text_arg(s, "trim")?];
        if let Some(w) = what {
            args.push(self.text_arg(w, "trim")?);
        }
        Ok(func(f, args, SqlType::Text))
    }

    pub(super) fn extract(
        &mut self,
        field: &DateTimeField,
        e: &AExpr,
    ) -> Result<Typed, Unsupported> {
        let name = field.to_string().to_ascii_lowercase();
        let u = unit(&name)
            .ok_or_else(|| unsupported(format!("EXTRACT({name} FROM ...) is not supported")))?;
        let t = self.expr(e, None)?;
        match t.ty {
            SqlType::Timestamp => {}
            SqlType::Date if date_field(u) => {}
            SqlType::Date => {
                return Err(unsupported(format!(
                    "unit \"{name}\" not supported for type date"
                )))
            }
            SqlType::TimestampTz => {
                return Err(unsupported(
                    "EXTRACT from timestamp with time zone depends on the session's TimeZone",
                ))
            }
            ref other => {
                return Err(unsupported(format!(
                    "EXTRACT from {} values is not supported",
                    type_name(other)
                )))
            }
        }
        Ok(func(
            Func::Extract,
            vec![Expr::Literal(Value::Text(name)), t.expr],
            SqlType::Numeric,
        ))
    }

    /// `round`/`trunc` (one or two arguments), `ceil`/`floor`.
    pub(super) fn rounding(
        &mut self,
        f: Func,
        args: &[&AExpr],
        name: &str,
    ) -> Result<Typed, Unsupported> {
        let (x, digits) = match args {
            [x] => (x, None),
            [x, d] if matches!(f, Func::Round | Func::Trunc) => (x, Some(d)),
            _ => return Err(unsupported(format!("{name}() takes one or two arguments"))),
        };
        let t = self.expr(x, Some(&SqlType::Numeric))?;
        if let Some(d) = digits {
            let d = self.int_arg(d, name)?;
            let x = coerce(t, &SqlType::Numeric, &format!("{name}(x, n)"))?;
            return Ok(func(f, vec![x, d], SqlType::Numeric));
        }
        let ty = match t.ty {
            SqlType::Numeric => SqlType::Numeric,
            _ => SqlType::Float8,
        };
        let x = coerce(t, &ty, &format!("{name}()"))?;
        Ok(func(f, vec![x], ty))
    }

    pub(super) fn ceil_floor(
        &mut self,
        e: &AExpr,
        field: &CeilFloorKind,
        f: Func,
    ) -> Result<Typed, Unsupported> {
        let name = if f == Func::Ceil { "ceil" } else { "floor" };
        match field {
            CeilFloorKind::DateTimeField(DateTimeField::NoDateTime) => self.rounding(f, &[e], name),
            _ => Err(unsupported(format!(
                "{name}() with a scale or unit is not supported"
            ))),
        }
    }

    /// Functions added beyond COALESCE/ABS/LENGTH; `None` when the name is not one of them.
    pub(super) fn function_more(
        &mut self,
        name: &str,
        args: &[&AExpr],
    ) -> Option<Result<Typed, Unsupported>> {
        self.function_more_inner(name, args).transpose()
    }

    fn function_more_inner(
        &mut self,
        name: &str,
        args: &[&AExpr],
    ) -> Result<Option<Typed>, Unsupported> {
        use SqlType as S;
        let n = args.len();
        let arity = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(unsupported(format!(
                    "function {name}() with {n} arguments is not supported"
                )))
            }
        };
        Ok(Some(match name {
            "nullif" => self.nullif(args)?,
            "greatest" | "least" => {
                arity(n >= 1)?;
                let (lowered, ty) = self.common_args(args, &format!("{name}()"))?;
                super::types::family(&ty)?;
                let f = if name == "greatest" { Func::Greatest } else { Func::Least };
                func(f, lowered, ty)
            }
            "lower" | "upper" | "reverse" | "octet_length" => {
                arity(n == 1)?;
                let a = self.text_arg(args[0], name)?;
                let (f, ty) = match name {
                    "lower" => (Func::Lower, S::Text),
                    "upper" => (Func::Upper, S::Text),
                    "reverse" => (Func::Reverse, S::Text),
                    _ => (Func::OctetLength, S::Int4),
                };
                func(f, vec![a], ty)
            }
            "substr" | "substring" => {
                arity(n == 2 || n == 3)?;
                self.substring(args[0], Some(args[1]), args.get(2).copied(), name)?
            }
            "left" | "right" | "repeat" => {
                arity(n == 2)?;
                let s = self.text_arg(args[0], name)?;
                let k = self.int_arg(args[1], name)?;
                let f = match name {
                    "left" => Func::Left,
                    "right" => Func::Right,
                    _ => Func::Repeat,
                };
                func(f, vec![s, k], S::Text)
            }
            "btrim" | "ltrim" | "rtrim" => {
                arity(n == 1 || n == 2)?;
                let mut a = vec![self.text_arg(args[0], name)?];
                if n == 2 {
                    a.push(self.text_arg(args[1], name)?);
                }
                let f = match name {
                    "btrim" => Func::Btrim,
                    "ltrim" => Func::Ltrim,
                    _ => Func::Rtrim,
                };
                func(f, a, S::Text)
            }
            "replace" | "strpos" | "starts_with" => {
                arity(if name == "replace" { n == 3 } else { n == 2 })?;
                let a = args
                    .iter()
                    .map(|x| self.text_arg(x, name))
                    .collect::<Result<Vec<_>, _>>()?;
                let (f, ty) = match name {
                    "replace" => (Func::Replace, S::Text),
                    "strpos" => (Func::Strpos, S::Int4),
                    _ => (Func::StartsWith, S::Bool),
                };
                func(f, a, ty)
            }
            "lpad" | "rpad" => {
                arity(n == 2 || n == 3)?;
                let mut a = vec![self.text_arg(args[0], name)?, self.int_arg(args[1], name)?];
                if n == 3 {
                    a.push(self.text_arg(args[2], name)?);
                }
                func(if name == "lpad" { Func::Lpad } else { Func::Rpad }, a, S::Text)
            }
            "split_part" => {
                arity(n == 3)?;
                let a = vec![
                    self.text_arg(args[0], name)?,
                    self.text_arg(args[1], name)?,
                    self.int_arg(args[2], name)?,
                ];
                func(Func::SplitPart, a, S::Text)
            }
            "concat" | "concat_ws" => {
                arity(n >= 1)?;
                let mut a = Vec::with_capacity(n);
                for (i, x) in args.iter().enumerate() {
                    if i == 0 && name == "concat_ws" {
                        a.push(self.text_arg(x, name)?);
                        continue;
                    }
                    let t = self.expr(x, Some(&S::Text))?;
                    match t.ty {
                        S::Text | S::Varchar | S::Name | S::Int2 | S::Int4 | S::Int8 | S::Numeric
                        | S::Bool => a.push(t.expr),
                        ref other => {
                            return Err(unsupported(format!(
                                "{name}() of {} values is not supported (their text form is not reproduced)",
                                type_name(other)
                            )))
                        }
                    }
                }
                func(if name == "concat" { Func::Concat } else { Func::ConcatWs }, a, S::Text)
            }
            "date_trunc" => {
                arity(n == 2)?;
                let u = self.text_arg(args[0], name)?;
                let uname = unit_literal(&u, name)?;
                if !unit(&uname).is_some_and(truncatable) {
                    return Err(unsupported(format!(
                        "date_trunc() unit \"{uname}\" is not supported"
                    )));
                }
                if is_untyped(args[1]) {
                    return Err(unsupported(
                        "date_trunc() of an untyped literal resolves to timestamp with time zone",
                    ));
                }
                let t = self.expr(args[1], None)?;
                match t.ty {
                    S::Timestamp => func(Func::DateTrunc, vec![u, t.expr], S::Timestamp),
                    S::TimestampTz => {
                        return Err(unsupported(
                            "date_trunc() on timestamp with time zone depends on the session's TimeZone",
                        ))
                    }
                    S::Date => {
                        return Err(unsupported(
                            "date_trunc() on date yields timestamp with time zone (session TimeZone)",
                        ))
                    }
                    ref other => {
                        return Err(unsupported(format!(
                            "date_trunc() on {} values is not supported",
                            type_name(other)
                        )))
                    }
                }
            }
            "date_part" => {
                arity(n == 2)?;
                let u = self.text_arg(args[0], name)?;
                let uname = unit_literal(&u, name)?;
                if unit(&uname).is_none() {
                    return Err(unsupported(format!(
                        "date_part() unit \"{uname}\" is not supported"
                    )));
                }
                if is_untyped(args[1]) {
                    return Err(unsupported("date_part() of an untyped literal is ambiguous"));
                }
                let t = self.expr(args[1], None)?;
                match t.ty {
                    S::Timestamp | S::Date => func(Func::DatePart, vec![u, t.expr], S::Float8),
                    S::TimestampTz => {
                        return Err(unsupported(
                            "date_part() on timestamp with time zone depends on the session's TimeZone",
                        ))
                    }
                    ref other => {
                        return Err(unsupported(format!(
                            "date_part() on {} values is not supported",
                            type_name(other)
                        )))
                    }
                }
            }
            "round" => self.rounding(Func::Round, args, name)?,
            "trunc" => self.rounding(Func::Trunc, args, name)?,
            "ceil" | "ceiling" => self.rounding(Func::Ceil, args, name)?,
            "floor" => self.rounding(Func::Floor, args, name)?,
            "mod" => {
                arity(n == 2)?;
                let (l, r) = self.operands(args[0], args[1], Some(&S::Int4))?;
                let ty = match (&l.ty, &r.ty) {
                    (a, b) if is_int(a) && is_int(b) => common_type_of(&[a.clone(), b.clone()], "mod()")?,
                    (a, b) if (is_int(a) || *a == S::Numeric) && (is_int(b) || *b == S::Numeric) => {
                        S::Numeric
                    }
                    (a, b) => {
                        return Err(unsupported(format!(
                            "mod() of {} and {} is not supported",
                            type_name(a),
                            type_name(b)
                        )))
                    }
                };
                let widen = |t: Typed| -> Result<Expr, Unsupported> {
                    if t.ty == ty {
                        Ok(t.expr)
                    } else {
                        Ok(Expr::Cast {
                            expr: Box::new(t.expr),
                            ty: ty.clone(),
                        })
                    }
                };
                let (l, r) = (widen(l)?, widen(r)?);
                func(Func::Mod, vec![l, r], ty)
            }
            "to_char" | "to_date" | "to_timestamp" | "to_number" => {
                return Err(unsupported(format!(
                    "function {name}() depends on the session's locale and DateStyle settings"
                )))
            }
            "initcap" => {
                return Err(unsupported(
                    "function initcap() depends on the database's locale",
                ))
            }
            "age" | "timezone" | "date_bin" | "make_interval" | "justify_days" => {
                return Err(unsupported(format!(
                    "function {name}() needs intervals or the session's TimeZone, which are not supported"
                )))
            }
            _ => return Ok(None),
        }))
    }
}
