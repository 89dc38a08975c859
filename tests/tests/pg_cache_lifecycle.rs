//! End-to-end: the life cycle of caches against a real Postgres.
//!
//! Why: a cache is only useful if it is *never* wrong. These tests drive a real `larder`
//! process (with its own database, deployment name and storage dir, so they run in parallel)
//! through what happens to a deployment over time — graceful restarts, `kill -9` under write
//! load, TRUNCATE, a lost replication slot, tables created and reshaped while streaming,
//! tables Larder cannot replicate, an upstream restart — and through the routing rules that
//! decide when a cache may answer (transactions, other databases, `search_path`). Every
//! check compares what a client sees through Larder with what the same statement returns
//! directly from Postgres, and asks `EXPLAIN LAST STATEMENT` where the answer came from.
//!
//! Consistency rule used throughout (see docs on waiting): after a direct write commits, read
//! `pg_current_wal_lsn()` directly and wait until Larder's "Replication Offset" reaches it.
//!
//! Tests marked `#[ignore = "bug: ..."]` pin down known product bugs and fail until they are
//! fixed: run them with `cargo test -p larder-testkit --test pg_cache_lifecycle -- --ignored`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::client::*;
use larder_testkit::{LarderProcess, PgServer};
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

// ------------------------------------------------------------------------------------------
// Harness: a deployment (database + deployment name + storage dir) and client helpers.
// ------------------------------------------------------------------------------------------

/// A private directory removed on drop (Larder's `--storage-dir`).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
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

    fn path(&self) -> &Path {
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
struct Deployment<'a> {
    pg: &'a PgServer,
    db: String,
    storage: ScratchDir,
    extra: Vec<String>,
}

