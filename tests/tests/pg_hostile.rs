//! End-to-end: hostile clients cannot make Larder's memory grow without bound.
//!
//! Each test drives a real `larder` process with raw protocol bytes the way a hostile (or
//! broken) client would, and watches the process's memory in `/proc/PID/status`: resident
//! memory (VmRSS) and, where an unbounded version would only reserve memory without touching
//! it, the address space (VmSize). The bounds leave a wide margin for a loaded machine, but
//! the unbounded behaviour grows by gigabytes (or takes minutes) in every case.
//!
//! The hostile clients log in as `larder_plain` (cleartext password over TCP in the testkit's
//! pg_hba.conf) so that the raw protocol needs no SCRAM.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder_testkit::{LarderProcess, PgServer};

#[path = "common/raw.rs"]
mod raw;
use raw::{
    bind_execute_sync, connect_until_password, error_fields, login, parse, query, read_msg, sync,
    until_ready,
};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const WAIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

/// A private storage directory removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("LARDER_TESTKIT_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "larder-hostile-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating the storage dir");
        ScratchDir(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh database (with the `larder_plain` role allowed in) on the shared server.
fn database(prefix: &str) -> (&'static PgServer, String) {
    let pg = PgServer::shared();
    raw::plain_role(pg);
    let db = pg.create_database(prefix).unwrap();
    (pg, db)
}

/// Larder with caches (its own deployment and storage) in front of `db`.
fn start_caching(pg: &PgServer, db: &str, storage: &ScratchDir, extra: &[&str]) -> LarderProcess {
    let url = pg.url(db);
    let storage = storage.0.display().to_string();
    let mut args = vec![
        "--upstream-db-url",
        &url,
        "--deployment",
        db,
        "--storage-dir",
        &storage,
        "--shutdown-grace-ms",
        "2000",
    ];
    args.extend_from_slice(extra);
    LarderProcess::spawn(&args, &[]).unwrap_or_else(|e| panic!("starting larder: {e:#}"))
}

/// Drops the deployment's replication slot (inactive slots would pile up on the server).
fn drop_slot(pg: &PgServer, db: &str) {
    let sql = format!(
        "SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name) \
         FROM pg_replication_slots WHERE slot_name = 'larder_{db}' AND NOT active) d"
    );
    for _ in 0..40 {
        if pg.psql("postgres", &sql).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (VmRSS, VmSize) of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmSize:"))
}

async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), tokio_postgres::connect(url, NoTls))
            .await
        {
            Ok(Ok((client, conn))) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return client;
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                assert!(Instant::now() < deadline, "connecting to {url}: {why}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Rows of a simple query, as text.
async fn rows(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    try_rows(c, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)))
}

