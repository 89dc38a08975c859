//! A replicated transaction that fails to apply as a whole (issue #13) does not stop
//! replication: the caches on its tables stop serving with the reason, the stream starts again
//! at the applied position with backoff, the transaction is applied on the retry, the caches are
//! rebuilt from storage and serve the new rows, and caches on other tables serve throughout.
//! `SHOW LARDER STATUS` counts the restarts and shows the last error.
//!
//! The failure is injected with Larder's hidden `--failpoint-apply-table` setting: it fails the
//! first attempt at applying each transaction that writes to the named table, the way a storage
//! failure would.

use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;

use kit::{Conn, Deployment};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_fails_to_apply_is_retried_and_its_caches_rebuilt() {
    let d = Deployment::start_env(
        "repl_retry",
        "",
        "CREATE TABLE flaky (id int PRIMARY KEY, v text); INSERT INTO flaky VALUES (1, 'a'); \
         CREATE TABLE steady (id int PRIMARY KEY, v text); INSERT INTO steady VALUES (1, 'x');",
        &[("LARDER_FAILPOINT_APPLY_TABLE", "flaky")],
    );
    let larder = Conn::new(&d.larder_url()).await;
    let direct = Conn::new(&d.direct_url()).await;
    kit::wait_online(&larder.client).await;
    for sql in [
        "CREATE CACHE FROM SELECT v FROM flaky WHERE id = $1",
        "CREATE CACHE FROM SELECT v FROM steady WHERE id = $1",
    ] {
        larder.client.simple_query(sql).await.expect(sql);
    }
    let read = |table: &'static str, id: i32| {
        let c = &larder.client;
        async move {
            let rows = kit::text_rows(c, &format!("SELECT v FROM {table} WHERE id = {id}")).await;
            let (dest, reason) = kit::explain_last(c).await;
            (rows, dest, reason)
        }
    };
    assert_eq!(read("flaky", 1).await.1, "cache");
    let before: u64 = kit::status(&larder.client).await["Replication Restarts"]
        .parse()
        .unwrap();

    // Fails to apply once, then applies on the retry.
    direct
        .client
        .batch_execute(
            "BEGIN; UPDATE flaky SET v = 'b' WHERE id = 1; UPDATE steady SET v = 'y' WHERE id = 1; \
             INSERT INTO flaky VALUES (2, 'c'); COMMIT",
        )
        .await
        .unwrap();
    kit::wait_consistent(&direct.client, &larder.client).await;
    let st = kit::status(&larder.client).await;
    let restarts: u64 = st["Replication Restarts"].parse().unwrap();
    assert!(restarts > before, "no restart counted: {st:?}");
    assert!(
        st["Last Error"].contains("injected failure"),
        "the last error does not name the failure: {st:?}"
    );
    assert_eq!(st["Replication Status"], "Streaming", "{st:?}");

    // Both caches serve the committed rows again (the flaky one once rebuilt).
    let deadline = Instant::now() + WAIT;
    loop {
        let (rows1, dest1, why1) = read("flaky", 1).await;
        let (rows2, _, _) = read("flaky", 2).await;
        let (rows3, dest3, _) = read("steady", 1).await;
        assert_eq!(rows1, vec![vec![Some("b".to_string())]]);
        assert_eq!(rows2, vec![vec![Some("c".to_string())]]);
        assert_eq!(rows3, vec![vec![Some("y".to_string())]]);
        if dest1 == "cache" && dest3 == "cache" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "caches did not serve again: flaky -> {dest1} ({why1}), steady -> {dest3}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Later transactions keep flowing (each fails once, then applies).
    for i in 3..6 {
        direct
            .client
            .batch_execute(&format!("INSERT INTO flaky VALUES ({i}, 'n{i}')"))
            .await
            .unwrap();
    }
    kit::wait_consistent(&direct.client, &larder.client).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (rows, dest, why) = read("flaky", 5).await;
        assert_eq!(rows, vec![vec![Some("n5".to_string())]]);
        if dest == "cache" {
            break;
        }
        assert!(Instant::now() < deadline, "flaky cache never served: {why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
