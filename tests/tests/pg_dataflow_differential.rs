//! Differential correctness of the relational caches (joins, semi/anti joins, aggregates,
//! DISTINCT, TopK, UNION, derived tables) against Postgres itself, under random writes.
//!
//! Why: these caches are maintained incrementally from signed deltas, never by re-running the
//! query. Any mistake in an operator's state (a LEFT join that forgets to retract its NULL row,
//! a MAX that keeps a deleted extreme, a TopK that does not refill) shows up as a difference
//! from Postgres after some sequence of writes.
//!
//! A Lobsters-like schema (users, stories, votes, comments) is filled with random rows: NULLs
//! in every nullable column, dangling references, duplicates and skew. Every shape below is
//! made a cache. Then, in rounds, a random batch of inserts, updates (including of join and
//! group columns) and deletes is sent *through* Larder; the test waits until Larder has applied
//! everything Postgres committed, and reads every shape with random parameter values through
//! Larder (simple protocol with literals, and extended protocol with binary parameters and
//! results) and directly, comparing the results (as multisets unless the order is total).
//! Every read through Larder must be a cache hit (`EXPLAIN LAST STATEMENT`), so "equal" never
//! silently means "relayed upstream".
//!
//! The seed is printed at the start and in every failure; `LARDER_TEST_SEED=<seed>` replays it,
//! and `LARDER_DATAFLOW_ROUNDS=<n>` runs longer than the default budget.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "common/kit.rs"]
mod kit;

use kit::{Arg, Conn, Deployment, Outcome, P};

const SCHEMA: &str = "
CREATE TABLE users (id int PRIMARY KEY, name text, karma int);
CREATE TABLE stories (id int PRIMARY KEY, author_id int, title text, score int,
                      price numeric(10,2), hidden bool);
CREATE TABLE votes (id int PRIMARY KEY, story_id int, user_id int, vote int);
CREATE TABLE comments (id int PRIMARY KEY, story_id int, author_id int, score int);
";

const USERS: i64 = 25;
const STORIES: i64 = 50;
const VOTES: i64 = 250;
const COMMENTS: i64 = 120;

/// Where a parameter's values come from.
#[derive(Clone, Copy, Debug)]
enum Param {
    User,
    Story,
    Score,
    /// A literal the cache was created with (below an aggregate, say): reads use it as is.
    Fixed(i64),
}

struct Shape {
    name: &'static str,
    /// The query with `$1..$n` for its parameters.
    sql: &'static str,
    params: &'static [Param],
    /// ORDER BY gives a total order: compare as lists.
    ordered: bool,
}

const fn shape(
    name: &'static str,
    sql: &'static str,
    params: &'static [Param],
    ordered: bool,
) -> Shape {
    Shape {
        name,
        sql,
        params,
        ordered,
    }
}

use Param::{Fixed, Score, Story, User};

