//! End-to-end: upstream transactions larger than `--transaction-memory-max-bytes`.
//!
//! Why: one huge upstream transaction (a backfill, a bulk UPDATE) used to stop replication for
//! good. Now it is delivered in parts and applied part by part: replication must keep going,
//! caches on the touched tables must never show a half-applied transaction (they go upstream
//! meanwhile and are rebuilt afterwards), Larder's memory must not grow with the transaction,
//! and a `kill -9` in the middle must neither lose nor repeat a change (a keyless
//! REPLICA IDENTITY FULL table makes a repeated or lost change visible as a wrong count).
//!
//! Run: `cargo test -p larder-testkit --test pg_large_transactions`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_testkit::{LarderProcess, PgServer};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);
/// Groups of the keyed table (`big.grp`), keys of the keyless one (`dup.k`).
const GROUPS: i32 = 10;
const DUP_KEYS: i32 = 7;

struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("LARDER_TESTKIT_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "larder-bigtx-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating the storage dir");
        ScratchDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh database, a deployment name and a storage dir; Larder processes reuse them.
struct Deployment<'a> {
    pg: &'a PgServer,
    db: String,
    storage: ScratchDir,
    extra: Vec<String>,
}

impl<'a> Deployment<'a> {
    fn new(pg: &'a PgServer, prefix: &str, extra: &[&str]) -> Deployment<'a> {
        let db = pg
            .create_database(prefix)
            .unwrap_or_else(|e| panic!("creating database: {e:#}"));
        Deployment {
            pg,
            storage: ScratchDir::new(&db),
            db,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn direct_url(&self) -> String {
        self.pg.url(&self.db)
    }

    fn larder_url(&self, larder: &LarderProcess) -> String {
        larder.pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }

    fn start(&self) -> LarderProcess {
        let url = self.direct_url();
        let storage = self.storage.path().display().to_string();
        let mut args: Vec<&str> = vec![
            "--upstream-db-url",
            &url,
            "--deployment",
            &self.db,
            "--storage-dir",
            &storage,
            "--shutdown-grace-ms",
            "2000",
        ];
        args.extend(self.extra.iter().map(|s| s.as_str()));
        LarderProcess::spawn(&args, &[]).unwrap_or_else(|e| panic!("starting larder: {e:#}"))
    }
}

impl Drop for Deployment<'_> {
    fn drop(&mut self) {
        let slot = format!("larder_{}", self.db);
        let sql = format!(
            "SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name) \
             FROM pg_replication_slots WHERE slot_name = '{slot}' AND NOT active) d; \
             SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        );
        for _ in 0..40 {
            match self.pg.psql("postgres", &sql) {
                Ok(out) if out.lines().last() == Some("0") => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                Err(_) => return,
            }
        }
    }
}

fn start(d: &Deployment<'_>) -> LarderProcess {
    tokio::task::block_in_place(|| d.start())
}

fn psql(d: &Deployment<'_>, sql: &str) -> String {
    tokio::task::block_in_place(|| d.pg.psql(&d.db, sql)).unwrap_or_else(|e| panic!("psql: {e:#}"))
}

async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return client;
            }
            Err(e) if Instant::now() > deadline => panic!("connecting to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Rows of a simple query as text, sorted.
async fn q(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = tokio::time::timeout(WAIT, c.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("query hung: {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut rows: Vec<Vec<Option<String>>> = msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect();
    rows.sort();
    rows
}

/// SHOW-style two-column result as a map.
async fn status(c: &Client) -> HashMap<String, String> {
    q(c, "SHOW LARDER STATUS")
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// (destination, reason) of the previous statement of this session.
async fn explain_last(c: &Client) -> (String, String) {
    let msgs = c
        .simple_query("EXPLAIN LAST STATEMENT")
        .await
        .expect("EXPLAIN LAST STATEMENT");
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            let col = |name: &str| {
                r.columns()
                    .iter()
                    .position(|c| c.name() == name)
                    .and_then(|i| r.get(i))
                    .unwrap_or("")
                    .to_string()
            };
            return (col("query_destination"), col("reason"));
        }
    }
    panic!("EXPLAIN LAST STATEMENT returned no row");
}

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("LSN") << 32) | u64::from_str_radix(lo, 16).expect("LSN")
}

async fn wait_streaming(c: &Client) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(c).await;
        if s.get("Snapshot Status").map(String::as_str) == Some("Completed")
            && s.get("Replication Status").map(String::as_str) == Some("Streaming")
        {
            return;
        }
        assert!(Instant::now() < deadline, "larder never streamed: {s:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until Larder has applied everything committed upstream so far.
async fn wait_caught_up(direct: &Client, larder: &Client) {
    let rows = q(direct, "SELECT pg_current_wal_lsn()::text").await;
    let target = parse_lsn(rows[0][0].as_deref().unwrap_or(""));
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(larder).await;
        let offset = s
            .get("Replication Offset")
            .map(|v| parse_lsn(v))
            .unwrap_or(0);
        if offset >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "larder did not catch up to {target:X}: {s:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Keeps running `sql` through Larder until the cache answers it; returns that answer.
async fn eventually_via_cache(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = q(c, sql).await;
        let (dest, reason) = explain_last(c).await;
        if dest == "cache" {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} never came from the cache; last reason: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cached queries of these tests, one per group / key.
fn cached_queries() -> Vec<String> {
    let mut v: Vec<String> = (0..GROUPS)
        .map(|g| format!("SELECT id, grp, length(payload) AS len FROM big WHERE grp = {g}"))
        .collect();
    v.extend((0..DUP_KEYS).map(|k| format!("SELECT k, v FROM dup WHERE k = {k}")));
    v
}

const SCHEMA: &str = "
    CREATE TABLE big (id int PRIMARY KEY, grp int NOT NULL, payload text NOT NULL);
    INSERT INTO big SELECT g, g % 10, 'seed ' || g FROM generate_series(1, 500) g;
    CREATE TABLE dup (k int NOT NULL, v int NOT NULL);
    ALTER TABLE dup REPLICA IDENTITY FULL;
    INSERT INTO dup SELECT g % 7, g % 2 FROM generate_series(1, 70) g;";

/// About 21 MiB of pgoutput column text in one transaction: 15k inserts of ~1 KiB, 5k
/// updates re-sending ~1 KiB each, and keyless inserts, updates and deletes.
const BIG_TRANSACTION: &str = "
    BEGIN;
    INSERT INTO big SELECT g, g % 10, repeat(md5(g::text), 32) FROM generate_series(1001, 16000) g;
    UPDATE big SET payload = payload || 'u' WHERE id % 3 = 0;
    DELETE FROM big WHERE id % 50 = 7;
    INSERT INTO dup SELECT g % 7, g % 3 FROM generate_series(1, 20000) g;
    UPDATE dup SET v = v + 10 WHERE ctid IN (SELECT ctid FROM dup WHERE k = 2 LIMIT 700);
    DELETE FROM dup WHERE ctid IN (SELECT ctid FROM dup WHERE k = 3 LIMIT 900);
    COMMIT;";
const BIG_TRANSACTION_MIB: u64 = 21;

async fn create_caches(lc: &Client) {
    q(
        lc,
        "CREATE CACHE big_by_grp FROM SELECT id, grp, length(payload) AS len FROM big WHERE grp = $1",
    )
    .await;
    q(
        lc,
        "CREATE CACHE dup_by_k FROM SELECT k, v FROM dup WHERE k = $1",
    )
    .await;
}

/// Every cached query answers from the cache and equals the direct answer.
async fn caches_equal_upstream(lc: &Client, direct: &Client) {
    for sql in cached_queries() {
        let through = eventually_via_cache(lc, &sql).await;
        let want = q(direct, &sql).await;
        assert_eq!(through, want, "{sql}: cached answer differs from upstream");
    }
}

/// (VmRSS, VmHWM) of a process in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc status");
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs the big transaction through Larder while another session keeps reading the cached
/// queries through Larder; returns Larder's peak RSS growth in KiB.
///
/// Every answer seen meanwhile must be the whole state before or the whole state after the
/// transaction: never a part of it.
async fn run_big_transaction(d: &Deployment<'_>, larder: &LarderProcess, direct: &Client) -> u64 {
    let queries = cached_queries();
    let mut before = Vec::new();
    for sql in &queries {
        before.push(q(direct, sql).await);
    }
    let (rss_before, _) = memory_kib(larder.pid());
    let writer = connect(&d.larder_url(larder)).await;
    let reader = connect(&d.larder_url(larder)).await;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let queries = queries.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                for sql in &queries {
                    let a = q(&reader, sql).await;
                    let (dest, _) = explain_last(&reader).await;
                    seen.push((sql.clone(), dest, a));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let done = done.clone();
        let peak = peak.clone();
        let pid = larder.pid();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let (rss, _) = memory_kib(pid);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let started = Instant::now();
    tokio::time::timeout(WAIT, writer.batch_execute(BIG_TRANSACTION))
        .await
        .expect("the big transaction hung")
        .expect("the big transaction failed");
    let committed = started.elapsed();
    let lc = connect(&d.larder_url(larder)).await;
    wait_caught_up(direct, &lc).await;
    let applied = started.elapsed();
    // Let the watcher see the rebuilt caches too.
    for sql in &queries {
        eventually_via_cache(&lc, sql).await;
    }
    done.store(true, Ordering::Relaxed);
    let seen = watcher.await.expect("watcher");
    sampler.await.expect("sampler");
    let (_, hwm) = memory_kib(larder.pid());
    let mut after = Vec::new();
    for sql in &queries {
        after.push(q(direct, sql).await);
    }
    let mut from_cache = 0;
    for (sql, dest, answer) in &seen {
        let i = queries.iter().position(|x| x == sql).expect("known query");
        assert!(
            *answer == before[i] || *answer == after[i],
            "{sql} via {dest} returned {} rows: neither the state before ({} rows) nor after ({} rows) the transaction",
            answer.len(),
            before[i].len(),
            after[i].len()
        );
        if dest == "cache" {
            from_cache += 1;
        }
    }
    // VmHWM also covers spikes between samples (and anything earlier: conservative).
    let growth = peak
        .load(Ordering::Relaxed)
        .max(hwm)
        .saturating_sub(rss_before);
    eprintln!(
        "big transaction (~{BIG_TRANSACTION_MIB} MiB): committed in {committed:?}, applied after {applied:?}; \
         larder RSS before {rss_before} KiB, peak sampled {} KiB (growth {growth} KiB), VmHWM {hwm} KiB; \
         {} reads during it, {from_cache} from the cache",
        peak.load(Ordering::Relaxed),
        seen.len()
    );
    growth
}

/// One deployment, caches on both tables, the big transaction through Larder: returns
/// Larder's RSS growth in KiB and its log. Checks the transaction never shows half-applied,
/// replication keeps streaming, and the caches equal upstream afterwards.
async fn big_transaction_scenario(prefix: &str, limit_bytes: &str) -> (u64, String) {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| {
        Deployment::new(pg, prefix, &["--transaction-memory-max-bytes", limit_bytes])
    });
    psql(&d, SCHEMA);
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    create_caches(&lc).await;
    caches_equal_upstream(&lc, &direct).await;

    let growth_kib = run_big_transaction(&d, &larder, &direct).await;

    assert!(larder.is_running(), "larder stopped:\n{}", larder.log());
    let s = status(&lc).await;
    assert_eq!(
        s.get("Replication Status").map(String::as_str),
        Some("Streaming"),
        "{s:?}"
    );
    caches_equal_upstream(&lc, &direct).await;
    // Replication keeps going after it: a small transaction arrives and is served.
    psql(
        &d,
        "INSERT INTO big VALUES (100000, 4, 'after'); INSERT INTO dup VALUES (4, 99);",
    );
    wait_caught_up(&direct, &lc).await;
    caches_equal_upstream(&lc, &direct).await;
    let log = larder.log();
    tokio::task::block_in_place(|| drop(larder));
    (growth_kib, log)
}

/// A ~21 MiB transaction with a 1 MiB bound: applied in parts, replication keeps streaming,
/// the caches never show part of it and answer like upstream afterwards, and Larder's memory
/// grows far less than when the same transaction is applied as one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_is_applied_in_parts_with_bounded_memory() {
    let (parts_kib, log) = big_transaction_scenario("bigtx", "1048576").await;
    assert!(
        log.contains("delivering it in parts")
            && log.contains("large upstream transaction applied")
            && log.contains("cache serves again after a large transaction"),
        "the transaction was not applied in parts:\n{log}"
    );
    // The same transaction under the default bound (256 MiB): one batch, held whole.
    let (whole_kib, log) = big_transaction_scenario("bigtx_whole", "268435456").await;
    assert!(
        !log.contains("delivering it in parts"),
        "the default bound split a {BIG_TRANSACTION_MIB} MiB transaction:\n{log}"
    );
    eprintln!(
        "RSS growth: {parts_kib} KiB in 1 MiB parts, {whole_kib} KiB as one batch \
         ({BIG_TRANSACTION_MIB} MiB transaction)"
    );
    // In parts, memory holds about two parts plus RocksDB's write buffer (which takes the
    // written rows whatever the transaction's size, up to its own bound); as one batch it
    // holds the transaction several times over (decoded changes, the write batch, the
    // overlay, the dataflow changes).
    assert!(
        parts_kib * 10 < whole_kib * 6,
        "in parts larder grew by {parts_kib} KiB, as one batch by {whole_kib} KiB"
    );
    assert!(
        parts_kib < 3 * BIG_TRANSACTION_MIB * 1024,
        "in parts larder grew by {parts_kib} KiB for a {BIG_TRANSACTION_MIB} MiB transaction"
    );
}

/// `kill -9` while the parts of a large transaction are being applied: after the restart the
/// replay skips what was stored and applies the rest, so keyed and keyless tables equal
/// upstream (a change applied twice or lost would show in `dup`'s counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_in_the_middle_of_a_large_transaction_loses_nothing_and_repeats_nothing() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| {
        Deployment::new(
            pg,
            "bigtx_kill",
            &["--transaction-memory-max-bytes", "131072"],
        )
    });
    psql(&d, SCHEMA);
    let direct = connect(&d.direct_url()).await;
    let mut larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    create_caches(&lc).await;
    caches_equal_upstream(&lc, &direct).await;
    drop(lc);

    // Upstream directly; Larder is killed once it has stored some parts (it logs the stored
    // progress at debug level only, so wait for the first part and a little more).
    psql(&d, BIG_TRANSACTION);
    let deadline = Instant::now() + WAIT;
    while !larder.log().contains("delivering it in parts") {
        assert!(Instant::now() < deadline, "no parts:\n{}", larder.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let finished_before_kill = larder.log().contains("large upstream transaction applied");
    larder.kill9();
    assert!(
        tokio::task::block_in_place(|| larder.wait_exit(Duration::from_secs(10))).is_some(),
        "larder survived SIGKILL"
    );
    tokio::task::block_in_place(|| drop(larder));

    larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    wait_caught_up(&direct, &lc).await;
    caches_equal_upstream(&lc, &direct).await;
    let log = larder.log();
    assert!(
        log.contains("resuming replication from the stored position")
            && !log.contains("snapshot complete"),
        "the restart did not resume:\n{log}"
    );
    if finished_before_kill {
        eprintln!(
            "note: the transaction was fully applied before the kill; no partial replay exercised"
        );
    } else {
        assert!(
            log.contains("replaying a partly applied upstream transaction"),
            "the restart did not replay the partly applied transaction:\n{log}"
        );
    }
}
