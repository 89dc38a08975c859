//! Read-your-writes (issue #12): a session that writes to a table a cache reads, and then
//! reads through that cache, sees its own write: until replication has applied past the
//! write, its reads go upstream. Inside a transaction that wrote, an ALWAYS cache does not
//! answer (the transaction's own rows are not in it). Writes to tables no cache reads take no
//! barrier.

#[path = "common/kit.rs"]
mod kit;

use kit::{Conn, Deployment};

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, v text); \
                     INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 10) g; \
                     CREATE TABLE other (id int PRIMARY KEY, n int); INSERT INTO other VALUES (1, 0);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_writes_through_caches() {
    let d = Deployment::start("ryw", SETUP);
    let larder = Conn::new(&d.larder_url()).await;
    kit::wait_online(&larder.client).await;
    for sql in [
        "CREATE CACHE FROM SELECT v FROM items WHERE id = $1",
        "CREATE CACHE ALWAYS FROM SELECT count(*) FROM items WHERE v LIKE 'new%'",
    ] {
        larder.client.simple_query(sql).await.expect(sql);
    }
    let c = &larder.client;
    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..60 {
        let v = format!("w{i}");
        if i % 2 == 0 {
            c.simple_query(&format!("UPDATE items SET v = '{v}' WHERE id = 1"))
                .await
                .unwrap();
            let rows = kit::text_rows(c, "SELECT v FROM items WHERE id = 1").await;
            assert_eq!(
                rows,
                vec![vec![Some(v.clone())]],
                "simple protocol, write {i}"
            );
        } else {
            c.execute("UPDATE items SET v = $1 WHERE id = 1", &[&v])
                .await
                .unwrap();
            let row = c
                .query_one("SELECT v FROM items WHERE id = $1", &[&1i32])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), v, "extended protocol, write {i}");
        }
        let (dest, reason) = kit::explain_last(c).await;
        *served.entry(format!("{dest}: {reason}")).or_default() += 1;
    }
    eprintln!("where the reads after writes went: {served:?}");

    // Caught up, the cache answers again.
    let direct = Conn::new(&d.direct_url()).await;
    kit::wait_consistent(&direct.client, c).await;
    kit::text_rows(c, "SELECT v FROM items WHERE id = 2").await;
    assert_eq!(kit::explain_last(c).await.0, "cache");

    // A write to a table no cache reads takes no barrier.
    c.simple_query("UPDATE other SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    kit::text_rows(c, "SELECT v FROM items WHERE id = 3").await;
    let (dest, reason) = kit::explain_last(c).await;
    assert_eq!(
        dest, "cache",
        "after a write to an uncached table: {reason}"
    );

    // In a transaction that wrote, the ALWAYS cache does not answer; after it, it does.
    c.simple_query("BEGIN").await.unwrap();
    let before = kit::text_rows(c, "SELECT count(*) FROM items WHERE v LIKE 'new%'").await;
    assert_eq!(before, vec![vec![Some("0".to_string())]]);
    assert_eq!(kit::explain_last(c).await.0, "cache");
    c.simple_query("UPDATE items SET v = 'new' WHERE id = 5")
        .await
        .unwrap();
    let inside = kit::text_rows(c, "SELECT count(*) FROM items WHERE v LIKE 'new%'").await;
    assert_eq!(inside, vec![vec![Some("1".to_string())]]);
    let (dest, reason) = kit::explain_last(c).await;
    assert_eq!(dest, "upstream");
    assert!(reason.contains("its own changes"), "{reason}");
    c.simple_query("COMMIT").await.unwrap();
    let after = kit::text_rows(c, "SELECT count(*) FROM items WHERE v LIKE 'new%'").await;
    assert_eq!(after, vec![vec![Some("1".to_string())]]);
}

/// Eight sessions write and read back their own rows at once, over many rounds: each always
/// sees its own write. With `SET larder.read_your_writes = off` in a session, the stale reads
/// the barrier prevents do occur.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_each_see_their_own_writes_and_off_shows_why() {
    let d = Deployment::start("ryw8", SETUP);
    let admin = Conn::new(&d.larder_url()).await;
    kit::wait_online(&admin.client).await;
    admin
        .client
        .simple_query("CREATE CACHE FROM SELECT v FROM items WHERE id = $1")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 1..=8i32 {
        let url = d.larder_url();
        tasks.push(tokio::spawn(async move {
            let c = Conn::new(&url).await;
            for round in 0..40 {
                let v = format!("s{w}r{round}");
                c.client
                    .execute("UPDATE items SET v = $1 WHERE id = $2", &[&v, &w])
                    .await
                    .unwrap();
                let row = c
                    .client
                    .query_one("SELECT v FROM items WHERE id = $1", &[&w])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), v, "writer {w}, round {round}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let c = Conn::new(&d.larder_url()).await;
    c.client
        .simple_query("SET larder.read_your_writes = off")
        .await
        .unwrap();
    let mut stale = 0;
    for round in 0..200 {
        let v = format!("off{round}");
        c.client
            .simple_query(&format!("UPDATE items SET v = '{v}' WHERE id = 9"))
            .await
            .unwrap();
        let rows = kit::text_rows(&c.client, "SELECT v FROM items WHERE id = 9").await;
        if rows != vec![vec![Some(v)]] {
            stale += 1;
        }
    }
    eprintln!("stale reads with read-your-writes off: {stale} of 200");
    assert!(
        stale > 0,
        "no stale read without the barrier: the test shows nothing"
    );
}
