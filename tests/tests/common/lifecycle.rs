//! The cache life-cycle suites' harness (`pg_cache_lifecycle`, `pg_cache_table_changes`,
//! `pg_cache_routing`): a Larder deployment (database, deployment name and storage dir, so
//! the suites run in parallel) and the client helpers that compare it with Postgres.
//!
//! Consistency rule used throughout: after a direct write commits, read
//! `pg_current_wal_lsn()` directly and wait until Larder's "Replication Offset" reaches it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder_testkit::{LarderProcess, PgServer};
use tokio_postgres::Client;

use super::client::*;

// ------------------------------------------------------------------------------------------
// Harness: a deployment (database + deployment name + storage dir) and client helpers.
// ------------------------------------------------------------------------------------------

/// A private directory removed on drop (Larder's `--storage-dir`).
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("LARDER_TESTKIT_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "larder-lifecycle-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating the storage dir");
        ScratchDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One Larder deployment in front of one fresh database. Larder processes are started with
/// [`Deployment::start`] and always reuse the same storage dir and deployment name. Declare the
/// `Deployment` before its `LarderProcess`es so they are killed first; on drop the slot is
/// removed from the upstream (inactive slots would otherwise pile up on the shared server).
pub struct Deployment<'a> {
    pub pg: &'a PgServer,
    pub db: String,
    pub storage: ScratchDir,
    pub extra: Vec<String>,
}

