//! End-to-end: the initial snapshot copy (issue #14) against a real Postgres.
//!
//! Why: the copy runs on several connections that import one exported snapshot, splits large
//! tables into page ranges, and bulk-loads RocksDB without its WAL. Each of those could lose,
//! repeat or tear rows. These tests check that every row arrives exactly once (keyless
//! duplicates included), also while the upstream is written during the copy, and that a
//! `kill -9` in the middle of the copy leads to a clean fresh copy on restart, never to a
//! half-copied table served as Online.
//!
//! What Larder stored is read back through caches (`... WHERE grp = $1` over every group), and
//! compared with the same statements sent directly.

use std::time::{Duration, Instant};

mod common;

use common::client::*;
use common::Scratch;
use larder_testkit::{LarderProcess, PgServer};
use tokio_postgres::Client;

/// Groups the test tables' rows fall into (one cache read per group covers every row).
const GROUPS: i64 = 8;

/// A keyed table (text with COPY escapes, NULLs, numerics), a keyless table with duplicate
/// rows, and a table keyed by a non-leading column.
fn setup_sql(rows: i64) -> String {
    format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, grp int NOT NULL, note text, amount numeric,
                           pad text NOT NULL);
         INSERT INTO big SELECT g, g % {GROUPS},
             CASE WHEN g % 7 = 0 THEN NULL
                  WHEN g % 5 = 0 THEN E'tab\\there\\nnew line \\\\ é' || g
                  ELSE 'n' || g END,
             CASE WHEN g % 3 = 0 THEN NULL ELSE g * 1.25 END,
             repeat('p', 60)
           FROM generate_series(1, {rows}) g;
         CREATE TABLE dups (grp int NOT NULL, v text NOT NULL);
         ALTER TABLE dups REPLICA IDENTITY FULL;
         INSERT INTO dups SELECT g % {GROUPS}, 'v' || (g % 50) FROM generate_series(1, 3000) g;
         CREATE TABLE late_key (grp int NOT NULL, k text NOT NULL UNIQUE, n int);
         ALTER TABLE late_key REPLICA IDENTITY USING INDEX late_key_k_key;
         INSERT INTO late_key SELECT g % {GROUPS}, 'k' || g, g FROM generate_series(1, 2000) g;
         ANALYZE;"
    )
}

const CACHED: [(&str, &str); 3] = [
    (
        "big_by_grp",
        "SELECT id, note, amount, pad FROM big WHERE grp = $1",
    ),
    ("dups_by_grp", "SELECT v FROM dups WHERE grp = $1"),
    ("late_by_grp", "SELECT k, n FROM late_key WHERE grp = $1"),
];

struct Deployment {
    pg: &'static PgServer,
    db: String,
    storage: Scratch,
    extra: Vec<String>,
}

