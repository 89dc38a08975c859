//! Normalization: one parameterized shape and one stable id per family of queries.
//!
//! A cache serves every literal variant of a query, so `WHERE id = 1`, `WHERE id = $1` and
//! `WHERE id IN (3, 4, 5)` must map to the same cache. Normalization rewrites the query tree:
//!
//! * literals that are operands of predicates (comparisons, `BETWEEN` bounds, `LIKE`
//!   patterns, `IN` list items) become parameter slots; literals elsewhere (the SELECT list,
//!   `ORDER BY` ordinals, `LIMIT`/`OFFSET`, `INTERVAL '…'`, `_utf8'…'`) and `NULL` stay;
//! * a positive `IN` list of literals/placeholders that is a top-level `AND` conjunct of
//!   `WHERE` collapses to a single slot, printed as `x = $k`: it becomes a multi-key lookup.
//!   Only top-level conjuncts collapse, so a slot holding several values always means
//!   "`x` equals any of them" and the query result is the union over those values;
//! * every slot (new ones and the client's own `$n` / `?`) is renumbered `$1..$n` in order
//!   of appearance, and [`ParamSource`] records where each slot's value comes from.
//!
//! The normalized text is the tree printed by `sqlparser`, so whitespace and keyword case do
//! not matter (and on Postgres unquoted identifiers are folded, see
//! [`crate::statement::parse_select`]). The query id hashes that text with FNV-1a 64, which
//! is fixed forever, so ids are stable across processes, restarts and Rust versions.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    JoinConstraint, JoinOperator, Query, SetExpr, Statement, TableFactor, UnaryOperator,
    Value as AstValue, ValueWithSpan, VisitMut, VisitorMut,
};

use crate::error::SqlError;
use crate::statement::{parse_select, parse_statements, Dialect};

mod inspect;
mod params;

pub use inspect::{from_table, may_change_settings, relations};
pub use params::{literal_value, placeholder_slot_type, resolve_params, text_value};

/// A query in its parameterized form.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalized {
    /// `q_` followed by 16 lowercase hex digits of the FNV-1a 64 hash of `text`.
    pub query_id: String,
    /// The normalized SQL, with `$1..$n` placeholders.
    pub text: String,
    /// Where each slot (`$1` is index 0) gets its value from in *this* instance of the query.
    pub params: Vec<ParamSource>,
    /// The normalized tree (what `text` prints), input of [`crate::lower::lower`].
    pub query: Query,
}

/// The source of one parameter slot's value(s).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamSource {
    /// A literal written in the query text.
    Literal(Literal),
    /// The client's own placeholder: `$n` (1-based); MySQL `?` are numbered in order.
    Placeholder(usize),
    /// A collapsed `IN` list: the slot holds several values.
    List(Vec<ParamSource>),
}

/// A literal as written, before its type is known.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    /// Number as written (`42`, `-1.5`, `1e3`).
    Number(String),
    String(String),
}

/// Most values one `IN` list slot may carry after resolution; beyond that the query is not
/// worth answering from a cache.
pub const LIST_VALUES_MAX: usize = 10_000;

/// Parses `sql` as one SELECT and normalizes it.
pub fn normalize(sql: &str, dialect: Dialect) -> Result<Normalized, SqlError> {
    let n = normalize_query(parse_select(sql, dialect)?);
    // A literal the printer does not escape (`X'a\'b'`) gives a text that does not parse back:
    // such a query has no shape (it goes upstream untouched).
    parse_select(&n.text, dialect)?;
    Ok(n)
}

/// Normalizes an already parsed query (see the module documentation).
pub fn normalize_query(mut query: Query) -> Normalized {
    number_question_marks(&mut query);
    let mut marker = Marker::default();
    marker.query(&mut query);
    let mut renumber = Renumber {
        marked: marker.sources,
        params: Vec::new(),
    };
    let _ = query.visit(&mut renumber);
    let _ = query.visit(&mut SeparateMinus);
    let text = query.to_string();
    // One id however the query is spelled (quoting, whitespace); a query that leaves a relation
    // unqualified gets its final id once its names are resolved for a session
    // (`crate::identity`).
    let id = crate::identity::canonical_id(&text);
    Normalized {
        query_id: id,
        text,
        params: renumber.params,
        query,
    }
}

