//! Shallow (TTL) caches (issue #12): any query the upstream can run, kept for a TTL and
//! refreshed while it is read; concurrent misses coalesced into one upstream query; answers
//! equal to the upstream's; refusals with reasons; privileges per role; read-your-writes per
//! session; a memory bound; and `--cache-mode`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;

use kit::{explain_last, text_rows, Arg, Conn, Deployment, Outcome, P};

fn int(i: i64) -> Arg {
    Arg {
        value: P::Int(i),
        binary: true,
    }
}

const PASSWORD: &str = "Shallow-pw-1";

/// A window function: the dataflow refuses it, a shallow cache takes it.
const WINDOW: &str = "SELECT id, v, row_number() OVER (PARTITION BY grp ORDER BY id DESC) AS rn \
                      FROM items WHERE grp = 1 ORDER BY id";

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, grp int, v text, price numeric(10,2), at timestamptz); \
     INSERT INTO items SELECT g, g % 3, 'v' || g, g * 1.25, '2026-01-01'::timestamptz + g * interval '1 hour' \
       FROM generate_series(1, 30) g; \
     CREATE TABLE counter (id int PRIMARY KEY, v bigint); INSERT INTO counter VALUES (1, 0); \
     CREATE TABLE calls (n serial); \
     CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE AS $$ INSERT INTO calls DEFAULT VALUES RETURNING 1 $$;";

async fn create(c: &Conn, sql: &str) -> Vec<Vec<Option<String>>> {
    text_rows(&c.client, sql).await
}

/// `SHOW CACHES` row of the cache whose query contains `needle`: (properties, count, bytes).
async fn shown(c: &Conn, needle: &str) -> (String, u64, u64) {
    let rows = text_rows(&c.client, "SHOW CACHES").await;
    let row = rows
        .iter()
        .find(|r| r[2].as_deref().unwrap_or("").contains(needle))
        .unwrap_or_else(|| panic!("no cache with {needle} in {rows:?}"));
    let get = |i: usize| row[i].clone().unwrap_or_default();
    (
        get(3),
        get(4).parse().unwrap_or(0),
        get(5).parse().unwrap_or(0),
    )
}

