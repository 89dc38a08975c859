//! Recognizing statements: Larder's own commands, cheap routing classes, and SELECT parsing.
//!
//! Every statement a client sends passes through here, so the common path must cost almost
//! nothing: [`parse_larder_statement`] looks at the first two words only and returns `None` for
//! ordinary traffic, and [`classify`] reads one or two keywords. Only Larder statements and
//! SELECTs that may be cached are handed to the full `sqlparser` parser.
//!
//! Larder statements are parsed by a small hand-written scanner rather than by `sqlparser`,
//! whose grammar does not know them; the SELECT inside `CREATE CACHE ... FROM <select>` is
//! parsed by [`parse_select`] and its source text is kept verbatim.

use sqlparser::ast::{Query, Statement};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::SqlError;

/// Longest statement text we hand to the parser. Larger texts (typically giant `IN` lists or
/// bulk inserts) are not worth caching and would cost a lot of memory to parse.
pub const SQL_LEN_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Most operators one expression may chain, counting enclosing brackets (see
/// [`operator_depth_bound`]); lowering a 250-deep tree already overflows 2 MiB in a debug build. `sqlparser` builds a
/// chain like `1+1+...+1` or `a=1 OR a=2 OR ...` iteratively into a tree as deep as the chain,
/// and every later walk of that tree (visiting, printing, lowering, even dropping it) recurses
/// once per level: a few thousand levels overflow a 2 MiB thread stack and abort the process.
/// Statements over the limit are not parsed (they go upstream untouched).
pub const OPERATOR_DEPTH_MAX: usize = 128;

/// The SQL dialect of the upstream database, which decides how text is tokenized
/// (`$1` vs `?` placeholders, quoting) and whether unquoted identifiers fold to lower case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    Postgres,
    MySql,
}

impl Dialect {
    pub(crate) fn parser_dialect(self) -> &'static dyn sqlparser::dialect::Dialect {
        static PG: PostgreSqlDialect = PostgreSqlDialect {};
        static MY: MySqlDialect = MySqlDialect {};
        match self {
            Dialect::Postgres => &PG,
            Dialect::MySql => &MY,
        }
    }
}

/// Where `CREATE CACHE` / `EXPLAIN CREATE CACHE` takes its query from.
#[derive(Clone, Debug, PartialEq)]
pub enum CacheSource {
    /// `FROM <select>`: the parsed query and its source text, verbatim (trimmed, without `;`).
    Select { query: Box<Query>, text: String },
    /// `FROM q_0123456789abcdef`: a query id seen earlier (e.g. in `SHOW PROXIED QUERIES`).
    QueryId(String),
}

