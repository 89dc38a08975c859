//! Larder's own statements (`CREATE CACHE`, `SHOW CACHES`, `ALTER LARDER`, ...), parsed by a
//! small hand-written scanner: `sqlparser`'s grammar does not know them. The SELECT inside
//! `CREATE CACHE ... FROM <select>` is parsed by [`parse_select`] and its text kept verbatim.

use sqlparser::ast::Query;

use super::scanner::{stmt_err, Scanner};
use super::{parse_select, Dialect};
use crate::error::SqlError;

/// Where `CREATE CACHE` / `EXPLAIN CREATE CACHE` takes its query from.
#[derive(Clone, Debug, PartialEq)]
pub enum CacheSource {
    /// `FROM <select>`: the parsed query and its source text, verbatim (trimmed, without `;`).
    Select { query: Box<Query>, text: String },
    /// `FROM q_0123456789abcdef`: a query id seen earlier (e.g. in `SHOW PROXIED QUERIES`).
    QueryId(String),
}

/// Which kind of cache `CREATE CACHE` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// Plain `CREATE CACHE`: the server's `--cache-mode` decides.
    Default,
    /// `CREATE DEEP CACHE`: incrementally maintained dataflow, fresh with replication.
    Deep,
    /// `CREATE SHALLOW CACHE`: upstream results kept for a TTL and refreshed while read.
    Shallow,
}

/// `POLICY TTL n SECONDS [REFRESH [EVERY] m SECONDS]` of a shallow cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    pub ttl_ms: u64,
    /// How old a result may get before a read refreshes it in the background; `None`: the
    /// server's default (a fraction of the TTL).
    pub refresh_ms: Option<u64>,
}

/// Longest TTL accepted (a day): results older than that are not a cache any more.
pub const TTL_MAX_MS: u64 = 86_400_000;

/// One of Larder's own statements. Names and ids are as written; unquoted names are folded
/// to lower case.
#[derive(Clone, Debug, PartialEq)]
pub enum LarderStatement {
    /// `CREATE [DEEP|SHALLOW] CACHE [ALWAYS] [name] [POLICY TTL n SECONDS [REFRESH [EVERY] m
    /// SECONDS]] FROM ...`
    CreateCache {
        always: bool,
        name: Option<String>,
        source: CacheSource,
        kind: CacheKind,
        /// Given only for shallow caches (a POLICY makes a plain `CREATE CACHE` shallow).
        policy: Option<TtlPolicy>,
    },
    /// `EXPLAIN CREATE CACHE FROM ...`
    ExplainCreateCache { source: CacheSource },
    /// `DROP CACHE <name or query id>`
    DropCache { name: String },
    /// `DROP ALL CACHES`
    DropAllCaches,
    /// `DROP ALL PROXIED QUERIES`
    DropAllProxiedQueries,
    /// `SHOW CACHES [WHERE query_id = '<id>']`
    ShowCaches { query_id: Option<String> },
    /// `SHOW PROXIED [SUPPORTED] QUERIES [WHERE query_id = '<id>'] [LIMIT n]`
    ShowProxiedQueries {
        supported_only: bool,
        query_id: Option<String>,
        limit: Option<u64>,
    },
    /// `EXPLAIN LAST STATEMENT`
    ExplainLastStatement,
    /// `SHOW LARDER STATUS` (also accepted: `SHOW READYSET STATUS`)
    ShowStatus,
    /// `SHOW LARDER TABLES`
    ShowTables,
    /// `SHOW LARDER VERSION`
    ShowVersion,
    /// `ALTER LARDER SET caching = on|off` (also `TO`, `true`/`false`): the emergency switch
    /// that sends every query upstream (off) or lets caches answer again (on).
    SetCaching { on: bool },
}