/// `q_` + 16 lowercase hex digits of FNV-1a 64 over the bytes of `normalized_text`.
pub fn query_id(normalized_text: &str) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = normalized_text
        .bytes()
        .fold(OFFSET_BASIS, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    format!("q_{hash:016x}")
}

/// Id and normalized text of any single statement (for listing the shapes that went
/// upstream). SELECTs normalize as in [`normalize`]; other statements have every literal
/// replaced by a placeholder and multi-row `VALUES` cut to one row. `None` when the text
/// does not parse as exactly one statement.
pub fn normalize_any(sql: &str, dialect: Dialect) -> Option<(String, String)> {
    let mut statements = parse_statements(sql, dialect).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let mut statement = statements.pop()?;
    let text = match statement {
        Statement::Query(query) => normalize_query(*query).text,
        _ => {
            let _ = statement.visit(&mut TruncateValues);
            let mut all = AllLiterals { next_slot: 0 };
            let _ = statement.visit(&mut all);
            let _ = statement.visit(&mut SeparateMinus);
            statement.to_string()
        }
    };
    Some((crate::identity::canonical_id(&text), text))
}

/// Rewrites MySQL `?` placeholders to `$n`, numbered in textual order.
fn number_question_marks(query: &mut Query) {
    struct Questions(usize);
    impl VisitorMut for Questions {
        type Break = ();
        fn pre_visit_value(&mut self, v: &mut ValueWithSpan) -> ControlFlow<()> {
            if matches!(&v.value, AstValue::Placeholder(p) if p == "?") {
                self.0 += 1;
                v.value = AstValue::Placeholder(format!("${}", self.0));
            }
            ControlFlow::Continue(())
        }
    }
    let _ = query.visit(&mut Questions(0));
}

/// Prefix of the temporary placeholders the marking pass leaves behind; the renumbering
/// pass replaces every one of them. A control character cannot come from parsed SQL.
const MARK: char = '\u{1}';

/// First pass: replaces parameterizable literals with marks and remembers their sources.
#[derive(Default)]
struct Marker {
    sources: Vec<ParamSource>,
}

impl Marker {
    fn mark(&mut self, source: ParamSource) -> Expr {
        let idx = self.sources.len();
        self.sources.push(source);
        Expr::value(AstValue::Placeholder(format!("{MARK}{idx}")))
    }

    fn query(&mut self, q: &mut Query) {
        if let Some(with) = &mut q.with {
            for cte in &mut with.cte_tables {
                self.query(&mut cte.query);
            }
        }
        self.set_expr(&mut q.body);
    }

    fn set_expr(&mut self, body: &mut SetExpr) {
        match body {
            SetExpr::Select(select) => {
                for twj in &mut select.from {
                    self.table_factor(&mut twj.relation);
                    for join in &mut twj.joins {
                        self.table_factor(&mut join.relation);
                        if let Some(JoinConstraint::On(on)) =
                            join_constraint(&mut join.join_operator)
                        {
                            self.pred(on, false);
                        }
                    }
                }
                if let Some(selection) = &mut select.selection {
                    self.pred(selection, true);
                }
                if let Some(having) = &mut select.having {
                    self.pred(having, false);
                }
            }
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            _ => {}
        }
    }

    fn table_factor(&mut self, tf: &mut TableFactor) {
        if let TableFactor::Derived { subquery, .. } = tf {
            self.query(subquery);
        }
    }

