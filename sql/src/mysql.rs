//! MySQL's reading of a query, where it differs from Postgres' and the difference is not the
//! parser's: which database an unqualified name is in, and where NULLs sort.

use std::ops::ControlFlow;

use sqlparser::ast::{OrderByKind, OrderBySort, Query, VisitMut, VisitorMut};

use crate::identity::qualify_quoted;

/// The id of a normalized MySQL query for a session whose current database is `database`:
/// unqualified relations are read in it, and identifiers are compared unquoted (MySQL's
/// quoting never changes what a name means).
pub fn query_id(query: &Query, database: &str) -> String {
    identity(query, database).0
}

/// [`query_id`], and the normalized text with every relation qualified (`$n` placeholders;
/// see [`with_question_marks`]).
pub fn identity(query: &Query, database: &str) -> (String, String) {
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let mut q = query.clone();
    qualify_quoted(&mut q, &|_| Some(database.to_string()), '`');
    let text = q.to_string();
    let Ok(tokens) = Tokenizer::new(&MySqlDialect {}, &text).tokenize() else {
        return (crate::normalize::query_id(&text), text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str("mysql ");
    for t in tokens {
        match t {
            Token::Whitespace(_) => continue,
            Token::Word(w) if w.quote_style == Some('`') => out.push_str(&w.value),
            other => out.push_str(&other.to_string()),
        }
        out.push(' ');
    }
    (crate::normalize::query_id(&out), text)
}

/// A normalized text's `$1..$n` as MySQL's `?`, which number in order of appearance; `None`
/// when they do not appear in that order (or the text does not tokenize).
pub fn with_question_marks(normalized_text: &str) -> Option<String> {
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&MySqlDialect {}, normalized_text)
        .tokenize()
        .ok()?;
    let mut next = 1usize;
    let mut out = String::with_capacity(normalized_text.len());
    for t in tokens {
        // MySQL's tokenizer reads `$1` as a word (`$` may start an identifier).
        let slot = match &t {
            Token::Placeholder(p) => p.strip_prefix('$'),
            Token::Word(w) if w.quote_style.is_none() => w.value.strip_prefix('$'),
            _ => None,
        };
        match slot.map(str::parse::<usize>) {
            Some(Ok(n)) => {
                if n != next {
                    return None;
                }
                next += 1;
                out.push('?');
            }
            _ => out.push_str(&t.to_string()),
        }
    }
    Some(out)
}

/// Whether a `time_zone` value is UTC: an offset of zero (`+00:00`, `-0:00`), or `UTC`.
pub fn is_utc_zone(zone: &str) -> bool {
    let z = zone.trim();
    if z.eq_ignore_ascii_case("UTC") || z.eq_ignore_ascii_case("Etc/UTC") {
        return true;
    }
    let Some(rest) = z.strip_prefix('+').or_else(|| z.strip_prefix('-')) else {
        return false;
    };
    let mut parts = rest.split(':');
    let zero = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b == b'0'));
    zero(parts.next()) && zero(parts.next()) && parts.next().is_none()
}

/// MySQL sorts NULLs first ascending and last descending; the plan follows what the query
/// says, so every ORDER BY key without a NULLS clause gets MySQL's, in every subquery.
pub fn order_nulls_as_mysql(query: &mut Query) {
    struct Nulls;
    impl VisitorMut for Nulls {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            if let Some(order_by) = &mut q.order_by {
                if let OrderByKind::Expressions(exprs) = &mut order_by.kind {
                    for e in exprs {
                        if e.options.nulls_first.is_none() {
                            e.options.nulls_first =
                                Some(!matches!(e.options.sort, Some(OrderBySort::Desc)));
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = query.visit(&mut Nulls);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use crate::statement::Dialect;

    #[test]
    fn mysql_ids_read_names_in_the_current_database() {
        let id = |sql: &str, db: &str| query_id(&normalize(sql, Dialect::MySql).unwrap().query, db);
        let a = id("SELECT id, c FROM sbtest1 WHERE id = 5", "sbtest");
        assert_eq!(
            a,
            id("select `id`, c from `sbtest`.`sbtest1` where id=7", "other")
        );
        assert_eq!(a, id("SELECT id, c FROM sbtest.sbtest1 WHERE id = ?", "x"));
        assert_ne!(a, id("SELECT id, c FROM sbtest1 WHERE id = 5", "other"));
    }

    #[test]
    fn placeholders_become_question_marks() {
        let n = normalize(
            "SELECT a FROM `t` WHERE b = 5 AND c IN (1, 2) LIMIT 3",
            Dialect::MySql,
        )
        .unwrap();
        let (_, text) = identity(&n.query, "db");
        let q = with_question_marks(&text).unwrap();
        assert_eq!(q, "SELECT a FROM `db`.`t` WHERE b = ? AND c = ? LIMIT 3");
        assert_eq!(with_question_marks("SELECT $2, $1"), None);
    }

    #[test]
    fn utc_zones_are_recognized() {
        for z in ["+00:00", "-0:00", "UTC", "utc", "Etc/UTC", " +00:00 "] {
            assert!(is_utc_zone(z), "{z}");
        }
        for z in [
            "+01:00",
            "SYSTEM",
            "Europe/Paris",
            "+00:30",
            "",
            "+",
            "00:00",
        ] {
            assert!(!is_utc_zone(z), "{z}");
        }
    }

    #[test]
    fn nulls_sort_as_in_mysql() {
        let mut q = normalize(
            "SELECT a FROM t ORDER BY a, b DESC, c NULLS LAST",
            Dialect::MySql,
        )
        .unwrap()
        .query;
        order_nulls_as_mysql(&mut q);
        assert_eq!(
            q.to_string(),
            "SELECT a FROM t ORDER BY a NULLS FIRST, b DESC NULLS LAST, c NULLS LAST"
        );
    }
}

/// Whether the query uses `||`, which MySQL reads as OR (unless the session's `sql_mode` has
/// PIPES_AS_CONCAT) and the parser as concatenation, with another precedence: such a query
/// is refused by deep caches rather than computed with the wrong meaning.
pub fn uses_double_pipe(query: &Query) -> bool {
    let found = sqlparser::ast::visit_expressions(query, |e: &sqlparser::ast::Expr| match e {
        sqlparser::ast::Expr::BinaryOp {
            op: sqlparser::ast::BinaryOperator::StringConcat,
            ..
        } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    found.is_break()
}

#[cfg(test)]
mod pipe_tests {
    use super::*;

    #[test]
    fn double_pipes_are_found() {
        let q = |sql: &str| {
            crate::normalize::normalize(sql, crate::statement::Dialect::MySql)
                .unwrap()
                .query
        };
        assert!(uses_double_pipe(&q(
            "SELECT id FROM t WHERE id = 1 || id = 2"
        )));
        assert!(!uses_double_pipe(&q(
            "SELECT id FROM t WHERE id = 1 OR id = 2"
        )));
    }
}
