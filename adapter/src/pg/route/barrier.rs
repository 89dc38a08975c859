//! Read-your-DDL and read-your-writes. After a session forwards DDL, or a write to a table
//! some cache reads (or commits a transaction that did either), the router asks the upstream
//! for its WAL position (a capture, sent at the next boundary) and answers that session from
//! caches again only once replication has applied past it. Until then its cacheable queries go
//! upstream, so it never reads its own change's absence. Inside a transaction that wrote to a
//! cached table, caches do not answer at all: the transaction's own rows are not in them.
//!
//! A write is recognized by its statement (`INSERT`/`UPDATE`/`DELETE`/`MERGE`/`TRUNCATE`/
//! `COPY`, data-modifying `WITH`). Its target table is read from the text when the statement
//! is that simple, and the barrier is skipped when no cache reads a table of that name; any
//! other write takes the barrier. Changes that reach cached tables only through triggers or
//! foreign-key cascades of a write to an uncached table are covered by the staleness bound
//! alone.

use super::*;

impl RouterSession {
    /// After forwarding `sql`: sets a barrier when it was DDL or a write to a cached table, or
    /// committed a transaction that ran either.
    pub(super) fn barrier_after(
        &mut self,
        session: &SessionState,
        sql: &str,
        dispatch: &mut Dispatch<'_>,
    ) {
        let kind = classify(sql);
        if kind == StatementKind::Set {
            if let Some(on) = read_your_writes_setting(sql) {
                self.read_your_writes = on;
            }
            return;
        }
        // A multi-statement string may hold DDL after a first harmless statement.
        let multi = is_multi_statement(sql);
        let ddl = kind == StatementKind::Other || multi;
        let write = self.read_your_writes
            && kind == StatementKind::Write
            && write_target(sql).is_none_or(|t| self.backend.caches_relation_named(&t));
        if multi {
            self.barrier_at_commit = true;
            self.ddl_at_commit = true;
        }
        let ends_transaction = matches!(
            kind,
            StatementKind::Transaction(TransactionKind::Commit | TransactionKind::Rollback)
        );
        let in_transaction = session.transaction_status() != TransactionStatus::Idle;
        if (ddl || write) && in_transaction {
            self.barrier_at_commit = true;
            self.ddl_at_commit |= ddl;
            self.wrote_in_transaction |= write;
        }
        // Whether the barrier follows DDL (the transaction's, when this ends one).
        let mut after_ddl = ddl;
        if ends_transaction && !multi {
            self.wrote_in_transaction = false;
            after_ddl = std::mem::take(&mut self.ddl_at_commit);
            if !std::mem::take(&mut self.barrier_at_commit) {
                return;
            }
        } else if !ddl && !write {
            return;
        }
        // A plain write or a COMMIT cannot leave the upstream in COPY: the question goes right
        // behind it, in the same round trip. DDL and anything less plain wait for the
        // boundary.
        let plain = !ddl
            && !multi
            && (ends_transaction
                || write_target(sql).is_some_and(|_| !starts_with_word(sql, "copy")));
        let question = "SELECT pg_catalog.pg_current_wal_lsn()::text";
        if plain {
            capture_query_behind(dispatch, question, &[]);
        } else {
            capture_query(dispatch, question, &[]);
        }
        self.captures
            .push_back(CaptureKind::WalPosition { ddl: after_ddl });
        self.barrier_lsn = Some(0);
        self.wrote_at = Some(std::time::Instant::now());
    }

    /// The upstream's WAL position after the session's DDL or write (`None`: unknown, so
    /// caches keep refusing until the next barrier).
    pub(super) fn on_barrier_position(&mut self, lsn: Option<u64>, ddl: bool) {
        let lsn = lsn.unwrap_or(u64::MAX);
        // A later barrier still being asked for keeps caches refusing until its answer.
        let later = self
            .captures
            .iter()
            .any(|c| matches!(c, CaptureKind::WalPosition { .. }));
        self.barrier_lsn = Some(if later { 0 } else { lsn });
        if ddl {
            // Names resolve locally only with a catalog that reflects the session's DDL.
            self.ddl_lsn = self.ddl_lsn.max(lsn);
        }
    }

    /// Whether the barriers let a cache answer this session now.
    pub(super) fn check_barrier(&mut self, session: &SessionState) -> Result<(), String> {
        match session.transaction_status() {
            TransactionStatus::Idle => self.wrote_in_transaction = false,
            _ if self.wrote_in_transaction => {
                return Err("this transaction wrote to a table a cache reads; its own changes are not in the cache".into())
            }
            _ => {}
        }
        if let Some(barrier) = self.barrier_lsn {
            if barrier == 0 || self.backend.applied_position() < barrier {
                return Err(
                    "waiting for replication to apply this session's own writes or DDL".into(),
                );
            }
            self.barrier_lsn = None;
        }
        Ok(())
    }
}

