//! The query-shape corpus (`sql/tests/corpus/queries.txt`) run for real: every shape is made
//! a cache on a Larder in front of Postgres, read through Larder and directly, and compared,
//! before and after random writes. It records what fraction of the corpus is cached *and*
//! correct, so that the number can only rise.
//!
//! The schema is the corpus' Lobsters-like catalog (`sql/tests/corpus.rs`), filled with random
//! rows (NULLs, duplicates, dangling references). A shape the corpus marks `OK` must be
//! accepted by `CREATE CACHE`, answered from the cache, and equal Postgres' answer (as a
//! multiset; with `LIMIT`, the same number of rows, each of which Postgres' answer without the
//! limit holds, since ties may be cut differently). The seed is printed; replay with
//! `LARDER_TEST_SEED=<seed>`.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "common/kit.rs"]
mod kit;

use kit::{Arg, Conn, Deployment, Outcome, P};

const CORPUS: &str = include_str!("../../sql/tests/corpus/queries.txt");

const SCHEMA: &str = "
CREATE TABLE users (id int PRIMARY KEY, username text, email varchar(100), karma int,
    is_admin bool, created_at timestamptz, deleted_at timestamp, invited_by_user_id int,
    about text, settings jsonb, credit numeric(12,2));
CREATE TABLE stories (id int8 PRIMARY KEY, user_id int, title text, url text, score int,
    upvotes int, downvotes int, hotness float8, created_at timestamp, is_deleted bool,
    comments_count int, merged_story_id int8, short_id varchar(10), description text);
CREATE TABLE comments (id int8 PRIMARY KEY, story_id int8, user_id int, parent_comment_id int8,
    comment text, score int, confidence float8, created_at timestamp, is_deleted bool);
CREATE TABLE votes (id int8 PRIMARY KEY, user_id int, story_id int8, comment_id int8,
    vote int2, reason text, created_at timestamp);
CREATE TABLE tags (id int PRIMARY KEY, tag text, description text, privileged bool,
    hotness_mod numeric(5,2));
CREATE TABLE taggings (id int PRIMARY KEY, story_id int8, tag_id int);
CREATE TABLE hidden_stories (id int PRIMARY KEY, user_id int, story_id int8);
";

/// Rows per table; values are drawn so that the corpus' literals (ids 1-5, 'jcs', 'rust', ...)
/// find rows.
fn data(seed: u64) -> String {
    let s = (seed % 1000) as f64 / 1000.0;
    format!(
        "SELECT setseed({s});
INSERT INTO users SELECT g, (ARRAY['jcs','pushcx','alice','bob',NULL])[1 + g % 5] || CASE WHEN g > 5 THEN g::text ELSE '' END,
    'u' || g || '@b.c', CASE WHEN random() < 0.1 THEN NULL ELSE (random() * 50)::int END,
    g % 7 = 0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 hour',
    CASE WHEN g % 9 = 0 THEN timestamp '2026-06-01' END, CASE WHEN g > 1 THEN 1 + g % 3 END,
    CASE WHEN g % 4 = 0 THEN NULL ELSE 'about ' || g END, jsonb_build_object('k', g % 3),
    round((random() * 100)::numeric, 2)
    FROM generate_series(1, 40) g;
INSERT INTO stories SELECT g, 1 + (random() * 42)::int, (ARRAY['rust','Rust news','go','a','b'])[1 + g % 5] || ' ' || g,
    CASE WHEN g % 5 = 0 THEN NULL ELSE 'https://x/' || g END, (random() * 30)::int - 5,
    (random() * 20)::int, (random() * 5)::int, round(random()::numeric, 3)::float8,
    timestamp '2026-01-01' + g * interval '3 hours', g % 11 = 0, (random() * 10)::int,
    CASE WHEN g % 13 = 0 THEN 1 + g % 5 END, CASE WHEN g = 3 THEN 'abc123' ELSE 's' || g END,
    CASE WHEN g % 3 = 0 THEN NULL ELSE 'desc ' || g END
    FROM generate_series(1, 120) g;
INSERT INTO comments SELECT g, 1 + (power(random(), 2) * 122)::int, 1 + (random() * 42)::int,
    CASE WHEN g % 3 = 0 THEN 1 + (random() * g)::int END, 'comment ' || g,
    (random() * 12)::int - 2, round(random()::numeric, 2)::float8,
    timestamp '2026-01-02' + g * interval '1 hour', g % 17 = 0
    FROM generate_series(1, 400) g;
INSERT INTO votes SELECT g, 1 + (random() * 42)::int,
    CASE WHEN g % 4 = 0 THEN NULL ELSE 1 + (power(random(), 2) * 122)::int END,
    CASE WHEN g % 4 = 0 THEN 1 + (random() * 400)::int END, (ARRAY[1, 1, -1])[1 + g % 3],
    CASE WHEN g % 3 = 2 THEN (ARRAY['spam','off-topic'])[1 + g % 2] END,
    timestamp '2026-01-03' + g * interval '10 minutes'
    FROM generate_series(1, 800) g;
INSERT INTO tags SELECT g, (ARRAY['rust','go','c','meta','ask'])[1 + g % 5] || CASE WHEN g > 5 THEN g::text ELSE '' END,
    'tag ' || g, g % 4 = 0, round((random() * 2 - 1)::numeric, 2) FROM generate_series(1, 10) g;
INSERT INTO taggings SELECT g, 1 + (random() * 121)::int, 1 + (random() * 10)::int
    FROM generate_series(1, 200) g;
INSERT INTO hidden_stories SELECT g, 1 + (random() * 42)::int, 1 + (random() * 121)::int
    FROM generate_series(1, 50) g;
"
    )
}

