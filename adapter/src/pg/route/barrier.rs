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
        // A multi-statement string may hold DDL after a first harmless statement.
        let multi = is_multi_statement(sql);
        let ddl = kind == StatementKind::Other || multi;
        let write = kind == StatementKind::Write
            && write_target(sql).is_none_or(|t| self.backend.caches_relation_named(&t));
        if multi {
            self.barrier_at_commit = true;
        }
        let ends_transaction = matches!(
            kind,
            StatementKind::Transaction(TransactionKind::Commit | TransactionKind::Rollback)
        );
        let in_transaction = session.transaction_status() != TransactionStatus::Idle;
        if (ddl || write) && in_transaction {
            self.barrier_at_commit = true;
            self.wrote_in_transaction |= write;
        }
        if ends_transaction && !multi {
            self.wrote_in_transaction = false;
            if !std::mem::take(&mut self.barrier_at_commit) {
                return;
            }
        } else if !ddl && !write {
            return;
        }
        capture_query(
            dispatch,
            "SELECT pg_catalog.pg_current_wal_lsn()::text",
            &[],
        );
        self.captures.push_back(CaptureKind::WalPosition { ddl });
        self.barrier_lsn = Some(0);
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