/// Every shape the dataflow must maintain. Each is made a cache; none may be refused.
fn shapes() -> Vec<Shape> {
    vec![
        shape("join_story_author",
            "SELECT s.id, s.title, u.name FROM stories s JOIN users u ON u.id = s.author_id WHERE s.id = $1",
            &[Story], false),
        shape("join_by_author",
            "SELECT s.id, s.score, u.karma FROM stories s JOIN users u ON s.author_id = u.id WHERE u.id = $1",
            &[User], false),
        shape("left_join_author",
            "SELECT s.id, u.id, u.name FROM stories s LEFT JOIN users u ON u.id = s.author_id WHERE s.author_id = $1",
            &[User], false),
        shape("left_join_all",
            "SELECT s.id, u.name FROM stories s LEFT JOIN users u ON u.id = s.author_id",
            &[], false),
        shape("three_way_join",
            "SELECT v.id, s.title, u.name FROM votes v JOIN stories s ON s.id = v.story_id JOIN users u ON u.id = v.user_id WHERE v.story_id = $1",
            &[Story], false),
        shape("self_join_karma",
            "SELECT a.id, b.id FROM users a JOIN users b ON a.karma = b.karma WHERE a.id = $1",
            &[User], false),
        shape("join_two_columns",
            "SELECT v.id, c.id FROM votes v JOIN comments c ON c.story_id = v.story_id AND c.author_id = v.user_id WHERE v.story_id = $1",
            &[Story], false),
        shape("join_using",
            "SELECT id, v.vote FROM votes v JOIN stories s USING (id) WHERE s.author_id = $1",
            &[User], false),
        shape("count_votes",
            "SELECT story_id, count(*) FROM votes WHERE story_id = $1 GROUP BY story_id",
            &[Story], false),
        shape("aggregates_by_author",
            "SELECT author_id, count(*), count(score), sum(score), avg(score), min(score), max(score) FROM stories GROUP BY author_id",
            &[], false),
        shape("aggregates_keyed",
            "SELECT author_id, sum(price), avg(price), max(price), count(DISTINCT score) FROM stories WHERE author_id = $1 GROUP BY author_id",
            &[User], false),
        shape("global_aggregate",
            "SELECT count(*), sum(karma), min(karma), max(karma) FROM users",
            &[], false),
        shape("story_with_author_and_votes",
            "SELECT s.id, s.title, u.name, count(v.id), sum(v.vote) FROM stories s JOIN users u ON u.id = s.author_id LEFT JOIN votes v ON v.story_id = s.id WHERE s.id = $1 GROUP BY s.id, s.title, u.name",
            &[Story], false),
        shape("having",
            "SELECT story_id, count(*) FROM votes GROUP BY story_id HAVING count(*) > 4",
            &[], false),
        shape("filtered_aggregate",
            "SELECT user_id, count(*) FROM votes WHERE vote > 0 AND user_id = $1 GROUP BY user_id",
            &[User], false),
        shape("count_for_author",
            "SELECT count(*), max(score), sum(price) FROM stories WHERE author_id = $1",
            &[User], false),
        shape("unread_count",
            "SELECT count(*) FROM votes WHERE user_id = $1 AND vote > $2",
            &[User, Fixed(0)], false),
        shape("group_by_with_key",
            "SELECT user_id, count(*) FROM votes WHERE story_id = $1 GROUP BY user_id",
            &[Story], false),
        shape("distinct_authors",
            "SELECT DISTINCT author_id FROM stories",
            &[], false),
        shape("distinct_keyed",
            "SELECT DISTINCT v.user_id FROM votes v WHERE v.story_id = $1",
            &[Story], false),
        shape("top_stories",
            "SELECT id, title, score FROM stories ORDER BY score DESC NULLS LAST, id LIMIT 5",
            &[], true),
        shape("top_stories_offset",
            "SELECT id, score FROM stories WHERE score IS NOT NULL ORDER BY score, id DESC LIMIT 4 OFFSET 2",
            &[], true),
        shape("top_per_author",
            "SELECT id, score FROM stories WHERE author_id = $1 ORDER BY score DESC, id LIMIT 3",
            &[User], true),
        shape("top_voted",
            "SELECT story_id, count(*) AS n FROM votes GROUP BY story_id ORDER BY n DESC, story_id LIMIT 5",
            &[], true),
        shape("union_distinct",
            "SELECT author_id FROM stories UNION SELECT author_id FROM comments",
            &[], false),
        shape("union_all",
            "SELECT story_id, user_id FROM votes WHERE vote = $1 UNION ALL SELECT story_id, author_id FROM comments WHERE score > $2",
            &[Fixed(2), Fixed(3)], false),
        shape("semi_in",
            "SELECT id, name FROM users WHERE id IN (SELECT author_id FROM stories)",
            &[], false),
        shape("semi_exists",
            "SELECT s.id FROM stories s WHERE EXISTS (SELECT 1 FROM votes v WHERE v.story_id = s.id) AND s.author_id = $1",
            &[User], false),
        shape("anti_not_exists",
            "SELECT s.id FROM stories s WHERE NOT EXISTS (SELECT 1 FROM comments c WHERE c.story_id = s.id)",
            &[], false),
        shape("anti_not_in",
            "SELECT id FROM users WHERE karma NOT IN (SELECT score FROM comments WHERE score IS NOT NULL AND story_id < 5)",
            &[], false),
        shape("anti_not_in_nulls",
            "SELECT id, karma FROM users WHERE karma NOT IN (SELECT score FROM comments WHERE story_id = 3)",
            &[], false),
        shape("derived_table",
            "SELECT s.id, c.n FROM stories s JOIN (SELECT story_id, count(*) AS n FROM comments GROUP BY story_id) c ON c.story_id = s.id WHERE s.id = $1",
            &[Story], false),
        shape("cte",
            "WITH v AS (SELECT story_id, sum(vote) AS total FROM votes GROUP BY story_id) SELECT s.id, s.score, v.total FROM stories s LEFT JOIN v ON v.story_id = s.id WHERE s.author_id = $1",
            &[User], false),
        shape("score_range_join",
            "SELECT c.id, s.id FROM comments c JOIN stories s ON s.id = c.story_id WHERE c.score >= $1 AND c.author_id = $2",
            &[Score, User], false),
        shape("range_ordered",
            "SELECT id, score FROM stories WHERE score >= $1 AND score < $2 ORDER BY score, id LIMIT 6",
            &[Score, Story], true),
        shape("range_desc_keyed",
            "SELECT id, score FROM stories WHERE author_id = $1 AND score > $2 ORDER BY score DESC, id",
            &[User, Score], true),
        shape("range_between_join",
            "SELECT v.id, s.price FROM votes v JOIN stories s ON s.id = v.story_id WHERE s.price BETWEEN $1 AND $2",
            &[Score, Story], false),
        // These share operators with shapes above (the same joins and aggregates, read in
        // full or by another key); the first two are dropped half-way through.
        shape("votes_per_story",
            "SELECT story_id, count(*) FROM votes GROUP BY story_id",
            &[], false),
        shape("stories_with_author_and_votes",
            "SELECT s.id, s.title, u.name, count(v.id), sum(v.vote) FROM stories s JOIN users u ON u.id = s.author_id LEFT JOIN votes v ON v.story_id = s.id GROUP BY s.id, s.title, u.name",
            &[], false),
        shape("in_list_below_aggregate",
            "SELECT count(*), sum(vote) FROM votes WHERE story_id IN (1, 2, 3)",
            &[], false),
        shape("in_list_below_distinct",
            "SELECT DISTINCT user_id FROM votes WHERE story_id IN (2, 4) AND vote > 0",
            &[], false),
        shape("fixed_literal_below_aggregate",
            "SELECT story_id, count(*) FROM votes WHERE vote = $1 GROUP BY story_id",
            &[Fixed(1)], false),
    ]
}

