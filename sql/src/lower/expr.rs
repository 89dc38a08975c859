//! Typing and lowering of scalar expressions over the current row (see [`super::scope`]).

use sqlparser::ast::{
    self as ast, BinaryOperator, CastKind, DataType, Expr as AExpr, Ident, UnaryOperator,
    Value as AstValue,
};

use super::types::{
    arithmetic_type, common_type, comparable, sql_type_of, text_operand, type_name,
};
use super::util::{
    function_args, function_name, is_untyped, strip_nested, unsupported_expr, AGGREGATES,
};
use super::{placeholder_slot, unsupported, Lowerer, ParamMode, Typed};
use crate::error::Unsupported;
use crate::normalize::{literal_value, text_value, Literal, ParamSource};
use crate::plan::{BinaryOp, Expr, Func, UnaryOp};
use crate::value::{Key, SqlType, Value};

impl Lowerer<'_, '_> {
    /// Lowers an expression over the current row. `hint` types untyped literals and
    /// parameters.
    pub(super) fn expr(&mut self, e: &AExpr, hint: Option<&SqlType>) -> Result<Typed, Unsupported> {
        if let Some(t) = self.grouped(e, hint)? {
            return Ok(t);
        }
        match e {
            AExpr::Nested(inner) => self.expr(inner, hint),
            AExpr::Identifier(i) => self.column_ref(std::slice::from_ref(i)),
            AExpr::CompoundIdentifier(parts) => self.column_ref(parts),
            AExpr::Value(v) => self.value(&v.value, hint),
            AExpr::TypedString(ts) => {
                let ty = sql_type_of(&ts.data_type)?;
                match &ts.value.value {
                    AstValue::SingleQuotedString(s) => {
                        self.constant(&ty, &Literal::String(s.clone()))
                    }
                    other => Err(unsupported(format!(
                        "typed literal {other} is not supported"
                    ))),
                }
            }
            AExpr::BinaryOp { left, op, right } => self.binary(left, op, right, hint),
            AExpr::UnaryOp { op, expr } => self.unary(op, expr, hint),
            AExpr::IsNull(inner) | AExpr::IsNotNull(inner) => {
                let t = self.expr(inner, None)?;
                Ok(Typed {
                    expr: Expr::IsNull {
                        expr: Box::new(t.expr),
                        negated: matches!(e, AExpr::IsNotNull(_)),
                    },
                    ty: SqlType::Bool,
                })
            }
            AExpr::InList {
                expr,
                list,
                negated,
            } => {
                let t = self.expr(expr, None)?;
                let mut items = Vec::with_capacity(list.len());
                for item in list {
                    // A collapsed literal list evaluated below the reader: each of its
                    // values is a literal of the plan.
                    if let AExpr::Value(sqlparser::ast::ValueWithSpan {
                        value: AstValue::Placeholder(p),
                        ..
                    }) = item
                    {
                        if let ParamMode::Fixed(place) = self.mode {
                            let (slot, ty) = self.typed_slot(p, Some(&t.ty))?;
                            items.extend(self.fixed_values(slot, &ty, place, true)?);
                            continue;
                        }
                    }
                    let it = self.expr(item, Some(&t.ty))?;
                    comparable(&t.ty, &it.ty)?;
                    items.push(it.expr);
                }
                Ok(bool_typed(Expr::InList {
                    expr: Box::new(t.expr),
                    list: items,
                    negated: *negated,
                }))
            }
            AExpr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let t = self.expr(expr, None)?;
                let lo = self.expr(low, Some(&t.ty))?;
                let hi = self.expr(high, Some(&t.ty))?;
                comparable(&t.ty, &lo.ty)?;
                comparable(&t.ty, &hi.ty)?;
                Ok(bool_typed(Expr::Between {
                    expr: Box::new(t.expr),
                    low: Box::new(lo.expr),
                    high: Box::new(hi.expr),
                    negated: *negated,
                }))
            }
            AExpr::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            }
            | AExpr::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                if *any {
                    return Err(unsupported("LIKE ANY is not supported"));
                }
                if escape_char.is_some() {
                    return Err(unsupported("LIKE ... ESCAPE is not supported yet"));
                }
                let t = self.expr(expr, Some(&SqlType::Text))?;
                let p = self.expr(pattern, Some(&SqlType::Text))?;
                text_operand(&t.ty, "LIKE")?;
                text_operand(&p.ty, "LIKE")?;
                Ok(bool_typed(Expr::Like {
                    expr: Box::new(t.expr),
                    pattern: Box::new(p.expr),
                    negated: *negated,
                    case_insensitive: matches!(e, AExpr::ILike { .. }),
                }))
            }
            AExpr::Function(f) => self.function(f),
            AExpr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => self.case(operand.as_deref(), conditions, else_result.as_deref()),
            AExpr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => self.substring(
                expr,
                substring_from.as_deref(),
                substring_for.as_deref(),
                "substring",
            ),
            AExpr::Trim {
                expr,
                trim_where,
                trim_what,
                trim_characters: None,
            } => self.trim(expr, trim_where.as_ref(), trim_what.as_deref()),
            AExpr::Position { expr: sub, r#in } => {
                let s = self.expr(r#in, Some(&SqlType::Text))?;
                let p = self.expr(sub, Some(&SqlType::Text))?;
                text_operand(&s.ty, "position()")?;
                text_operand(&p.ty, "position()")?;
                Ok(Typed {
                    expr: Expr::Func {
                        func: Func::Strpos,
                        args: vec![s.expr, p.expr],
                    },
                    ty: SqlType::Int4,
                })
            }
            AExpr::Extract { field, expr, .. } => self.extract(field, expr),
            AExpr::Ceil { expr, field } => self.ceil_floor(expr, field, Func::Ceil),
            AExpr::Floor { expr, field } => self.ceil_floor(expr, field, Func::Floor),
            AExpr::Cast {
                kind,
                expr,
                data_type,
                format,
            } => {
                if !matches!(kind, CastKind::Cast | CastKind::DoubleColon) || format.is_some() {
                    return Err(unsupported(format!("{kind:?} casts are not supported")));
                }
                self.cast(expr, data_type)
            }
            other => Err(unsupported_expr(other)),
        }
    }

    pub(super) fn column_ref(&mut self, parts: &[Ident]) -> Result<Typed, Unsupported> {
        let col = self.scope.column(parts)?;
        Ok(Typed {
            expr: Expr::Column(col),
            ty: self.scope.types[col].clone(),
        })
    }

    pub(super) fn value(
        &mut self,
        v: &AstValue,
        hint: Option<&SqlType>,
    ) -> Result<Typed, Unsupported> {
        match v {
            AstValue::Placeholder(p) => self.param(p, hint),
            AstValue::Null => Ok(Typed {
                expr: Expr::Literal(Value::Null),
                ty: hint.cloned().unwrap_or(SqlType::Text),
            }),
            AstValue::Number(n, _) => number_literal(n),
            AstValue::Boolean(b) => Ok(Typed {
                expr: Expr::Literal(Value::Bool(*b)),
                ty: SqlType::Bool,
            }),
            AstValue::SingleQuotedString(s)
            | AstValue::EscapedStringLiteral(s)
            | AstValue::DoubleQuotedString(s) => {
                self.constant(hint.unwrap_or(&SqlType::Text), &Literal::String(s.clone()))
            }
            AstValue::DollarQuotedString(d) => self.constant(
                hint.unwrap_or(&SqlType::Text),
                &Literal::String(d.value.clone()),
            ),
            other => Err(unsupported(format!("literal {other} is not supported"))),
        }
    }

    /// A literal converted to `ty`.
    pub(super) fn constant(&mut self, ty: &SqlType, lit: &Literal) -> Result<Typed, Unsupported> {
        let v = literal_value(lit, ty)
            .map_err(|e| unsupported(format!("literal cannot be used here: {e}")))?;
        Ok(Typed {
            expr: Expr::Literal(v),
            ty: ty.clone(),
        })
    }

    pub(super) fn param(&mut self, p: &str, hint: Option<&SqlType>) -> Result<Typed, Unsupported> {
        let (slot, ty) = self.typed_slot(p, hint)?;
        match self.mode {
            ParamMode::Fixed(place) => {
                let value = self
                    .fixed_values(slot, &ty, place, false)?
                    .pop()
                    .expect("one value unless a list is allowed");
                Ok(Typed { expr: value, ty })
            }
            _ => Ok(Typed {
                expr: Expr::Param(slot),
                ty,
            }),
        }
    }

    /// Whether `e` is a placeholder whose slot holds several values (a collapsed `IN` list).
    fn is_value_list(&self, e: &AExpr) -> bool {
        let AExpr::Value(sqlparser::ast::ValueWithSpan {
            value: AstValue::Placeholder(p),
            ..
        }) = e
        else {
            return false;
        };
        placeholder_slot(p)
            .and_then(|n| self.g.sources.get(n - 1))
            .is_some_and(|s| matches!(s, ParamSource::List(items) if items.len() > 1))
    }

    /// The 0-based slot of placeholder `p`, typed by `hint` (refused where parameters are, or
    /// where its type is unknown or disagrees with an earlier use).
    fn typed_slot(
        &mut self,
        p: &str,
        hint: Option<&SqlType>,
    ) -> Result<(usize, SqlType), Unsupported> {
        let n = placeholder_slot(p)
            .ok_or_else(|| unsupported(format!("placeholder {p} is not supported")))?;
        let Some(ty) = hint else {
            return Err(unsupported(format!(
                "could not determine the type of parameter ${n}"
            )));
        };
        if let ParamMode::Refuse(reason) = self.mode {
            return Err(unsupported(reason));
        }
        let Some(slot) = self.g.param_types.get_mut(n - 1) else {
            return Err(unsupported(format!("parameter ${n} is out of range")));
        };
        match slot {
            Some(existing) if existing != ty => {
                return Err(unsupported(format!(
                    "parameter ${n} is used as both {} and {}",
                    type_name(existing),
                    type_name(ty)
                )))
            }
            _ => *slot = Some(ty.clone()),
        }
        Ok((n - 1, ty.clone()))
    }

    /// A slot evaluated below the reader: the literal(s) the query was normalized from,
    /// which the plan then only serves (see [`crate::plan::CachePlan::fixed_params`]). A
    /// collapsed `IN` list of several values is accepted only where `list` (the slot is a
    /// whole `IN` list), giving one literal per value.
    fn fixed_values(
        &mut self,
        slot: usize,
        ty: &SqlType,
        place: &str,
        list: bool,
    ) -> Result<Vec<Expr>, Unsupported> {
        let sources: Vec<&ParamSource> = match self.g.sources.get(slot) {
            Some(ParamSource::List(items)) if items.len() == 1 || list => items.iter().collect(),
            Some(ParamSource::List(_)) => {
                return Err(unsupported(format!("an IN list {place} cannot be cached")))
            }
            Some(other) => vec![other],
            None => Vec::new(),
        };
        let mut values = Vec::with_capacity(sources.len());
        for source in &sources {
            match source {
                ParamSource::Literal(lit) => values.push(
                    literal_value(lit, ty)
                        .map_err(|e| unsupported(format!("literal cannot be used here: {e}")))?,
                ),
                ParamSource::Placeholder(k) => {
                    return Err(unsupported(format!(
                        "parameter ${k} {place} cannot be cached"
                    )))
                }
                ParamSource::List(_) => {
                    return Err(unsupported(format!("an IN list {place} cannot be cached")))
                }
            }
        }
        if values.is_empty() {
            return Err(unsupported(format!(
                "parameter ${} {place} cannot be cached",
                slot + 1
            )));
        }
        if !self.g.fixed.iter().any(|(s, _)| *s == slot) {
            // What a read of this list resolves to (`normalize::resolve_params`): without
            // NULLs and duplicates. The plan keeps the list as written.
            let read = if matches!(self.g.sources.get(slot), Some(ParamSource::List(_))) {
                let mut seen = std::collections::HashSet::new();
                values
                    .iter()
                    .filter(|v| !v.is_null() && seen.insert(Key::from_values([*v])))
                    .cloned()
                    .collect()
            } else {
                values.clone()
            };
            self.g.fixed.push((slot, read));
        }
        Ok(values.into_iter().map(Expr::Literal).collect())
    }

    /// Lowers two operands that must agree on a type: an untyped side (string literal,
    /// NULL, parameter) takes the type of the other side.
    pub(super) fn operands(
        &mut self,
        left: &AExpr,
        right: &AExpr,
        default: Option<&SqlType>,
    ) -> Result<(Typed, Typed), Unsupported> {
        if is_untyped(left) && !is_untyped(right) {
            let r = self.expr(right, None)?;
            let l = self.expr(left, Some(&r.ty))?;
            Ok((l, r))
        } else if is_untyped(left) {
            let l = self.expr(left, default)?;
            let r = self.expr(right, Some(&l.ty))?;
            Ok((l, r))
        } else {
            let l = self.expr(left, None)?;
            let r = self.expr(right, Some(&l.ty))?;
            Ok((l, r))
        }
    }

    pub(super) fn binary(
        &mut self,
        left: &AExpr,
        op: &BinaryOperator,
        right: &AExpr,
        hint: Option<&SqlType>,
    ) -> Result<Typed, Unsupported> {
        use BinaryOperator as B;
        if let (B::Eq, ParamMode::Fixed(_)) = (op, self.mode) {
            // `x = $k` where slot k is a collapsed `IN` list of several literals: below the
            // reader it is that `IN` list.
            for (col, p) in [(left, right), (right, left)] {
                if self.is_value_list(p) {
                    let as_list = AExpr::InList {
                        expr: Box::new(col.clone()),
                        list: vec![p.clone()],
                        negated: false,
                    };
                    return self.expr(&as_list, hint);
                }
            }
        }
        let plan_op = match op {
            B::And => BinaryOp::And,
            B::Or => BinaryOp::Or,
            B::Eq => BinaryOp::Eq,
            B::NotEq => BinaryOp::NotEq,
            B::Lt => BinaryOp::Lt,
            B::LtEq => BinaryOp::LtEq,
            B::Gt => BinaryOp::Gt,
            B::GtEq => BinaryOp::GtEq,
            B::Plus => BinaryOp::Add,
            B::Minus => BinaryOp::Sub,
            B::Multiply => BinaryOp::Mul,
            B::Divide => BinaryOp::Div,
            B::Modulo => BinaryOp::Mod,
            B::StringConcat => BinaryOp::Concat,
            other => {
                return Err(unsupported(format!(
                    "operator {other} is not supported yet"
                )))
            }
        };
        let is_arithmetic = match plan_op {
            BinaryOp::And | BinaryOp::Or => {
                let l = self.expr(left, Some(&SqlType::Bool))?;
                let r = self.expr(right, Some(&SqlType::Bool))?;
                if l.ty != SqlType::Bool || r.ty != SqlType::Bool {
                    return Err(unsupported(format!("operands of {op} must be boolean")));
                }
                return Ok(binary_typed(plan_op, l, r, SqlType::Bool));
            }
            BinaryOp::Concat => {
                let l = self.expr(left, Some(&SqlType::Text))?;
                let r = self.expr(right, Some(&SqlType::Text))?;
                text_operand(&l.ty, "||")?;
                text_operand(&r.ty, "||")?;
                return Ok(binary_typed(plan_op, l, r, SqlType::Text));
            }
            BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Lt
            | BinaryOp::LtEq
            | BinaryOp::Gt
            | BinaryOp::GtEq => false,
            _ => true,
        };
        // Comparisons yield bool: the caller's hint says nothing about their operands.
        let default = if is_arithmetic { hint } else { None };
        let (l, r) = self.operands(left, right, default)?;
        if is_arithmetic {
            if let Some(result) = date_arithmetic_type(plan_op, &l.ty, &r.ty)? {
                return Ok(binary_typed(plan_op, l, r, result));
            }
            let result = arithmetic_type(plan_op, &l.ty, &r.ty)?;
            Ok(binary_typed(plan_op, l, r, result))
        } else {
            comparable(&l.ty, &r.ty)?;
            Ok(binary_typed(plan_op, l, r, SqlType::Bool))
        }
    }

    pub(super) fn unary(
        &mut self,
        op: &UnaryOperator,
        inner: &AExpr,
        hint: Option<&SqlType>,
    ) -> Result<Typed, Unsupported> {
        match op {
            UnaryOperator::Not => {
                let t = self.expr(inner, Some(&SqlType::Bool))?;
                if t.ty != SqlType::Bool {
                    return Err(unsupported("argument of NOT must be boolean"));
                }
                Ok(bool_typed(Expr::Unary {
                    op: UnaryOp::Not,
                    expr: Box::new(t.expr),
                }))
            }
            UnaryOperator::Plus => self.expr(inner, hint),
            UnaryOperator::PGAbs => abs(self.expr(inner, hint)?, "@ on {} values is not supported"),
            UnaryOperator::Minus => {
                let t = self.expr(inner, hint)?;
                match (&t.ty, t.expr) {
                    (_, Expr::Literal(Value::Int(i))) if i != i64::MIN => Ok(Typed {
                        expr: Expr::Literal(Value::Int(-i)),
                        ty: t.ty,
                    }),
                    (SqlType::Numeric, Expr::Literal(Value::Numeric(n))) => Ok(Typed {
                        expr: Expr::Literal(Value::Numeric(negate_decimal(&n))),
                        ty: t.ty,
                    }),
                    (ty, expr) if is_number(ty) => Ok(Typed {
                        expr: Expr::Unary {
                            op: UnaryOp::Neg,
                            expr: Box::new(expr),
                        },
                        ty: t.ty,
                    }),
                    (ty, _) => Err(unsupported(format!(
                        "negation of {} values is not supported yet",
                        type_name(ty)
                    ))),
                }
            }
            other => Err(unsupported(format!(
                "operator {other} is not supported yet"
            ))),
        }
    }

    pub(super) fn function(&mut self, f: &ast::Function) -> Result<Typed, Unsupported> {
        let name = function_name(f)?;
        if f.over.is_some() {
            return Err(unsupported(format!(
                "window functions are not supported yet ({name}() OVER ...)"
            )));
        }
        if AGGREGATES.contains(&name.as_str()) || f.filter.is_some() || !f.within_group.is_empty() {
            return Err(unsupported(self.no_agg));
        }
        if crate::functions::nondeterministic(&name) {
            return Err(unsupported(format!(
                "function {name}() is not deterministic"
            )));
        }
        let args = function_args(f, &name)?;
        match name.as_str() {
            "coalesce" => self.coalesce(&args),
            "abs" => {
                let [arg] = args.as_slice() else {
                    return Err(unsupported("abs() takes one argument"));
                };
                abs(
                    self.expr(arg, None)?,
                    "abs() on {} values is not supported yet",
                )
            }
            "length" | "char_length" | "character_length" => {
                let [arg] = args.as_slice() else {
                    return Err(unsupported(format!("{name}() takes one argument")));
                };
                let t = self.expr(arg, Some(&SqlType::Text))?;
                text_operand(&t.ty, &format!("{name}()"))?;
                Ok(Typed {
                    expr: Expr::Func {
                        func: Func::Length,
                        args: vec![t.expr],
                    },
                    ty: SqlType::Int4,
                })
            }
            _ => self.function_more(&name, &args).unwrap_or_else(|| {
                Err(unsupported(format!(
                    "function {name}() is not supported yet"
                )))
            }),
        }
    }

    pub(super) fn coalesce(&mut self, args: &[&AExpr]) -> Result<Typed, Unsupported> {
        if args.is_empty() {
            return Err(unsupported("coalesce() needs arguments"));
        }
        let mut typed: Vec<Option<Typed>> = Vec::with_capacity(args.len());
        let mut common: Option<SqlType> = None;
        for arg in args {
            if is_untyped(arg) {
                typed.push(None);
                continue;
            }
            let t = self.expr(arg, None)?;
            common = Some(match common {
                None => t.ty.clone(),
                Some(c) => common_type(&c, &t.ty)?,
            });
            typed.push(Some(t));
        }
        let common = common.unwrap_or(SqlType::Text);
        let mut out = Vec::with_capacity(args.len());
        for (arg, t) in args.iter().zip(typed) {
            let t = match t {
                Some(t) => t,
                None => self.expr(arg, Some(&common))?,
            };
            out.push(t.expr);
        }
        Ok(Typed {
            expr: Expr::Func {
                func: Func::Coalesce,
                args: out,
            },
            ty: common,
        })
    }

    pub(super) fn cast(
        &mut self,
        inner: &AExpr,
        data_type: &DataType,
    ) -> Result<Typed, Unsupported> {
        let target = sql_type_of(data_type)?;
        // Constants are converted now, parameters simply take the target type.
        let folded = match strip_nested(inner) {
            AExpr::Value(v) => match &v.value {
                AstValue::Placeholder(p) => Some(self.param(p, Some(&target))?),
                AstValue::Null => Some(Typed {
                    expr: Expr::Literal(Value::Null),
                    ty: target.clone(),
                }),
                AstValue::SingleQuotedString(s) | AstValue::EscapedStringLiteral(s) => {
                    let v = text_value(&target, s)
                        .map_err(|e| unsupported(format!("invalid cast: {e}")))?;
                    Some(Typed {
                        expr: Expr::Literal(v),
                        ty: target.clone(),
                    })
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(t) = folded {
            return Ok(t);
        }
        let t = self.expr(inner, None)?;
        trivial_cast(t, target)
    }
}

/// A cast Larder can evaluate without changing meaning: same type, text to text,
/// integer widening or narrowing (checked for overflow by the dataflow), integer or float
/// to float.
pub(super) fn trivial_cast(t: Typed, target: SqlType) -> Result<Typed, Unsupported> {
    use SqlType as S;
    let is_int = |ty: &SqlType| matches!(ty, S::Int2 | S::Int4 | S::Int8);
    let rank = |ty: &SqlType| match ty {
        S::Int2 => 0,
        S::Int4 => 1,
        _ => 2,
    };
    let elide = t.ty == target
        || (matches!(t.ty, S::Text | S::Varchar | S::Name)
            && matches!(target, S::Text | S::Varchar))
        || (is_int(&t.ty) && is_int(&target) && rank(&t.ty) <= rank(&target));
    if elide {
        return Ok(Typed {
            expr: t.expr,
            ty: target,
        });
    }
    let is_text = |ty: &SqlType| matches!(ty, S::Text | S::Varchar | S::Name);
    let is_float = |ty: &SqlType| matches!(ty, S::Float4 | S::Float8);
    let node = (is_int(&t.ty) && is_int(&target))
        || ((is_int(&t.ty) || is_float(&t.ty) || t.ty == S::Numeric) && is_float(&target))
        || (is_int(&t.ty) && target == S::Numeric)
        || (is_float(&t.ty) && is_int(&target))
        || (t.ty == S::Numeric && is_int(&target))
        || ((is_int(&t.ty) || matches!(t.ty, S::Numeric | S::Bool))
            && matches!(target, S::Text | S::Varchar))
        || (is_text(&t.ty)
            && (is_int(&target)
                || is_float(&target)
                || matches!(target, S::Numeric | S::Bool | S::Date | S::Timestamp)))
        || (t.ty == S::Bool && target == S::Int4)
        || (t.ty == S::Int4 && target == S::Bool)
        || (t.ty == S::Date && target == S::Timestamp)
        || (t.ty == S::Timestamp && target == S::Date);
    if node {
        return Ok(Typed {
            expr: Expr::Cast {
                expr: Box::new(t.expr),
                ty: target.clone(),
            },
            ty: target,
        });
    }
    let why = match (&t.ty, &target) {
        (S::Float4 | S::Float8, S::Text | S::Varchar) => {
            " (float output depends on the session's extra_float_digits)"
        }
        (S::Date | S::Timestamp | S::TimestampTz | S::Time, S::Text | S::Varchar) => {
            " (the text form depends on the session's DateStyle)"
        }
        (_, S::TimestampTz) | (S::TimestampTz, _) => " (depends on the session's TimeZone)",
        (S::Float4 | S::Float8, S::Numeric) => " (not exact)",
        _ => "",
    };
    Err(unsupported(format!(
        "cast from {} to {} is not supported{why}",
        type_name(&t.ty),
        type_name(&target)
    )))
}

/// `date ± integer` (a date) and `date - date` (days, `integer`); `None` when neither side
/// is a date or time. Intervals do not exist here, so timestamp arithmetic is refused.
fn date_arithmetic_type(
    op: BinaryOp,
    a: &SqlType,
    b: &SqlType,
) -> Result<Option<SqlType>, Unsupported> {
    use SqlType as S;
    let int = |t: &SqlType| matches!(t, S::Int2 | S::Int4);
    let temporal = |t: &SqlType| matches!(t, S::Date | S::Time | S::Timestamp | S::TimestampTz);
    if !temporal(a) && !temporal(b) {
        return Ok(None);
    }
    Ok(Some(match (op, a, b) {
        (BinaryOp::Add, S::Date, x) | (BinaryOp::Add, x, S::Date) if int(x) => S::Date,
        (BinaryOp::Sub, S::Date, x) if int(x) => S::Date,
        (BinaryOp::Sub, S::Date, S::Date) => S::Int4,
        _ => {
            return Err(unsupported(format!(
                "arithmetic on {} and {} is not supported (no interval type)",
                type_name(a),
                type_name(b)
            )))
        }
    }))
}

pub(super) fn number_literal(n: &str) -> Result<Typed, Unsupported> {
    if let Ok(i) = n.parse::<i64>() {
        let ty = if i32::try_from(i).is_ok() {
            SqlType::Int4
        } else {
            SqlType::Int8
        };
        return Ok(Typed {
            expr: Expr::Literal(Value::Int(i)),
            ty,
        });
    }
    let v = text_value(&SqlType::Numeric, n)
        .map_err(|_| unsupported(format!("number literal {n} is not supported")))?;
    Ok(Typed {
        expr: Expr::Literal(v),
        ty: SqlType::Numeric,
    })
}

pub(super) fn negate_decimal(n: &str) -> String {
    match n.strip_prefix('-') {
        Some(pos) => pos.to_string(),
        None => format!("-{n}"),
    }
}

pub(super) fn bool_typed(expr: Expr) -> Typed {
    Typed {
        expr,
        ty: SqlType::Bool,
    }
}

pub(super) fn binary_typed(op: BinaryOp, l: Typed, r: Typed, ty: SqlType) -> Typed {
    Typed {
        expr: Expr::Binary {
            op,
            left: Box::new(l.expr),
            right: Box::new(r.expr),
            ty: ty.clone(),
        },
        ty,
    }
}

/// Integer, float and numeric types: what `-`, `abs` and `@` accept.
fn is_number(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::Int2
            | SqlType::Int4
            | SqlType::Int8
            | SqlType::Float4
            | SqlType::Float8
            | SqlType::Numeric
    )
}

/// `abs(t)` (also `@ t`), of the argument's type; `refusal` names the operator, `{}` the type.
fn abs(t: Typed, refusal: &str) -> Result<Typed, Unsupported> {
    if !is_number(&t.ty) {
        return Err(unsupported(refusal.replace("{}", type_name(&t.ty))));
    }
    Ok(Typed {
        expr: Expr::Func {
            func: Func::Abs,
            args: vec![t.expr],
        },
        ty: t.ty,
    })
}
