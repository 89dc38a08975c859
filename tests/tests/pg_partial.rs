//! Partial caches (issue #11): a cache keyed on its table's primary key serves at once, fills
//! each key from storage when it is first read (answering that read) while a background
//! warm-up fills the rest; a cache keyed on another column fills each key's rows through a
//! secondary index; a join keyed on one table keeps only the read keys' rows of it and
//! reads its other side from storage; all stay equal to the upstream under a concurrent writer racing the
//! fills, evicts keys under `--memory-limit` (the warm-up stops short of it), and
//! serves at once after a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

mod common;

use common::client::*;
use common::lifecycle::*;
use larder_testkit::PgServer;
use tokio_postgres::Client;

const ROWS: i64 = 20_000;

fn setup(d: &Deployment<'_>) {
    d.psql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL, s text NOT NULL);
         INSERT INTO t SELECT g, g % 100, repeat('x', 200) || g FROM generate_series(1, {ROWS}) g;
         CREATE TABLE other (id int PRIMARY KEY, n int);"
    ));
}

async fn point(c: &Client, id: i64) -> Answer {
    q(c, &format!("SELECT id, n, s FROM t WHERE id = {id}")).await
}

/// A row of t with its match in `other` (looked up in storage by the partial join).
async fn joined(c: &Client, id: i64) -> Answer {
    q(
        c,
        &format!("SELECT t.id, t.n, o.n FROM t LEFT JOIN other o ON o.id = t.n WHERE t.id = {id}"),
    )
    .await
}

/// Prints the memory and keys of the cache keyed on n (the figures of the closing note).
async fn print_n_cache(c: &Client, when: &str) {
    let caches = show_caches(c).await;
    if let Some(r) = caches
        .rows
        .iter()
        .find(|r| r[2].as_deref().unwrap_or("").contains("WHERE n ="))
    {
        eprintln!(
            "the cache keyed on n {when}: {} bytes; {}",
            r[5].as_deref().unwrap_or("?"),
            r[3].as_deref().unwrap_or("?")
        );
    }
}

/// The rows with `n`, sorted (the query has no ORDER BY).
async fn by_n(c: &Client, n: i64) -> Answer {
    q(c, &format!("SELECT id, s FROM t WHERE n = {n}"))
        .await
        .sorted()
}

/// The per-n aggregates two partial caches with state answer: a group keyed on n, and a
/// count that is 0 for an n without rows.
async fn agg_n(c: &Client, n: i64) -> (Answer, Answer) {
    (
        q(
            c,
            &format!("SELECT n, count(*), max(id), sum(id) FROM t WHERE n = {n} GROUP BY n"),
        )
        .await,
        q(c, &format!("SELECT count(*) FROM t WHERE n = {n}")).await,
    )
}