async fn try_rows(
    c: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let msgs = tokio::time::timeout(WAIT, c.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("hung: {sql}"))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// Creates a cache, retrying while Larder is still taking its snapshot.
async fn create_cache(c: &Client, sql: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match try_rows(c, sql).await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "{sql}: {}", err_text(&e)),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the cache answers `sql` on `c` (EXPLAIN LAST STATEMENT says so).
async fn wait_cached(c: &Client, sql: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        rows(c, sql).await;
        let last = rows(c, "EXPLAIN LAST STATEMENT").await;
        if last[0][0].as_deref() == Some("cache") {
            return;
        }
        assert!(Instant::now() < deadline, "never cached: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads whatever arrives until the connection ends; returns the ErrorResponses seen and the
/// number of bytes read.
fn drain_to_end(s: &mut TcpStream) -> (Vec<(String, String)>, u64) {
    let mut errors = Vec::new();
    let mut bytes = 0u64;
    loop {
        match read_msg(s) {
            Ok((tag, body)) => {
                bytes += body.len() as u64 + 5;
                if tag == b'E' {
                    errors.push(error_fields(&body));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                return (errors, bytes)
            }
            Err(e) => panic!("connection neither answered nor closed: {e}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

/// A client pipelines thousands of cache hits with a large result and never reads. Larder
/// stops reading it, ends its session with SQLSTATE 53400 naming `client_output_max_bytes`,
/// and memory stays bounded; other sessions go on. Unbounded, Larder would buffer
/// 4000 x ~0.5 MB = 2 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_cache_hits_never_read_end_with_the_output_limit() {
    let (pg, db) = tokio::task::block_in_place(|| database("hostile_out"));
    let storage = ScratchDir::new(&db);
    pg.psql(
        &db,
        "CREATE TABLE big (id int PRIMARY KEY, g int NOT NULL, payload text NOT NULL);
         INSERT INTO big SELECT i, 1, repeat(md5(i::text), 7) FROM generate_series(1, 2000) i;
         GRANT SELECT ON big TO larder_plain;",
    )
    .unwrap();
    let larder = tokio::task::block_in_place(|| {
        start_caching(
            pg,
            &db,
            &storage,
            &["--client-output-max-bytes", "16777216"],
        )
    });
    let good = connect(&larder.pg_url(pg.admin_user(), pg.admin_password(), &db)).await;
    create_cache(&good, "CREATE CACHE FROM SELECT * FROM big WHERE g = $1").await;
    let sql = "SELECT * FROM big WHERE g = 1";
    wait_cached(&good, sql).await;
    assert_eq!(rows(&good, sql).await.len(), 2000);

    let addr = larder.address();
    let db2 = db.clone();
    let pid = larder.pid();
    let (peak, base, errors, read_bytes) = tokio::task::spawn_blocking(move || {
        let mut s = login(&addr, &db2);
        // The hostile session is answered from the cache too (its first query resolves the
        // table under its search_path upstream).
        let mut tries = 0;
        loop {
            s.write_all(&query(sql)).unwrap();
            let first = until_ready(&mut s);
            let answer_bytes: usize = first.iter().map(|(_, b)| b.len() + 5).sum();
            assert!(answer_bytes > 400_000, "answer of {answer_bytes} bytes");
            s.write_all(&query("EXPLAIN LAST STATEMENT")).unwrap();
            let explain = until_ready(&mut s);
            let cached = explain
                .iter()
                .any(|(t, b)| *t == b'D' && b.windows(5).any(|w| w == b"cache"));
            if cached {
                break;
            }
            tries += 1;
            assert!(
                tries < 50,
                "the hostile query is not answered by the cache: {:?}",
                explain
                    .iter()
                    .map(|(t, b)| (*t as char, String::from_utf8_lossy(b).into_owned()))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (base, _) = memory(pid);
        // 4000 pipelined queries, never reading (the writer blocks once Larder stops reading).
        let mut writer = s.try_clone().unwrap();
        let flood: Vec<u8> = (0..4000).flat_map(|_| query(sql)).collect();
        let w = std::thread::spawn(move || {
            let _ = writer.write_all(&flood);
        });
        let mut peak = base;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            peak = peak.max(memory(pid).0);
            std::thread::sleep(Duration::from_millis(20));
        }
        let (errors, read_bytes) = drain_to_end(&mut s);
        peak = peak.max(memory(pid).0);
        w.join().unwrap();
        (peak, base, errors, read_bytes)
    })
    .await
    .unwrap();
    eprintln!(
        "RSS before {} MiB, peak {} MiB; the client read {} MiB before the end",
        base / MIB,
        peak / MIB,
        read_bytes / MIB
    );
    assert!(
        peak < base + 100 * MIB,
        "RSS grew from {} MiB to {} MiB",
        base / MIB,
        peak / MIB
    );
    assert!(
        read_bytes < 40 * MIB,
        "Larder buffered {read_bytes} bytes for the client"
    );
    let last = errors.last().expect("the session ended without an error");
    assert_eq!(last.0, "53400", "{errors:?}");
    assert!(last.1.contains("client_output_max_bytes"), "{last:?}");
    // Other sessions are unaffected, and the log says what happened.
    assert_eq!(rows(&good, sql).await.len(), 2000);
    let fresh = connect(&larder.pg_url(pg.admin_user(), pg.admin_password(), &db)).await;
    assert_eq!(rows(&fresh, sql).await.len(), 2000);
    let log = larder.log();
    assert!(
        log.contains("client leaves its responses unread"),
        "no log line:\n{log}"
    );
    drop(good);
    drop(fresh);
    tokio::task::block_in_place(|| {
        drop(larder);
        drop_slot(pg, &db);
    });
}

/// Clients that declare huge messages and send (almost) nothing cost (almost) nothing: in the
/// startup packet, before authentication (where only small messages are accepted at all) and
/// after it. Unbounded, each would reserve its declared size (10 KB, 64 KiB, 64 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_message_sizes_cost_nothing_until_sent() {
    let (pg, db) = tokio::task::block_in_place(|| database("hostile_decl"));
    let larder = tokio::task::block_in_place(|| {
        let url = pg.url(&db);
        LarderProcess::spawn(
            &[
                "--upstream-db-url",
                &url,
                "--proxy-only",
                "--startup-timeout-ms",
                "120000",
            ],
            &[],
        )
        .unwrap()
    });
    let addr = larder.address();
    let pid = larder.pid();
    let db2 = db.clone();
    let (base, held, refused) = tokio::task::spawn_blocking(move || {
        const EACH: usize = 40;
        let base = memory(pid);
        let mut held = Vec::new();
        // Startup packets declaring the maximum (10000 bytes), then silence.
        for _ in 0..EACH {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(&10_000u32.to_be_bytes()).unwrap();
            s.write_all(&196608u32.to_be_bytes()).unwrap();
            held.push(s);
        }
        // Before authentication: a password message declaring just under the pre-auth limit.
        for _ in 0..EACH {
            let mut s = connect_until_password(&addr, &db2);
            let mut m = vec![b'p'];
            m.extend_from_slice(&60_000u32.to_be_bytes());
            m.push(b'x');
            s.write_all(&m).unwrap();
            held.push(s);
        }
        // After authentication: a Query declaring 64 MiB, 5 bytes of it sent.
        for _ in 0..EACH {
            let mut s = login(&addr, &db2);
            let mut m = vec![b'Q'];
            m.extend_from_slice(&((64u32 << 20) - 8).to_be_bytes());
            m.extend_from_slice(b"SELEC");
            s.write_all(&m).unwrap();
            held.push(s);
        }
        // Before authentication, a declared 64 MiB is refused at once, naming the limit.
        let mut refused = Vec::new();
        for _ in 0..4 {
            let mut s = connect_until_password(&addr, &db2);
            let mut m = vec![b'p'];
            m.extend_from_slice(&(64u32 << 20).to_be_bytes());
            s.write_all(&m).unwrap();
            refused.push(drain_to_end(&mut s).0);
        }
        std::thread::sleep(Duration::from_millis(500));
        (base, (memory(pid), held), refused)
    })
    .await
    .unwrap();
    let ((rss, vsz), held) = held;
    eprintln!(
        "RSS {} -> {} MiB, VmSize {} -> {} MiB with {} hostile connections",
        base.0 / MIB,
        rss / MIB,
        base.1 / MIB,
        vsz / MIB,
        held.len()
    );
    assert!(
        rss < base.0 + 40 * MIB,
        "RSS grew by {} MiB",
        (rss - base.0) / MIB
    );
    // 40 x 64 MiB reserved would be 2.5 GiB of address space.
    assert!(
        vsz < base.1 + 1024 * MIB,
        "VmSize grew by {} MiB",
        (vsz - base.1) / MIB
    );
    for errors in refused {
        let e = errors
            .last()
            .expect("no error for a 64 MiB pre-auth message");
        assert_eq!(e.0, "08P01", "{errors:?}");
        assert!(e.1.contains("before authentication"), "{e:?}");
    }
    // Well-behaved clients are served meanwhile.
    let good = connect(&larder.pg_url(pg.admin_user(), pg.admin_password(), &db)).await;
    assert_eq!(
        rows(&good, "SELECT 42").await,
        vec![vec![Some("42".into())]]
    );
    drop(held);
    tokio::task::block_in_place(|| drop(larder));
}

/// A client prepares statements with long distinct texts without end: those the upstream has
/// (here: ones it rejects, so the upstream keeps nothing either) are forgotten by the router,
/// those only Larder answers stay within the statement memo, and past it new ones go upstream;
/// memory stays bounded, and statements Larder answered stay usable. Unbounded (the old memo
/// counted entries and kept 10,000 texts), it would hold hundreds of MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_long_prepared_statements_stay_bounded() {
    let (pg, db) = tokio::task::block_in_place(|| database("hostile_stmts"));
    let storage = ScratchDir::new(&db);
    let larder = tokio::task::block_in_place(|| start_caching(pg, &db, &storage, &[]));
    let good = connect(&larder.pg_url(pg.admin_user(), pg.admin_password(), &db)).await;
    rows(&good, "SELECT 1").await;
    let addr = larder.address();
    let pid = larder.pid();
    let db2 = db.clone();
    let (base, peak, replies) = tokio::task::spawn_blocking(move || {
        let mut s = login(&addr, &db2);
        let base = memory(pid).0;
        let mut reader = s.try_clone().unwrap();
        const UPSTREAM: usize = 20_000;
        const LOCAL: usize = 2_000;
        // Counts ReadyForQuery while the writer floods.
        let r = std::thread::spawn(move || {
            let mut ready = 0;
            let mut errors = 0;
            while ready < UPSTREAM + LOCAL {
                match read_msg(&mut reader).expect("reading responses") {
                    (b'Z', _) => ready += 1,
                    (b'E', _) => errors += 1,
                    _ => {}
                }
            }
            (ready, errors)
        });
        let pad = "x".repeat(32 * 1024);
        let mut peak = base;
        let mut batch = Vec::new();
        for i in 0..UPSTREAM {
            // Forwarded (not a SELECT Larder knows), rejected upstream: only the router
            // would remember it.
            batch.extend(parse(&format!("u{i}"), &format!("SELEC {i} /* {pad} */")));
            batch.extend(sync());
            if i % 200 == 199 {
                s.write_all(&batch).unwrap();
                batch.clear();
                peak = peak.max(memory(pid).0);
            }
        }
        // Larder's own statements, prepared: only Larder has them.
        let pad = "y".repeat(8 * 1024);
        for i in 0..LOCAL {
            batch.extend(parse(
                &format!("l{i}"),
                &format!("EXPLAIN LAST STATEMENT /* {i} {pad} */"),
            ));
            batch.extend(sync());
            if i % 100 == 99 {
                s.write_all(&batch).unwrap();
                batch.clear();
                peak = peak.max(memory(pid).0);
            }
        }
        let replies = r.join().unwrap();
        peak = peak.max(memory(pid).0);
        // The first statement Larder prepared still runs: it was never forgotten.
        s.write_all(&bind_execute_sync("l0")).unwrap();
        let out = until_ready(&mut s);
        assert!(
            out.iter().any(|(t, _)| *t == b'D'),
            "l0 did not run: {:?}",
            out.iter()
                .map(|(t, b)| (*t as char, error_fields(b)))
                .collect::<Vec<_>>()
        );
        (base, peak, replies)
    })
    .await
    .unwrap();
    eprintln!(
        "RSS before {} MiB, peak {} MiB; replies {:?}",
        base / MIB,
        peak / MIB,
        replies
    );
    // All 20,000 forwarded ones were rejected upstream; some local ones were too (past the
    // memo), none of the 2,000 was lost silently.
    assert!(replies.1 >= 20_000, "{replies:?}");
    assert!(
        peak < base + 100 * MIB,
        "RSS grew from {} MiB to {} MiB",
        base / MIB,
        peak / MIB
    );
    assert_eq!(rows(&good, "SELECT 7").await, vec![vec![Some("7".into())]]);
    drop(good);
    tokio::task::block_in_place(|| {
        drop(larder);
        drop_slot(pg, &db);
    });
}
