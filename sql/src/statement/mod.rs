//! Recognizing statements: Larder's own commands ([`larder`]), cheap routing classes, and
//! SELECT parsing.
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

mod larder;
mod scanner;

pub use larder::{
    columns, is_query_id, parse_larder_statement, CacheKind, CacheSource, LarderStatement,
    TtlPolicy, TTL_MAX_MS,
};
use scanner::Scanner;

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

#[cfg(test)]
mod tests {
    use super::*;

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