/// Random writes: updates of join, group and filter columns, deletes and inserts.
fn writes(rng: &mut StdRng, fresh: &mut i64) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(20..40) {
        let id = rng.gen_range(1..=120);
        out.push(match rng.gen_range(0..9) {
            0 => format!("UPDATE stories SET score = {} WHERE id = {id}", rng.gen_range(-5..30)),
            1 => format!(
                "UPDATE stories SET user_id = {} WHERE id = {id}",
                rng.gen_range(1..45)
            ),
            2 => format!("UPDATE users SET karma = NULL WHERE id = {}", id % 40 + 1),
            3 => format!("DELETE FROM votes WHERE id = {}", rng.gen_range(1..800)),
            4 => format!(
                "UPDATE comments SET story_id = {} WHERE id = {}",
                rng.gen_range(1..125),
                rng.gen_range(1..400)
            ),
            5 => {
                *fresh += 1;
                format!(
                    "INSERT INTO votes VALUES ({fresh}, {}, {}, NULL, 1, NULL, '2026-02-01')",
                    rng.gen_range(1..42),
                    rng.gen_range(1..122)
                )
            }
            6 => {
                *fresh += 1;
                format!(
                    "INSERT INTO comments VALUES ({fresh}, {}, {}, NULL, 'new', {}, 0.5, '2026-02-01', false)",
                    rng.gen_range(1..122),
                    rng.gen_range(1..42),
                    rng.gen_range(-2..10)
                )
            }
            7 => format!("DELETE FROM taggings WHERE id = {}", rng.gen_range(1..200)),
            _ => format!(
                "UPDATE stories SET is_deleted = NOT is_deleted WHERE id = {id}"
            ),
        });
    }
    out
}

/// Shapes that are cached but whose reads here go upstream, and why (each a known gap).
const KNOWN_MISSES: &[(&str, &str)] = &[
    (
        "SELECT * FROM users WHERE created_at > '2024-01-01'",
        "a timestamptz literal without an offset is read in the session TimeZone; Larder's \
         parameter decoding does not know it yet, so the read goes upstream",
    ),
    (
        "SELECT short_id::int4 FROM stories WHERE id = 1",
        "the row's short_id is not a number: Postgres raises an error, and the cache leaves \
         errors to Postgres (the key is poisoned)",
    ),
    (
        "SELECT user_id, count(*) FROM votes WHERE story_id IN (1, 2) GROUP BY user_id",
        "the same query id as `... WHERE story_id = 1 GROUP BY user_id`, cached first as a \
         reader keyed on story_id (one value at a time); the counts of two stories' groups \
         cannot be added up by a read, so this instance goes upstream",
    ),
];

fn cached_entries() -> Vec<String> {
    CORPUS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("OK:"))
        .map(|s| s.trim().to_string())
        .collect()
}

fn entries_total() -> usize {
    CORPUS
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("OK:") || l.starts_with("NO["))
        .count()
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

/// The query without a final `LIMIT n [OFFSET m]` (or `OFFSET m`), if it ends with one.
fn without_trailing_limit(sql: &str) -> Option<String> {
    let upper = sql.to_ascii_uppercase();
    let cut = upper.rfind(" LIMIT ").or_else(|| upper.rfind(" OFFSET "))?;
    let tail = &upper[cut..];
    let plain = tail
        .split_whitespace()
        .all(|w| w == "LIMIT" || w == "OFFSET" || w.chars().all(|c| c.is_ascii_digit()));
    (plain && !tail.contains(')')).then(|| sql[..cut].to_string())
}