/// The value of `SET [SESSION] larder.read_your_writes {=|TO} on|off` (`true`/`false`,
/// quoted or not; `DEFAULT` and `RESET` mean on). `SET LOCAL` is not followed: it would
/// revert at the transaction's end.
fn read_your_writes_setting(sql: &str) -> Option<bool> {
    let text = sql.trim().trim_end_matches(';').to_ascii_lowercase();
    let mut words = text.split_ascii_whitespace();
    let first = words.next()?;
    let mut name = words.next()?;
    if first == "reset" {
        return (name == "larder.read_your_writes").then_some(true);
    }
    if first != "set" {
        return None;
    }
    if name == "session" {
        name = words.next()?;
    }
    let (name, rest) = match name.split_once('=') {
        Some((n, v)) => (n, v.to_string()),
        None => (name, String::new()),
    };
    if name != "larder.read_your_writes" {
        return None;
    }
    let mut value = rest;
    if value.is_empty() {
        let next = words.next()?;
        value = match next.strip_prefix('=') {
            Some(v) if !v.is_empty() => v.to_string(),
            _ if next == "=" || next == "to" => words.next()?.to_string(),
            _ => return None,
        };
    }
    match value.trim_matches(['\'', '"']) {
        "on" | "true" | "default" => Some(true),
        "off" | "false" => Some(false),
        _ => None,
    }
}

fn starts_with_word(sql: &str, word: &str) -> bool {
    sql.split_ascii_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

/// The table a simple `INSERT INTO t`, `UPDATE [ONLY] t`, `DELETE FROM [ONLY] t`,
/// `TRUNCATE [TABLE] [ONLY] t` or `COPY t FROM` writes to: its name without schema, folded as
/// Postgres folds an unquoted name. `None` when the statement is anything else (a `WITH`, a
/// comment first, several tables), so that the caller takes the barrier.
fn write_target(sql: &str) -> Option<String> {
    let mut words = sql.split_ascii_whitespace();
    let first = words.next()?.to_ascii_lowercase();
    let mut next = words.next()?;
    match first.as_str() {
        "insert" => {
            if !next.eq_ignore_ascii_case("into") {
                return None;
            }
            next = words.next()?;
        }
        "update" => {}
        "delete" => {
            if !next.eq_ignore_ascii_case("from") {
                return None;
            }
            next = words.next()?;
        }
        "truncate" => {
            if next.eq_ignore_ascii_case("table") {
                next = words.next()?;
            }
        }
        "copy" => {
            if !words.next()?.eq_ignore_ascii_case("from") {
                return None;
            }
        }
        _ => return None,
    }
    if next.eq_ignore_ascii_case("only") {
        next = words.next()?;
    }
    // The name ends where a column list, alias, `;` or `,` (several tables) begins.
    let name = next.split(['(', ';']).next()?;
    if name.is_empty() || name.contains(',') || name.ends_with('*') {
        return None;
    }
    let last = name.rsplit('.').next()?;
    if let Some(quoted) = last.strip_prefix('"') {
        let inner = quoted.strip_suffix('"')?;
        if inner.contains('"') {
            return None;
        }
        return Some(inner.to_string());
    }
    if last.contains('"') || !last.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    Some(last.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::write_target;

    #[test]
    fn read_your_writes_settings() {
        use super::read_your_writes_setting as s;
        assert_eq!(s("SET larder.read_your_writes = off"), Some(false));
        assert_eq!(s("set LARDER.READ_YOUR_WRITES to 'on';"), Some(true));
        assert_eq!(s("SET SESSION larder.read_your_writes=false"), Some(false));
        assert_eq!(s("SET larder.read_your_writes =off"), Some(false));
        assert_eq!(s("RESET larder.read_your_writes"), Some(true));
        assert_eq!(s("SET LOCAL larder.read_your_writes = off"), None);
        assert_eq!(s("SET search_path = a"), None);
        assert_eq!(s("SET larder.read_your_writes = maybe"), None);
    }

    #[test]
    fn write_targets() {
        let t = |s: &str| write_target(s);
        assert_eq!(t("INSERT INTO items VALUES (1)"), Some("items".into()));
        assert_eq!(
            t("insert into public.Items(id) values (1)"),
            Some("items".into())
        );
        assert_eq!(t("UPDATE ONLY s.\"Odd\" SET a = 1"), Some("Odd".into()));
        assert_eq!(t("delete from t;"), Some("t".into()));
        assert_eq!(t("TRUNCATE TABLE a"), Some("a".into()));
        assert_eq!(t("COPY t FROM STDIN"), Some("t".into()));
        assert_eq!(t("copy t (a, b) from stdin"), None);
        assert_eq!(t("COPY t TO STDOUT"), None);
        assert_eq!(t("TRUNCATE a, b"), None);
        assert_eq!(t("WITH x AS (DELETE FROM t RETURNING *) SELECT 1"), None);
        assert_eq!(t("/* c */ INSERT INTO t VALUES (1)"), None);
        assert_eq!(t("INSERT INTO \"a\"\"b\" VALUES (1)"), None);
        assert_eq!(
            t("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE"),
            None
        );
    }
}
