//! End-to-end: what happens to caches over a deployment's life, against a real Postgres.
//!
//! Why: a cache is only useful if it is *never* wrong. These tests drive a real `larder`
//! process through graceful restarts, `kill -9` under write load, a lost replication slot and
//! an upstream restart. Every check compares what a client sees through Larder with what the
//! same statement returns directly from Postgres, and asks `EXPLAIN LAST STATEMENT` where the
//! answer came from. The harness is `common/lifecycle.rs`; table changes while streaming are
//! in `pg_cache_table_changes`, routing in `pg_cache_routing`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::client::*;
use common::lifecycle::*;
use larder_testkit::PgServer;
use rand::{Rng, SeedableRng};

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
