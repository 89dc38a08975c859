//! What a query names and may do, read off its tree: the relations it reads, and whether
//! running it could change session settings.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Query, SetExpr};

/// The relation in the FROM clause of a single-table SELECT, as written: `(schema, name)`.
/// `None` for anything else (joins, subqueries, several tables).
pub fn from_table(query: &Query) -> Option<(Option<String>, String)> {
    use sqlparser::ast::{ObjectNamePart, TableFactor};
    let SetExpr::Select(select) = &*query.body else {
        return None;
    };
    let [twj] = select.from.as_slice() else {
        return None;
    };
    if !twj.joins.is_empty() {
        return None;
    }
    let TableFactor::Table { name, .. } = &twj.relation else {
        return None;
    };
    let mut parts = name.0.iter().map(|p| match p {
        ObjectNamePart::Identifier(i) => Some(i.value.clone()),
        _ => None,
    });
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(n)), None, None) => Some((None, n)),
        (Some(Some(s)), Some(Some(n)), None) => Some((Some(s), n)),
        _ => None,
    }
}

/// Every relation the query names, as `(schema, name)` (CTE names included: callers treat a
/// name that does not resolve as unknown, never as harmless).
pub fn relations(query: &Query) -> Vec<(Option<String>, String)> {
    use sqlparser::ast::{visit_relations, ObjectNamePart};
    let mut out = Vec::new();
    let _ = visit_relations(query, |name| {
        let parts: Vec<Option<String>> = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => Some(i.value.clone()),
                _ => None,
            })
            .collect();
        let rel = match parts.as_slice() {
            [Some(n)] => Some((None, n.clone())),
            [Some(s), Some(n)] => Some((Some(s.clone()), n.clone())),
            [Some(_db), Some(s), Some(n)] => Some((Some(s.clone()), n.clone())),
            _ => None,
        };
        if let Some(rel) = rel {
            if !out.contains(&rel) {
                out.push(rel);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// Functions that cannot change session settings (such as `search_path`): Postgres builtins
/// commonly seen in application queries.
const SETTINGS_SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bit_length",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "cos",
    "count",
    "current_database",
    "current_date",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_timestamp",
    "current_user",
    "currval",
    "date",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "encode",
    "every",
    "exists",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "initcap",
    "json_agg",
    "json_array_length",
    "json_build_object",
    "json_extract_path_text",
    "jsonb_agg",
    "jsonb_array_length",
    "jsonb_build_object",
    "jsonb_extract_path_text",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_timestamp",
    "max",
    "md5",
    "min",
    "mod",
    "nextval",
    "now",
    "nullif",
    "octet_length",
    "pg_backend_pid",
    "pg_current_wal_lsn",
    "pg_postmaster_start_time",
    "pg_sleep",
    "pg_sleep_for",
    "pg_typeof",
    "pi",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "random",
    "rank",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "session_user",
    "sha256",
    "sign",
    "sin",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "txid_current",
    "unnest",
    "upper",
    "version",
];

/// Whether running `query` could change session settings: it calls a function that is not a
/// known builtin (a user function may call `set_config`).
pub fn may_change_settings(query: &Query) -> bool {
    use sqlparser::ast::{ObjectNamePart, Visit, Visitor};
    struct Calls(bool);
    impl Visitor for Calls {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                let parts: Vec<String> = f
                    .name
                    .0
                    .iter()
                    .map(|p| match p {
                        ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
                        _ => String::new(),
                    })
                    .collect();
                let builtin = match parts.as_slice() {
                    [name] => SETTINGS_SAFE_FUNCTIONS.contains(&name.as_str()),
                    [schema, name] => {
                        schema == "pg_catalog" && SETTINGS_SAFE_FUNCTIONS.contains(&name.as_str())
                    }
                    _ => false,
                };
                if !builtin {
                    self.0 = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = Calls(false);
    let _ = query.visit(&mut v);
    v.0
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use crate::statement::{parse_select, Dialect};

    #[test]
    fn user_functions_may_change_settings() {
        let q = |s: &str| parse_select(s, Dialect::Postgres).unwrap();
        assert!(!may_change_settings(&q(
            "SELECT count(*), max(a) FROM t WHERE lower(b) = 'x'"
        )));
        assert!(may_change_settings(&q("SELECT use_b()")));
        assert!(may_change_settings(&q(
            "SELECT set_config('search_path', 'b', false)"
        )));
        assert!(may_change_settings(&q("SELECT public.f(1) FROM t")));
        assert!(!may_change_settings(&q("SELECT pg_catalog.now()")));
    }

    #[test]
    fn relations_lists_every_named_table_once() {
        let q = |s: &str| parse_select(s, Dialect::Postgres).unwrap();
        assert_eq!(
            relations(&q(
                "SELECT * FROM a JOIN s.b ON a.x = b.x WHERE a.y IN (SELECT y FROM a)"
            )),
            vec![
                (None, "a".to_string()),
                (Some("s".to_string()), "b".to_string())
            ]
        );
        assert!(relations(&q("SELECT 1")).is_empty());
    }
}