/// (properties, memory_bytes) of the cache on `t`.
async fn cache_row(c: &Client) -> (String, u64) {
    let caches = show_caches(c).await;
    let row = caches
        .rows
        .iter()
        .find(|r| {
            r[2].as_deref()
                .unwrap_or("")
                .contains("FROM \"public\".t WHERE")
        })
        .unwrap_or_else(|| panic!("no cache on t: {caches:?}"));
    (
        row[3].clone().unwrap_or_default(),
        row[5].as_deref().unwrap_or("0").parse().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_fill_on_first_read_and_follow_a_racing_writer() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "partial", &[]));
    setup(&d);
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    let direct = connect(&d.direct_url()).await;
    wait_streaming(&lc).await;

    let started = Instant::now();
    command(
        &lc,
        "CREATE CACHE FROM SELECT id, n, s FROM t WHERE id = $1",
    )
    .await;
    let created_in = started.elapsed();
    // It serves at once and warms up from storage in the background (no memory limit here).
    let (props, _) = cache_row(&lc).await;
    assert!(props.contains("partial: "), "{props}");
    // A cache keyed on another column is partial too: a key's rows come through the
    // secondary index on n.
    command(&lc, "CREATE CACHE FROM SELECT id, s FROM t WHERE n = $1").await;
    let caches = show_caches(&lc).await;
    assert!(
        caches
            .rows
            .iter()
            .any(|r| r[2].as_deref().unwrap_or("").contains("WHERE n =")
                && r[3]
                    .as_deref()
                    .unwrap_or("")
                    .contains("partial: 0 keys held")),
        "{caches:?}"
    );
    // Caches with state keyed on n are partial too: their aggregate keeps only the groups
    // of the values of n read.
    command(
        &lc,
        "CREATE CACHE FROM SELECT n, count(*), max(id), sum(id) FROM t WHERE n = $1 GROUP BY n",
    )
    .await;
    command(&lc, "CREATE CACHE FROM SELECT count(*) FROM t WHERE n = $1").await;
    let caches = show_caches(&lc).await;
    let aggregates: Vec<_> = caches
        .rows
        .iter()
        .filter(|r| r[2].as_deref().unwrap_or("").contains("count("))
        .collect();
    assert_eq!(aggregates.len(), 2, "{caches:?}");
    for r in aggregates {
        assert!(
            r[3].as_deref()
                .unwrap_or("")
                .contains("partial: 0 keys held"),
            "{r:?}"
        );
    }
    for n in [0, 7, 99, 100] {
        let got = agg_n(&lc, n).await;
        assert_eq!(got, agg_n(&direct, n).await, "n {n}");
        let (dest, reason) = explain_last(&lc).await;
        assert_eq!(dest, "cache", "n {n}: {reason}");
    }
    let status = larder_status(&lc).await;
    let indexes = status.get("Join Indexes").cloned().unwrap_or_default();
    assert!(indexes.contains("public.t (n)"), "{status:?}");
    for n in [0, 7, 99, 100] {
        let got = by_n(&lc, n).await;
        assert_eq!(got, by_n(&direct, n).await, "n {n}");
        let (dest, reason) = explain_last(&lc).await;
        assert_eq!(dest, "cache", "n {n}: {reason}");
    }
    print_n_cache(&lc, "after 4 values of n were read").await;

    // A join keyed on t's primary key keeps only the read keys' rows of t, and reads its
    // other side from storage.
    d.psql("INSERT INTO other SELECT g, g * 10 FROM generate_series(0, 60) g");
    command(
        &lc,
        "CREATE CACHE FROM SELECT t.id, t.n, o.n FROM t LEFT JOIN other o ON o.id = t.n WHERE t.id = $1",
    )
    .await;
    let caches = show_caches(&lc).await;
    assert!(
        caches
            .rows
            .iter()
            .any(|r| r[2].as_deref().unwrap_or("").contains("JOIN")
                && r[3].as_deref().unwrap_or("").contains("partial:")),
        "{caches:?}"
    );
    wait_caught_up(&direct, &lc).await;
    for id in [1, 2, 70, ROWS + 1] {
        let got = via_cache(
            &lc,
            &format!(
                "SELECT t.id, t.n, o.n FROM t LEFT JOIN other o ON o.id = t.n WHERE t.id = {id}"
            ),
        )
        .await;
        assert_eq!(got, joined(&direct, id).await, "joined id {id}");
    }

    // The first read of a key is answered from the cache (filled on the way).
    for id in [1, 2, 3, ROWS, ROWS + 1] {
        let got = point(&lc, id).await;
        assert_eq!(got, point(&direct, id).await, "id {id}");
        let (dest, reason) = explain_last(&lc).await;
        assert_eq!(dest, "cache", "id {id}: {reason}");
    }

    // A writer races the fills: updates, deletes and inserts on random keys while reads fill
    // random keys. Once replication has caught up every key read equals the upstream's.
    let seed: u64 = rand::random();
    eprintln!("partial race seed: {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = d.direct_url();
        tokio::spawn(async move {
            let c = connect(&url).await;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut writes = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let id = rng.gen_range(1..=ROWS + 500);
                let o = rng.gen_range(0..110);
                let sql = match rng.gen_range(0..7) {
                    4 => format!("UPDATE other SET n = n + 1 WHERE id = {o}"),
                    5 => format!("DELETE FROM other WHERE id = {o}"),
                    6 => format!(
                        "INSERT INTO other VALUES ({o}, {id}) ON CONFLICT (id) DO UPDATE SET n = {id}"
                    ),
                    0 => format!("DELETE FROM t WHERE id = {id}"),
                    1 => format!(
                        "INSERT INTO t VALUES ({id}, {}, 'new {id}') ON CONFLICT (id) DO UPDATE SET s = 'upsert'",
                        rng.gen_range(0..100)
                    ),
                    _ => format!("UPDATE t SET n = n + 1, s = s || '!' WHERE id = {id}"),
                };
                c.batch_execute(&sql).await.unwrap();
                writes += 1;
            }
            writes
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xfeed);
    let mut read: Vec<i64> = Vec::new();
    let mut read_n: Vec<i64> = Vec::new();
    let race_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < race_until {
        let id = rng.gen_range(1..=ROWS + 500);
        point(&lc, id).await;
        joined(&lc, rng.gen_range(1..=ROWS + 500)).await;
        read.push(id);
        let n = rng.gen_range(0..110);
        by_n(&lc, n).await;
        agg_n(&lc, rng.gen_range(0..110)).await;
        read_n.push(n);
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    wait_caught_up(&direct, &lc).await;
    let mut wrong = Vec::new();
    read.sort_unstable();
    read.dedup();
    for &id in &read {
        let (got, want) = (point(&lc, id).await, point(&direct, id).await);
        if got != want {
            wrong.push(format!("id {id}: larder {got:?}, upstream {want:?}"));
        }
        let (got, want) = (joined(&lc, id).await, joined(&direct, id).await);
        if got != want {
            wrong.push(format!("joined id {id}: larder {got:?}, upstream {want:?}"));
        }
    }
    read_n.sort_unstable();
    read_n.dedup();
    for &n in &read_n {
        let (got, want) = (by_n(&lc, n).await, by_n(&direct, n).await);
        if got != want {
            wrong.push(format!(
                "n {n}: larder {} rows, upstream {}",
                got.rows.len(),
                want.rows.len()
            ));
        }
    }
    for n in 0..110 {
        let (got, want) = (agg_n(&lc, n).await, agg_n(&direct, n).await);
        if got != want {
            wrong.push(format!(
                "aggregates of n {n}: larder {got:?}, upstream {want:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} of {} keys differ after {writes} writes:\n{}",
        wrong.len(),
        read.len(),
        wrong.join("\n")
    );
    let (props, _) = cache_row(&lc).await;
    eprintln!(
        "CREATE CACHE took {created_in:?}; {} keys read under {writes} racing writes; {props}",
        read.len()
    );
    print_n_cache(
        &lc,
        &format!("after {} values of n were read", read_n.len()),
    )
    .await;
    drop_quietly(larder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_evicts_keys_and_a_restart_serves_at_once() {
    let pg = PgServer::shared();
    let limit: u64 = 1 << 20;
    let d = tokio::task::block_in_place(|| {
        Deployment::new(pg, "partial_mem", &["--memory-limit", "1MiB"])
    });
    setup(&d);
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    let direct = connect(&d.direct_url()).await;
    wait_streaming(&lc).await;
    command(
        &lc,
        "CREATE CACHE FROM SELECT id, n, s FROM t WHERE id = $1",
    )
    .await;

    // A Zipf-like load: key 1..20 hot, the rest read once; ten times what the limit holds.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut max_bytes = 0;
    let mut hot_hits = 0;
    let mut hot = Vec::new();
    for id in 1..=20 {
        hot.push(point(&direct, id).await);
    }
    for i in 0..6_000 {
        let id = if i % 3 == 0 {
            rng.gen_range(1..=20)
        } else {
            rng.gen_range(21..=ROWS)
        };
        let got = point(&lc, id).await;
        if id <= 20 && explain_last(&lc).await.0 == "cache" {
            // Fills (the warm-up's, other reads') run meanwhile: a hit is still exact.
            assert_eq!(got, hot[id as usize - 1], "key {id}");
            hot_hits += 1;
        }
        if i % 500 == 499 {
            let (_, bytes) = cache_row(&lc).await;
            max_bytes = max_bytes.max(bytes);
        }
    }
    // Eviction runs every 200 ms: between two passes the cache may exceed the limit by what
    // that many reads add.
    let (props, bytes) = cache_row(&lc).await;
    eprintln!("memory limit {limit}: at most {max_bytes} bytes seen, now {bytes}; hot hits {hot_hits} of 2000; {props}");
    assert!(
        max_bytes <= 2 * limit,
        "{max_bytes} bytes held with a limit of {limit}"
    );
    assert!(
        !props.contains(&format!("partial: {} keys", 4_000)),
        "{props}"
    );
    assert!(
        hot_hits >= 1_900,
        "hot keys kept: {hot_hits} of 2000 were hits"
    );
    let m = lc.simple_query("SELECT 1").await.unwrap();
    drop(m);

    // Restart: the cache is back at once, empty, and its first read of a key is a hit.
    drop_quietly(larder);
    let started = Instant::now();
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = point(&lc, 42).await;
        if explain_last(&lc).await.0 == "cache" {
            assert_eq!(got, point(&direct, 42).await);
            break;
        }
        assert!(Instant::now() < deadline, "no hit after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("restart to first hit: {:?}", started.elapsed());
    drop_quietly(larder);
}

/// Caches that hold their whole result are evicted whole under `--memory-limit`, the least
/// recently read first; their queries go upstream meanwhile, and the next read fills them
/// again from storage (with every change made while they were out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_caches_are_evicted_by_a_clock_and_filled_again_on_demand() {
    let pg = PgServer::shared();
    let limit: u64 = 3 << 20;
    let d = tokio::task::block_in_place(|| {
        // Without stored joins a cache keyed on another column than the primary key holds
        // its whole result (with them it would be partial, filled through an index).
        Deployment::new(
            pg,
            "evict_whole",
            &["--memory-limit", "3MiB", "--stored-joins", "off"],
        )
    });
    for t in 1..=4 {
        d.psql(&format!(
            "CREATE TABLE a{t} (id int PRIMARY KEY, n int NOT NULL, s text NOT NULL);
             INSERT INTO a{t} SELECT g, g % 50, 'row ' || g || repeat('.', 20) FROM generate_series(1, 4000) g;"
        ));
    }
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    let direct = connect(&d.direct_url()).await;
    wait_streaming(&lc).await;
    let read = |t: u32, n: u32| format!("SELECT id, s FROM a{t} WHERE n = {n}");
    // Keyed on a column that is not the key: each holds all 4,000 rows, about a third of the
    // limit or more.
    for t in 1..=4 {
        command(
            &lc,
            &format!("CREATE CACHE c{t} FROM SELECT id, s FROM a{t} WHERE n = $1"),
        )
        .await;
        if t <= 2 {
            continue;
        }
        // a1 and a2 stay in use while the others are created.
        for _ in 0..3 {
            for hot in 1..=2 {
                q(&lc, &read(hot, 7)).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Within the limit again after a few passes of the memory loop (every 200 ms), with
    // c1 and c2, read all along, kept.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (total, evicted) = loop {
        for hot in 1..=2 {
            q(&lc, &read(hot, 7)).await;
        }
        let caches = show_caches(&lc).await;
        let total: u64 = caches
            .rows
            .iter()
            .map(|r| r[5].as_deref().unwrap_or("0").parse::<u64>().unwrap_or(0))
            .sum();
        let evicted: Vec<String> = caches
            .rows
            .iter()
            .filter(|r| r[3].as_deref().unwrap_or("").contains("evicted"))
            .map(|r| r[1].clone().unwrap_or_default())
            .collect();
        if total <= limit && !evicted.is_empty() {
            break (total, evicted);
        }
        assert!(
            Instant::now() < deadline,
            "still {total} bytes, evicted {evicted:?}: {caches:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("caches hold {total} bytes with a limit of {limit}; evicted: {evicted:?}");
    assert!(
        !evicted.iter().any(|c| c == "c1" || c == "c2"),
        "the caches in use were evicted: {evicted:?}"
    );
    for hot in 1..=2 {
        let got = q(&lc, &read(hot, 7)).await;
        let (dest, reason) = explain_last(&lc).await;
        assert_eq!(dest, "cache", "c{hot}: {reason}");
        assert_eq!(got.sorted(), q(&direct, &read(hot, 7)).await.sorted());
    }
    // An evicted cache: changed while out, its first read goes upstream and says why, and a
    // later one is answered from the cache filled again, with the change.
    let out: u32 = evicted[0][1..].parse().expect("cache name c<N>");
    direct
        .batch_execute(&format!(
            "UPDATE a{out} SET s = 'changed while evicted' WHERE id = 7"
        ))
        .await
        .unwrap();
    wait_caught_up(&direct, &lc).await;
    q(&lc, &read(out, 7)).await;
    let (dest, reason) = explain_last(&lc).await;
    assert_eq!(dest, "upstream");
    assert!(reason.contains("evicted"), "{reason}");
    let got = eventually_via_cache(&lc, &read(out, 7)).await.sorted();
    assert_eq!(got, q(&direct, &read(out, 7)).await.sorted());
    assert!(
        got.rows
            .iter()
            .any(|r| r[1].as_deref() == Some("changed while evicted")),
        "{got:?}"
    );
    drop_quietly(larder);
}

/// A restart scans no table: the partial cache answers its first read at once, and a cache
/// that holds its whole result is dormant until read. That read goes upstream and says why;
/// a later one is answered from the cache filled from storage, with the changes made while
/// Larder was down and since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fills_whole_caches_on_their_first_read() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "restart_lazy", &[]));
    setup(&d);
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    let direct = connect(&d.direct_url()).await;
    wait_streaming(&lc).await;
    let whole = "SELECT n, count(*), sum(id) FROM t GROUP BY n ORDER BY n";
    command(&lc, &format!("CREATE CACHE whole FROM {whole}")).await;
    command(
        &lc,
        "CREATE CACHE keyed FROM SELECT id, n, s FROM t WHERE id = $1",
    )
    .await;
    assert_eq!(via_cache(&lc, whole).await, q(&direct, whole).await);
    drop_quietly(larder);

    direct
        .batch_execute("UPDATE t SET n = 7 WHERE id = 1; DELETE FROM t WHERE id = 2")
        .await
        .unwrap();
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    // The restore takes no scan; the first read is a hit once the cache is back.
    let got = eventually_via_cache(&lc, "SELECT id, n, s FROM t WHERE id = 1").await;
    assert_eq!(got, point(&direct, 1).await);
    // The caches come back one after another (each described by the upstream first).
    let deadline = Instant::now() + Duration::from_secs(30);
    let props = loop {
        let caches = show_caches(&lc).await;
        if let Some(row) = caches
            .rows
            .iter()
            .find(|r| r[1].as_deref() == Some("whole"))
        {
            break row[3].clone().unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no cache named whole: {caches:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(props.contains("not filled since Larder started"), "{props}");

    direct
        .batch_execute("INSERT INTO t VALUES (100001, 7, 'after the restart')")
        .await
        .unwrap();
    wait_caught_up(&direct, &lc).await;
    q(&lc, whole).await;
    let (dest, reason) = explain_last(&lc).await;
    assert_eq!(dest, "upstream");
    assert!(
        reason.contains("not filled since Larder started"),
        "{reason}"
    );
    let got = eventually_via_cache(&lc, whole).await;
    assert_eq!(got, q(&direct, whole).await);
    direct
        .batch_execute("UPDATE t SET n = 8 WHERE id = 100001")
        .await
        .unwrap();
    wait_caught_up(&direct, &lc).await;
    assert_eq!(via_cache(&lc, whole).await, q(&direct, whole).await);
    let log = larder.log();
    assert!(!log.contains("snapshot complete"), "{log}");
    assert!(log.contains("dormant cache filled"), "{log}");
    drop_quietly(larder);
}