impl<'a> Deployment<'a> {
    pub fn new(pg: &'a PgServer, prefix: &str, extra: &[&str]) -> Deployment<'a> {
        let db = pg
            .create_database(prefix)
            .unwrap_or_else(|e| panic!("creating database: {e:#}"));
        Deployment {
            pg,
            storage: ScratchDir::new(&db),
            db,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The deployment name is the (unique) database name.
    pub fn name(&self) -> &str {
        &self.db
    }

    pub fn slot(&self) -> String {
        format!("larder_{}", self.db)
    }

    pub fn direct_url(&self) -> String {
        self.pg.url(&self.db)
    }

    pub fn larder_url(&self, larder: &LarderProcess) -> String {
        larder.pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }

    pub fn psql(&self, sql: &str) -> String {
        self.pg
            .psql(&self.db, sql)
            .unwrap_or_else(|e| panic!("psql: {e:#}"))
    }

    /// Starts `larder` (blocking; call through `block_in_place` from async code).
    pub fn start(&self) -> LarderProcess {
        let url = self.direct_url();
        let storage = self.storage.path().display().to_string();
        let mut args: Vec<&str> = vec![
            "--upstream-db-url",
            &url,
            "--deployment",
            self.name(),
            "--storage-dir",
            &storage,
            "--shutdown-grace-ms",
            "2000",
        ];
        args.extend(self.extra.iter().map(|s| s.as_str()));
        LarderProcess::spawn(&args, &[]).unwrap_or_else(|e| panic!("starting larder: {e:#}"))
    }
}

impl Drop for Deployment<'_> {
    fn drop(&mut self) {
        let sql = format!(
            "SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name) \
             FROM pg_replication_slots WHERE slot_name = '{}' AND NOT active) d; \
             SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            self.slot(),
            self.slot()
        );
        for _ in 0..40 {
            match self.pg.psql("postgres", &sql) {
                Ok(out) if out.lines().last() == Some("0") => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                Err(_) => return,
            }
        }
    }
}

pub fn start(d: &Deployment<'_>) -> LarderProcess {
    tokio::task::block_in_place(|| d.start())
}

pub fn psql(d: &Deployment<'_>, sql: &str) -> String {
    tokio::task::block_in_place(|| d.psql(sql))
}

/// Runs `sql` through Larder until the cache answers (the first read of an unqualified table
/// name in a session goes upstream to resolve it; after a restart, or after the session's own
/// write, caches wait until replication is known to have caught up). Panics if the cache does not
/// answer within a few tries, or within 20 s of waiting for replication.
pub async fn via_cache(c: &Client, sql: &str) -> Answer {
    let mut tries = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        let a = q(c, sql).await;
        let (dest, reason) = explain_last(c).await;
        if dest == "cache" {
            return a;
        }
        tries += 1;
        // Replication behind the upstream, or behind this session's own last write (read
        // your writes): both pass once it applies them.
        let catching_up = reason.contains("has not caught up")
            || reason.contains("waiting for replication to apply this session's own writes");
        if (!catching_up && tries >= 4) || Instant::now() > deadline {
            break reason;
        }
        if catching_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    panic!("{sql} was not answered by the cache: {why}");
}

/// Like [`via_cache`] but keeps trying until `WAIT` (a cache being rebuilt or restored).
pub async fn eventually_via_cache(c: &Client, sql: &str) -> Answer {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = q(c, sql).await;
        let (dest, reason) = explain_last(c).await;
        if dest == "cache" {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} never came from the cache; last reason: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts Larder's answer equals the direct one (rows in any order); returns where Larder's
/// answer came from.
pub async fn same_as_direct(larder: &Client, direct: &Client, sql: &str) -> (String, String) {
    let through = q(larder, sql).await.sorted();
    let route = explain_last(larder).await;
    let want = q(direct, sql).await.sorted();
    assert_eq!(
        through, want,
        "{sql}: answer through larder ({route:?}) differs from the direct answer"
    );
    route
}

/// After a DDL (which the change stream does not carry), Larder's answer must become equal to
/// the direct one within a few seconds, without any DML; stale answers seen are reported on
/// stderr (the strict check is `schema_change_is_not_served_stale_after_catch_up`).
pub async fn converges_to_direct(larder: &Client, direct: &Client, sql: &str, step: &str) {
    wait_caught_up(direct, larder).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stale = 0;
    loop {
        let through = try_query(larder, sql).await.map(Answer::sorted);
        let route = explain_last(larder).await;
        let want = try_query(direct, sql).await.map(Answer::sorted);
        let same = match (&through, &want) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a.code() == b.code(),
            _ => false,
        };
        if same {
            eprintln!("after {step}: {sql} agrees via {route:?} ({stale} stale answers before)");
            return;
        }
        stale += 1;
        assert!(
            Instant::now() < deadline,
            "after {step}: {sql} through larder {through:?} via {route:?} never matched {want:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Asserts the cache answers `sql` and equals the direct answer.
pub async fn cached_same_as_direct(larder: &Client, direct: &Client, sql: &str) {
    let through = via_cache(larder, sql).await.sorted();
    let want = q(direct, sql).await.sorted();
    assert_eq!(
        through, want,
        "{sql}: cached answer differs from the direct answer"
    );
}

/// Runs each query through Larder (twice if the first read resolved the table name) and
/// directly; returns a description of every answer that differs or did not come from the
/// cache. Lets a test report all wrong answers at once.
pub async fn cache_mismatches(larder: &Client, direct: &Client, sqls: &[String]) -> Vec<String> {
    let mut wrong = Vec::new();
    for sql in sqls {
        let mut through = q(larder, sql).await.sorted();
        let mut route = explain_last(larder).await;
        // Passing states (a role's privileges being learned, a cache filling on its first
        // read after a restart) end within a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while route.0 != "cache" && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            through = q(larder, sql).await.sorted();
            route = explain_last(larder).await;
        }
        let want = q(direct, sql).await.sorted();
        if through != want || route.0 != "cache" {
            wrong.push(format!(
                "{sql}: via {route:?}\n  larder {:?}\n  direct {:?}",
                through.rows, want.rows
            ));
        }
    }
    wrong
}

pub async fn show_caches(c: &Client) -> Answer {
    q(c, "SHOW CACHES").await
}

/// The row of SHOW LARDER TABLES for `table` (`"schema"."name"`), if listed.
pub async fn table_status(c: &Client, table: &str) -> Option<(String, String)> {
    let a = q(c, "SHOW LARDER TABLES").await;
    (0..a.rows.len())
        .find(|&i| a.cell(i, "table") == table)
        .map(|i| {
            (
                a.cell(i, "status").to_string(),
                a.cell(i, "description").to_string(),
            )
        })
}

pub async fn wait_table_status(c: &Client, table: &str, status: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = table_status(c, table).await;
        if let Some((s, d)) = &got {
            if s == status {
                return d.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{table} never became {status}: {got:?}; all: {:?}",
            q(c, "SHOW LARDER TABLES").await
        );
        tokio::time::sleep(POLL).await;
    }
}

pub fn drop_quietly(larder: LarderProcess) {
    tokio::task::block_in_place(|| drop(larder));
}