fn error_of(o: &Outcome) -> String {
    match o {
        Outcome::Error(e) => e.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_what_the_upstream_sends_for_queries_the_dataflow_refuses() {
    let d = Deployment::start("shallow_basic", SETUP);
    let direct = Conn::new(&d.direct_url()).await;
    let mut lc = Conn::new(&d.larder_url()).await;
    kit::wait_online(&lc.client).await;

    // A deep cache is refused (window function), a shallow one is made.
    let deep = lc.simple(&format!("CREATE DEEP CACHE FROM {WINDOW}")).await;
    assert!(error_of(&deep).starts_with("0A000"), "{deep:?}");
    let made = create(
        &lc,
        &format!("CREATE SHALLOW CACHE win POLICY TTL 60 SECONDS REFRESH 30 SECONDS FROM {WINDOW}"),
    )
    .await;
    assert_eq!(made[0][1].as_deref(), Some("win"));
    assert_eq!(made[0][3].as_deref(), Some("shallow"), "{made:?}");

    // First read fetches, the second is served; both equal the upstream's answer.
    // (A session may first learn its search_path from the upstream: a read or two more.)
    let want = direct.simple(WINDOW).await;
    assert_eq!(lc.simple(WINDOW).await, want);
    assert_eq!(explain_last(&lc.client).await.0, "upstream");
    let mut reads = 1;
    let reason = loop {
        assert_eq!(lc.simple(WINDOW).await, want);
        reads += 1;
        let (dest, reason) = explain_last(&lc.client).await;
        if dest == "cache" || reads == 4 {
            break reason;
        }
    };
    assert!(
        reason.contains("shallow cache"),
        "after {reads} reads: {reason}"
    );

    // The extended protocol with binary results and a parameter: value bytes and column types
    // as the upstream sends them, per parameter value.
    let mut dx = Conn::new(&d.direct_url()).await;
    let param = "SELECT id, price, at, v, row_number() OVER (ORDER BY id) FROM items WHERE grp = $1 ORDER BY id";
    create(
        &lc,
        &format!("CREATE SHALLOW CACHE POLICY TTL 60 SECONDS FROM {param}"),
    )
    .await;
    for round in 0..3 {
        for g in [0, 1, 2] {
            let args = [int(g)];
            let want = dx.extended(param, &args, false).await;
            let got = lc.extended(param, &args, round % 2 == 0).await;
            assert_eq!(got, want, "grp {g}, round {round}");
        }
    }
    assert_eq!(explain_last(&lc.client).await.0, "cache");
    // A set-returning function in FROM is no relation.
    let series = "SELECT g, v FROM generate_series(1, 3) g JOIN items ON items.id = g ORDER BY g";
    create(&lc, &format!("CREATE SHALLOW CACHE FROM {series}")).await;
    let want_series = direct.simple(series).await;
    for _ in 0..3 {
        assert_eq!(lc.simple(series).await, want_series);
    }
    assert_eq!(explain_last(&lc.client).await.0, "cache");
    let (props, hits, bytes) = shown(&lc, "row_number() OVER (ORDER BY id)").await;
    assert!(
        props.contains("shallow") && props.contains("ttl 60 s"),
        "{props}"
    );
    assert!(props.contains("3 entries"), "{props}");
    assert!(hits >= 6, "{hits} hits: {props}");
    assert!(bytes > 0);

    // Inside a transaction block the upstream answers (its snapshot is the session's).
    lc.simple("BEGIN").await;
    assert_eq!(lc.simple(WINDOW).await, want);
    let (dest, reason) = explain_last(&lc.client).await;
    assert_eq!(dest, "upstream");
    assert!(reason.contains("transaction"), "{reason}");
    lc.simple("COMMIT").await;

    // What is refused, and why.
    for (sql, needle) in [
        ("SELECT id, now() FROM items", "now()"),
        ("SELECT random() FROM items", "random()"),
        ("SELECT relname FROM pg_class", "pg_class"),
        (
            "SELECT current_setting('work_mem') FROM items",
            "current_setting()",
        ),
        ("SELECT * FROM items FOR UPDATE", "locks rows"),
    ] {
        let e = error_of(&lc.simple(&format!("CREATE SHALLOW CACHE FROM {sql}")).await);
        assert!(e.starts_with("0A000") && e.contains(needle), "{sql}: {e}");
        let explained = text_rows(&lc.client, &format!("EXPLAIN CREATE CACHE FROM {sql}")).await;
        let shallow = explained[0][3].clone().unwrap_or_default();
        assert!(
            shallow.starts_with("no: ") && shallow.contains(needle),
            "{sql}: {shallow}"
        );
    }
    let e = error_of(
        &lc.simple(&format!(
            "CREATE SHALLOW CACHE ALWAYS FROM {WINDOW} AND id > 1"
        ))
        .await,
    );
    assert!(e.contains("--shallow-allow transactions"), "{e}");
    let e = error_of(
        &lc.simple("CREATE SHALLOW CACHE FROM SELECT * FROM no_such_table")
            .await,
    );
    assert!(e.starts_with("42704") || e.starts_with("0A000"), "{e}");

    // DROP CACHE works by name; the query then goes upstream.
    lc.simple("DROP CACHE win").await;
    assert_eq!(lc.simple(WINDOW).await, want);
    let (dest, reason) = explain_last(&lc.client).await;
    assert_eq!(dest, "upstream", "{reason}");
    assert!(reason.contains("no cache"), "{reason}");
}

/// Under a writer, a served value is never older than TTL plus the time a refresh takes; and
/// refreshes keep a read key warm (no misses after the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_stays_within_the_ttl_under_a_writer() {
    let d = Deployment::start("shallow_stale", SETUP);
    let direct = Conn::new(&d.direct_url()).await;
    let lc = Conn::new(&d.larder_url()).await;
    kit::wait_online(&lc.client).await;
    let ttl = Duration::from_secs(2);
    let query = "SELECT v FROM counter WHERE id = 1";
    create(
        &lc,
        &format!("CREATE SHALLOW CACHE POLICY TTL 2 SECONDS REFRESH 1 SECONDS FROM {query}"),
    )
    .await;

    // The writer records when each value was replaced by the next.
    let replaced: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (replaced, stop) = (replaced.clone(), stop.clone());
        tokio::spawn(async move {
            let mut v = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                direct
                    .client
                    .execute("UPDATE counter SET v = v + 1 WHERE id = 1", &[])
                    .await
                    .expect("update");
                v += 1;
                replaced.lock().unwrap().push(Instant::now());
                assert_eq!(replaced.lock().unwrap().len() as i64, v);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut reads = 0u32;
    let mut last_seen = -1i64;
    while started.elapsed() < Duration::from_secs(8) {
        let asked = Instant::now();
        let rows = text_rows(&lc.client, query).await;
        let v: i64 = rows[0][0].as_deref().unwrap().parse().unwrap();
        assert!(v >= last_seen, "went back from {last_seen} to {v}");
        last_seen = v;
        // Value v was current until the (v+1)-th update committed.
        let gone_at = replaced.lock().unwrap().get(v as usize).copied();
        if let Some(gone) = gone_at.filter(|g| *g < asked) {
            worst = worst.max(asked - gone);
        }
        reads += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let (props, hits, _) = shown(&lc, "counter WHERE").await;
    println!("{reads} reads, {hits} hits, worst staleness {worst:?}; {props}");
    // A refresh takes one round trip to Postgres: well within half a second here.
    assert!(
        worst <= ttl + Duration::from_millis(500),
        "worst staleness {worst:?} ({props})"
    );
    assert!(
        u64::from(reads) - hits <= 2,
        "{reads} reads, {hits} hits: {props}"
    );
    assert!(!props.contains(" 0 refreshes"), "{props}");
}

/// Held by tests that change roles and privileges, and by those that count upstream runs:
/// roles are cluster-wide, so a role created by another test makes every Larder re-learn
/// privileges, and a session whose role is being re-learned is answered upstream (as it
/// should be), which would count as an extra run.
static ROLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 100 sessions miss the same key at once: the upstream runs the query once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_upstream_query() {
    let _roles = ROLES.lock().await;
    let d = Deployment::start("shallow_coalesce", SETUP);
    let direct = Conn::new(&d.direct_url()).await;
    let lc = Conn::new(&d.larder_url()).await;
    kit::wait_online(&lc.client).await;
    // bump() counts executions (a row in `calls` per run); pg_sleep makes the fetch slow.
    let query =
        "SELECT (SELECT bump()) AS b, (SELECT pg_sleep(0.5)) IS NULL AS slept, count(*) FROM items";
    create(
        &lc,
        &format!("CREATE SHALLOW CACHE POLICY TTL 60 SECONDS FROM {query}"),
    )
    .await;
    let mut sessions = Vec::new();
    for _ in 0..100 {
        sessions.push(Conn::new(&d.larder_url()).await);
    }
    // Every session knows its role and privileges before the race.
    for s in &sessions {
        text_rows(&s.client, "SELECT 1").await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let rows = text_rows(&s.client, query).await;
                (rows, explain_last(&s.client).await)
            })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        let (rows, (dest, _)) = t.await.unwrap();
        assert_eq!(
            rows,
            vec![vec![Some("1".into()), Some("f".into()), Some("30".into())]]
        );
        served += usize::from(dest == "cache");
    }
    let calls = text_rows(&direct.client, "SELECT count(*) FROM calls").await;
    assert_eq!(calls[0][0].as_deref(), Some("1"), "upstream runs");
    assert_eq!(
        served, 99,
        "all but the fetching session answered by the cache"
    );
    let (props, _, _) = shown(&lc, "bump()").await;
    assert!(props.contains("(99 waited"), "{props}");
}

/// A fetch that fails (here: the query divides by zero) is not kept, and the sessions that
/// waited for it go upstream themselves: every one gets the upstream's error, none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_sends_its_waiters_upstream() {
    let _roles = ROLES.lock().await;
    let d = Deployment::start("shallow_fail", SETUP);
    let lc = Conn::new(&d.larder_url()).await;
    kit::wait_online(&lc.client).await;
    let query = "SELECT (SELECT pg_sleep(0.3)) IS NULL AS s, 1 / (count(*) - 30) FROM items";
    create(
        &lc,
        &format!("CREATE SHALLOW CACHE POLICY TTL 60 SECONDS FROM {query}"),
    )
    .await;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        let s = Conn::new(&d.larder_url()).await;
        text_rows(&s.client, "SELECT 1").await;
        sessions.push(s);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let first = s.simple(query).await;
                // The session still works afterwards.
                let after = s.simple("SELECT 41 + 1").await;
                (first, after)
            })
        })
        .collect();
    for t in tasks {
        let (first, after) = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("a waiter hung")
            .unwrap();
        assert!(error_of(&first).starts_with("22012"), "{first:?}");
        assert!(format!("{after:?}").contains("[52, 50]"), "{after:?}");
    }
    let (props, hits, _) = shown(&lc, "pg_sleep").await;
    assert_eq!(hits, 0, "{props}");
    assert!(props.contains("0 entries"), "{props}");
    assert!(
        !props.contains("(0 waited"),
        "the race had waiters: {props}"
    );
}

