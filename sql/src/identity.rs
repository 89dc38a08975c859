//! The identity of a cacheable query: one query id for every spelling of the same query.
//!
//! The id is computed over the normalized query (see [`crate::normalize`]) after every relation
//! name is schema-qualified as it resolves for the session (`items` under the default
//! `search_path` and `public.items` are the same query), from its tokens in one canonical
//! spelling ([`canonical_id`]: a quoted name that needs no quotes is written bare, so
//! `"items"` and `items` are the same name once unquoted names are folded; keywords are
//! printed in one case by the parser's printer anyway). The text this produces is only hashed,
//! never run.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_relations, Ident, ObjectName, ObjectNamePart, Query, TableFactor, Visit, Visitor,
};

use crate::normalize::query_id;
use crate::statement::{parse_select, Dialect};

/// Names in FROM that are not relations: the CTEs a query defines anywhere, and unqualified
/// set-returning functions (`generate_series(1, 3)`), which resolve along the function path.
fn cte_names(query: &Query) -> Vec<String> {
    struct Ctes(Vec<String>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                for cte in &with.cte_tables {
                    self.0.push(cte.alias.name.value.clone());
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                args: Some(_),
                ..
            } = tf
            {
                if let [ObjectNamePart::Identifier(i)] = name.0.as_slice() {
                    self.0.push(i.value.clone());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = Ctes(Vec::new());
    let _ = query.visit(&mut v);
    v.0
}

/// Relation names the query leaves unqualified (CTE names aside), unique, in order.
pub fn unqualified_relations(query: &Query) -> Vec<String> {
    let ctes = cte_names(query);
    let mut out: Vec<String> = Vec::new();
    let _ = visit_relations(query, |name: &ObjectName| {
        if let [ObjectNamePart::Identifier(i)] = name.0.as_slice() {
            if !ctes.contains(&i.value) && !out.contains(&i.value) {
                out.push(i.value.clone());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// The query id of `query` once each unqualified relation `n` is read as `schema_of(n)`.
/// `None` when `schema_of` does not know a name.
pub fn resolved_query_id(
    query: &Query,
    schema_of: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    resolved_query_id_of_text(&query.to_string(), schema_of)
}

/// The query id of a normalized text whose relations are all qualified: its tokens with
/// whitespace folded and every identifier in one spelling (a quoted name that needs no quotes
/// is written bare, as the parser folds bare names), hashed. Tokenizing is iterative, so this
/// costs no stack however deep the query nests.
pub fn canonical_id(normalized_text: &str) -> String {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, normalized_text).tokenize() else {
        return query_id(normalized_text);
    };
    let mut out = String::with_capacity(normalized_text.len());
    for t in tokens {
        match t {
            Token::Whitespace(_) => continue,
            Token::Word(w) if w.quote_style == Some('"') => {
                let bare = w
                    .value
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                    && w.value
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if bare {
                    out.push_str(&w.value);
                } else {
                    out.push('"');
                    out.push_str(&w.value.replace('"', "\"\""));
                    out.push('"');
                }
            }
            other => out.push_str(&other.to_string()),
        }
        out.push(' ');
    }
    query_id(&out)
}

/// Qualifies each unqualified relation `n` of `query` (CTE names aside) as `schema_of(n)`, in
/// place; `false` when `schema_of` does not know a name.
pub fn qualify(query: &mut Query, schema_of: &dyn Fn(&str) -> Option<String>) -> bool {
    qualify_quoted(query, schema_of, '"')
}

/// [`qualify`], quoting the schema names with `quote` (MySQL: a backtick).
pub fn qualify_quoted(
    query: &mut Query,
    schema_of: &dyn Fn(&str) -> Option<String>,
    quote: char,
) -> bool {
    let ctes = cte_names(query);
    let mut ok = true;
    let _ = sqlparser::ast::visit_relations_mut(query, |name: &mut ObjectName| {
        if let [ObjectNamePart::Identifier(i)] = name.0.as_slice() {
            if !ctes.contains(&i.value) {
                match schema_of(&i.value) {
                    Some(s) => name
                        .0
                        .insert(0, ObjectNamePart::Identifier(Ident::with_quote(quote, s))),
                    None => ok = false,
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    ok
}

/// [`resolved_query_id`] of a normalized text (as kept by the router), re-parsed.
pub fn resolved_query_id_of_text(
    normalized_text: &str,
    schema_of: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let mut q = parse_select(normalized_text, Dialect::Postgres).ok()?;
    if !qualify(&mut q, schema_of) {
        return None;
    }
    Some(canonical_id(&q.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    fn id(sql: &str, schema: &str) -> String {
        let n = normalize(sql, Dialect::Postgres).unwrap();
        let s = schema.to_string();
        resolved_query_id(&n.query, &|_| Some(s.clone())).unwrap()
    }

    #[test]
    fn every_spelling_of_one_query_has_one_id() {
        let a = id("SELECT id, name FROM items WHERE id = 1", "public");
        assert_eq!(
            a,
            id(
                "select ID, \"name\" from public.items where id = 7",
                "public"
            )
        );
        assert_eq!(
            a,
            id(
                "SELECT \"id\", name FROM \"public\".\"items\" WHERE \"id\" = $1",
                "x"
            )
        );
        assert_ne!(a, id("SELECT id, name FROM items WHERE id = 1", "tenant"));
        assert_ne!(
            a,
            id("SELECT id, name FROM \"Items\" WHERE id = 1", "public")
        );
    }

    #[test]
    fn unqualified_names_skip_ctes_and_qualified_ones() {
        let n = normalize(
            "WITH t AS (SELECT 1) SELECT * FROM t, a JOIN s.b ON true, a",
            Dialect::Postgres,
        )
        .unwrap();
        assert_eq!(unqualified_relations(&n.query), vec!["a".to_string()]);
        assert!(resolved_query_id(&n.query, &|_| None).is_none());
        // Set-returning functions in FROM are not relations.
        let n = normalize(
            "SELECT * FROM generate_series(1, 3) g JOIN a ON a.id = g",
            Dialect::Postgres,
        )
        .unwrap();
        assert_eq!(unqualified_relations(&n.query), vec!["a".to_string()]);
        assert!(resolved_query_id(&n.query, &|_| Some("public".into())).is_some());
    }
}