fn maybe<T: ToString>(null_pct: u32, v: T, rng: &mut StdRng) -> String {
    if rng.gen_range(0..100) < null_pct {
        "NULL".into()
    } else {
        v.to_string()
    }
}

fn user_row(rng: &mut StdRng, id: i64) -> String {
    let name = ["ann", "bob", "cy", "dee", "o'neil", "ünï"][rng.gen_range(0..6)];
    format!(
        "({id}, {}, {})",
        maybe(10, kit::quote(name), rng),
        maybe(10, rng.gen_range(0..6), rng)
    )
}

fn story_row(rng: &mut StdRng, id: i64) -> String {
    let author = rng.gen_range(1..=USERS + 3);
    let score = if rng.gen_bool(0.5) {
        rng.gen_range(0..4)
    } else {
        rng.gen_range(-3..30)
    };
    let price = format!("{}.{:02}", rng.gen_range(0..500), rng.gen_range(0..100));
    format!(
        "({id}, {}, {}, {}, {}, {})",
        maybe(8, author, rng),
        maybe(5, kit::quote(&format!("story {}", id % 17)), rng),
        maybe(10, score, rng),
        maybe(15, price, rng),
        maybe(5, rng.gen_bool(0.2), rng)
    )
}

fn vote_row(rng: &mut StdRng, id: i64) -> String {
    // Skewed toward low story ids, like real votes.
    let story = 1 + (rng.gen_range(0.0f64..1.0).powi(2) * (STORIES + 3) as f64) as i64;
    format!(
        "({id}, {}, {}, {})",
        maybe(5, story, rng),
        maybe(5, rng.gen_range(1..=USERS + 2), rng),
        [-1, 1, 1, 2][rng.gen_range(0..4)]
    )
}