/// Results are kept per role; a role a row security policy applies to, or one without the
/// privilege, gets what the upstream gives it. A session that wrote reads its own write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_and_read_your_writes() {
    let _roles = ROLES.lock().await;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let p = format!(
        "shp_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let setup = format!(
        "{SETUP}
         CREATE TABLE docs (id int PRIMARY KEY, owner text NOT NULL, body text);
         INSERT INTO docs SELECT g, CASE WHEN g % 2 = 0 THEN '{p}_rls' ELSE 'x' END, 'doc ' || g
           FROM generate_series(1, 10) g;
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own ON docs FOR SELECT USING (owner = current_user);
         CREATE ROLE {p}_reader LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE {p}_nobody LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE {p}_rls LOGIN PASSWORD '{PASSWORD}';
         GRANT SELECT ON items, docs TO {p}_reader, {p}_rls;"
    );
    let d = Deployment::start("shallow_priv", &setup);
    let admin = Conn::new(&d.larder_url()).await;
    kit::wait_online(&admin.client).await;
    let as_role = |r: &str| d.larder.pg_url(&format!("{p}_{r}"), PASSWORD, &d.db);
    let items = "SELECT id, v FROM items WHERE grp = 2 ORDER BY id";
    let docs = "SELECT id, body FROM docs ORDER BY id";
    create(
        &admin,
        &format!("CREATE SHALLOW CACHE POLICY TTL 60 SECONDS FROM {items}"),
    )
    .await;
    create(
        &admin,
        &format!("CREATE SHALLOW CACHE POLICY TTL 60 SECONDS FROM {docs}"),
    )
    .await;

    let reader = Conn::new(&as_role("reader")).await;
    let nobody = Conn::new(&as_role("nobody")).await;
    let rls = Conn::new(&as_role("rls")).await;
    let want = admin.simple(items).await;
    for _ in 0..2 {
        assert_eq!(reader.simple(items).await, want);
    }
    assert_eq!(explain_last(&reader.client).await.0, "cache");
    // The admin's entry and the reader's are apart: one fetch each.
    let (props, _, _) = shown(&admin, "items WHERE grp = 2").await;
    assert!(props.contains("2 entries"), "{props}");
    for _ in 0..2 {
        let e = error_of(&nobody.simple(items).await);
        assert!(e.starts_with("42501"), "{e}");
    }
    // Row security applies to this role: always the upstream's rows (its own documents).
    for _ in 0..2 {
        let got = rls.simple(docs).await;
        let Outcome::Rows { rows, .. } = &got else {
            panic!("{got:?}")
        };
        assert_eq!(rows.len(), 5, "{got:?}");
        let (dest, reason) = explain_last(&rls.client).await;
        assert_eq!(dest, "upstream");
        assert!(reason.contains("row security"), "{reason}");
    }

    // Read-your-writes: the writer sees its write at once; another session keeps the cached
    // result until it expires.
    let other = Conn::new(&d.larder_url()).await;
    let before = other.simple(items).await;
    other.simple(items).await;
    assert_eq!(explain_last(&other.client).await.0, "cache");
    let writer = Conn::new(&d.larder_url()).await;
    writer.simple(items).await;
    writer
        .simple("UPDATE items SET v = 'written' WHERE id = 2")
        .await;
    let after = text_rows(&writer.client, items).await;
    assert!(
        after.iter().any(|r| r[1].as_deref() == Some("written")),
        "{after:?}"
    );
    assert_eq!(
        other.simple(items).await,
        before,
        "other sessions keep the cached result"
    );
    // With read-your-writes off, the stale read it prevents does happen.
    let lax = Conn::new(&d.larder_url()).await;
    lax.simple("SET larder.read_your_writes = off").await;
    lax.simple("UPDATE items SET v = 'unseen' WHERE id = 5")
        .await;
    let seen = text_rows(&lax.client, items).await;
    assert!(
        seen.iter().any(|r| r[1].as_deref() == Some("v5")),
        "the cached result, without the session's write: {seen:?}"
    );
}