/// The result columns of Larder's statements: what a Describe announces before a statement
/// runs, and what the server's answer has (one definition for both).
pub mod columns {
    pub const CREATE_CACHE: &[&str] = &["query_id", "name", "query", "cache_type"];
    pub const EXPLAIN_CREATE_CACHE: &[&str] = &["query_id", "query", "supported", "shallow"];
    pub const SHOW_CACHES: &[&str] = &[
        "query_id",
        "name",
        "query",
        "properties",
        "count",
        "memory_bytes",
    ];
    pub const SHOW_PROXIED_QUERIES: &[&str] = &[
        "query_id",
        "query",
        "supported",
        "count",
        "upstream_total_ms",
        "upstream_p50_ms",
        "upstream_p99_ms",
        "rows",
        "estimated_saving_ms",
        "shallow",
    ];
    pub const EXPLAIN_LAST_STATEMENT: &[&str] = &["query_destination", "reason"];
    pub const NAME_VALUE: &[&str] = &["name", "value"];
    pub const SHOW_TABLES: &[&str] = &[
        "table",
        "status",
        "description",
        "rows_copied",
        "rows_estimated",
        "percent",
        "eta_seconds",
    ];
}

impl LarderStatement {
    /// See [`columns`]; empty for statements that return no rows.
    pub fn result_columns(&self) -> &'static [&'static str] {
        match self {
            LarderStatement::CreateCache { .. } => columns::CREATE_CACHE,
            LarderStatement::ExplainCreateCache { .. } => columns::EXPLAIN_CREATE_CACHE,
            LarderStatement::ShowCaches { .. } => columns::SHOW_CACHES,
            LarderStatement::ShowProxiedQueries { .. } => columns::SHOW_PROXIED_QUERIES,
            LarderStatement::ExplainLastStatement => columns::EXPLAIN_LAST_STATEMENT,
            LarderStatement::ShowStatus | LarderStatement::ShowVersion => columns::NAME_VALUE,
            LarderStatement::ShowTables => columns::SHOW_TABLES,
            LarderStatement::DropCache { .. }
            | LarderStatement::SetCaching { .. }
            | LarderStatement::DropAllCaches
            | LarderStatement::DropAllProxiedQueries => &[],
        }
    }
}

/// Recognizes Larder's own statements. Returns `None` (after looking at two words at most)
/// when `sql` is not one, `Some(Err)` when it is one but malformed.
pub fn parse_larder_statement(
    sql: &str,
    dialect: Dialect,
) -> Option<Result<LarderStatement, SqlError>> {
    let mut sc = Scanner::new(sql);
    let first = sc.word()?;
    let second = sc.word()?;
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let ours = match () {
        _ if eq(first, "create") => {
            eq(second, "cache")
                || ((eq(second, "shallow") || eq(second, "deep")) && sc.clone().keyword("cache"))
        }
        _ if eq(first, "explain") => {
            eq(second, "last") || (eq(second, "create") && sc.clone().keyword("cache"))
        }
        _ if eq(first, "drop") => {
            eq(second, "cache")
                || (eq(second, "all")
                    && (sc.clone().keyword("caches") || sc.clone().keyword("proxied")))
        }
        _ if eq(first, "show") => ["caches", "proxied", "larder", "readyset"]
            .iter()
            .any(|k| eq(second, k)),
        _ if eq(first, "alter") => eq(second, "larder"),
        _ => false,
    };
    if !ours {
        return None;
    }
    Some(parse_ours(&first.to_ascii_lowercase(), second, sc, dialect))
}