fn comment_row(rng: &mut StdRng, id: i64) -> String {
    format!(
        "({id}, {}, {}, {})",
        maybe(5, rng.gen_range(1..=STORIES + 2), rng),
        maybe(8, rng.gen_range(1..=USERS + 2), rng),
        maybe(10, rng.gen_range(-2..6), rng)
    )
}

fn insert(table: &str, rows: Vec<String>) -> String {
    format!("INSERT INTO {table} VALUES {};\n", rows.join(", "))
}

fn initial_data(rng: &mut StdRng) -> String {
    let mut sql = String::new();
    sql += &insert("users", (1..=USERS).map(|i| user_row(rng, i)).collect());
    sql += &insert(
        "stories",
        (1..=STORIES).map(|i| story_row(rng, i)).collect(),
    );
    sql += &insert("votes", (1..=VOTES).map(|i| vote_row(rng, i)).collect());
    sql += &insert(
        "comments",
        (1..=COMMENTS).map(|i| comment_row(rng, i)).collect(),
    );
    sql
}

/// One random write statement; `fresh` hands out ids never used before.
fn random_write(rng: &mut StdRng, fresh: &mut i64) -> String {
    let table = ["users", "stories", "votes", "votes", "comments"][rng.gen_range(0..5)];
    let max = match table {
        "users" => USERS,
        "stories" => STORIES,
        "votes" => VOTES,
        _ => COMMENTS,
    };
    let id = rng.gen_range(1..=max);
    match rng.gen_range(0..10) {
        0..=3 => {
            *fresh += 1;
            let row = match table {
                "users" => user_row(rng, *fresh),
                "stories" => story_row(rng, *fresh),
                "votes" => vote_row(rng, *fresh),
                _ => comment_row(rng, *fresh),
            };
            format!("INSERT INTO {table} VALUES {row}")
        }
        4..=7 => {
            let set = match table {
                "users" => format!("karma = {}", maybe(10, rng.gen_range(0..6), rng)),
                "stories" => match rng.gen_range(0..3) {
                    0 => format!("score = {}", maybe(10, rng.gen_range(-3..30), rng)),
                    1 => format!("author_id = {}", maybe(5, rng.gen_range(1..=USERS), rng)),
                    _ => format!("price = {}", maybe(10, rng.gen_range(0..900), rng)),
                },
                "votes" => match rng.gen_range(0..2) {
                    0 => format!("story_id = {}", maybe(5, rng.gen_range(1..=STORIES), rng)),
                    _ => format!("vote = {}", [-1, 1, 2][rng.gen_range(0..3)]),
                },
                _ => format!("score = {}", maybe(10, rng.gen_range(-2..6), rng)),
            };
            format!("UPDATE {table} SET {set} WHERE id = {id}")
        }
        _ => format!("DELETE FROM {table} WHERE id = {id}"),
    }
}

fn value_for(rng: &mut StdRng, p: Param) -> i64 {
    match p {
        User => rng.gen_range(1..=USERS + 2),
        Story => rng.gen_range(1..=STORIES + 2),
        Score => rng.gen_range(-2..6),
        Fixed(v) => v,
    }
}