impl<'a> Deployment<'a> {
    fn new(pg: &'a PgServer, prefix: &str, extra: &[&str]) -> Deployment<'a> {
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
    fn name(&self) -> &str {
        &self.db
    }

    fn slot(&self) -> String {
        format!("larder_{}", self.db)
    }

    fn direct_url(&self) -> String {
        self.pg.url(&self.db)
    }

    fn larder_url(&self, larder: &LarderProcess) -> String {
        larder.pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }

    fn psql(&self, sql: &str) -> String {
        self.pg
            .psql(&self.db, sql)
            .unwrap_or_else(|e| panic!("psql: {e:#}"))
    }

    /// Starts `larder` (blocking; call through `block_in_place` from async code).
    fn start(&self) -> LarderProcess {
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

fn start(d: &Deployment<'_>) -> LarderProcess {
    tokio::task::block_in_place(|| d.start())
}

fn psql(d: &Deployment<'_>, sql: &str) -> String {
    tokio::task::block_in_place(|| d.psql(sql))
}

/// Runs `sql` through Larder until the cache answers (the first read of an unqualified table
/// name in a session goes upstream to resolve it; after a restart, caches wait until
/// replication is known to have caught up with the upstream). Panics if the cache does not
/// answer within a few tries, or within 20 s of waiting for replication.
async fn via_cache(c: &Client, sql: &str) -> Answer {
    let mut tries = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        let a = q(c, sql).await;
        let (dest, reason) = explain_last(c).await;
        if dest == "cache" {
            return a;
        }
        tries += 1;
        let catching_up = reason.contains("has not caught up");
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
async fn eventually_via_cache(c: &Client, sql: &str) -> Answer {
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
async fn same_as_direct(larder: &Client, direct: &Client, sql: &str) -> (String, String) {
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
async fn converges_to_direct(larder: &Client, direct: &Client, sql: &str, step: &str) {
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
async fn cached_same_as_direct(larder: &Client, direct: &Client, sql: &str) {
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
async fn cache_mismatches(larder: &Client, direct: &Client, sqls: &[String]) -> Vec<String> {
    let mut wrong = Vec::new();
    for sql in sqls {
        let mut through = q(larder, sql).await.sorted();
        let mut route = explain_last(larder).await;
        if route.0 != "cache" {
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

async fn show_caches(c: &Client) -> Answer {
    q(c, "SHOW CACHES").await
}

/// The row of SHOW LARDER TABLES for `table` (`"schema"."name"`), if listed.
async fn table_status(c: &Client, table: &str) -> Option<(String, String)> {
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

async fn wait_table_status(c: &Client, table: &str, status: &str) -> String {
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

fn drop_quietly(larder: LarderProcess) {
    tokio::task::block_in_place(|| drop(larder));
}

// ------------------------------------------------------------------------------------------
// Restarts
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_stored_position_and_keeps_caches() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "restart", &[]));
    psql(
        &d,
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
         INSERT INTO items SELECT g, 'item ' || g, g * 10 FROM generate_series(1, 50) g;",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    let created = q(
        &lc,
        "CREATE CACHE items_by_id FROM SELECT * FROM items WHERE id = $1",
    )
    .await;
    let query_id = created.cell(0, "query_id").to_string();
    assert!(query_id.starts_with("q_"), "{created:?}");
    q(
        &lc,
        "CREATE CACHE ALWAYS items_by_name FROM SELECT id, qty FROM items WHERE name = $1",
    )
    .await;
    q(
        &lc,
        "CREATE CACHE dropped_one FROM SELECT name FROM items WHERE qty = $1",
    )
    .await;
    command(&lc, "DROP CACHE dropped_one").await;
    for id in [1, 7, 50] {
        cached_same_as_direct(
            &lc,
            &direct,
            &format!("SELECT * FROM items WHERE id = {id}"),
        )
        .await;
    }
    let first_log = larder.log();
    assert!(
        first_log.contains("snapshot complete"),
        "first start took no snapshot:\n{first_log}"
    );

    // Graceful stop, with a client still connected: exit code 0.
    larder.sigterm();
    let st = tokio::task::block_in_place(|| larder.wait_exit(Duration::from_secs(30)))
        .unwrap_or_else(|| panic!("larder did not exit on SIGTERM:\n{}", larder.log()));
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM exit status {st}:\n{}",
        larder.log()
    );
    drop_quietly(larder);
    drop(lc);

    // Writes while Larder is down, including a primary key change.
    q(
        &direct,
        "INSERT INTO items SELECT g, 'late ' || g, g FROM generate_series(51, 60) g",
    )
    .await;
    q(
        &direct,
        "UPDATE items SET qty = -1, name = 'changed' WHERE id = 7",
    )
    .await;
    q(&direct, "DELETE FROM items WHERE id = 50").await;
    q(&direct, "UPDATE items SET id = 500 WHERE id = 10").await;

    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    let log = larder.log();
    assert!(
        log.contains("resuming replication from the stored position"),
        "restart did not resume:\n{log}"
    );
    assert!(
        !log.contains("snapshot complete"),
        "restart took a new snapshot:\n{log}"
    );
    // The cache survives the restart under the same query id.
    let deadline = Instant::now() + WAIT;
    loop {
        let caches = show_caches(&lc).await;
        if caches.rows.len() >= 2 {
            assert_eq!(
                caches.rows.len(),
                2,
                "a dropped cache came back: {caches:?}"
            );
            let row = |name: &str| {
                (0..2)
                    .find(|&i| caches.cell(i, "name") == name)
                    .unwrap_or_else(|| panic!("{name} not restored: {caches:?}"))
            };
            assert_eq!(caches.cell(row("items_by_id"), "query_id"), query_id);
            let always = caches.cell(row("items_by_name"), "properties");
            assert!(always.contains("always"), "{caches:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cache not restored after restart: {caches:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    wait_caught_up(&direct, &lc).await;
    for id in [1, 7, 10, 50, 51, 60, 500] {
        cached_same_as_direct(
            &lc,
            &direct,
            &format!("SELECT * FROM items WHERE id = {id}"),
        )
        .await;
    }
    let a = via_cache(&lc, "SELECT * FROM items WHERE id = 7").await;
    assert_eq!(a.cell(0, "qty"), "-1");
    cached_same_as_direct(
        &lc,
        &direct,
        "SELECT id, qty FROM items WHERE name = 'late 55'",
    )
    .await;
    drop_quietly(larder);
}

/// Random single-row writes directly upstream, Larder killed with SIGKILL a few times:
/// afterwards every cached answer equals upstream. The keyless REPLICA IDENTITY FULL table
/// makes a change applied twice (or lost) visible as a wrong duplicate count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_writes_loses_nothing_and_applies_nothing_twice() {
    const PK_KEYS: i32 = 40;
    const DUP_KEYS: i32 = 12;
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "kill9", &[]));
    psql(
        &d,
        &format!(
            "CREATE TABLE kp (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO kp SELECT g, g FROM generate_series(1, {PK_KEYS}) g;
             CREATE TABLE kd (k int NOT NULL, v int NOT NULL);
             ALTER TABLE kd REPLICA IDENTITY FULL;
             INSERT INTO kd SELECT g % {DUP_KEYS} + 1, g % 2 FROM generate_series(1, 60) g;"
        ),
    );
    let direct = connect(&d.direct_url()).await;
    let mut larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(
        &lc,
        "CREATE CACHE kp_by_id FROM SELECT * FROM kp WHERE id = $1",
    )
    .await;
    q(
        &lc,
        "CREATE CACHE kd_by_k FROM SELECT * FROM kd WHERE k = $1",
    )
    .await;
    drop(lc);

    let seed: u64 = rand::random();
    eprintln!("kill9 test seed: {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let stop = stop.clone();
        let writes = writes.clone();
        let url = d.direct_url();
        tokio::spawn(async move {
            let c = connect(&url).await;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) {
                let sql = match rng.gen_range(0..6) {
                    0 => format!(
                        "INSERT INTO kp VALUES ({}, {}) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                        rng.gen_range(1..=PK_KEYS),
                        rng.gen_range(0..1000)
                    ),
                    1 => format!(
                        "UPDATE kp SET v = v + 1 WHERE id = {}",
                        rng.gen_range(1..=PK_KEYS)
                    ),
                    2 => format!("DELETE FROM kp WHERE id = {}", rng.gen_range(1..=PK_KEYS)),
                    3 => format!(
                        "INSERT INTO kd VALUES ({}, {})",
                        rng.gen_range(1..=DUP_KEYS),
                        rng.gen_range(0..3)
                    ),
                    4 => format!(
                        "UPDATE kd SET v = {} WHERE ctid = \
                         (SELECT ctid FROM kd WHERE k = {} LIMIT 1)",
                        rng.gen_range(0..3),
                        rng.gen_range(1..=DUP_KEYS)
                    ),
                    _ => format!(
                        "DELETE FROM kd WHERE ctid = (SELECT ctid FROM kd WHERE k = {} LIMIT 1)",
                        rng.gen_range(1..=DUP_KEYS)
                    ),
                };
                c.batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("writer: {sql}: {}", err_text(&e)));
                writes.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..4))).await;
            }
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
    const KILLS: usize = 4;
    for round in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1200))).await;
        larder.kill9();
        let st = tokio::task::block_in_place(|| larder.wait_exit(Duration::from_secs(10)));
        assert!(st.is_some(), "larder survived SIGKILL in round {round}");
        let log = larder.log();
        // A fresh snapshot would hide changes lost or applied twice: every restart resumes.
        assert!(
            round == 0 || !log.contains("snapshot complete"),
            "restart {round} took a fresh snapshot:\n{log}"
        );
        drop_quietly(larder);
        larder = start(&d);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer task");
    let total = writes.load(Ordering::Relaxed);
    assert!(total > 50, "the writer made only {total} writes");

    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    let deadline = Instant::now() + WAIT;
    // Restored and filled (a busy machine may still be filling them when they are listed).
    loop {
        let caches = show_caches(&lc).await;
        let filling = caches.rows.iter().any(|r| {
            r.iter()
                .flatten()
                .any(|cell| cell.contains("filling: its queries go upstream"))
        });
        if caches.rows.len() >= 2 && !filling {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "caches not restored after kill -9: {caches:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let log = larder.log();
    assert!(
        log.contains("resuming replication from the stored position")
            && !log.contains("snapshot complete"),
        "the final start did not resume:\n{log}"
    );
    wait_caught_up(&direct, &lc).await;
    let sqls: Vec<String> = (1..=PK_KEYS)
        .map(|id| format!("SELECT * FROM kp WHERE id = {id}"))
        .chain((1..=DUP_KEYS).map(|k| format!("SELECT * FROM kd WHERE k = {k}")))
        .collect();
    let wrong = cache_mismatches(&lc, &direct, &sqls).await;
    assert!(
        wrong.is_empty(),
        "after {KILLS} kills (seed {seed}), cached answers differ from upstream:\n{}",
        wrong.join("\n")
    );
    eprintln!("kill9 test: {total} writes across {KILLS} kills");
    drop_quietly(larder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_missing_at_start_takes_a_fresh_snapshot() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "noslot", &[]));
    psql(
        &d,
        "CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric(12,2));
         INSERT INTO acct SELECT g, 'o' || (g % 4), g * 1.5 FROM generate_series(1, 40) g;",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(
        &lc,
        "CREATE CACHE by_owner FROM SELECT id, balance FROM acct WHERE owner = $1",
    )
    .await;
    cached_same_as_direct(
        &lc,
        &direct,
        "SELECT id, balance FROM acct WHERE owner = 'o1'",
    )
    .await;
    drop(lc);
    larder.sigterm();
    let st = tokio::task::block_in_place(|| larder.wait_exit(Duration::from_secs(30)));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", larder.log());
    drop_quietly(larder);

    // The slot disappears (e.g. an operator dropped it) and data changes meanwhile.
    let dropped = q(
        &direct,
        &format!("SELECT pg_drop_replication_slot('{}')", d.slot()),
    )
    .await;
    assert_eq!(dropped.rows.len(), 1);
    q(
        &direct,
        "UPDATE acct SET balance = balance + 100 WHERE owner = 'o1'",
    )
    .await;
    q(&direct, "DELETE FROM acct WHERE id = 2").await;
    q(
        &direct,
        "INSERT INTO acct VALUES (41, 'o1', 0.25), (42, 'o9', 9)",
    )
    .await;

    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    let log = larder.log();
    assert!(
        log.contains("snapshot complete"),
        "no fresh snapshot without a slot:\n{log}"
    );
    assert!(
        !log.contains("resuming replication from the stored position"),
        "resumed although the slot was gone:\n{log}"
    );
    wait_caught_up(&direct, &lc).await;
    for owner in ["o0", "o1", "o2", "o3", "o9"] {
        let sql = format!("SELECT id, balance FROM acct WHERE owner = '{owner}'");
        let through = eventually_via_cache(&lc, &sql).await.sorted();
        assert_eq!(through, q(&direct, &sql).await.sorted(), "{sql}");
    }
    // And it keeps streaming afterwards.
    q(&direct, "UPDATE acct SET balance = 7 WHERE id = 41").await;
    wait_caught_up(&direct, &lc).await;
    cached_same_as_direct(
        &lc,
        &direct,
        "SELECT id, balance FROM acct WHERE owner = 'o1'",
    )
    .await;
    drop_quietly(larder);
}

// ------------------------------------------------------------------------------------------
// Data and schema changes while streaming
// ------------------------------------------------------------------------------------------

const TRUNCATE_SETUP: &str = "CREATE TABLE tr (id int PRIMARY KEY, g int NOT NULL, note text);
     INSERT INTO tr SELECT i, i % 3, 'n' || i FROM generate_series(1, 30) i;
     CREATE TABLE trk (g int NOT NULL, v int NOT NULL);
     ALTER TABLE trk REPLICA IDENTITY FULL;
     INSERT INTO trk SELECT i % 3, 1 FROM generate_series(1, 12) i;";

/// Every group of the PK table `tr` and the keyless table `trk`, cached and equal to direct.
async fn check_truncate_caches(lc: &Client, direct: &Client) {
    let sqls: Vec<String> = (0..3)
        .flat_map(|g| ["tr", "trk"].map(|t| format!("SELECT * FROM {t} WHERE g = {g}")))
        .collect();
    let wrong = cache_mismatches(lc, direct, &sqls).await;
    assert!(
        wrong.is_empty(),
        "cached answers differ:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_empties_the_cache_and_inserts_refill_it() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "trunc", &[]));
    psql(&d, TRUNCATE_SETUP);
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(&lc, "CREATE CACHE FROM SELECT * FROM tr WHERE g = $1").await;
    q(&lc, "CREATE CACHE FROM SELECT * FROM trk WHERE g = $1").await;
    check_truncate_caches(&lc, &direct).await;

    q(&direct, "TRUNCATE tr, trk").await;
    wait_caught_up(&direct, &lc).await;
    for g in 0..3 {
        let a = via_cache(&lc, &format!("SELECT * FROM tr WHERE g = {g}")).await;
        assert!(a.rows.is_empty(), "rows after TRUNCATE: {a:?}");
        let a = via_cache(&lc, &format!("SELECT * FROM trk WHERE g = {g}")).await;
        assert!(a.rows.is_empty(), "rows after TRUNCATE: {a:?}");
    }

    q(
        &direct,
        "INSERT INTO tr VALUES (1, 1, 'again'), (2, 2, 'b'), (3, 1, 'c');
         INSERT INTO trk VALUES (1, 5), (1, 5), (2, 6)",
    )
    .await;
    wait_caught_up(&direct, &lc).await;
    check_truncate_caches(&lc, &direct).await;
    let a = via_cache(&lc, "SELECT * FROM tr WHERE g = 1").await;
    assert_eq!(a.rows.len(), 2, "{a:?}");

    // TRUNCATE then inserts in one transaction.
    q(
        &direct,
        "BEGIN; TRUNCATE tr, trk;
         INSERT INTO tr VALUES (7, 0, 'fresh'), (8, 1, 'fresh');
         INSERT INTO trk VALUES (0, 9), (0, 9); COMMIT",
    )
    .await;
    wait_caught_up(&direct, &lc).await;
    check_truncate_caches(&lc, &direct).await;
    drop_quietly(larder);
}

/// TRUNCATE in the middle of a transaction that also inserts and deletes rows of the table:
/// only what the transaction wrote after the TRUNCATE survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_inside_a_transaction_with_other_changes() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "trunctx", &[]));
    psql(&d, TRUNCATE_SETUP);
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(&lc, "CREATE CACHE FROM SELECT * FROM tr WHERE g = $1").await;
    q(&lc, "CREATE CACHE FROM SELECT * FROM trk WHERE g = $1").await;
    check_truncate_caches(&lc, &direct).await;
    q(
        &direct,
        "BEGIN;
         INSERT INTO tr VALUES (100, 1, 'before truncate');
         DELETE FROM tr WHERE id = 2;
         INSERT INTO trk VALUES (1, 7);
         DELETE FROM trk WHERE ctid = (SELECT ctid FROM trk WHERE g = 2 LIMIT 1);
         TRUNCATE tr, trk;
         INSERT INTO tr VALUES (200, 1, 'after truncate');
         INSERT INTO trk VALUES (1, 8);
         COMMIT",
    )
    .await;
    wait_caught_up(&direct, &lc).await;
    check_truncate_caches(&lc, &direct).await;
    drop_quietly(larder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_while_streaming_are_replicated_and_cacheable() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "newtab", &[]));
    psql(&d, "CREATE TABLE seed (id int PRIMARY KEY)");
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    assert_eq!(table_status(&lc, "\"public\".\"later\"").await, None);

    q(
        &direct,
        "CREATE TABLE later (id int PRIMARY KEY, label text NOT NULL, score float8)",
    )
    .await;
    q(
        &direct,
        "INSERT INTO later SELECT g, 'l' || g, g / 4.0 FROM generate_series(1, 20) g",
    )
    .await;
    wait_caught_up(&direct, &lc).await;
    wait_table_status(&lc, "\"public\".\"later\"", "Online").await;
    q(
        &lc,
        "CREATE CACHE later_by_label FROM SELECT id, score FROM later WHERE label = $1",
    )
    .await;
    cached_same_as_direct(
        &lc,
        &direct,
        "SELECT id, score FROM later WHERE label = 'l3'",
    )
    .await;

    // Rows written after the cache was created.
    q(
        &direct,
        "INSERT INTO later VALUES (21, 'l3', 99.5), (22, 'new', -1)",
    )
    .await;
    q(&direct, "UPDATE later SET score = 0.125 WHERE id = 3").await;
    wait_caught_up(&direct, &lc).await;
    let a = via_cache(&lc, "SELECT id, score FROM later WHERE label = 'l3'").await;
    assert_eq!(a.rows.len(), 2, "{a:?}");
    cached_same_as_direct(
        &lc,
        &direct,
        "SELECT id, score FROM later WHERE label = 'l3'",
    )
    .await;
    cached_same_as_direct(
        &lc,
        &direct,
        "SELECT id, score FROM later WHERE label = 'new'",
    )
    .await;
    drop_quietly(larder);
}

/// After each DDL step: Larder's answer equals the direct one (wherever it came from), and
/// once a DML after the change has streamed, the rebuilt cache answers with the new shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_never_serve_rows_of_the_old_shape() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "ddl", &[]));
    psql(
        &d,
        "CREATE TABLE s (id int PRIMARY KEY, a int, b text);
         INSERT INTO s SELECT g, g * 2, 'b' || g FROM generate_series(1, 10) g;",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(
        &lc,
        "CREATE CACHE s_star FROM SELECT * FROM s WHERE id = $1",
    )
    .await;
    q(
        &lc,
        "CREATE CACHE s_b FROM SELECT id, b FROM s WHERE id = $1",
    )
    .await;
    const STAR: &str = "SELECT * FROM s WHERE id = 3";
    cached_same_as_direct(&lc, &direct, STAR).await;
    cached_same_as_direct(&lc, &direct, "SELECT id, b FROM s WHERE id = 3").await;

    // Step 1: ADD COLUMN with a default. Right after the DDL (by the differential rule)
    // nothing of the old shape may be served.
    q(&direct, "ALTER TABLE s ADD COLUMN c int DEFAULT 7").await;
    wait_caught_up(&direct, &lc).await;
    converges_to_direct(&lc, &direct, STAR, "ADD COLUMN").await;
    q(&direct, "INSERT INTO s VALUES (100, 1, 'new', 8)").await;
    wait_caught_up(&direct, &lc).await;
    let a = eventually_via_cache(&lc, STAR).await;
    assert_eq!(a, q(&direct, STAR).await, "cache rebuilt after ADD COLUMN");
    assert_eq!(a.cell(0, "c"), "7", "existing rows must show the default");
    cached_same_as_direct(&lc, &direct, "SELECT * FROM s WHERE id = 100").await;
    cached_same_as_direct(&lc, &direct, "SELECT id, b FROM s WHERE id = 3").await;

    // Step 2: DROP COLUMN b. The cache that reads b cannot be rebuilt: it must stop serving
    // with its reason in SHOW CACHES; `SELECT *` is rebuilt without b.
    q(&direct, "ALTER TABLE s DROP COLUMN b").await;
    wait_caught_up(&direct, &lc).await;
    converges_to_direct(&lc, &direct, STAR, "DROP COLUMN").await;
    q(&direct, "UPDATE s SET a = a + 1 WHERE id = 1").await;
    wait_caught_up(&direct, &lc).await;
    let a = eventually_via_cache(&lc, STAR).await;
    assert_eq!(a, q(&direct, STAR).await, "cache rebuilt after DROP COLUMN");
    assert!(!a.columns.contains(&"b".to_string()), "{a:?}");
    cached_same_as_direct(&lc, &direct, "SELECT * FROM s WHERE id = 1").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let caches = show_caches(&lc).await;
        let i = (0..caches.rows.len())
            .find(|&i| caches.cell(i, "name") == "s_b")
            .expect("s_b listed");
        let props = caches.cell(i, "properties").to_string();
        if props.contains("not serving") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "s_b still serving after DROP COLUMN b: {caches:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let (code_l, _) = query_err(&lc, "SELECT id, b FROM s WHERE id = 3").await;
    let (code_d, _) = query_err(&direct, "SELECT id, b FROM s WHERE id = 3").await;
    assert_eq!(code_l, code_d);

    // Step 3: RENAME COLUMN: the column name in the result must change too.
    q(&direct, "ALTER TABLE s RENAME COLUMN a TO a2").await;
    wait_caught_up(&direct, &lc).await;
    converges_to_direct(&lc, &direct, STAR, "RENAME COLUMN").await;
    q(&direct, "UPDATE s SET a2 = 0 WHERE id = 2").await;
    wait_caught_up(&direct, &lc).await;
    let a = eventually_via_cache(&lc, STAR).await;
    assert_eq!(
        a,
        q(&direct, STAR).await,
        "cache rebuilt after RENAME COLUMN"
    );
    assert!(a.columns.contains(&"a2".to_string()), "{a:?}");
    cached_same_as_direct(&lc, &direct, "SELECT * FROM s WHERE id = 2").await;

    // Step 4: DROP TABLE + CREATE TABLE with the same name and another shape.
    q(
        &direct,
        "DROP TABLE s; CREATE TABLE s (id int PRIMARY KEY, z text NOT NULL)",
    )
    .await;
    wait_caught_up(&direct, &lc).await;
    converges_to_direct(&lc, &direct, STAR, "DROP + CREATE TABLE").await;
    q(
        &direct,
        "INSERT INTO s SELECT g, 'z' || g FROM generate_series(1, 5) g",
    )
    .await;
    wait_caught_up(&direct, &lc).await;
    wait_table_status(&lc, "\"public\".\"s\"", "Online").await;
    let a = eventually_via_cache(&lc, STAR).await;
    assert_eq!(a, q(&direct, STAR).await, "cache rebuilt after re-creation");
    assert_eq!(a.columns, vec!["id".to_string(), "z".to_string()]);
    for id in 1..=5 {
        cached_same_as_direct(&lc, &direct, &format!("SELECT * FROM s WHERE id = {id}")).await;
    }
    // The table keeps replicating.
    q(&direct, "UPDATE s SET z = 'changed' WHERE id = 4").await;
    wait_caught_up(&direct, &lc).await;
    cached_same_as_direct(&lc, &direct, "SELECT * FROM s WHERE id = 4").await;
    drop_quietly(larder);
}

/// The differential rule must hold for DDL too: once Larder's offset has passed the DDL's
/// commit, a cached `SELECT *` must not return rows of the old shape; and a session that
/// altered the table through Larder must not read the old shape right afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_change_is_not_served_stale_after_catch_up() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "ddlnow", &[]));
    psql(
        &d,
        "CREATE TABLE w1 (id int PRIMARY KEY, a int);
         CREATE TABLE w2 (id int PRIMARY KEY, a int);
         INSERT INTO w1 SELECT g, g FROM generate_series(1, 5) g;
         INSERT INTO w2 SELECT g, g FROM generate_series(1, 5) g;",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(&lc, "CREATE CACHE FROM SELECT * FROM w1 WHERE id = $1").await;
    q(&lc, "CREATE CACHE FROM SELECT * FROM w2 WHERE id = $1").await;
    cached_same_as_direct(&lc, &direct, "SELECT * FROM w1 WHERE id = 1").await;
    cached_same_as_direct(&lc, &direct, "SELECT * FROM w2 WHERE id = 1").await;
    let mut stale = Vec::new();

    // DDL directly upstream, then the differential rule.
    q(&direct, "ALTER TABLE w1 ADD COLUMN extra text DEFAULT 'x'").await;
    wait_caught_up(&direct, &lc).await;
    for id in 1..=5 {
        let sql = format!("SELECT * FROM w1 WHERE id = {id}");
        let got = q(&lc, &sql).await;
        let route = explain_last(&lc).await;
        if got != q(&direct, &sql).await {
            stale.push(format!(
                "direct DDL, after catch-up: {sql} -> {got:?} via {route:?}"
            ));
        }
    }

    // DDL through Larder, read right away on the same session.
    q(&lc, "ALTER TABLE w2 ADD COLUMN extra text DEFAULT 'x'").await;
    for id in 1..=5 {
        let sql = format!("SELECT * FROM w2 WHERE id = {id}");
        let got = q(&lc, &sql).await;
        let route = explain_last(&lc).await;
        if got != q(&direct, &sql).await {
            stale.push(format!(
                "DDL through larder: {sql} -> {got:?} via {route:?}"
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "rows of the old shape served:\n{}",
        stale.join("\n")
    );
    drop_quietly(larder);
}

/// A table altered while Larder is down: after the restart the cache on it is still listed
/// (it may wait for the table's next change), never serves the old shape, and serves the new
/// shape once the change has streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_change_while_down_keeps_the_cache() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "ddldown", &[]));
    psql(
        &d,
        "CREATE TABLE m (id int PRIMARY KEY, a int);
         INSERT INTO m SELECT g, g FROM generate_series(1, 5) g;",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(
        &lc,
        "CREATE CACHE m_star FROM SELECT * FROM m WHERE id = $1",
    )
    .await;
    cached_same_as_direct(&lc, &direct, "SELECT * FROM m WHERE id = 1").await;
    drop(lc);
    larder.sigterm();
    let st = tokio::task::block_in_place(|| larder.wait_exit(Duration::from_secs(30)));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", larder.log());
    drop_quietly(larder);

    q(&direct, "ALTER TABLE m ADD COLUMN c text DEFAULT 'dflt'").await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut problems = Vec::new();
    for id in 1..=3 {
        let sql = format!("SELECT * FROM m WHERE id = {id}");
        let got = q(&lc, &sql).await;
        let route = explain_last(&lc).await;
        if got != q(&direct, &sql).await {
            problems.push(format!("after restart: {sql} -> {got:?} via {route:?}"));
        }
    }
    let caches = show_caches(&lc).await;
    if !caches
        .rows
        .iter()
        .any(|r| r[1].as_deref() == Some("m_star"))
    {
        problems.push(format!(
            "m_star is gone after the restart: SHOW CACHES = {caches:?}"
        ));
    }
    q(&direct, "UPDATE m SET a = 10 WHERE id = 1").await;
    wait_caught_up(&direct, &lc).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = q(&lc, "SELECT * FROM m WHERE id = 1").await;
        let route = explain_last(&lc).await;
        if route.0 == "cache" {
            if got != q(&direct, "SELECT * FROM m WHERE id = 1").await {
                problems.push(format!("rebuilt cache answers {got:?}"));
            }
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "the cache never served again after the table's next change: {route:?}; \
                 SHOW CACHES = {:?}",
                show_caches(&lc).await
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop_quietly(larder);
}

/// Larder statements that return no rows (DROP ...) must be valid in the simple query
/// protocol (no NoData message there), for every driver, not only libpq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rowless_larder_statements_work_in_the_simple_protocol() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "simpledrop", &[]));
    psql(
        &d,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(&lc, "CREATE CACHE c1 FROM SELECT * FROM t WHERE id = $1").await;
    let mut failures = Vec::new();
    for sql in [
        "DROP ALL PROXIED QUERIES",
        "DROP CACHE c1",
        "DROP ALL CACHES",
    ] {
        if let Err(e) = try_query(&lc, sql).await {
            failures.push(format!("{sql}: {}", err_text(&e)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop_quietly(larder);
}

// ------------------------------------------------------------------------------------------
// Tables Larder does not replicate
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_replicated_tables_are_listed_refused_and_proxied() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| {
        Deployment::new(
            pg,
            "notrepl",
            &[
                "--replication-tables",
                "public.good,public.nokey,public.pts",
            ],
        )
    });
    psql(
        &d,
        "CREATE TABLE good (id int PRIMARY KEY, v text);
         INSERT INTO good VALUES (1, 'one'), (2, 'two');
         CREATE TABLE nokey (a int, b text);
         INSERT INTO nokey VALUES (1, 'x'), (1, 'x'), (2, 'y');
         CREATE TABLE pts (id int PRIMARY KEY, p point);
         INSERT INTO pts VALUES (1, '(1,2)'), (2, '(3,4)');
         CREATE TABLE other (id int PRIMARY KEY, v text);
         INSERT INTO other VALUES (1, 'o');",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;

    wait_table_status(&lc, "\"public\".\"good\"", "Online").await;
    let nokey = wait_table_status(&lc, "\"public\".\"nokey\"", "Not Replicated").await;
    assert!(
        nokey.contains("REPLICA IDENTITY FULL") || nokey.contains("primary key"),
        "nokey reason: {nokey}"
    );
    let pts = wait_table_status(&lc, "\"public\".\"pts\"", "Not Replicated").await;
    assert!(
        pts.contains("point"),
        "pts reason should name the type: {pts}"
    );
    match table_status(&lc, "\"public\".\"other\"").await {
        None => {}
        Some((status, reason)) => {
            assert_eq!(status, "Not Replicated", "filtered table: {reason}");
            assert!(reason.contains("filter"), "filtered table reason: {reason}");
        }
    }

    for sql in [
        "CREATE CACHE FROM SELECT * FROM nokey WHERE a = $1",
        "CREATE CACHE FROM SELECT * FROM pts WHERE id = $1",
        "CREATE CACHE FROM SELECT * FROM other WHERE id = $1",
    ] {
        let (code, msg) = query_err(&lc, sql).await;
        assert_eq!(code, "0A000", "{sql}: {msg}");
        let explained = q(
            &lc,
            &sql.replacen("CREATE CACHE", "EXPLAIN CREATE CACHE", 1),
        )
        .await;
        let supported = explained.cell(0, "supported");
        assert!(supported.starts_with("no: "), "{sql}: {explained:?}");
    }
    // The replicated one is cacheable.
    q(&lc, "CREATE CACHE FROM SELECT * FROM good WHERE id = $1").await;
    cached_same_as_direct(&lc, &direct, "SELECT * FROM good WHERE id = 2").await;

    // Queries on the others still work, upstream.
    for sql in [
        "SELECT * FROM nokey WHERE a = 1",
        "SELECT * FROM pts WHERE id = 2",
        "SELECT * FROM other WHERE id = 1",
    ] {
        let (dest, _) = same_as_direct(&lc, &direct, sql).await;
        assert_eq!(dest, "upstream", "{sql}");
    }
    q(&lc, "INSERT INTO nokey VALUES (3, 'z')").await;
    q(&lc, "UPDATE pts SET p = '(9,9)' WHERE id = 1").await;
    q(&lc, "UPDATE other SET v = 'p' WHERE id = 1").await;
    same_as_direct(&lc, &direct, "SELECT * FROM nokey").await;
    same_as_direct(&lc, &direct, "SELECT * FROM pts").await;
    same_as_direct(&lc, &direct, "SELECT * FROM other").await;

    drop_quietly(larder);
}

/// CREATE CACHE / EXPLAIN CREATE CACHE on a table Larder lists as Not Replicated must say
/// why (the reason SHOW LARDER TABLES gives), not just that the table is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_cache_on_a_not_replicated_table_names_the_reason() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| {
        Deployment::new(
            pg,
            "notreplwhy",
            &["--replication-tables", "public.nokey,public.pts"],
        )
    });
    psql(
        &d,
        "CREATE TABLE nokey (a int, b text);
         CREATE TABLE pts (id int PRIMARY KEY, p point);
         CREATE TABLE other (id int PRIMARY KEY, v text);",
    );
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    let mut refusals = Vec::new();
    for (sql, needle) in [
        (
            "CREATE CACHE FROM SELECT * FROM nokey WHERE a = $1",
            "primary key",
        ),
        ("CREATE CACHE FROM SELECT * FROM pts WHERE id = $1", "point"),
        (
            "CREATE CACHE FROM SELECT * FROM other WHERE id = $1",
            "filter",
        ),
    ] {
        let (code, msg) = query_err(&lc, sql).await;
        let explained = q(
            &lc,
            &sql.replacen("CREATE CACHE", "EXPLAIN CREATE CACHE", 1),
        )
        .await;
        let supported = explained.cell(0, "supported").to_string();
        if code != "0A000" || !msg.contains(needle) || !supported.contains(needle) {
            refusals.push(format!(
                "{sql}: SQLSTATE {code}, message {msg:?}, EXPLAIN {supported:?}: \
                 should name {needle:?}"
            ));
        }
    }
    assert!(
        refusals.is_empty(),
        "refusals do not give the reason:\n{}",
        refusals.join("\n")
    );
    drop_quietly(larder);
}

/// Tables that were not replicated at snapshot time keep being known across a restart, and
/// when they become replicable while Larder is down (the fix their reason asks for), their
/// existing rows must not be lost: they existed before the slot, so they need a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_made_replicable_while_down_keep_their_rows() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "fixdown", &[]));
    psql(
        &d,
        "CREATE TABLE nk (a int NOT NULL, b text);
         INSERT INTO nk VALUES (1, 'x'), (1, 'x'), (2, 'y');
         CREATE TABLE pt (id int PRIMARY KEY, p point, v text);
         INSERT INTO pt VALUES (1, '(1,2)', 'one'), (2, '(3,4)', 'two');",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    wait_table_status(&lc, "\"public\".\"nk\"", "Not Replicated").await;
    wait_table_status(&lc, "\"public\".\"pt\"", "Not Replicated").await;
    drop(lc);
    larder.sigterm();
    let st = tokio::task::block_in_place(|| larder.wait_exit(Duration::from_secs(30)));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", larder.log());
    drop_quietly(larder);

    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    let mut problems = Vec::new();
    for t in ["nk", "pt"] {
        let name = format!("\"public\".\"{t}\"");
        match table_status(&lc, &name).await {
            Some((status, _)) if status == "Not Replicated" => {}
            other => problems.push(format!("after a restart {name} is listed as {other:?}")),
        }
    }
    drop(lc);
    larder.sigterm();
    let st = tokio::task::block_in_place(|| larder.wait_exit(Duration::from_secs(30)));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", larder.log());
    drop_quietly(larder);

    // While Larder is down, the operator makes both tables replicable.
    q(
        &direct,
        "ALTER TABLE nk REPLICA IDENTITY FULL; ALTER TABLE pt DROP COLUMN p",
    )
    .await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(
        &direct,
        "INSERT INTO nk VALUES (3, 'z'); INSERT INTO pt VALUES (3, 'three')",
    )
    .await;
    wait_caught_up(&direct, &lc).await;
    for (t, sql) in [
        ("nk", "SELECT * FROM nk WHERE a = $1"),
        ("pt", "SELECT * FROM pt WHERE id = $1"),
    ] {
        let name = format!("\"public\".\"{t}\"");
        let status = table_status(&lc, &name).await;
        if status.as_ref().map(|s| s.0.as_str()) != Some("Online") {
            // Not replicated (with a reason) is acceptable; wrong rows are not.
            let (code, msg) = query_err(&lc, &format!("CREATE CACHE FROM {sql}")).await;
            eprintln!("{name}: {status:?}; CREATE CACHE: {code} {msg}");
            continue;
        }
        q(&lc, &format!("CREATE CACHE FROM {sql}")).await;
        for v in 1..=3 {
            let sql = sql.replace("$1", &v.to_string());
            let through = via_cache(&lc, &sql).await.sorted();
            let want = q(&direct, &sql).await.sorted();
            if through != want {
                problems.push(format!(
                    "{sql}: cache {:?}, direct {:?}",
                    through.rows, want.rows
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop_quietly(larder);
}

// ------------------------------------------------------------------------------------------
// Routing
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_transactions_databases_and_larder_statements() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "route", &[]));
    let other_db = tokio::task::block_in_place(|| pg.create_database("route_other").unwrap());
    let setup = "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL, qty int);
                 CREATE TABLE u (id int PRIMARY KEY, t_id int);";
    psql(
        &d,
        &format!(
            "{setup} INSERT INTO t SELECT g, 'main ' || g, g FROM generate_series(1, 20) g;
             INSERT INTO u VALUES (1, 1);"
        ),
    );
    tokio::task::block_in_place(|| {
        pg.psql(
            &other_db,
            &format!(
                "{setup} INSERT INTO t SELECT g, 'other ' || g, -g FROM generate_series(1, 20) g;"
            ),
        )
        .unwrap()
    });
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;

    q(
        &lc,
        "CREATE CACHE t_by_id FROM SELECT * FROM t WHERE id = $1",
    )
    .await;
    cached_same_as_direct(&lc, &direct, "SELECT * FROM t WHERE id = 5").await;
    // Literals are parameters: other literals, IN lists and the extended protocol hit too.
    cached_same_as_direct(&lc, &direct, "SELECT * FROM t WHERE id IN (3, 4, 5)").await;
    let rows = lc
        .query("SELECT * FROM t WHERE id = $1", &[&6i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>("name"), "main 6");
    assert_eq!(explain_last(&lc).await.0, "cache");

    // Inside a transaction: upstream (the transaction sees its own writes).
    q(&lc, "BEGIN").await;
    q(&lc, "UPDATE t SET qty = 1000 WHERE id = 5").await;
    let a = q(&lc, "SELECT * FROM t WHERE id = 5").await;
    assert_eq!(a.cell(0, "qty"), "1000", "{a:?}");
    let (dest, reason) = explain_last(&lc).await;
    assert_eq!(dest, "upstream");
    assert!(reason.contains("transaction"), "reason: {reason}");
    q(&lc, "ROLLBACK").await;

    // An ALWAYS cache answers inside transactions.
    q(
        &lc,
        "CREATE CACHE ALWAYS t_names FROM SELECT name FROM t WHERE qty = $1",
    )
    .await;
    q(&lc, "BEGIN").await;
    let a = via_cache(&lc, "SELECT name FROM t WHERE qty = 7").await;
    assert_eq!(a.rows, vec![vec![Some("main 7".to_string())]]);
    q(&lc, "COMMIT").await;
    let caches = show_caches(&lc).await;
    let i = (0..caches.rows.len())
        .find(|&i| caches.cell(i, "name") == "t_names")
        .expect("t_names listed");
    assert!(
        caches.cell(i, "properties").contains("always"),
        "{caches:?}"
    );

    // Another database through the same Larder: proxied only, even for the same text.
    let other_url = larder.pg_url(pg.admin_user(), pg.admin_password(), &other_db);
    let oc = connect(&other_url).await;
    let other_direct = connect(&pg.url(&other_db)).await;
    for _ in 0..3 {
        let (dest, reason) =
            same_as_direct(&oc, &other_direct, "SELECT * FROM t WHERE id = 5").await;
        assert_eq!(dest, "upstream");
        assert!(reason.contains("database"), "reason: {reason}");
    }
    let a = q(&oc, "SELECT * FROM t WHERE id = 5").await;
    assert_eq!(a.cell(0, "name"), "other 5");
    drop(oc);

    // Unsupported: EXPLAIN names the construct, CREATE CACHE refuses with 0A000.
    const WINDOW: &str = "SELECT t.name, row_number() OVER (ORDER BY t.id) FROM t WHERE t.id = 1";
    let explained = q(&lc, &format!("EXPLAIN CREATE CACHE FROM {WINDOW}")).await;
    let supported = explained.cell(0, "supported").to_lowercase();
    assert!(
        supported.starts_with("no: ") && supported.contains("window"),
        "{explained:?}"
    );
    let (code, msg) = query_err(&lc, &format!("CREATE CACHE FROM {WINDOW}")).await;
    assert_eq!(code, "0A000", "{msg}");
    assert!(msg.to_lowercase().contains("window"), "{msg}");
    let explained = q(
        &lc,
        "EXPLAIN CREATE CACHE FROM SELECT qty FROM t WHERE name = 'x'",
    )
    .await;
    assert_eq!(explained.cell(0, "supported"), "yes", "{explained:?}");
    let explained = q(
        &lc,
        "EXPLAIN CREATE CACHE FROM SELECT * FROM t WHERE id = 9",
    )
    .await;
    assert_eq!(explained.cell(0, "supported"), "cached", "{explained:?}");

    // SHOW PROXIED QUERIES lists shapes that went upstream, with their status.
    command(&lc, "DROP ALL PROXIED QUERIES").await;
    same_as_direct(&lc, &direct, "SELECT qty FROM t WHERE name = 'main 3'").await;
    same_as_direct(&lc, &direct, "SELECT qty FROM t WHERE name = 'main 4'").await;
    same_as_direct(&lc, &direct, WINDOW).await;
    let proxied = q(&lc, "SHOW PROXIED QUERIES").await;
    let find = |needle: &str| {
        (0..proxied.rows.len())
            .find(|&i| proxied.cell(i, "query").contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {proxied:?}"))
    };
    let by_name = find("WHERE name =");
    assert_eq!(proxied.cell(by_name, "supported"), "yes", "{proxied:?}");
    assert_eq!(proxied.cell(by_name, "count"), "2", "{proxied:?}");
    let window = find("OVER");
    assert!(
        proxied.cell(window, "supported").starts_with("unsupported"),
        "{proxied:?}"
    );
    let supported_only = q(&lc, "SHOW PROXIED SUPPORTED QUERIES").await;
    assert!(
        supported_only
            .rows
            .iter()
            .all(|r| !r[1].as_deref().unwrap_or("").contains("OVER")),
        "{supported_only:?}"
    );
    let id = proxied.cell(by_name, "query_id").to_string();
    let created = q(&lc, &format!("CREATE CACHE FROM {id}")).await;
    assert_eq!(created.cell(0, "query_id"), id, "{created:?}");
    cached_same_as_direct(&lc, &direct, "SELECT qty FROM t WHERE name = 'main 8'").await;

    // DROP CACHE by name and by id, then DROP ALL CACHES.
    command(&lc, "DROP CACHE t_by_id").await;
    let a = q(&lc, "SELECT * FROM t WHERE id = 5").await;
    assert_eq!(a, q(&direct, "SELECT * FROM t WHERE id = 5").await);
    let (dest, reason) = explain_last(&lc).await;
    assert_eq!(dest, "upstream", "{reason}");
    let err = lc.execute("DROP CACHE t_by_id", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42704"), "{err:?}");
    command(&lc, &format!("DROP CACHE {id}")).await;
    assert_eq!(show_caches(&lc).await.rows.len(), 1);
    command(&lc, "DROP ALL CACHES").await;
    assert!(show_caches(&lc).await.rows.is_empty());
    q(&lc, "SELECT name FROM t WHERE qty = 7").await;
    assert_eq!(explain_last(&lc).await.0, "upstream");
    drop_quietly(larder);
}

/// Unqualified names resolve per session: a session whose search_path finds another `t`
/// never gets the cached table's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_decides_which_table_a_query_reads() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "spath", &[]));
    psql(
        &d,
        "CREATE SCHEMA a; CREATE SCHEMA b;
         CREATE TABLE public.t (id int PRIMARY KEY, who text);
         CREATE TABLE a.t (id int PRIMARY KEY, who text);
         CREATE TABLE b.t (id int PRIMARY KEY, who text);
         INSERT INTO public.t SELECT g, 'public ' || g FROM generate_series(1, 5) g;
         INSERT INTO a.t SELECT g, 'a ' || g FROM generate_series(1, 5) g;
         INSERT INTO b.t SELECT g, 'b ' || g FROM generate_series(1, 5) g;",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(
        &lc,
        "CREATE CACHE t_by_id FROM SELECT * FROM t WHERE id = $1",
    )
    .await;
    let a = via_cache(&lc, "SELECT * FROM t WHERE id = 2").await;
    assert_eq!(a.cell(0, "who"), "public 2");

    for schema in ["b", "a"] {
        let s = connect(&d.larder_url(&larder)).await;
        let sd = connect(&d.direct_url()).await;
        q(&s, &format!("SET search_path TO {schema}")).await;
        q(&sd, &format!("SET search_path TO {schema}")).await;
        for _ in 0..3 {
            let (dest, reason) = same_as_direct(&s, &sd, "SELECT * FROM t WHERE id = 2").await;
            assert_eq!(dest, "upstream", "search_path {schema}: {reason}");
        }
        let a = q(&s, "SELECT * FROM t WHERE id = 2").await;
        assert_eq!(a.cell(0, "who"), format!("{schema} 2"));
    }

    // Switching search_path within one session after cache hits.
    let s = connect(&d.larder_url(&larder)).await;
    let a = via_cache(&s, "SELECT * FROM t WHERE id = 3").await;
    assert_eq!(a.cell(0, "who"), "public 3");
    q(&s, "SET search_path TO b, public").await;
    let a = q(&s, "SELECT * FROM t WHERE id = 3").await;
    assert_eq!(a.cell(0, "who"), "b 3", "{:?}", explain_last(&s).await);
    q(&s, "SELECT set_config('search_path', 'public', false)").await;
    let a = q(&s, "SELECT * FROM t WHERE id = 3").await;
    assert_eq!(a.cell(0, "who"), "public 3");
    q(&s, "BEGIN; SET LOCAL search_path TO a; COMMIT").await;
    let a = q(&s, "SELECT * FROM t WHERE id = 3").await;
    assert_eq!(a.cell(0, "who"), "public 3");
    drop(direct);
    drop_quietly(larder);
}

/// A function that changes `search_path` (no "search_path" in the statement text): the next
/// read must still resolve under the new path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_changed_inside_a_function_is_honoured() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "spfunc", &[]));
    psql(
        &d,
        "CREATE SCHEMA b;
         CREATE TABLE public.t (id int PRIMARY KEY, who text);
         CREATE TABLE b.t (id int PRIMARY KEY, who text);
         INSERT INTO public.t VALUES (1, 'public');
         INSERT INTO b.t VALUES (1, 'b');
         CREATE FUNCTION use_b() RETURNS int LANGUAGE plpgsql AS
           $$ BEGIN PERFORM set_config('search_path', 'b', false); RETURN 1; END $$;",
    );
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(&lc, "CREATE CACHE FROM SELECT * FROM t WHERE id = $1").await;
    let a = via_cache(&lc, "SELECT * FROM t WHERE id = 1").await;
    assert_eq!(a.cell(0, "who"), "public");
    q(&lc, "SELECT use_b()").await;
    let a = q(&lc, "SELECT * FROM t WHERE id = 1").await;
    let route = explain_last(&lc).await;
    assert_eq!(
        a.cell(0, "who"),
        "b",
        "read after a function switched search_path to b: {route:?}"
    );
    drop_quietly(larder);
}

// ------------------------------------------------------------------------------------------
// Upstream restart
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_mid_stream_reconnects_replication() {
    let pg = tokio::task::block_in_place(|| PgServer::start().expect("starting postgres"));
    let d = tokio::task::block_in_place(|| Deployment::new(&pg, "uprestart", &[]));
    psql(
        &d,
        "CREATE TABLE ev (id int PRIMARY KEY, kind text NOT NULL);
         INSERT INTO ev SELECT g, 'k' || (g % 3) FROM generate_series(1, 30) g;",
    );
    let larder = start(&d);
    {
        let direct = connect(&d.direct_url()).await;
        let lc = connect(&d.larder_url(&larder)).await;
        wait_streaming(&lc).await;
        q(&lc, "CREATE CACHE FROM SELECT id FROM ev WHERE kind = $1").await;
        q(&direct, "INSERT INTO ev VALUES (31, 'k1')").await;
        wait_caught_up(&direct, &lc).await;
        cached_same_as_direct(&lc, &direct, "SELECT id FROM ev WHERE kind = 'k1'").await;
    }

    tokio::task::block_in_place(|| pg.stop().expect("stopping postgres"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| pg.start_again().expect("starting postgres again"));
    assert!(
        larder.is_running(),
        "larder died with its upstream:\n{}",
        larder.log()
    );

    let direct = connect(&d.direct_url()).await;
    let lc = connect(&d.larder_url(&larder)).await;
    q(&direct, "INSERT INTO ev VALUES (32, 'k1'), (33, 'k2')").await;
    q(&direct, "DELETE FROM ev WHERE id = 1").await;
    wait_streaming(&lc).await;
    wait_caught_up(&direct, &lc).await;
    for k in ["k0", "k1", "k2"] {
        cached_same_as_direct(
            &lc,
            &direct,
            &format!("SELECT id FROM ev WHERE kind = '{k}'"),
        )
        .await;
    }
    let s = larder_status(&lc).await;
    assert_eq!(
        s.get("Replication Status").map(String::as_str),
        Some("Streaming")
    );
    drop(lc);
    drop_quietly(larder);
    drop(d);
}