fn parse_ours(
    first: &str,
    second: &str,
    mut sc: Scanner<'_>,
    dialect: Dialect,
) -> Result<LarderStatement, SqlError> {
    let second = second.to_ascii_lowercase();
    let stmt = match (first, second.as_str()) {
        ("create", "cache") => return parse_create_cache(sc, dialect, CacheKind::Default),
        ("create", "shallow") => {
            sc.expect_keyword("cache")?;
            return parse_create_cache(sc, dialect, CacheKind::Shallow);
        }
        ("create", "deep") => {
            sc.expect_keyword("cache")?;
            return parse_create_cache(sc, dialect, CacheKind::Deep);
        }
        ("explain", "create") => {
            sc.expect_keyword("cache")?;
            sc.expect_keyword("from")?;
            let source = parse_cache_source(sc.rest(), dialect)?;
            return Ok(LarderStatement::ExplainCreateCache { source });
        }
        ("explain", "last") => {
            sc.expect_keyword("statement")?;
            LarderStatement::ExplainLastStatement
        }
        ("drop", "cache") => {
            let name = sc
                .name()
                .ok_or_else(|| stmt_err("DROP CACHE needs a cache name or query id"))?;
            LarderStatement::DropCache { name }
        }
        ("drop", "all") => {
            if sc.keyword("caches") {
                LarderStatement::DropAllCaches
            } else {
                sc.expect_keyword("proxied")?;
                sc.expect_keyword("queries")?;
                LarderStatement::DropAllProxiedQueries
            }
        }
        ("alter", "larder") => {
            sc.expect_keyword("set")?;
            sc.expect_keyword("caching")?;
            if !sc.punct(b'=') {
                sc.expect_keyword("to")?;
            }
            let value = sc
                .word()
                .ok_or_else(|| stmt_err("expected ON or OFF"))?
                .to_ascii_lowercase();
            let on = match value.as_str() {
                "on" | "true" => true,
                "off" | "false" => false,
                other => return Err(stmt_err(format!("expected ON or OFF, found {other}"))),
            };
            LarderStatement::SetCaching { on }
        }
        ("show", "caches") => LarderStatement::ShowCaches {
            query_id: parse_where_query_id(&mut sc)?,
        },
        ("show", "proxied") => {
            let supported_only = sc.keyword("supported");
            sc.expect_keyword("queries")?;
            let query_id = parse_where_query_id(&mut sc)?;
            let limit = if sc.keyword("limit") {
                Some(
                    sc.number()
                        .ok_or_else(|| stmt_err("LIMIT needs a non-negative integer"))?,
                )
            } else {
                None
            };
            LarderStatement::ShowProxiedQueries {
                supported_only,
                query_id,
                limit,
            }
        }
        ("show", _) => {
            let what = sc
                .word()
                .ok_or_else(|| stmt_err("expected STATUS, TABLES or VERSION"))?;
            match what.to_ascii_lowercase().as_str() {
                "status" => LarderStatement::ShowStatus,
                "tables" => LarderStatement::ShowTables,
                "version" => LarderStatement::ShowVersion,
                other => {
                    return Err(stmt_err(format!(
                        "expected STATUS, TABLES or VERSION, found {other}"
                    )))
                }
            }
        }
        _ => return Err(stmt_err("unrecognized statement")),
    };
    sc.expect_end()?;
    Ok(stmt)
}

fn parse_create_cache(
    mut sc: Scanner<'_>,
    dialect: Dialect,
    mut kind: CacheKind,
) -> Result<LarderStatement, SqlError> {
    let always = sc.keyword("always");
    let mut name = None;
    let mut policy = None;
    loop {
        if sc.keyword("from") {
            break;
        }
        if policy.is_none() && sc.keyword("policy") {
            policy = Some(parse_policy(&mut sc)?);
            continue;
        }
        if name.is_some() || policy.is_some() {
            return Err(stmt_err("expected FROM"));
        }
        name =
            Some(sc.name().ok_or_else(|| {
                stmt_err("expected a cache name, POLICY or FROM after CREATE CACHE")
            })?);
    }
    match (kind, policy) {
        (CacheKind::Deep, Some(_)) => {
            return Err(stmt_err(
                "a deep cache has no TTL policy: it is kept fresh by replication",
            ))
        }
        (CacheKind::Default, Some(_)) => kind = CacheKind::Shallow,
        _ => {}
    }
    let source = parse_cache_source(sc.rest(), dialect)?;
    Ok(LarderStatement::CreateCache {
        always,
        name,
        source,
        kind,
        policy,
    })
}