/// The query with its parameters written as literals.
fn inline(sql: &str, values: &[i64]) -> String {
    let mut out = sql.to_string();
    for (i, v) in values.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), &v.to_string());
    }
    out
}

fn sorted(o: Outcome) -> Outcome {
    match o {
        Outcome::Rows { columns, mut rows } => {
            rows.sort();
            Outcome::Rows { columns, rows }
        }
        e => e,
    }
}

struct Checker {
    seed: u64,
    direct: Conn,
    larder: Conn,
    compared: u64,
    misses: BTreeMap<String, u64>,
}

impl Checker {
    async fn read(&mut self, shape: &Shape, values: &[i64], round: usize) {
        let text = inline(shape.sql, values);
        let tidy = |o: Outcome| if shape.ordered { o } else { sorted(o) };
        let via = tidy(self.larder.simple(&text).await);
        self.expect_hit(shape, "simple", &text).await;
        let direct = tidy(self.direct.simple(&text).await);
        self.assert_same(shape, "simple", &text, round, &via, &direct);
        let args: Vec<Arg> = values
            .iter()
            .map(|v| Arg {
                value: P::Int(*v),
                binary: true,
            })
            .collect();
        let via = tidy(self.larder.extended(shape.sql, &args, false).await);
        self.expect_hit(shape, "extended", &text).await;
        let direct = tidy(self.direct.extended(shape.sql, &args, false).await);
        self.assert_same(shape, "extended", &text, round, &via, &direct);
        self.compared += 2;
    }

    async fn expect_hit(&mut self, shape: &Shape, proto: &str, text: &str) {
        let (dest, reason) = kit::explain_last(&self.larder.client).await;
        if dest != "cache" {
            *self
                .misses
                .entry(format!("{} ({proto}): {reason}", shape.name))
                .or_default() += 1;
            eprintln!("seed {}: miss for {text} ({proto}): {reason}", self.seed);
        }
    }

    fn assert_same(
        &self,
        shape: &Shape,
        proto: &str,
        text: &str,
        round: usize,
        via: &Outcome,
        direct: &Outcome,
    ) {
        assert!(
            via == direct,
            "seed {} round {round}: {} ({proto}) differs from Postgres\nquery: {text}\nlarder: {}\ndirect: {}\n\
             replay with LARDER_TEST_SEED={}",
            self.seed,
            shape.name,
            kit::show_outcome(via),
            kit::show_outcome(direct),
            self.seed
        );
    }
}