/// Whether Larder's answer is Postgres' answer (see the module docs for LIMIT).
async fn same(direct: &Conn, sql: &str, via: &Outcome, want: &Outcome) -> Result<(), String> {
    if via == want {
        return Ok(());
    }
    let (
        Outcome::Rows {
            rows: got,
            columns: c1,
        },
        Outcome::Rows {
            rows: exp,
            columns: c2,
        },
    ) = (via, want)
    else {
        return Err("one side is an error".into());
    };
    if !sql.to_ascii_uppercase().contains("LIMIT") || c1 != c2 || got.len() != exp.len() {
        return Err("rows differ".into());
    }
    let Some(unlimited) = without_trailing_limit(sql) else {
        return Err("rows differ (a LIMIT inside the query cuts ties: not comparable)".into());
    };
    let Outcome::Rows { rows: all, .. } = direct.simple(&unlimited).await else {
        return Err("the query without its LIMIT fails directly".into());
    };
    let mut pool: BTreeMap<&Vec<Option<Vec<u8>>>, usize> = BTreeMap::new();
    for r in &all {
        *pool.entry(r).or_default() += 1;
    }
    for r in got {
        match pool.get_mut(r) {
            Some(n) if *n > 0 => *n -= 1,
            _ => return Err("a row Postgres' unlimited answer does not hold".into()),
        }
    }
    Ok(())
}

fn seed() -> u64 {
    std::env::var("LARDER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_shapes_are_cached_and_equal_to_postgres() {
    let started = std::time::Instant::now();
    let seed = seed();
    eprintln!("seed {seed} (replay with LARDER_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let d = Deployment::start_with(
        "corpus",
        "TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
        &format!("{SCHEMA}\n{}", data(seed)),
    );
    let mut larder = Conn::new(&d.larder_url()).await;
    let mut direct = Conn::new(&d.direct_url()).await;
    for c in [&larder.client, &direct.client] {
        c.batch_execute("SET TimeZone = 'UTC'")
            .await
            .expect("set TimeZone");
    }
    kit::wait_online(&larder.client).await;

    let shapes = cached_entries();
    let mut refused: Vec<String> = Vec::new();
    let mut cached: Vec<&str> = Vec::new();
    for sql in &shapes {
        match larder
            .client
            .simple_query(&format!("CREATE CACHE FROM {sql}"))
            .await
        {
            Ok(_) => cached.push(sql),
            Err(e) => refused.push(format!(
                "{sql}\n      -> {}",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            )),
        }
    }
    let writer = kit::connect(&d.larder_url()).await;
    let mut wrong: BTreeMap<String, String> = BTreeMap::new();
    let mut misses: BTreeMap<String, String> = BTreeMap::new();
    let mut fresh = 100_000;
    let rounds = 3;
    for round in 0..rounds {
        if round > 0 {
            let batch = writes(&mut rng, &mut fresh);
            writer
                .batch_execute(&format!("BEGIN; {}; COMMIT", batch.join("; ")))
                .await
                .expect("writes through larder");
        }
        kit::wait_consistent(&direct.client, &larder.client).await;
        for sql in &cached {
            // Shapes with the client's own placeholders are bound (as text "1") through the
            // extended protocol; the others run as they are, literals inline.
            let placeholders = sql.matches('$').count();
            let args: Vec<Arg> = (0..placeholders)
                .map(|_| Arg {
                    value: P::Text("1".into()),
                    binary: false,
                })
                .collect();
            let via = if placeholders > 0 {
                sorted(larder.extended(sql, &args, false).await)
            } else {
                sorted(larder.simple(sql).await)
            };
            let (dest, reason) = kit::explain_last(&larder.client).await;
            if dest != "cache" && !KNOWN_MISSES.iter().any(|(q, _)| q == sql) {
                misses.insert(sql.to_string(), reason);
            }
            let want = if placeholders > 0 {
                sorted(direct.extended(sql, &args, false).await)
            } else {
                sorted(direct.simple(sql).await)
            };
            if let Err(why) = same(&direct, sql, &via, &want).await {
                wrong.entry(sql.to_string()).or_insert_with(|| {
                    format!(
                        "round {round}: {why}\n    larder: {}    direct: {}",
                        kit::show_outcome(&via),
                        kit::show_outcome(&want)
                    )
                });
            }
        }
    }
    let total = entries_total();
    let correct = cached.len() - wrong.len();
    let sharing = kit::text_rows(&larder.client, "SHOW CACHES")
        .await
        .iter()
        .filter(|row| {
            row[3]
                .as_deref()
                .is_some_and(|p| p.contains("operators with other caches"))
        })
        .count();
    eprintln!(
        "seed {seed}: {sharing} of {} caches share operators",
        cached.len()
    );
    eprintln!(
        "seed {seed}: corpus {total} shapes, {} marked cacheable; CREATE CACHE accepted {}, \
         {correct} cached and equal to Postgres in {rounds} rounds ({:.1}% of the corpus); {:?}",
        shapes.len(),
        cached.len(),
        100.0 * correct as f64 / total as f64,
        started.elapsed()
    );
    let list = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("  {k}\n    {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} cached shapes differ from Postgres:\n{}",
        wrong.len(),
        list(&wrong)
    );
    assert!(
        refused.is_empty(),
        "seed {seed}: {} shapes the corpus marks cacheable were refused by CREATE CACHE:\n  {}",
        refused.len(),
        refused.join("\n  ")
    );
    assert!(
        misses.is_empty(),
        "seed {seed}: {} cached shapes were not answered from their cache:\n{}",
        misses.len(),
        list(&misses)
    );
}