/// `TTL n SECONDS [REFRESH [EVERY] m SECONDS]` after POLICY.
fn parse_policy(sc: &mut Scanner<'_>) -> Result<TtlPolicy, SqlError> {
    sc.expect_keyword("ttl")?;
    let ttl_ms = parse_seconds(sc, "TTL")?;
    let refresh_ms = if sc.keyword("refresh") {
        sc.keyword("every");
        let refresh = parse_seconds(sc, "REFRESH")?;
        if refresh >= ttl_ms {
            return Err(stmt_err(
                "REFRESH must be shorter than the TTL (a result is refreshed before it expires)",
            ));
        }
        Some(refresh)
    } else {
        None
    };
    Ok(TtlPolicy { ttl_ms, refresh_ms })
}

fn parse_seconds(sc: &mut Scanner<'_>, what: &str) -> Result<u64, SqlError> {
    let n = sc
        .number()
        .ok_or_else(|| stmt_err(format!("{what} needs a whole number of seconds")))?;
    if !(sc.keyword("seconds") || sc.keyword("second")) {
        return Err(stmt_err(format!("expected SECONDS after the {what} value")));
    }
    let ms = n.saturating_mul(1000);
    if n == 0 || ms > TTL_MAX_MS {
        return Err(stmt_err(format!(
            "{what} must be between 1 and {} seconds",
            TTL_MAX_MS / 1000
        )));
    }
    Ok(ms)
}

fn parse_cache_source(rest: &str, dialect: Dialect) -> Result<CacheSource, SqlError> {
    let text = trim_statement_end(rest);
    if text.is_empty() {
        return Err(stmt_err("expected a SELECT or a query id after FROM"));
    }
    let unquoted = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .unwrap_or(text);
    if is_query_id(unquoted) {
        return Ok(CacheSource::QueryId(unquoted.to_ascii_lowercase()));
    }
    let query = parse_select(text, dialect)?;
    Ok(CacheSource::Select {
        query: Box::new(query),
        text: text.to_string(),
    })
}

