//! What keeps a query from being a shallow (TTL) cache: a result kept for a while and served to
//! other sessions must be the result those sessions would get upstream in that while.
//!
//! Four things break that, each refused by default with a reason the user reads, and each
//! allowed by a flag of the server where the user accepts the consequence:
//! - [`Refusal::Nondeterministic`]: a function whose result changes from call to call or with
//!   the clock (`now()`, `random()`, sequences);
//! - [`Refusal::Catalog`]: system catalogs (`pg_catalog`, `information_schema`, `pg_*`), which
//!   describe the session or the server as much as data;
//! - [`Refusal::Session`]: functions that read the session (`current_setting`, `pg_backend_pid`,
//!   `inet_client_addr`, ...): two sessions with one role may get different answers;
//! - [`Refusal::Locking`] (never allowed): `FOR UPDATE`/`FOR SHARE` take row locks, which a
//!   cached answer would not.
//!
//! Transactions are the fourth refusal, decided per read by the router (a read inside a
//! transaction block sees its own snapshot).

use std::ops::ControlFlow;

use sqlparser::ast::{visit_expressions, visit_relations, Expr, ObjectName, Query, SetExpr};

use crate::functions;
use crate::statement::Dialect;

/// Why a query cannot be a shallow cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Nondeterministic(String),
    Catalog(String),
    Session(String),
    Locking,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Nondeterministic(name) => write!(
                f,
                "it calls {name}(), whose result changes from call to call (allow with --shallow-allow nondeterministic)"
            ),
            Refusal::Catalog(name) => write!(
                f,
                "it reads the system catalog {name} (allow with --shallow-allow catalogs)"
            ),
            Refusal::Session(name) => write!(
                f,
                "it calls {name}(), whose result depends on the session (allow with --shallow-allow session)"
            ),
            Refusal::Locking => f.write_str("it locks rows (FOR UPDATE/FOR SHARE)"),
        }
    }
}

/// Schemas whose relations describe the server or the session.
const CATALOG_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "pg_toast"];

/// MySQL's: databases that describe the server, its users and its sessions.
const MYSQL_CATALOG_SCHEMAS: &[&str] =
    &["information_schema", "mysql", "performance_schema", "sys"];

