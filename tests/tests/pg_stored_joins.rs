//! Joins that read a side from storage (issue #6, item 5): a join whose side is a base table
//! looks that side up in RocksDB (by primary key, or through a secondary index written in the
//! same batch as the rows) instead of holding it in memory. The cache's accounted memory
//! drops by that side; transactions that change both sides of a join count `ΔA⋈ΔB` once;
//! answers stay equal to the upstream's under random multi-table transactions, across a
//! `kill -9`, and the index goes with the last cache that reads it.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

mod common;

use common::client::*;
use common::lifecycle::*;
use larder_testkit::PgServer;
use tokio_postgres::Client;

const USERS: i64 = 200;
const STORIES: i64 = 2_000;
const VOTES: i64 = 20_000;

const STORY: &str = "SELECT s.id, s.title, u.name, count(v.id), sum(v.vote) \
     FROM stories s JOIN users u ON u.id = s.author_id \
     LEFT JOIN votes v ON v.story_id = s.id \
     WHERE s.id = $1 GROUP BY s.id, s.title, u.name";

fn story(id: i64) -> String {
    STORY.replace("$1", &id.to_string())
}

fn setup(d: &Deployment<'_>) {
    d.psql(&format!(
        "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE stories (id int PRIMARY KEY, author_id int, title text NOT NULL);
         CREATE TABLE votes (id int PRIMARY KEY, story_id int, vote int NOT NULL);
         INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, {USERS}) g;
         INSERT INTO stories SELECT g, 1 + g % {USERS}, 'story ' || g FROM generate_series(1, {STORIES}) g;
         INSERT INTO votes SELECT g, 1 + g % {STORIES}, 1 - 2 * (g % 3 = 0)::int FROM generate_series(1, {VOTES}) g;"
    ));
}

/// The memory of the cache reading `stories`, and its properties.
async fn cache_memory(c: &Client) -> u64 {
    let caches = show_caches(c).await;
    let row = caches
        .rows
        .iter()
        .find(|r| r[2].as_deref().unwrap_or("").contains("LEFT JOIN"))
        .unwrap_or_else(|| panic!("no join cache: {caches:?}"));
    row[5].as_deref().unwrap_or("0").parse().unwrap_or(0)
}

