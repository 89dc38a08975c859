//! End-to-end: the cache-hit path resolves names the way the session means them, without a
//! round trip.
//!
//! - a new connection's first cacheable query is a hit (also with `-c search_path=...` in the
//!   start-up options), and a function call between cached queries does not stop hits;
//! - every spelling of a cached query (qualified or not, quoted or not, any keyword case) hits
//!   the one cache;
//! - a session with its own `search_path` creates caches over its own schema, and other
//!   sessions are not answered from them;
//! - `CREATE CACHE` right after `CREATE TABLE` in the same session works (it waits for
//!   replication to pass the session's own DDL);
//! - a relation the session creates that shadows a cached one (a table earlier on its
//!   `search_path`, a temporary table) is never answered from the shadowed cache.

mod common;

use common::client::*;
use common::CachingLarder;
use tokio_postgres::Client;

fn setup(prefix: &str) -> CachingLarder {
    CachingLarder::start(
        prefix,
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'public ' || g FROM generate_series(1, 50) g;
         CREATE SCHEMA tenant_a;
         CREATE TABLE tenant_a.items (id int PRIMARY KEY, name text);
         INSERT INTO tenant_a.items SELECT g, 'tenant a ' || g FROM generate_series(1, 50) g;
         CREATE SCHEMA shadow;",
        &[],
    )
}

async fn dest(c: &Client) -> (String, String) {
    explain_last(c).await
}

/// Runs `sql` and asserts it was answered by a cache, with `expected` as the only row's name.
async fn hit(c: &Client, sql: &str, expected: &str) {
    let a = q(c, sql).await;
    assert_eq!(a.rows, vec![vec![Some(expected.to_string())]], "{sql}");
    let (d, reason) = dest(c).await;
    assert_eq!(d, "cache", "{sql}: {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolve_like_the_session_means_them_without_a_round_trip() {
    let s = tokio::task::block_in_place(|| setup("hitpath"));
    let admin = connect(&s.admin_url()).await;
    wait_streaming(&admin).await;
    q(
        &admin,
        "CREATE CACHE FROM SELECT name FROM items WHERE id = 1",
    )
    .await;

    // A new connection per query: the first query of every session is a hit.
    let mut hits = 0;
    for i in 1..=20 {
        let c = connect(&s.admin_url()).await;
        hit(
            &c,
            &format!("SELECT name FROM items WHERE id = {i}"),
            &format!("public {i}"),
        )
        .await;
        hits += 1;
    }
    assert_eq!(hits, 20);

    // Every spelling hits the same cache.
    for sql in [
        "select name from items where id = 7",
        "SELECT name FROM public.items WHERE id = 7",
        "SELECT \"name\" FROM \"public\".\"items\" WHERE \"id\" = 7",
        "SeLeCt name FrOm \"items\" WhErE id = 7",
    ] {
        hit(&admin, sql, "public 7").await;
    }
    let caches = q(&admin, "SHOW CACHES").await;
    assert_eq!(caches.rows.len(), 1, "{caches:?}");

    // Built-in function calls do not make the session's names unknown.
    q(&admin, "SELECT now(), pg_sleep(0)").await;
    hit(&admin, "SELECT name FROM items WHERE id = 8", "public 8").await;

    // A session with its own search_path creates a cache over its own schema.
    let tenant = connect(&s.admin_url()).await;
    q(&tenant, "SET search_path TO tenant_a, public").await;
    let a = q(&tenant, "SELECT name FROM items WHERE id = 3").await;
    assert_eq!(a.rows, vec![vec![Some("tenant a 3".to_string())]]);
    assert_eq!(
        dest(&tenant).await.0,
        "upstream",
        "the public cache must not answer"
    );
    q(
        &tenant,
        "CREATE CACHE FROM SELECT name FROM items WHERE id = 1",
    )
    .await;
    hit(&tenant, "SELECT name FROM items WHERE id = 4", "tenant a 4").await;
    hit(&admin, "SELECT name FROM items WHERE id = 4", "public 4").await;
    assert_eq!(q(&admin, "SHOW CACHES").await.rows.len(), 2);
    // The same, chosen in the start-up packet: the first query is a hit.
    let opts = format!("{}?options=-c%20search_path%3Dtenant_a", s.admin_url());
    let started = connect(&opts).await;
    hit(
        &started,
        "SELECT name FROM items WHERE id = 5",
        "tenant a 5",
    )
    .await;
    // RESET goes back to the default path.
    q(&tenant, "RESET search_path").await;
    hit(&tenant, "SELECT name FROM items WHERE id = 6", "public 6").await;

    // CREATE CACHE right after CREATE TABLE, in the same session.
    let fresh = connect(&s.admin_url()).await;
    q(
        &fresh,
        "CREATE TABLE fresh (id int PRIMARY KEY, name text); \
         INSERT INTO fresh SELECT g, 'fresh ' || g FROM generate_series(1, 10) g",
    )
    .await;
    q(
        &fresh,
        "CREATE CACHE FROM SELECT name FROM fresh WHERE id = 1",
    )
    .await;
    let direct = connect(&s.pg.url(&s.db)).await;
    wait_caught_up(&direct, &admin).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let a = q(&fresh, "SELECT name FROM fresh WHERE id = 2").await;
        assert_eq!(a.rows, vec![vec![Some("fresh 2".to_string())]]);
        let (d, reason) = dest(&fresh).await;
        if d == "cache" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never a hit: {reason}"
        );
        tokio::time::sleep(POLL).await;
    }

    // A table the session creates earlier on its path shadows the cached one at once.
    let shadowing = connect(&s.admin_url()).await;
    q(&shadowing, "SET search_path TO shadow, public").await;
    hit(
        &shadowing,
        "SELECT name FROM items WHERE id = 9",
        "public 9",
    )
    .await;
    q(
        &shadowing,
        "CREATE TABLE shadow.items (id int PRIMARY KEY, name text); \
         INSERT INTO shadow.items VALUES (9, 'shadow 9')",
    )
    .await;
    let a = q(&shadowing, "SELECT name FROM items WHERE id = 9").await;
    assert_eq!(a.rows, vec![vec![Some("shadow 9".to_string())]]);
    assert_eq!(dest(&shadowing).await.0, "upstream");
    // A temporary table shadows too.
    let temp = connect(&s.admin_url()).await;
    hit(&temp, "SELECT name FROM items WHERE id = 10", "public 10").await;
    q(
        &temp,
        "CREATE TEMP TABLE items (id int, name text); INSERT INTO items VALUES (10, 'temp 10')",
    )
    .await;
    let a = q(&temp, "SELECT name FROM items WHERE id = 10").await;
    assert_eq!(a.rows, vec![vec![Some("temp 10".to_string())]]);
    assert_eq!(dest(&temp).await.0, "upstream");
    // Other sessions are not affected by either.
    hit(&admin, "SELECT name FROM items WHERE id = 10", "public 10").await;
}