/// One of Larder's own statements. Names and ids are as written; unquoted names are folded
/// to lower case.
#[derive(Clone, Debug, PartialEq)]
pub enum LarderStatement {
    /// `CREATE CACHE [ALWAYS] [name] FROM ...`
    CreateCache {
        always: bool,
        name: Option<String>,
        source: CacheSource,
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
}

/// Coarse class of a statement, for routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementKind {
    /// Starts with `SELECT` (or `(SELECT`): a candidate for a cache.
    Select,
    /// Data modification: INSERT, UPDATE, DELETE, MERGE, REPLACE, TRUNCATE, COPY, UPSERT.
    Write,
    /// Transaction control.
    Transaction(TransactionKind),
    /// Session settings: SET, RESET, DISCARD.
    Set,
    /// Only whitespace, comments and semicolons.
    Empty,
    /// Everything else (DDL, WITH, SHOW, EXPLAIN, CALL, ...).
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionKind {
    /// `BEGIN`, `START TRANSACTION`
    Begin,
    /// `COMMIT`, `END`
    Commit,
    /// `ROLLBACK`, `ABORT` (not `ROLLBACK TO SAVEPOINT`)
    Rollback,
    /// `SAVEPOINT x`
    Savepoint,
    /// `RELEASE [SAVEPOINT] x`
    Release,
    /// `ROLLBACK TO [SAVEPOINT] x`
    RollbackToSavepoint,
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`, `XA ...`
    TwoPhase,
}

/// Cheap keyword-based classification for routing. Skips leading whitespace, comments
/// (`--`, `/* */`, `#`) and opening parentheses; never fails.
pub fn classify(sql: &str) -> StatementKind {
    let mut sc = Scanner::new(sql);
    sc.skip_trivia();
    while sc.punct(b'(') {
        sc.skip_trivia();
    }
    let Some(first) = sc.word() else {
        return if sc.at_end() {
            StatementKind::Empty
        } else {
            StatementKind::Other
        };
    };
    let second = sc.word();
    let is = |w: Option<&str>, k: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(k));
    let first_is = |k: &str| first.eq_ignore_ascii_case(k);
    use TransactionKind as T;
    let tx = StatementKind::Transaction;
    if first_is("select") {
        StatementKind::Select
    } else if first_is("with") {
        with_statement_kind(Scanner::new(sql))
    } else if [
        "insert", "update", "delete", "merge", "replace", "truncate", "copy", "upsert",
    ]
    .iter()
    .any(|k| first_is(k))
    {
        StatementKind::Write
    } else if first_is("begin") {
        tx(T::Begin)
    } else if first_is("start") {
        if is(second, "transaction") {
            tx(T::Begin)
        } else {
            StatementKind::Other
        }
    } else if first_is("commit") || first_is("end") {
        if is(second, "prepared") {
            tx(T::TwoPhase)
        } else {
            tx(T::Commit)
        }
    } else if first_is("rollback") || first_is("abort") {
        if is(second, "to") {
            tx(T::RollbackToSavepoint)
        } else if is(second, "prepared") {
            tx(T::TwoPhase)
        } else {
            tx(T::Rollback)
        }
    } else if first_is("savepoint") {
        tx(T::Savepoint)
    } else if first_is("release") {
        tx(T::Release)
    } else if first_is("xa") || (first_is("prepare") && is(second, "transaction")) {
        tx(T::TwoPhase)
    } else if first_is("set") || first_is("reset") || first_is("discard") {
        StatementKind::Set
    } else {
        StatementKind::Other
    }
}

/// Parses exactly one SELECT (any query expression: `SELECT`, `UNION`, `VALUES`, ...).
/// With the Postgres dialect unquoted identifiers are folded to lower case, as Postgres does,
/// so `SELECT Id FROM Users` and `select id from users` yield the same tree.
pub fn parse_select(sql: &str, dialect: Dialect) -> Result<Query, SqlError> {
    let mut statements = parse_statements(sql, dialect)?;
    if statements.len() != 1 {
        return Err(SqlError::StatementCount(statements.len()));
    }
    match statements.pop() {
        Some(Statement::Query(query)) => Ok(*query),
        _ => Err(SqlError::NotSelect),
    }
}

/// Parses any statements, with Postgres identifier folding (see [`parse_select`]).
pub(crate) fn parse_statements(sql: &str, dialect: Dialect) -> Result<Vec<Statement>, SqlError> {
    if sql.len() > SQL_LEN_MAX_BYTES {
        return Err(SqlError::TooLong {
            len_bytes: sql.len(),
            max_bytes: SQL_LEN_MAX_BYTES,
        });
    }
    let pd = dialect.parser_dialect();
    let mut tokens = Tokenizer::new(pd, sql)
        .tokenize()
        .map_err(|e| SqlError::Parse(e.to_string()))?;
    let depth = operator_depth_bound(&tokens);
    if depth > OPERATOR_DEPTH_MAX {
        return Err(SqlError::TooDeep {
            depth,
            max: OPERATOR_DEPTH_MAX,
        });
    }
    if dialect == Dialect::Postgres {
        for token in &mut tokens {
            if let Token::Word(w) = token {
                if w.quote_style.is_none() && w.value.bytes().any(|b| b.is_ascii_uppercase()) {
                    w.value = w.value.to_lowercase();
                }
            }
        }
    }
    Parser::new(pd)
        .with_tokens(tokens)
        .parse_statements()
        .map_err(|e| SqlError::Parse(e.to_string()))
}

/// An upper bound of how deep the expression trees parsed from `tokens` can be: the largest
/// number, on any path of nested brackets, of open brackets plus operator tokens (symbols,
/// casts, subscripts, `AND`/`OR`/`NOT`/`IS`/`LIKE`/..., set operations) of the enclosing
/// expressions, where a comma or `;` ends an expression at its bracket level.
pub(crate) fn operator_depth_bound(tokens: &[Token]) -> usize {
    use sqlparser::keywords::Keyword as K;
    // Operators counted so far in the current expression of each open bracket level.
    let mut levels: Vec<usize> = vec![0];
    let mut sum = 0usize;
    let mut max = 0usize;
    for token in tokens {
        let is_operator = match token {
            Token::LParen | Token::LBrace => {
                levels.push(0);
                max = max.max(sum + levels.len() - 1);
                false
            }
            Token::LBracket => {
                // Subscripts chain like operators (`a[1][2]...` nests one level each).
                if let Some(last) = levels.last_mut() {
                    *last += 1;
                    sum += 1;
                }
                levels.push(0);
                max = max.max(sum + levels.len() - 1);
                false
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if levels.len() > 1 {
                    sum -= levels.pop().unwrap_or(0);
                }
                false
            }
            Token::Comma | Token::SemiColon => {
                if let Some(last) = levels.last_mut() {
                    sum -= *last;
                    *last = 0;
                }
                false
            }
            Token::Word(w) => {
                w.quote_style.is_none()
                    && matches!(
                        w.keyword,
                        K::AND
                            | K::OR
                            | K::XOR
                            | K::NOT
                            | K::IS
                            | K::LIKE
                            | K::ILIKE
                            | K::RLIKE
                            | K::REGEXP
                            | K::SIMILAR
                            | K::BETWEEN
                            | K::IN
                            | K::COLLATE
                            | K::AT
                            | K::DIV
                            | K::MOD
                            | K::OPERATOR
                            | K::OVERLAPS
                            | K::UNION
                            | K::EXCEPT
                            | K::INTERSECT
                            | K::MINUS
                    )
            }
            Token::EOF
            | Token::Whitespace(_)
            | Token::Number(..)
            | Token::Char(_)
            | Token::Placeholder(_)
            | Token::Period
            | Token::Colon
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_) => false,
            // Every other symbol (arithmetic, comparison, `::`, JSON and array operators...).
            _ => true,
        };
        if is_operator {
            if let Some(last) = levels.last_mut() {
                *last += 1;
                sum += 1;
            }
            max = max.max(sum + levels.len() - 1);
        }
    }
    max
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
        _ if eq(first, "create") => eq(second, "cache"),
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
        ("create", "cache") => return parse_create_cache(sc, dialect),
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

fn parse_create_cache(mut sc: Scanner<'_>, dialect: Dialect) -> Result<LarderStatement, SqlError> {
    let always = sc.keyword("always");
    let name = if sc.keyword("from") {
        None
    } else {
        let name = sc
            .name()
            .ok_or_else(|| stmt_err("expected a cache name or FROM after CREATE CACHE"))?;
        sc.expect_keyword("from")?;
        Some(name)
    };
    let source = parse_cache_source(sc.rest(), dialect)?;
    Ok(LarderStatement::CreateCache {
        always,
        name,
        source,
    })
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

fn stmt_err(msg: impl Into<String>) -> SqlError {
    SqlError::Statement(msg.into())
}

/// A tiny forward-only scanner over statement text: words, names, quoted strings, numbers,
/// punctuation, skipping whitespace and comments. Never panics: every index it slices at is
/// an ASCII boundary it has just checked.
#[derive(Clone)]
struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

/// `WITH ...`: a read when no part of it writes (a data-modifying CTE or a DML body makes it
/// a write); anything the scanner cannot follow (dollar quoting) is `Other`.
fn with_statement_kind(mut sc: Scanner<'_>) -> StatementKind {
    let mut select = false;
    loop {
        sc.skip_trivia();
        match sc.peek() {
            None => break,
            Some(q @ (b'\'' | b'"' | b'`')) => {
                if sc.quoted(q).is_none() {
                    return StatementKind::Other;
                }
            }
            Some(b'$') => {
                sc.pos += 1;
                if !sc.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return StatementKind::Other;
                }
            }
            Some(_) => match sc.word() {
                Some(w) => {
                    if ["insert", "update", "delete", "merge"]
                        .iter()
                        .any(|k| w.eq_ignore_ascii_case(k))
                    {
                        return StatementKind::Write;
                    }
                    select |= w.eq_ignore_ascii_case("select");
                }
                None => sc.pos += 1,
            },
        }
    }
    if select {
        StatementKind::Select
    } else {
        StatementKind::Other
    }
}

impl<'a> Scanner<'a> {
    fn new(s: &'a str) -> Self {
        Scanner { s, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn skip_trivia(&mut self) {
        let b = self.bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            let rest = &b[self.pos..];
            if rest.starts_with(b"--") || rest.starts_with(b"#") {
                while self.pos < b.len() && b[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if rest.starts_with(b"/*") {
                self.skip_block_comment();
            } else {
                return;
            }
        }
    }

    /// Skips a (possibly nested, as in Postgres) block comment starting at `pos`.
    fn skip_block_comment(&mut self) {
        let b = self.bytes();
        let mut depth = 0usize;
        while self.pos < b.len() {
            if b[self.pos..].starts_with(b"/*") {
                depth += 1;
                self.pos += 2;
            } else if b[self.pos..].starts_with(b"*/") {
                depth = depth.saturating_sub(1);
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }

    /// An unquoted word: `[A-Za-z_][A-Za-z0-9_$]*`.
    fn word(&mut self) -> Option<&'a str> {
        self.skip_trivia();
        let b = self.bytes();
        let start = self.pos;
        match b.get(start) {
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
            _ => return None,
        }
        let mut end = start + 1;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b'$')
        {
            end += 1;
        }
        self.pos = end;
        Some(&self.s[start..end])
    }

    /// Consumes `kw` (case-insensitive) if it is the next word.
    fn keyword(&mut self, kw: &str) -> bool {
        let mut probe = self.clone();
        match probe.word() {
            Some(w) if w.eq_ignore_ascii_case(kw) => {
                *self = probe;
                true
            }
            _ => false,
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(stmt_err(format!("expected {}", kw.to_ascii_uppercase())))
        }
    }

    /// A name: an unquoted word (folded to lower case) or a `"quoted"`/`` `quoted` `` name.
    fn name(&mut self) -> Option<String> {
        self.skip_trivia();
        match self.peek() {
            Some(q @ (b'"' | b'`')) => self.quoted(q),
            _ => self.word().map(|w| w.to_ascii_lowercase()),
        }
    }

    /// A `'single-quoted'` string literal with `''` escapes.
    fn string_lit(&mut self) -> Option<String> {
        self.skip_trivia();
        if self.peek() != Some(b'\'') {
            return None;
        }
        self.quoted(b'\'')
    }

    /// Text between `quote` characters starting at `pos`; a doubled quote is one quote.
    fn quoted(&mut self, quote: u8) -> Option<String> {
        let b = self.bytes();
        let mut out = String::new();
        let mut i = self.pos + 1;
        let mut seg_start = i;
        while i < b.len() {
            if b[i] == quote {
                out.push_str(&self.s[seg_start..i]);
                if b.get(i + 1) == Some(&quote) {
                    out.push(quote as char);
                    i += 2;
                    seg_start = i;
                    continue;
                }
                self.pos = i + 1;
                return Some(out);
            }
            i += 1;
        }
        None
    }

    fn number(&mut self) -> Option<u64> {
        self.skip_trivia();
        let b = self.bytes();
        let start = self.pos;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let n = self.s[start..end].parse().ok()?;
        self.pos = end;
        Some(n)
    }

    fn punct(&mut self, c: u8) -> bool {
        self.skip_trivia();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// True when only trivia and semicolons remain.
    fn at_end(&mut self) -> bool {
        loop {
            self.skip_trivia();
            if !self.punct(b';') {
                break;
            }
        }
        self.pos >= self.s.len()
    }

    fn expect_end(&mut self) -> Result<(), SqlError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(stmt_err(format!(
                "unexpected text: {}",
                self.rest().chars().take(40).collect::<String>()
            )))
        }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                source: CacheSource::QueryId("q_0123456789abcdef".into())
            }
        );
        assert_eq!(
            ok("CREATE CACHE always FROM 'q_0123456789abcdef'"),
            LarderStatement::CreateCache {
                always: true,
                name: None,
                source: CacheSource::QueryId("q_0123456789abcdef".into())
            }
        );
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
    fn classify_routes() {
        use StatementKind as K;
        use TransactionKind as T;
        let cases = [
            ("select 1", K::Select),
            ("  /* c */ -- x\n (SELECT 1) UNION (SELECT 2)", K::Select),
            ("# mysql comment\nSELECT 1", K::Select),
            ("insert into t values (1)", K::Write),
            ("UPDATE t SET a = 1", K::Write),
            ("delete from t", K::Write),
            ("begin", K::Transaction(T::Begin)),
            ("START TRANSACTION READ ONLY", K::Transaction(T::Begin)),
            ("start replica", K::Other),
            ("commit", K::Transaction(T::Commit)),
            ("END", K::Transaction(T::Commit)),
            ("rollback", K::Transaction(T::Rollback)),
            (
                "ROLLBACK TO SAVEPOINT a",
                K::Transaction(T::RollbackToSavepoint),
            ),
            ("savepoint a", K::Transaction(T::Savepoint)),
            ("RELEASE SAVEPOINT a", K::Transaction(T::Release)),
            ("PREPARE TRANSACTION 'x'", K::Transaction(T::TwoPhase)),
            ("COMMIT PREPARED 'x'", K::Transaction(T::TwoPhase)),
            ("prepare s as select 1", K::Other),
            ("SET search_path = x", K::Set),
            ("reset all", K::Set),
            ("DISCARD ALL", K::Set),
            ("", K::Empty),
            (" ; ;  -- nothing", K::Empty),
            ("with x as (select 1) select * from x", K::Select),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                K::Write,
            ),
            (
                "with x as (select 'update') insert into t select * from x",
                K::Write,
            ),
            (
                "with x as (select 'update', \"delete\") select * from x",
                K::Select,
            ),
            ("with x as (select $$y$$) select * from x", K::Other),
            ("with x as (values (1)) table x", K::Other),
            ("create table t (a int)", K::Other),
            ("$$", K::Other),
        ];
        for (sql, kind) in cases {
            assert_eq!(classify(sql), kind, "{sql}");
        }
    }