/// Everything that keeps `query` (in `dialect`) from being a shallow cache, in the order
/// found (each function or catalog once).
pub fn refusals(query: &Query, dialect: Dialect) -> Vec<Refusal> {
    let catalogs = match dialect {
        Dialect::Postgres => CATALOG_SCHEMAS,
        Dialect::MySql => MYSQL_CATALOG_SCHEMAS,
    };
    let mut out: Vec<Refusal> = Vec::new();
    let mut push = |r: Refusal| {
        if !out.contains(&r) {
            out.push(r);
        }
    };
    if has_locking(query) {
        push(Refusal::Locking);
    }
    let _ = visit_relations(query, |name: &ObjectName| {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase())
            .collect();
        let catalog = match parts.as_slice() {
            [schema, _] | [_, schema, _] => catalogs.contains(&schema.trim_matches('`')),
            // Unqualified: pg_catalog is searched first, so `pg_class` is the catalog's.
            [one] => dialect == Dialect::Postgres && one.starts_with("pg_"),
            _ => false,
        };
        if catalog {
            push(Refusal::Catalog(parts.join(".")));
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions(query, |e: &Expr| {
        let name = match e {
            Expr::Function(f) => f
                .name
                .0
                .last()
                .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase()),
            // `CURRENT_TIMESTAMP`, `CURRENT_DATE`, `LOCALTIME` without parentheses parse as
            // identifiers in some positions.
            Expr::Identifier(i) if i.quote_style.is_none() => Some(i.value.to_ascii_lowercase()),
            _ => None,
        };
        // MySQL's `@user_variable` and `@@system_variable` belong to the session.
        if let Some(var) = name.as_deref().filter(|n| n.starts_with('@')) {
            push(Refusal::Session(var.to_string()));
            return ControlFlow::<()>::Continue(());
        }
        if let Some(name) = name {
            // Bare keywords (`CURRENT_TIMESTAMP`) are identifiers; other identifiers are
            // columns.
            let callable = matches!(e, Expr::Function(_))
                || name.starts_with("current_")
                || name.starts_with("local")
                || name == "session_user";
            if callable && functions::changes_per_call(&name) {
                push(Refusal::Nondeterministic(name));
            } else if callable && functions::reads_session(&name) {
                push(Refusal::Session(name));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

fn has_locking(query: &Query) -> bool {
    if !query.locks.is_empty() {
        return true;
    }
    match query.body.as_ref() {
        SetExpr::Select(s) => s.into.is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::{parse_select, Dialect};

    fn of(sql: &str) -> Vec<Refusal> {
        refusals(
            &parse_select(sql, Dialect::Postgres).unwrap(),
            Dialect::Postgres,
        )
    }

    fn of_mysql(sql: &str) -> Vec<Refusal> {
        refusals(&parse_select(sql, Dialect::MySql).unwrap(), Dialect::MySql)
    }

    #[test]
    fn mysql_catalogs_and_variables_are_refused() {
        assert_eq!(
            of_mysql("SELECT avg(price) FROM shop.items GROUP BY kind"),
            vec![]
        );
        assert_eq!(
            of_mysql("SELECT * FROM mysql.user"),
            vec![Refusal::Catalog("mysql.user".into())]
        );
        assert_eq!(
            of_mysql("SELECT * FROM performance_schema.threads"),
            vec![Refusal::Catalog("performance_schema.threads".into())]
        );
        assert_eq!(
            of_mysql("SELECT @@sql_mode, @x FROM t"),
            vec![
                Refusal::Session("@@sql_mode".into()),
                Refusal::Session("@x".into())
            ]
        );
        assert_eq!(
            of_mysql("SELECT rand(), uuid() FROM t"),
            vec![
                Refusal::Nondeterministic("rand".into()),
                Refusal::Nondeterministic("uuid".into())
            ]
        );
        assert_eq!(of("SELECT * FROM sys.t"), vec![]);
    }

    #[test]
    fn plain_queries_pass() {
        for sql in [
            "SELECT a, count(*) FROM t JOIN u USING (id) GROUP BY a",
            "SELECT row_number() OVER (ORDER BY a), a FROM t",
            "SELECT lower(name), current_user FROM public.t WHERE id = $1",
            "SELECT * FROM pgbench_accounts",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert_eq!(of(sql), vec![], "{sql}");
        }
    }

    #[test]
    fn each_kind_is_refused_with_its_name() {
        assert_eq!(
            of("SELECT now(), random() FROM t"),
            vec![
                Refusal::Nondeterministic("now".into()),
                Refusal::Nondeterministic("random".into())
            ]
        );
        assert_eq!(
            of("SELECT * FROM t WHERE ts > CURRENT_TIMESTAMP - interval '1 day'"),
            vec![Refusal::Nondeterministic("current_timestamp".into())]
        );
        assert_eq!(
            of("SELECT relname FROM pg_class"),
            vec![Refusal::Catalog("pg_class".into())]
        );
        assert_eq!(
            of("SELECT * FROM information_schema.tables"),
            vec![Refusal::Catalog("information_schema.tables".into())]
        );
        assert_eq!(
            of("SELECT * FROM t WHERE tenant = current_setting('app.tenant')"),
            vec![Refusal::Session("current_setting".into())]
        );
        assert_eq!(of("SELECT * FROM t FOR UPDATE"), vec![Refusal::Locking]);
        let text = Refusal::Nondeterministic("now".into()).to_string();
        assert!(
            text.contains("now()") && text.contains("--shallow-allow"),
            "{text}"
        );
    }
}