impl Deployment {
    fn new(prefix: &str, rows: i64, extra: &[&str]) -> Deployment {
        let pg = PgServer::shared();
        let db = pg.create_database(prefix).expect("creating the database");
        pg.psql(&db, &setup_sql(rows)).expect("setting up tables");
        Deployment {
            pg,
            storage: Scratch::new(&db),
            db,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn start(&self) -> LarderProcess {
        let url = self.pg.url(&self.db);
        let dir = self.storage.0.display().to_string();
        let mut args = vec![
            "--upstream-db-url",
            &url,
            "--deployment",
            &self.db,
            "--storage-dir",
            &dir,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        tokio::task::block_in_place(|| LarderProcess::spawn(&args, &[]))
            .unwrap_or_else(|e| panic!("starting larder: {e:#}"))
    }

    fn larder_url(&self, larder: &LarderProcess) -> String {
        larder.pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.pg.psql(
            "postgres",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = 'larder_{}' AND NOT active",
                self.db
            ),
        );
    }
}

/// Every row of every test table, read through the caches, equals the direct answer.
async fn every_row_matches(larder: &Client, direct: &Client) {
    for (name, sql) in CACHED {
        let created = try_query(larder, &format!("CREATE CACHE {name} FROM {sql}")).await;
        if let Err(e) = created {
            // Already there after a restart.
            assert!(err_text(&e).contains("exists"), "{name}: {}", err_text(&e));
        }
    }
    for (_, sql) in CACHED {
        for g in 0..GROUPS {
            let sql = sql.replace("$1", &g.to_string());
            let deadline = Instant::now() + WAIT;
            let through = loop {
                let a = q(larder, &sql).await.sorted();
                if explain_last(larder).await.0 == "cache" {
                    break a;
                }
                assert!(Instant::now() < deadline, "{sql} never came from the cache");
                tokio::time::sleep(POLL).await;
            };
            let want = q(direct, &sql).await.sorted();
            assert_eq!(through.rows.len(), want.rows.len(), "{sql}: row count");
            assert!(through == want, "{sql}: rows differ from the upstream's");
        }
    }
}

/// Several workers, the big table split into page ranges, and writes to every table while the
/// copy runs: afterwards Larder holds exactly the upstream's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_range_split_copy_holds_every_row_exactly_once() {
    let d = Deployment::new(
        "snap_parallel",
        120_000,
        &[
            "--snapshot-parallelism",
            "3",
            "--snapshot-split-min-bytes",
            "1048576",
            "--snapshot-memory-max-bytes",
            "12582912",
        ],
    );
    let direct = connect(&d.pg.url(&d.db)).await;
    let larder = d.start();
    // Writes racing the copy: updates move row versions to other pages, inserts and deletes
    // land in every range; each must be in the copy or in the stream, never both or neither.
    let writer = {
        let url = d.pg.url(&d.db);
        tokio::spawn(async move {
            let c = connect(&url).await;
            for i in 0..200i64 {
                let id = 1 + (i * 7_919) % 120_000;
                let sql = format!(
                    "UPDATE big SET note = 'upd{i}', pad = repeat('u', 90) WHERE id = {id};
                     INSERT INTO big VALUES ({}, {}, 'ins', 1.5, 'x');
                     DELETE FROM big WHERE id = {};
                     INSERT INTO dups VALUES ({}, 'v1');
                     UPDATE late_key SET n = -n WHERE k = 'k{}';",
                    200_000 + i,
                    i % GROUPS,
                    2 + (i * 104_729) % 120_000,
                    i % GROUPS,
                    1 + i * 9
                );
                c.batch_execute(&sql).await.expect("writing upstream");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    writer.await.expect("writer task");
    let log = larder.log();
    let starts = log
        .lines()
        .find(|l| l.contains("snapshot copy starts"))
        .unwrap_or_else(|| panic!("no copy plan in the log:\n{log}"));
    assert!(
        starts.contains("workers=3") && !starts.contains("parts=3 "),
        "the big table was not split over the workers: {starts}"
    );
    wait_caught_up(&direct, &lc).await;
    every_row_matches(&lc, &direct).await;
    // The copy's bounds are shown with the status.
    let status = lc.simple_query("SHOW LARDER STATUS").await.expect("status");
    let copy = status.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("Snapshot Copy") => {
            r.get(1).map(str::to_string)
        }
        _ => None,
    });
    assert_eq!(
        copy.as_deref(),
        Some("3 connections, at most 12582912 bytes of rows in memory")
    );
}

/// `kill -9` while the copy runs (with parts of it already written as SST files): the restart
/// takes a fresh snapshot, serves nothing half-copied, and ends with exactly the upstream's
/// rows (a repeated copy would show in the keyless table's duplicate counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_the_copy_restarts_it_cleanly() {
    let d = Deployment::new(
        "snap_kill9",
        400_000,
        &[
            "--snapshot-parallelism",
            "2",
            "--snapshot-memory-max-bytes",
            "16777216",
        ],
    );
    let direct = connect(&d.pg.url(&d.db)).await;
    let larder = d.start();
    let lc = connect(&d.larder_url(&larder)).await;
    // Wait until the copy has delivered rows of the big table, but is not done.
    let deadline = Instant::now() + WAIT;
    loop {
        let tables = q(&lc, "SHOW LARDER TABLES").await;
        let big = tables
            .rows
            .iter()
            .find(|r| r[0].as_deref().is_some_and(|n| n.contains("\"big\"")));
        let state = big.and_then(|r| r[1].clone()).unwrap_or_default();
        let copied: u64 = big
            .and_then(|r| r.get(3).cloned().flatten())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert_ne!(state, "Online", "the copy ended before it could be killed");
        if state == "Snapshotting" && copied > 50_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copy never started: {tables:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    larder.kill9();
    larder.wait_exit(Duration::from_secs(10));
    drop(lc);
    assert!(
        !larder.log().contains("snapshot complete"),
        "the copy finished before the kill"
    );

    let larder = d.start();
    let lc = connect(&d.larder_url(&larder)).await;
    // The big table is not Online again before the restarted copy has copied all of it.
    let deadline = Instant::now() + WAIT;
    loop {
        let tables = q(&lc, "SHOW LARDER TABLES").await;
        let online = tables.rows.iter().any(|r| {
            r[0].as_deref().is_some_and(|n| n.contains("\"big\""))
                && r[1].as_deref() == Some("Online")
        });
        if online {
            let log = larder.log();
            assert!(
                log.contains("table snapshot done table=public.big"),
                "the big table is Online before the restarted copy finished it:\n{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the big table never came Online: {tables:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_streaming(&lc).await;
    let log = larder.log();
    assert!(
        log.contains("snapshot complete") && !log.contains("resuming replication"),
        "the restart did not take a fresh snapshot:\n{log}"
    );
    wait_caught_up(&direct, &lc).await;
    every_row_matches(&lc, &direct).await;
}