async fn same(larder: &Client, direct: &Client, id: i64, what: &str) {
    let got = via_cache(larder, &story(id)).await;
    let want = q(direct, &story(id)).await;
    assert_eq!(got, want, "story {id} {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_side_read_from_storage_is_exact_and_costs_no_memory() {
    let pg = PgServer::shared();
    let (stored, in_memory) = tokio::task::block_in_place(|| {
        (
            Deployment::new(pg, "stored_joins", &[]),
            Deployment::new(pg, "stored_joins_off", &["--stored-joins", "off"]),
        )
    });
    setup(&stored);
    setup(&in_memory);

    // The same cache, with both sides in memory and with the votes read from storage.
    let off = start(&in_memory);
    let off_c = connect(&in_memory.larder_url(&off)).await;
    wait_streaming(&off_c).await;
    command(&off_c, &format!("CREATE CACHE FROM {STORY}")).await;
    let memory_off = cache_memory(&off_c).await;
    drop(off_c);
    drop_quietly(off);

    let mut larder = start(&stored);
    let mut lc = connect(&stored.larder_url(&larder)).await;
    let direct = connect(&stored.direct_url()).await;
    wait_streaming(&lc).await;
    command(&lc, &format!("CREATE CACHE FROM {STORY}")).await;
    let memory_on = cache_memory(&lc).await;
    let status = larder_status(&lc).await;
    eprintln!(
        "cache memory: {memory_off} bytes with both sides in memory, {memory_on} with joins \
         reading storage; join indexes: {:?}",
        status.get("Join Indexes")
    );
    // The votes (20,000 rows) and the users are read from storage; the stories, the first
    // join's output, the groups and the reader stay (here about half of it).
    assert!(
        memory_on * 10 < memory_off * 7,
        "{memory_on} bytes with stored joins, {memory_off} without"
    );
    assert_eq!(
        status.get("Join Indexes").map(String::as_str),
        Some("1: public.votes (story_id)"),
        "{status:?}"
    );
    for id in [1, 2, 500, STORIES] {
        same(&lc, &direct, id, "after the fill").await;
    }

    // Both sides of both joins change in one transaction: each new pair counts once.
    let steps = [
        "BEGIN; INSERT INTO users VALUES (9001, 'new author');
         INSERT INTO stories VALUES (9001, 9001, 'new story');
         INSERT INTO votes VALUES (90001, 9001, 1), (90002, 9001, 1), (90003, 9001, -1); COMMIT",
        "BEGIN; INSERT INTO users VALUES (9002, 'second author');
         UPDATE stories SET author_id = 9002, title = 'moved' WHERE id = 9001;
         UPDATE votes SET vote = 5 WHERE story_id = 9001; INSERT INTO votes VALUES (90004, 9001, 2);
         UPDATE users SET name = 'renamed' WHERE id = 9002; COMMIT",
        "BEGIN; UPDATE votes SET story_id = 1 WHERE id = 90001;
         UPDATE votes SET story_id = 9001 WHERE id = 1; DELETE FROM users WHERE id = 9001; COMMIT",
        "BEGIN; DELETE FROM votes WHERE story_id = 9001; DELETE FROM stories WHERE id = 9001;
         DELETE FROM users WHERE id = 9002; COMMIT",
    ];
    for (i, step) in steps.iter().enumerate() {
        direct.batch_execute(step).await.unwrap();
        wait_caught_up(&direct, &lc).await;
        for id in [1, 9001] {
            same(&lc, &direct, id, &format!("after transaction {i}")).await;
        }
    }

    // Random transactions over all three tables, then a kill -9 and more of them.
    let seed: u64 = rand::random();
    eprintln!("stored joins seed: {seed} (replay with LARDER_TEST_SEED={seed})");
    let seed = std::env::var("LARDER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..2 {
        let mut touched = Vec::new();
        for _ in 0..60 {
            let mut txn = Vec::new();
            for _ in 0..rng.gen_range(1..5) {
                let s = rng.gen_range(1..=60);
                let u = rng.gen_range(1..=USERS + 5);
                touched.push(s);
                txn.push(match rng.gen_range(0..6) {
                    0 => format!(
                        "INSERT INTO votes VALUES ({}, {s}, {}) ON CONFLICT (id) DO UPDATE SET story_id = {s}",
                        rng.gen_range(1..=VOTES + 500),
                        rng.gen_range(-1..=1)
                    ),
                    1 => format!("DELETE FROM votes WHERE id = {}", rng.gen_range(1..=VOTES + 500)),
                    2 => format!("UPDATE stories SET author_id = {u} WHERE id = {s}"),
                    3 => format!(
                        "INSERT INTO users VALUES ({u}, 'u{u}') ON CONFLICT (id) DO UPDATE SET name = users.name || '!'"
                    ),
                    4 => format!("DELETE FROM users WHERE id = {u}"),
                    _ => format!("UPDATE votes SET story_id = {s} WHERE id = {}", rng.gen_range(1..=VOTES)),
                });
            }
            direct
                .batch_execute(&format!("BEGIN; {}; COMMIT", txn.join("; ")))
                .await
                .unwrap();
        }
        wait_caught_up(&direct, &lc).await;
        touched.sort_unstable();
        touched.dedup();
        for &id in &touched {
            same(&lc, &direct, id, &format!("seed {seed} round {round}")).await;
        }
        if round == 0 {
            // The index is rebuilt with the cache, which a restart fills on its first read;
            // nothing stored is trusted.
            larder.kill9();
            drop_quietly(larder);
            larder = start(&stored);
            lc = connect(&stored.larder_url(&larder)).await;
            wait_streaming(&lc).await;
            eventually_via_cache(&lc, &story(1)).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while larder_status(&lc)
                .await
                .get("Join Indexes")
                .map(String::as_str)
                != Some("1: public.votes (story_id)")
            {
                assert!(Instant::now() < deadline, "the index was not rebuilt");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // The index goes with the last cache that reads it.
    command(&lc, "DROP ALL CACHES").await;
    let status = larder_status(&lc).await;
    assert_eq!(status.get("Join Indexes").map(String::as_str), Some("0"));
    drop_quietly(larder);
}
