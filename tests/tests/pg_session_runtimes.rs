//! End-to-end: both session runtimes (`--session-runtime per-core`, the default, and
//! `multi-thread`), so the one the other suites do not run stays covered:
//!
//! - concurrent clients over many connections (with per-core runtimes, spread by
//!   `SO_REUSEPORT` over them) get cache hits and pass-through answers, and writes replicate
//!   into the cache;
//! - `CREATE CACHE` and `SHOW` statements, which run on the multi-thread runtime, answer;
//! - a cancel request reaches its session whichever runtime accepted either connection;
//! - the Unix socket (served by the first runtime) relays and hits too.

mod common;

use std::time::Duration;

use common::client::{connect, explain_last, q, wait_caught_up, wait_streaming};
use common::{CachingLarder, Scratch};
use tokio_postgres::{Client, NoTls};

const CLIENTS: usize = 12;
const QUERIES_PER_CLIENT: usize = 20;

fn setup(prefix: &str, runtime: &str, extra: &[&str]) -> CachingLarder {
    let mut flags = vec!["--session-runtime", runtime, "--worker-threads", "3"];
    flags.extend_from_slice(extra);
    CachingLarder::start(
        prefix,
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
        &flags,
    )
}

/// One client: alternate a cached lookup (must hit) and an uncached one (must pass through).
async fn client_workload(url: String, client: usize) {
    let c = connect(&url).await;
    for i in 0..QUERIES_PER_CLIENT {
        let id = 1 + (client * QUERIES_PER_CLIENT + i) % 100;
        let a = q(&c, &format!("SELECT name FROM items WHERE id = {id}")).await;
        assert_eq!(a.rows, vec![vec![Some(format!("item {id}"))]]);
        let (dest, reason) = explain_last(&c).await;
        assert_eq!(dest, "cache", "client {client} query {i}: {reason}");
        let a = q(&c, &format!("SELECT count(*) FROM items WHERE id <= {id}")).await;
        assert_eq!(a.rows, vec![vec![Some(id.to_string())]]);
        let (dest, _) = explain_last(&c).await;
        assert_eq!(dest, "upstream", "client {client} query {i}");
    }
}

async fn hit_count(admin: &Client) -> u64 {
    let caches = q(admin, "SHOW CACHES").await;
    caches.cell(0, "count").parse().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_runtimes_serve_hits_pass_through_and_larder_statements() {
    let s = tokio::task::block_in_place(|| setup("percore", "per-core", &[]));
    workload(&s).await;
    assert!(s.larder.log().contains("runtimes=3"), "{}", s.larder.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_thread_runtime_serves_hits_pass_through_and_larder_statements() {
    let s = tokio::task::block_in_place(|| setup("multithread", "multi-thread", &[]));
    workload(&s).await;
    assert!(
        s.larder.log().contains("session_runtime=MultiThread"),
        "{}",
        s.larder.log()
    );
}

/// Clients in parallel, then a write that must reach the cache.
async fn workload(s: &CachingLarder) {
    let admin = connect(&s.admin_url()).await;
    wait_streaming(&admin).await;
    q(
        &admin,
        "CREATE CACHE FROM SELECT name FROM items WHERE id = 1",
    )
    .await;
    let before = hit_count(&admin).await;

    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client_workload(s.admin_url(), i)))
        .collect();
    for w in workers {
        w.await.expect("client workload");
    }
    let hits = hit_count(&admin).await - before;
    assert!(
        hits >= (CLIENTS * QUERIES_PER_CLIENT) as u64,
        "{hits} hits for {} cached lookups",
        CLIENTS * QUERIES_PER_CLIENT
    );

    // A write replicates into the cache the sessions read.
    let direct = connect(&s.pg.url(&s.db)).await;
    q(&direct, "UPDATE items SET name = 'renamed' WHERE id = 5").await;
    wait_caught_up(&direct, &admin).await;
    let c = connect(&s.admin_url()).await;
    let a = q(&c, "SELECT name FROM items WHERE id = 5").await;
    assert_eq!(a.rows, vec![vec![Some("renamed".to_string())]]);
    assert_eq!(explain_last(&c).await.0, "cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_cross_runtimes() {
    let s = tokio::task::block_in_place(|| setup("percorecancel", "per-core", &[]));
    // Several sessions, so that their connections and the cancel requests land on different
    // runtimes; every cancel must reach its own session.
    for _ in 0..6 {
        let c = connect(&s.admin_url()).await;
        let token = c.cancel_token();
        let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.expect("cancel request");
        let outcome = tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("the cancel ended the statement")
            .expect("task");
        let err = outcome.expect_err("a cancelled statement fails");
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_served_with_per_core_runtimes() {
    let dir = Scratch::new("percoreunix");
    let dir_text = dir.0.display().to_string();
    let s = tokio::task::block_in_place(|| {
        setup("percoreunix", "per-core", &["--unix-socket-dir", &dir_text])
    });
    let admin = connect(&s.admin_url()).await;
    wait_streaming(&admin).await;
    q(
        &admin,
        "CREATE CACHE FROM SELECT name FROM items WHERE id = 1",
    )
    .await;
    let url = format!(
        "postgresql://{}:{}@/{}?host={}&port={}",
        s.pg.admin_user(),
        s.pg.admin_password(),
        s.db,
        dir_text,
        s.larder.port()
    );
    for id in [3, 4, 5] {
        let c = connect(&url).await;
        // A loaded machine may send a first read upstream while its key fills (a fill waits
        // at most 5 ms for a transaction being applied): the cache answers a retry.
        let a =
            common::lifecycle::via_cache(&c, &format!("SELECT name FROM items WHERE id = {id}"))
                .await;
        assert_eq!(a.rows, vec![vec![Some(format!("item {id}"))]]);
        let a = q(&c, "SELECT inet_server_addr() IS NULL").await;
        assert_eq!(a.rows.len(), 1);
    }
}