    #[test]
    fn parse_select_folds_identifiers_on_postgres() {
        let q = parse_select("SELECT Id, \"Name\" FROM Users", Dialect::Postgres).unwrap();
        assert_eq!(q.to_string(), "SELECT id, \"Name\" FROM users");
        let q = parse_select("SELECT Id FROM Users", Dialect::MySql).unwrap();
        assert_eq!(q.to_string(), "SELECT Id FROM Users");
        assert_eq!(
            parse_select("update t set a = 1", Dialect::Postgres),
            Err(SqlError::NotSelect)
        );
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

/// Regression tests for inputs found while fuzzing (`sql/tests/fuzz.rs`).
#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    fn bound(sql: &str) -> usize {
        let tokens = Tokenizer::new(Dialect::Postgres.parser_dialect(), sql)
            .tokenize()
            .unwrap();
        operator_depth_bound(&tokens)
    }

    #[test]
    fn operator_depth_bound_counts_chains_brackets_and_resets_at_commas() {
        assert_eq!(bound("SELECT 1+1+1"), 2);
        assert_eq!(bound("SELECT a FROM t WHERE a = 1 AND b::int = 2"), 4);
        // Commas end an expression; sibling brackets do not add up.
        assert_eq!(
            bound("SELECT a + 1, b + 1, f(x), g(y) FROM t WHERE id IN (1, 2, 3)"),
            2
        );
        assert_eq!(bound("SELECT ((((x))))"), 4);
        assert_eq!(bound("SELECT t[1][2][3]"), 4);
        assert_eq!(bound("SELECT 1 UNION SELECT 2 UNION SELECT 3"), 2);
        // Quoted words and literals are not operators.
        assert_eq!(bound("SELECT \"and\", 'or + -' FROM t"), 0);
    }

    /// `1+1+...+1` with a thousand terms used to overflow the stack once parsed.
    #[test]
    fn long_chain_is_refused_before_parsing() {
        let sql = format!("SELECT * FROM t WHERE id = 1{}", "+1".repeat(1000));
        assert_eq!(
            parse_select(&sql, Dialect::Postgres),
            // 1000 `+`, the `=` and (conservatively) the `*` of the select list.
            Err(SqlError::TooDeep {
                depth: 1002,
                max: OPERATOR_DEPTH_MAX
            })
        );
        let ok = format!("SELECT * FROM t WHERE id = 1{}", "+1".repeat(100));
        assert!(parse_select(&ok, Dialect::Postgres).is_ok());
    }
}