    /// Walks a predicate. `top` is true for top-level `AND` conjuncts of `WHERE`.
    fn pred(&mut self, e: &mut Expr, top: bool) {
        if top {
            // `(a = 1)` and `a = 1` are one shape. Parentheses around an OR (or any operator
            // binding looser than AND) must stay: the printed text has to mean the same query.
            if let Expr::Nested(inner) = e {
                if binds_at_least_as_tight_as_and(inner) {
                    let inner = std::mem::replace(&mut **inner, Expr::value(AstValue::Null));
                    *e = inner;
                    return self.pred(e, true);
                }
            }
        }
        match e {
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And => {
                    self.pred(left, top);
                    self.pred(right, top);
                }
                BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq => {
                    self.operand(left);
                    self.operand(right);
                }
                _ => {
                    self.pred(left, false);
                    self.pred(right, false);
                }
            },
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                self.pred(expr, false);
                if top && !*negated {
                    if let Some(items) = list.iter().map(list_item).collect::<Option<Vec<_>>>() {
                        let slot = self.mark(ParamSource::List(items));
                        let lhs = std::mem::replace(&mut **expr, Expr::value(AstValue::Null));
                        *e = Expr::BinaryOp {
                            left: Box::new(lhs),
                            op: BinaryOperator::Eq,
                            right: Box::new(slot),
                        };
                        return;
                    }
                }
                for item in list {
                    self.operand(item);
                }
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                self.pred(expr, false);
                self.operand(low);
                self.operand(high);
            }
            Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
                self.pred(expr, false);
                self.operand(pattern);
            }
            Expr::InSubquery { expr, subquery, .. } => {
                self.pred(expr, false);
                self.query(subquery);
            }
            Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => self.query(subquery),
            Expr::Nested(inner)
            | Expr::UnaryOp { expr: inner, .. }
            | Expr::IsNull(inner)
            | Expr::IsNotNull(inner)
            | Expr::IsTrue(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner)
            | Expr::Cast { expr: inner, .. } => self.pred(inner, false),
            Expr::Function(f) => {
                if let FunctionArguments::List(list) = &mut f.args {
                    for arg in &mut list.args {
                        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) = arg {
                            self.pred(a, false);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// An operand of a predicate: a literal becomes a slot, anything else is walked.
    fn operand(&mut self, e: &mut Expr) {
        if let Some(lit) = literal_of(e) {
            *e = self.mark(ParamSource::Literal(lit));
            return;
        }
        match e {
            Expr::Cast {
                kind: CastKind::Cast | CastKind::DoubleColon,
                expr,
                ..
            } if literal_of(expr).is_some() => self.operand(expr),
            _ => self.pred(e, false),
        }
    }
}

/// Whether `e` printed without parentheses as an operand of AND parses back the same.
fn binds_at_least_as_tight_as_and(e: &Expr) -> bool {
    match e {
        Expr::BinaryOp { op, .. } => matches!(
            op,
            BinaryOperator::And
                | BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
        ),
        Expr::InList { .. }
        | Expr::Between { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::Nested(_)
        | Expr::Identifier(_)
        | Expr::CompoundIdentifier(_)
        | Expr::Function(_) => true,
        _ => false,
    }
}

fn join_constraint(op: &mut JoinOperator) -> Option<&mut JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c) => Some(c),
        _ => None,
    }
}

/// The literal an operand stands for: plain strings, numbers (with an optional unary
/// minus), booleans and nested literals. `NULL` is left alone: it is no variant of anything.
fn literal_of(e: &Expr) -> Option<Literal> {
    match e {
        Expr::Value(v) => match &v.value {
            AstValue::Number(n, _) => Some(Literal::Number(n.to_string())),
            AstValue::SingleQuotedString(s)
            | AstValue::EscapedStringLiteral(s)
            | AstValue::DoubleQuotedString(s) => Some(Literal::String(s.clone())),
            AstValue::DollarQuotedString(d) => Some(Literal::String(d.value.clone())),
            AstValue::Boolean(b) => Some(Literal::Bool(*b)),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal_of(expr)? {
            Literal::Number(n) if !n.starts_with('-') => Some(Literal::Number(format!("-{n}"))),
            _ => None,
        },
        Expr::Nested(inner) => literal_of(inner),
        _ => None,
    }
}

/// An item of a collapsible `IN` list: a literal (`NULL` included: it matches nothing, and
/// resolution drops it) or the client's `$n`.
fn list_item(e: &Expr) -> Option<ParamSource> {
    if let Some(lit) = literal_of(e) {
        return Some(ParamSource::Literal(lit));
    }
    match e {
        Expr::Value(v) => match &v.value {
            AstValue::Null => Some(ParamSource::Literal(Literal::Null)),
            AstValue::Placeholder(p) => client_placeholder(p).map(ParamSource::Placeholder),
            _ => None,
        },
        _ => None,
    }
}

/// `$n` with `n >= 1`.
fn client_placeholder(p: &str) -> Option<usize> {
    p.strip_prefix('$')?.parse().ok().filter(|n| *n >= 1)
}

/// Second pass: numbers every slot `$1..$n` in visiting (= printing) order.
struct Renumber {
    marked: Vec<ParamSource>,
    params: Vec<ParamSource>,
}

impl VisitorMut for Renumber {
    type Break = ();
    fn pre_visit_value(&mut self, v: &mut ValueWithSpan) -> ControlFlow<()> {
        let AstValue::Placeholder(p) = &v.value else {
            return ControlFlow::Continue(());
        };
        let source = if let Some(idx) = p.strip_prefix(MARK) {
            match idx.parse::<usize>().ok().and_then(|i| self.marked.get(i)) {
                Some(s) => s.clone(),
                None => {
                    debug_assert!(false, "dangling normalization mark {idx}");
                    return ControlFlow::Continue(());
                }
            }
        } else if let Some(n) = client_placeholder(p) {
            ParamSource::Placeholder(n)
        } else {
            // Another placeholder style (`:name`, `@x`): left as written, not a slot.
            return ControlFlow::Continue(());
        };
        self.params.push(source);
        v.value = AstValue::Placeholder(format!("${}", self.params.len()));
        ControlFlow::Continue(())
    }
}

/// `sqlparser` prints a unary minus right against its operand, so `- -x` would print as
/// `--x`: the start of a comment, which makes the normalized text mean something else or not
/// parse at all. Parenthesizes such operands (`-(-x)`) before printing.
struct SeparateMinus;

impl VisitorMut for SeparateMinus {
    type Break = ();
    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } = e
        {
            if expr.to_string().starts_with('-') {
                let operand =
                    std::mem::replace(expr.as_mut(), Expr::Value(AstValue::Null.with_empty_span()));
                **expr = Expr::Nested(Box::new(operand));
            }
        }
        ControlFlow::Continue(())
    }
}

