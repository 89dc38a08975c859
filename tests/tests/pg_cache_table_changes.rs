//! End-to-end: caches while their tables change, against a real Postgres: TRUNCATE, tables
//! created and reshaped while streaming or while Larder is down, and tables Larder cannot
//! replicate (listed, refused with their reason, proxied, and copied once they become
//! replicable). Every check compares Larder's answer with Postgres' own. The harness is
//! `common/lifecycle.rs`.

use std::time::{Duration, Instant};

mod common;

use common::client::*;
use common::lifecycle::*;
use larder_testkit::PgServer;
use tokio_postgres::Client;

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
