//! The advisor (issue #12): `SHOW PROXIED QUERIES` tells, per query shape that went upstream,
//! how often, how long the upstream took (total, p50, p99), how many rows it sent, whether a
//! cache is possible and what one would have saved, most worth caching first; and
//! `--query-caching async` makes caches on its own, within its bound.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;

use kit::{Conn, Deployment};

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, grp int, v text); \
                     INSERT INTO items SELECT g, g % 3, 'v' || g FROM generate_series(1, 30) g;";

/// `SHOW PROXIED QUERIES` as one map per row, in its order.
async fn proxied(c: &Conn) -> Vec<HashMap<String, Option<String>>> {
    let msgs = c
        .client
        .simple_query("SHOW PROXIED QUERIES")
        .await
        .expect("SHOW PROXIED QUERIES");
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn cell<'a>(row: &'a HashMap<String, Option<String>>, name: &str) -> &'a str {
    row.get(name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
        .as_deref()
        .unwrap_or("")
}

fn ms(row: &HashMap<String, Option<String>>, name: &str) -> f64 {
    cell(row, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number: {row:?}"))
}

fn find<'a>(
    rows: &'a [HashMap<String, Option<String>>],
    needle: &str,
) -> (usize, &'a HashMap<String, Option<String>>) {
    rows.iter()
        .enumerate()
        .find(|(_, r)| cell(r, "query").contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {rows:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_queries_show_upstream_timings_that_agree_with_the_client() {
    let d = Deployment::start("advisor", SETUP);
    let larder = Conn::new(&d.larder_url()).await;
    kit::wait_online(&larder.client).await;
    larder
        .client
        .simple_query("DROP ALL PROXIED QUERIES")
        .await
        .expect("reset");

    // A slow query the dataflow refuses, timed by the client too.
    let mut client_ms = Vec::new();
    for _ in 0..12 {
        let t = Instant::now();
        larder
            .client
            .simple_query("SELECT pg_sleep(0.04), random() < 2")
            .await
            .expect("sleep");
        client_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    client_ms.sort_by(f64::total_cmp);
    // A cacheable query, 3 times, 10 rows each.
    for g in 0..3 {
        let rows = kit::text_rows(
            &larder.client,
            &format!("SELECT id, v FROM items WHERE grp = {g}"),
        )
        .await;
        assert_eq!(rows.len(), 10);
    }

    let rows = proxied(&larder).await;
    let (sleep_at, sleep) = find(&rows, "pg_sleep");
    assert_eq!(cell(sleep, "count"), "12", "{sleep:?}");
    assert!(
        cell(sleep, "supported").starts_with("unsupported"),
        "{sleep:?}"
    );
    // Nor can a shallow cache keep it: random() (a shape it could keep is counted as
    // savings, below).
    assert!(cell(sleep, "shallow").contains("random()"), "{sleep:?}");
    assert_eq!(ms(sleep, "estimated_saving_ms"), 0.0, "{sleep:?}");
    assert_eq!(cell(sleep, "rows"), "12");
    let client_p50 = client_ms[client_ms.len() / 2];
    let (p50, p99, total) = (
        ms(sleep, "upstream_p50_ms"),
        ms(sleep, "upstream_p99_ms"),
        ms(sleep, "upstream_total_ms"),
    );
    // What Larder measured upstream is at least the sleep, and at most what the client saw.
    assert!(
        p50 >= 40.0 && p50 <= client_p50 + 1.0,
        "p50 {p50} ms, client p50 {client_p50} ms"
    );
    assert!(
        p99 >= p50 && p99 <= client_ms[client_ms.len() - 1] + 1.0,
        "p99 {p99} ms"
    );
    let client_total: f64 = client_ms.iter().sum();
    eprintln!(
        "pg_sleep(0.04) x12: Larder upstream p50 {p50} ms, p99 {p99} ms, total {total} ms; \
         client p50 {client_p50:.3} ms, total {client_total:.3} ms"
    );
    assert!(
        total >= 12.0 * 40.0 && total <= client_total + 5.0,
        "total {total} ms, client total {client_total} ms"
    );
    assert!(
        client_p50 - p50 < 5.0,
        "Larder's own share of the client's time is large: p50 {p50} ms vs client {client_p50} ms"
    );

    let (by_grp_at, by_grp) = find(&rows, "WHERE grp =");
    assert_eq!(cell(by_grp, "count"), "3", "{by_grp:?}");
    assert_eq!(cell(by_grp, "supported"), "yes", "{by_grp:?}");
    assert_eq!(cell(by_grp, "rows"), "30", "{by_grp:?}");
    assert!(ms(by_grp, "estimated_saving_ms") > 0.0, "{by_grp:?}");
    assert!(
        by_grp_at < sleep_at,
        "the cacheable shape comes before the one no cache can save: {rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_query_caching_makes_caches_within_its_bound() {
    let d = Deployment::start_env(
        "advisor_async",
        "",
        SETUP,
        &[
            ("QUERY_CACHING", "async"),
            ("QUERY_CACHING_CACHES_MAX", "1"),
        ],
    );
    let larder = Conn::new(&d.larder_url()).await;
    let direct = Conn::new(&d.direct_url()).await;
    kit::wait_online(&larder.client).await;

    // Refused by the dataflow: never made a cache.
    kit::text_rows(&larder.client, "SELECT v, row_number() OVER () FROM items").await;
    // Supported: made a cache in the background after its first trip upstream.
    let q = |id: i32| format!("SELECT v FROM items WHERE id = {id}");
    kit::text_rows(&larder.client, &q(1)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = kit::text_rows(&larder.client, &q(2)).await;
        assert_eq!(rows, kit::text_rows(&direct.client, &q(2)).await);
        if kit::explain_last(&larder.client).await.0 == "cache" {
            break;
        }
        assert!(Instant::now() < deadline, "no cache was made on its own");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The bound is one cache: another supported shape stays upstream.
    let other = "SELECT id FROM items WHERE grp = 2";
    kit::text_rows(&larder.client, other).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kit::text_rows(&larder.client, other).await;
    assert_eq!(kit::explain_last(&larder.client).await.0, "upstream");
    let caches = kit::text_rows(&larder.client, "SHOW CACHES").await;
    assert_eq!(caches.len(), 1, "{caches:?}");
    assert!(
        caches[0][2].as_deref().unwrap_or("").contains("WHERE id ="),
        "{caches:?}"
    );
}
