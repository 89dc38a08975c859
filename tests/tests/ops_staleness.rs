//! The staleness bound `--max-replication-lag-ms` (issue #8), for real: a walsender that stops
//! (SIGSTOP) or a replication connection that dies and cannot come back makes caches go
//! upstream with the reason once the bound has passed, and they serve again by themselves once
//! replication resumes; a slot dropped upstream stops them for good; an idle upstream never
//! counts as lagging.

use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;
#[path = "common/ops_kit.rs"]
mod ops_kit;

use ops_kit::{create_cache, first_cell, query_until, OpsDeployment, Stopped, QUERY, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_sends_queries_upstream_within_the_bound_and_caches_come_back() {
    const BOUND_MS: u64 = 1500;
    let bound = BOUND_MS.to_string();
    let d = OpsDeployment::start("ops_stall", &["--max-replication-lag-ms", &bound], &[]);
    let larder = kit::connect(&d.larder_url()).await;
    let direct = kit::connect(&d.pg.url(&d.db)).await;
    create_cache(&larder).await;

    // An idle upstream is not lagging: several bounds later, the cache still answers.
    tokio::time::sleep(Duration::from_millis(3 * BOUND_MS)).await;
    let (_, reason) = query_until(&larder, "cache", Duration::from_millis(1)).await;
    assert!(reason.contains("answered by the cache"), "{reason}");
    assert_eq!(d.get("/ready").0, 200);

    // Stop the walsender: the stream says nothing more, while the upstream moves on.
    let pid: i32 = first_cell(
        &direct,
        &format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}'",
            d.slot()
        ),
    )
    .await
    .parse()
    .expect("the slot's walsender pid");
    let stopped = Stopped::stop(pid);
    let stalled_at = Instant::now();
    direct
        .batch_execute("UPDATE items SET price = price + 1000 WHERE id = 10")
        .await
        .unwrap();
    let fresh_rows = kit::text_rows(&direct, QUERY).await;
    let (rows, reason) =
        query_until(&larder, "upstream", Duration::from_millis(BOUND_MS + 5_000)).await;
    let waited = stalled_at.elapsed();
    assert!(
        reason.contains("staleness bound")
            && reason.contains(&format!("--max-replication-lag-ms={BOUND_MS}")),
        "{reason}"
    );
    assert_eq!(rows, fresh_rows, "the upstream's answer is the fresh one");
    // The bound counts from the last position replication confirmed (polled at most a poll
    // interval before the stall), so caches stop within the bound plus that and some slack.
    assert!(
        waited < Duration::from_millis(BOUND_MS + 3_000),
        "caches served for {waited:?} after the stall"
    );
    let body = d.wait_ready(503).await;
    assert!(body.contains("staleness bound"), "{body}");
    // The poller notices at its next poll.
    let m = d
        .wait_metrics(|m| m.get("larder_replication_stale_total") >= 1.0)
        .await;
    assert!(m.get("larder_cache_fallbacks_total{reason=\"replication_lag\"}") >= 1.0);
    assert_eq!(m.get("larder_caches_fresh"), 0.0);
    assert!(m.get("larder_replication_lag_seconds") >= 1.0);
    assert!(m.get("larder_replication_lag_bytes") > 0.0);
    assert!(m.get("larder_replication_stale_total") >= 1.0);

    // Resume it: caches serve again on their own, with the new row.
    drop(stopped);
    let (rows, _) = query_until(&larder, "cache", WAIT).await;
    assert_eq!(rows, fresh_rows);
    assert_eq!(d.wait_ready(200).await, "ready\n");
    d.wait_metrics(|m| m.get("larder_caches_fresh") == 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_upstream_stops_caches_for_good() {
    let d = OpsDeployment::start("ops_slot", &["--max-replication-lag-ms", "2000"], &[]);
    let larder = kit::connect(&d.larder_url()).await;
    let direct = kit::connect(&d.pg.url(&d.db)).await;
    create_cache(&larder).await;
    // Terminate the walsender and drop the slot in the moment before Larder reconnects.
    let slot = d.slot();
    let deadline = Instant::now() + WAIT;
    loop {
        direct
            .simple_query(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
            ))
            .await
            .unwrap();
        let dropped = direct
            .simple_query(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .await;
        if dropped.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "could not drop the slot: {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    direct
        .batch_execute("UPDATE items SET price = price + 1000 WHERE id = 10")
        .await
        .unwrap();
    let fresh_rows = kit::text_rows(&direct, QUERY).await;
    let (rows, reason) = query_until(&larder, "upstream", WAIT).await;
    assert_eq!(rows, fresh_rows);
    assert!(reason.contains("replication slot is gone"), "{reason}");
    let body = d.wait_ready(503).await;
    assert!(body.contains("replication slot is gone"), "{body}");
    // It stays so (the stored tables can never catch up), and the slot Larder created while
    // reconnecting is dropped again, so a restart takes a fresh snapshot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    larder.simple_query(QUERY).await.unwrap();
    assert_eq!(kit::explain_last(&larder).await.0, "upstream");
    let deadline = Instant::now() + WAIT;
    while first_cell(
        &direct,
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .await
        != "0"
    {
        assert!(
            Instant::now() < deadline,
            "the re-created slot was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = kit::status(&larder).await;
    assert!(
        status
            .get("Replication Status")
            .is_some_and(|s| s.contains("slot lost")),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replication_connection_sends_queries_upstream_until_it_is_back() {
    const BOUND_MS: u64 = 1500;
    let bound = BOUND_MS.to_string();
    let d = OpsDeployment::start("ops_dead", &["--max-replication-lag-ms", &bound], &[]);
    let larder = kit::connect(&d.larder_url()).await;
    let direct = kit::connect(&d.pg.url(&d.db)).await;
    create_cache(&larder).await;
    // Kill the walsender while no new connection to the database is allowed: replication
    // cannot reconnect (the sessions already open, and Larder's poll, keep working).
    let allow = |on: bool| {
        d.pg.psql(
            "postgres",
            &format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS {on}", d.db),
        )
        .expect("ALTER DATABASE ... ALLOW_CONNECTIONS")
    };
    allow(false);
    direct
        .simple_query(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = '{}' AND active_pid IS NOT NULL",
            d.slot()
        ))
        .await
        .unwrap();
    direct
        .batch_execute("UPDATE items SET price = price + 1000 WHERE id = 10")
        .await
        .unwrap();
    let fresh_rows = kit::text_rows(&direct, QUERY).await;
    let (rows, reason) =
        query_until(&larder, "upstream", Duration::from_millis(BOUND_MS + 5_000)).await;
    assert_eq!(rows, fresh_rows);
    assert!(reason.contains("staleness bound"), "{reason}");
    let body = d.wait_ready(503).await;
    assert!(body.contains("staleness bound"), "{body}");
    allow(true);
    let (rows, _) = query_until(&larder, "cache", WAIT).await;
    assert_eq!(rows, fresh_rows);
    assert_eq!(d.wait_ready(200).await, "ready\n");
}