/// `q_` followed by 16 hex digits (case-insensitive).
pub fn is_query_id(s: &str) -> bool {
    s.len() == 18
        && (s.starts_with("q_") || s.starts_with("Q_"))
        && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_where_query_id(sc: &mut Scanner<'_>) -> Result<Option<String>, SqlError> {
    if !sc.keyword("where") {
        return Ok(None);
    }
    sc.expect_keyword("query_id")?;
    if !sc.punct(b'=') {
        return Err(stmt_err("expected = after query_id"));
    }
    let id = sc
        .string_lit()
        .ok_or_else(|| stmt_err("expected a quoted query id"))?;
    Ok(Some(id))
}

/// Trims whitespace and trailing semicolons.
fn trim_statement_end(s: &str) -> &str {
    let mut t = s.trim();
    while let Some(stripped) = t.strip_suffix(';') {
        t = stripped.trim_end();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::{classify, StatementKind};

    fn pg(sql: &str) -> Option<Result<LarderStatement, SqlError>> {
        parse_larder_statement(sql, Dialect::Postgres)
    }

    fn ok(sql: &str) -> LarderStatement {
        match pg(sql) {
            Some(Ok(s)) => s,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn ordinary_statements_are_not_ours() {
        for sql in [
            "SELECT 1",
            "create table t (id int)",
            "drop table t",
            "show search_path",
            "explain select 1",
            "drop all",
            "",
            "   -- comment only",
            "EXPLAIN CREATE TABLE x (a int)",
        ] {
            assert!(pg(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn create_cache_variants() {
        match ok("create cache from select * from t where id = 1;") {
            LarderStatement::CreateCache {
                always: false,
                name: None,
                source: CacheSource::Select { query, text },
                ..
            } => {
                assert_eq!(text, "select * from t where id = 1");
                assert_eq!(query.to_string(), "SELECT * FROM t WHERE id = 1");
            }
            other => panic!("{other:?}"),
        }
        match ok("/* hi */ CREATE CACHE ALWAYS MyCache FROM SELECT a FROM t") {
            LarderStatement::CreateCache {
                always: true,
                name: Some(name),
                source: CacheSource::Select { .. },
                ..
            } => assert_eq!(name, "mycache"),
            other => panic!("{other:?}"),
        }
        match ok("Create Cache \"My Cache\" From select a from t") {
            LarderStatement::CreateCache { name, .. } => {
                assert_eq!(name.as_deref(), Some("My Cache"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ok("CREATE CACHE FROM q_0123456789ABCDEF ;"),
            LarderStatement::CreateCache {
                always: false,
                name: None,
                source: CacheSource::QueryId("q_0123456789abcdef".into()),
                kind: CacheKind::Default,
                policy: None,
            }
        );
        assert_eq!(
            ok("CREATE CACHE always FROM 'q_0123456789abcdef'"),
            LarderStatement::CreateCache {
                always: true,
                name: None,
                source: CacheSource::QueryId("q_0123456789abcdef".into()),
                kind: CacheKind::Default,
                policy: None,
            }
        );
    }

    #[test]
    fn shallow_and_deep_caches() {
        let policy = |ttl_ms, refresh_ms| Some(TtlPolicy { ttl_ms, refresh_ms });
        let kind_policy = |sql: &str| match ok(sql) {
            LarderStatement::CreateCache {
                kind, policy, name, ..
            } => (kind, policy, name),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kind_policy("create shallow cache from select 1"),
            (CacheKind::Shallow, None, None)
        );
        assert_eq!(
            kind_policy("CREATE DEEP CACHE d FROM select a from t"),
            (CacheKind::Deep, None, Some("d".into()))
        );
        assert_eq!(
            kind_policy("CREATE SHALLOW CACHE s POLICY TTL 60 SECONDS REFRESH EVERY 30 SECONDS FROM select 1"),
            (CacheKind::Shallow, policy(60_000, Some(30_000)), Some("s".into()))
        );
        assert_eq!(
            kind_policy("create cache policy ttl 5 seconds refresh 1 second from select 1"),
            (CacheKind::Shallow, policy(5_000, Some(1_000)), None)
        );
        assert_eq!(
            kind_policy("create shallow cache always policy ttl 2 seconds from select 1"),
            (CacheKind::Shallow, policy(2_000, None), None)
        );
        for bad in [
            "create deep cache policy ttl 5 seconds from select 1",
            "create shallow cache policy ttl 0 seconds from select 1",
            "create shallow cache policy ttl 5 from select 1",
            "create shallow cache policy ttl 5 seconds refresh 5 seconds from select 1",
            "create shallow cache policy ttl 999999999 seconds from select 1",
            "create shallow cache a b from select 1",
        ] {
            assert!(matches!(pg(bad), Some(Err(_))), "{bad}");
        }
        assert!(pg("create shallow table t (a int)").is_none());
        assert!(pg("create shallow from select 1").is_none());
    }

    #[test]
    fn create_cache_errors() {
        assert!(matches!(
            pg("CREATE CACHE"),
            Some(Err(SqlError::Statement(_)))
        ));
        assert!(matches!(
            pg("CREATE CACHE x"),
            Some(Err(SqlError::Statement(_)))
        ));
        assert!(matches!(
            pg("CREATE CACHE FROM"),
            Some(Err(SqlError::Statement(_)))
        ));
        assert!(matches!(
            pg("CREATE CACHE FROM selec 1"),
            Some(Err(SqlError::Parse(_)))
        ));
        assert!(matches!(
            pg("CREATE CACHE FROM insert into t values (1)"),
            Some(Err(SqlError::NotSelect))
        ));
        assert!(matches!(
            pg("CREATE CACHE FROM select 1; select 2"),
            Some(Err(SqlError::StatementCount(2)))
        ));
    }

    #[test]
    fn explain_and_drop() {
        assert!(matches!(
            ok("explain create cache from select a from t"),
            LarderStatement::ExplainCreateCache {
                source: CacheSource::Select { .. }
            }
        ));
        assert_eq!(
            ok("EXPLAIN LAST STATEMENT"),
            LarderStatement::ExplainLastStatement
        );
        assert_eq!(
            ok("drop cache q_0123456789abcdef"),
            LarderStatement::DropCache {
                name: "q_0123456789abcdef".into()
            }
        );
        assert_eq!(
            ok("DROP CACHE \"Mine\";"),
            LarderStatement::DropCache {
                name: "Mine".into()
            }
        );
        assert_eq!(ok("drop all caches"), LarderStatement::DropAllCaches);
        assert_eq!(
            ok("DROP ALL PROXIED QUERIES;"),
            LarderStatement::DropAllProxiedQueries
        );
        assert!(matches!(pg("DROP CACHE"), Some(Err(_))));
        assert!(matches!(pg("DROP CACHE a b"), Some(Err(_))));
        assert!(matches!(pg("EXPLAIN LAST"), Some(Err(_))));
    }

    #[test]
    fn show_statements() {
        assert_eq!(
            ok("show caches"),
            LarderStatement::ShowCaches { query_id: None }
        );
        assert_eq!(
            ok("SHOW CACHES WHERE query_id = 'q_0123456789abcdef'"),
            LarderStatement::ShowCaches {
                query_id: Some("q_0123456789abcdef".into())
            }
        );
        assert_eq!(
            ok("show proxied queries"),
            LarderStatement::ShowProxiedQueries {
                supported_only: false,
                query_id: None,
                limit: None
            }
        );
        assert_eq!(
            ok("SHOW PROXIED SUPPORTED QUERIES WHERE QUERY_ID='q_1' LIMIT 10;"),
            LarderStatement::ShowProxiedQueries {
                supported_only: true,
                query_id: Some("q_1".into()),
                limit: Some(10)
            }
        );
        assert_eq!(ok("show larder status"), LarderStatement::ShowStatus);
        assert_eq!(ok("SHOW LARDER TABLES"), LarderStatement::ShowTables);
        assert_eq!(ok("Show Larder Version;"), LarderStatement::ShowVersion);
        assert_eq!(ok("SHOW READYSET STATUS"), LarderStatement::ShowStatus);
        assert!(matches!(pg("SHOW LARDER NONSENSE"), Some(Err(_))));
        assert!(matches!(pg("SHOW PROXIED QUERIES LIMIT x"), Some(Err(_))));
        assert!(matches!(pg("SHOW CACHES WHERE query_id = 5"), Some(Err(_))));
    }

    #[test]
    fn mysql_dialect() {
        let s = parse_larder_statement(
            "CREATE CACHE `c1` FROM SELECT `a` FROM `t` WHERE b = ?",
            Dialect::MySql,
        );
        match s {
            Some(Ok(LarderStatement::CreateCache {
                name: Some(name),
                source: CacheSource::Select { query, .. },
                ..
            })) => {
                assert_eq!(name, "c1");
                assert_eq!(query.to_string(), "SELECT `a` FROM `t` WHERE b = ?");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn alter_larder_set_caching() {
        assert_eq!(
            ok("ALTER LARDER SET caching = off"),
            LarderStatement::SetCaching { on: false }
        );
        assert_eq!(
            ok("alter larder set CACHING to ON;"),
            LarderStatement::SetCaching { on: true }
        );
        assert_eq!(
            ok("ALTER LARDER SET caching = true"),
            LarderStatement::SetCaching { on: true }
        );
        assert!(matches!(
            pg("ALTER LARDER SET caching = maybe"),
            Some(Err(_))
        ));
        assert!(matches!(pg("ALTER LARDER SET other = on"), Some(Err(_))));
        assert_eq!(pg("ALTER TABLE larder SET caching = on"), None);
    }

    #[test]
    fn query_ids() {
        assert!(is_query_id("q_0123456789abcdef"));
        assert!(!is_query_id("q_0123456789abcdeg"));
        assert!(!is_query_id("q_0123"));
        assert!(!is_query_id("x_0123456789abcdef"));
    }

    #[test]
    fn unterminated_quotes_do_not_panic() {
        assert!(matches!(pg("DROP CACHE \"abc"), Some(Err(_))));
        assert!(matches!(
            pg("SHOW CACHES WHERE query_id = 'abc"),
            Some(Err(_))
        ));
        assert!(matches!(pg("SHOW CACHES /* unterminated"), Some(Ok(_))));
        assert_eq!(classify("/* unterminated"), StatementKind::Empty);
        assert_eq!(classify("é"), StatementKind::Other);
    }
}