fn seed() -> u64 {
    std::env::var("LARDER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relational_caches_stay_equal_to_postgres_under_random_writes() {
    let started = Instant::now();
    let seed = seed();
    eprintln!("seed {seed} (replay with LARDER_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let setup = format!("{SCHEMA}\n{}", initial_data(&mut rng));
    let d = Deployment::start_with(
        "dataflow_diff",
        "TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
        &setup,
    );
    let larder = Conn::new(&d.larder_url()).await;
    kit::wait_online(&larder.client).await;
    let shapes = shapes();
    let mut refused = Vec::new();
    for s in &shapes {
        let values: Vec<i64> = s.params.iter().map(|p| value_for(&mut rng, *p)).collect();
        let sql = format!("CREATE CACHE c_{} FROM {}", s.name, inline(s.sql, &values));
        if let Err(e) = larder.client.simple_query(&sql).await {
            let reason = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            refused.push(format!("{}: {reason}", s.name));
        }
    }
    assert!(
        refused.is_empty(),
        "shapes refused by CREATE CACHE:\n  {}",
        refused.join("\n  ")
    );
    // The shapes that repeat others' operators share them instead of holding them twice.
    let caches = kit::text_rows(&larder.client, "SHOW CACHES").await;
    let sharing = |name: &str| {
        caches.iter().any(|row| {
            row[1].as_deref() == Some(name)
                && row[3]
                    .as_deref()
                    .is_some_and(|p| p.contains("operators with other caches"))
        })
    };
    // Each cache's memory: its reader and the operators it uses (a join holds both sides).
    let memory = |name: &str| -> u64 {
        let row = caches
            .iter()
            .find(|row| row[1].as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in {caches:?}"));
        row[5]
            .as_deref()
            .and_then(|b| b.parse().ok())
            .expect("memory_bytes")
    };
    assert!(
        memory("c_story_with_author_and_votes") > memory("c_global_aggregate"),
        "{caches:?}"
    );
    assert!(memory("c_global_aggregate") > 0, "{caches:?}");
    // A per-key count is partial instead (its aggregate keeps the groups of the keys read).
    assert!(
        caches
            .iter()
            .any(|row| row[1].as_deref() == Some("c_count_votes")
                && row[3].as_deref().is_some_and(|p| p.contains("partial:"))),
        "{caches:?}"
    );
    // So is a join keyed on the table it keeps in memory (the other side read from storage).
    // A partial cache shares nothing: the caches over stories, users and votes shared
    // `c_join_story_author`'s join before it was partial.
    for name in [
        "c_join_story_author",
        "c_join_two_columns",
        "c_left_join_author",
    ] {
        assert!(
            caches.iter().any(|row| row[1].as_deref() == Some(name)
                && row[3].as_deref().is_some_and(|p| p.contains("partial:"))),
            "{name} is not partial: {caches:?}"
        );
    }
    assert!(
        sharing("c_votes_per_story"),
        "c_votes_per_story shares nothing: {caches:?}"
    );
    let mut dropped: Vec<&str> = Vec::new();
    let mut ck = Checker {
        seed,
        direct: Conn::new(&d.direct_url()).await,
        larder,
        compared: 0,
        misses: BTreeMap::new(),
    };
    let writer = kit::connect(&d.larder_url()).await;
    let rounds: usize = std::env::var("LARDER_DATAFLOW_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mut fresh = 10_000;
    let mut writes = 0;
    for round in 0..=rounds {
        if round == rounds / 2 + 1 {
            // Dropping the caches that built the shared operators leaves them to the others.
            for name in ["count_votes", "story_with_author_and_votes"] {
                ck.larder
                    .client
                    .simple_query(&format!("DROP CACHE c_{name}"))
                    .await
                    .expect("drop cache");
                dropped.push(name);
            }
        }
        if round > 0 {
            let n = rng.gen_range(15..40);
            let mut batch = Vec::new();
            for _ in 0..n {
                batch.push(random_write(&mut rng, &mut fresh));
            }
            writes += n;
            // Some statements alone, some grouped into one transaction.
            let (alone, txn) = batch.split_at(n / 2);
            for stmt in alone {
                writer
                    .simple_query(stmt)
                    .await
                    .expect("write through larder");
            }
            writer
                .batch_execute(&format!("BEGIN; {}; COMMIT", txn.join("; ")))
                .await
                .expect("transaction through larder");
        }
        kit::wait_consistent(&ck.direct.client, &ck.larder.client).await;
        for s in shapes.iter().filter(|s| !dropped.contains(&s.name)) {
            let reads = if s.params.is_empty() { 1 } else { 3 };
            for _ in 0..reads {
                let values: Vec<i64> = s.params.iter().map(|p| value_for(&mut rng, *p)).collect();
                ck.read(s, &values, round).await;
            }
        }
    }
    assert!(
        ck.misses.is_empty(),
        "seed {seed}: reads that went upstream instead of the cache:\n{:#?}",
        ck.misses
    );
    let st = kit::status(&ck.larder.client).await;
    assert_eq!(
        st.get("Last Error").map(String::as_str).unwrap_or(""),
        "",
        "larder status: {st:?}"
    );
    eprintln!(
        "seed {seed}: {} shapes, {rounds} rounds, {writes} writes, {} comparisons in {:?}",
        shapes.len(),
        ck.compared,
        started.elapsed()
    );
}