/// Entries stay within `--memory-limit`; a key read all the time stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_stay_within_the_memory_limit() {
    let setup = "CREATE TABLE big (id int PRIMARY KEY, v text); \
                 INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g;";
    let d = Deployment::start_env("shallow_mem", "", setup, &[("MEMORY_LIMIT", "512KiB")]);
    let mut lc = Conn::new(&d.larder_url()).await;
    kit::wait_online(&lc.client).await;
    let q = "SELECT id, v FROM big WHERE id = $1";
    create(
        &lc,
        &format!("CREATE SHALLOW CACHE POLICY TTL 600 SECONDS FROM {q}"),
    )
    .await;
    let mut max_bytes = 0;
    for i in 1..=3000 {
        lc.extended(q, &[int(i)], false).await;
        lc.extended(q, &[int(1)], false).await;
        if i % 250 == 0 {
            let (_, _, bytes) = shown(&lc, "big WHERE").await;
            max_bytes = max_bytes.max(bytes);
        }
    }
    assert!(max_bytes <= 512 << 10, "{max_bytes} bytes held");
    assert!(max_bytes >= 128 << 10, "the budget is used: {max_bytes}");
    lc.extended(q, &[int(1)], false).await;
    assert_eq!(
        explain_last(&lc.client).await.0,
        "cache",
        "the hot key stayed"
    );
}

/// `--cache-mode deep-then-shallow`: a plain CREATE CACHE makes a deep cache where the
/// dataflow supports the query, a shallow one elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_then_shallow_mode() {
    let d = Deployment::start_env(
        "shallow_mode",
        "",
        SETUP,
        &[("CACHE_MODE", "deep-then-shallow")],
    );
    let lc = Conn::new(&d.larder_url()).await;
    kit::wait_online(&lc.client).await;
    let deep = create(
        &lc,
        "CREATE CACHE FROM SELECT id, v FROM items WHERE grp = 1",
    )
    .await;
    assert_eq!(deep[0][3].as_deref(), Some("deep"), "{deep:?}");
    let shallow = create(&lc, &format!("CREATE CACHE FROM {WINDOW}")).await;
    assert_eq!(shallow[0][3].as_deref(), Some("shallow"), "{shallow:?}");
    let (props, _, _) = shown(&lc, "row_number()").await;
    assert!(props.contains("ttl 10 s, refresh after 5 s"), "{props}");
}