/// Keeps only the first row of `VALUES` lists (multi-row inserts share one shape).
struct TruncateValues;

impl VisitorMut for TruncateValues {
    type Break = ();
    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Values(values) = &mut *q.body {
            values.rows.truncate(1);
        }
        ControlFlow::Continue(())
    }
}

/// Replaces every literal and placeholder with `$n` (for non-SELECT shapes).
struct AllLiterals {
    next_slot: usize,
}

impl VisitorMut for AllLiterals {
    type Break = ();
    fn pre_visit_value(&mut self, v: &mut ValueWithSpan) -> ControlFlow<()> {
        if !matches!(v.value, AstValue::Null) {
            self.next_slot += 1;
            v.value = AstValue::Placeholder(format!("${}", self.next_slot));
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(sql: &str) -> Normalized {
        normalize(sql, Dialect::Postgres).unwrap()
    }

    fn lit_num(n: &str) -> ParamSource {
        ParamSource::Literal(Literal::Number(n.into()))
    }

    #[test]
    fn equality_in_list_and_placeholder_share_a_shape() {
        let a = pg("SELECT * FROM users WHERE id = 1");
        let b = pg("select *   from USERS where ID = $1");
        let c = pg("SELECT * FROM users WHERE id IN (3, 4, 5)");
        let d = pg("SELECT * FROM users WHERE (id IN ($2, 7))");
        assert_eq!(a.text, "SELECT * FROM users WHERE id = $1");
        for n in [&b, &c, &d] {
            assert_eq!(n.text, a.text);
            assert_eq!(n.query_id, a.query_id);
        }
        assert_eq!(a.params, vec![lit_num("1")]);
        assert_eq!(b.params, vec![ParamSource::Placeholder(1)]);
        assert_eq!(
            c.params,
            vec![ParamSource::List(vec![
                lit_num("3"),
                lit_num("4"),
                lit_num("5")
            ])]
        );
        assert_eq!(
            d.params,
            vec![ParamSource::List(vec![
                ParamSource::Placeholder(2),
                lit_num("7")
            ])]
        );
    }

    #[test]
    fn whitespace_comments_and_case_do_not_matter() {
        let a = pg("SELECT id FROM users WHERE id = 1 AND name = 'x'");
        let b = pg("select  ID\n  from users -- trailing\n WHERE /* c */ id=2 and NAME='y';");
        assert_eq!(a.text, b.text);
        assert_eq!(a.query_id, b.query_id);
        assert_ne!(
            a.query_id,
            pg("SELECT \"ID\" FROM users WHERE id = 1 AND name = 'x'").query_id
        );
    }

    #[test]
    fn parentheses_that_matter_are_kept() {
        let a = pg("SELECT * FROM t WHERE x = 1 AND (a = 1 OR b = 2)");
        assert_eq!(
            a.text,
            "SELECT * FROM t WHERE x = $1 AND (a = $2 OR b = $3)"
        );
        assert_ne!(
            a.query_id,
            pg("SELECT * FROM t WHERE x = 1 AND a = 1 OR b = 2").query_id
        );
        let b = pg("SELECT * FROM t WHERE (x = 1) AND ((y IN (1, 2)))");
        assert_eq!(b.text, "SELECT * FROM t WHERE x = $1 AND y = $2");
    }

    #[test]
    fn texts_that_do_not_parse_back_have_no_shape() {
        // Found by the normalize_query fuzz target.
        let sql = "SELECT X'sc\\'aped', 1";
        assert!(normalize(sql, Dialect::Postgres).is_err());
    }

    #[test]
    fn stable_query_id_snapshot() {
        let n = pg("SELECT id, name FROM users WHERE id = 42");
        assert_eq!(n.text, "SELECT id, name FROM users WHERE id = $1");
        // Computed once; must not change without reason (ids are user-visible; stored caches
        // keep their text and get their id again at start). Changed once, when ids became the
        // canonical spelling (`crate::identity`).
        assert_eq!(n.query_id, "q_2260072314fce1df");
        assert_eq!(query_id(""), "q_cbf29ce484222325");
        assert_eq!(query_id("a"), "q_af63dc4c8601ec8c");
    }

    #[test]
    fn literals_outside_predicates_stay() {
        let n = pg("SELECT 1, 'x' AS k, name FROM t WHERE a > 5 AND b BETWEEN 1 AND 9 AND c LIKE 'ab%' \
                    AND d <> 'z' AND ts > now() - INTERVAL '1 day' ORDER BY 1 DESC LIMIT 10 OFFSET 20");
        assert_eq!(
            n.text,
            "SELECT 1, 'x' AS k, name FROM t WHERE a > $1 AND b BETWEEN $2 AND $3 AND c LIKE $4 \
             AND d <> $5 AND ts > now() - INTERVAL '1 day' ORDER BY 1 DESC LIMIT 10 OFFSET 20"
        );
        assert_eq!(
            n.params,
            vec![
                lit_num("5"),
                lit_num("1"),
                lit_num("9"),
                ParamSource::Literal(Literal::String("ab%".into())),
                ParamSource::Literal(Literal::String("z".into())),
            ]
        );
    }

    #[test]
    fn not_in_and_nested_in_are_not_collapsed() {
        let n = pg("SELECT * FROM t WHERE id NOT IN (1, 2)");
        assert_eq!(n.text, "SELECT * FROM t WHERE id NOT IN ($1, $2)");
        assert_ne!(n.query_id, pg("SELECT * FROM t WHERE id = 1").query_id);
        let n = pg("SELECT * FROM t WHERE a = 1 OR b IN (1, 2)");
        assert_eq!(n.text, "SELECT * FROM t WHERE a = $1 OR b IN ($2, $3)");
        let n = pg("SELECT * FROM t WHERE NOT (b IN (1, 2))");
        assert_eq!(n.text, "SELECT * FROM t WHERE NOT (b IN ($1, $2))");
    }

    #[test]
    fn placeholders_renumber_densely_in_order() {
        let n = pg("SELECT * FROM t WHERE a = $2 AND b = 'x' AND c = $1 AND d IN (1, 2)");
        assert_eq!(
            n.text,
            "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3 AND d = $4"
        );
        assert_eq!(
            n.params,
            vec![
                ParamSource::Placeholder(2),
                ParamSource::Literal(Literal::String("x".into())),
                ParamSource::Placeholder(1),
                ParamSource::List(vec![lit_num("1"), lit_num("2")]),
            ]
        );
    }

    #[test]
    fn mysql_question_marks_number_in_order() {
        let n = normalize(
            "SELECT `a` FROM t WHERE b = ? AND c IN (?, ?) AND d = 'q'",
            Dialect::MySql,
        )
        .unwrap();
        assert_eq!(
            n.text,
            "SELECT `a` FROM t WHERE b = $1 AND c = $2 AND d = $3"
        );
        assert_eq!(
            n.params,
            vec![
                ParamSource::Placeholder(1),
                ParamSource::List(vec![
                    ParamSource::Placeholder(2),
                    ParamSource::Placeholder(3)
                ]),
                ParamSource::Literal(Literal::String("q".into())),
            ]
        );
    }

    #[test]
    fn negative_numbers_casts_and_reversed_operands() {
        let n = pg("SELECT * FROM t WHERE a = -5 AND b = '2024-01-01'::date AND 3 < c");
        assert_eq!(
            n.text,
            "SELECT * FROM t WHERE a = $1 AND b = $2::DATE AND $3 < c"
        );
        assert_eq!(n.params[0], lit_num("-5"));
        assert_eq!(
            pg("SELECT * FROM t WHERE a = 5").query_id,
            n_id("SELECT * FROM t WHERE a = -7")
        );
    }

    fn n_id(sql: &str) -> String {
        pg(sql).query_id
    }

    #[test]
    fn null_and_introduced_strings_stay() {
        let n = pg("SELECT * FROM t WHERE a = NULL AND b IS NULL");
        assert_eq!(n.text, "SELECT * FROM t WHERE a = NULL AND b IS NULL");
        assert!(n.params.is_empty());
        let n = normalize("SELECT a FROM t WHERE b = _utf8mb4'x'", Dialect::MySql).unwrap();
        assert!(n.params.is_empty(), "{}", n.text);
    }

    #[test]
    fn subqueries_and_joins_are_parameterized_too() {
        let n = pg("SELECT * FROM a JOIN b ON a.id = b.id AND b.k = 3 WHERE a.x IN (SELECT y FROM c WHERE z = 'q')");
        assert_eq!(
            n.text,
            "SELECT * FROM a JOIN b ON a.id = b.id AND b.k = $1 WHERE a.x IN (SELECT y FROM c WHERE z = $2)"
        );
    }

    #[test]
    fn normalize_any_non_select() {
        let (id1, text) = normalize_any(
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')",
            Dialect::Postgres,
        )
        .unwrap();
        assert_eq!(text, "INSERT INTO t (a, b) VALUES ($1, $2)");
        let (id2, _) =
            normalize_any("insert into t (a, b) values (5, 'z')", Dialect::Postgres).unwrap();
        assert_eq!(id1, id2);
        let (_, text) =
            normalize_any("UPDATE t SET a = 1 WHERE id = 2", Dialect::Postgres).unwrap();
        assert_eq!(text, "UPDATE t SET a = $1 WHERE id = $2");
        let (id, text) =
            normalize_any("select * from t where id in (1,2)", Dialect::Postgres).unwrap();
        assert_eq!(text, "SELECT * FROM t WHERE id = $1");
        assert_eq!(id, n_id("SELECT * FROM t WHERE id = 9"));
        assert!(normalize_any("select 1; select 2", Dialect::Postgres).is_none());
        assert!(normalize_any("not sql at all", Dialect::Postgres).is_none());
    }
}

/// Regression tests for inputs found by the fuzz targets in `sql/tests/fuzz.rs`.
#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    /// Found by `normalize_query`: `- -score` printed as `--score`, a comment, so the
    /// normalized text of a valid query did not parse (or could mean another query).
    #[test]
    fn double_unary_minus_does_not_print_as_a_comment() {
        let sql = "SELECT coalesce(name, 'x') AS n, id % 3, - -score, abs(id) FROM public.items \
                   WHERE tags IS NOT NULL AND data IS NULL OFFSET 2";
        let n = normalize(sql, Dialect::Postgres).unwrap();
        assert!(!n.text.contains("--"), "{}", n.text);
        assert!(n.text.contains("-(-score)"), "{}", n.text);
        let again = normalize(&n.text, Dialect::Postgres).unwrap();
        assert_eq!(again.text, n.text);

        let sql = "SELECT * FROM items WHERE id = - -(-(-(1)))";
        let n = normalize(sql, Dialect::Postgres).unwrap();
        assert!(!n.text.contains("--"), "{}", n.text);
        assert_eq!(normalize(&n.text, Dialect::Postgres).unwrap().text, n.text);

        let (_, text) =
            normalize_any("UPDATE t SET a = - -b WHERE c = - - 1", Dialect::Postgres).unwrap();
        assert!(!text.contains("--"), "{text}");
        assert!(normalize_any(&text, Dialect::Postgres).is_some(), "{text}");
    }
}
