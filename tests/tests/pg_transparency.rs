//! End-to-end: transparency with the cache router in the path (caching mode, not
//! `--proxy-only`). Each test pins down one way Larder's own traffic to the upstream broke a
//! client session; psql's output through Larder must equal its output directly.
//!
//! The invariant behind them: Larder never sends anything of its own upstream in the middle of
//! a COPY, a pipeline or any other unit still in flight; its captured questions (the WAL
//! position after DDL, `current_user`, `to_regclass`) wait for a ReadyForQuery boundary.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use larder_testkit::{LarderProcess, PgServer};

#[path = "common/raw.rs"]
mod raw;

/// A database on the shared server with a Larder in caching mode in front of it, and a twin
/// database used directly.
struct Setup {
    pg: &'static PgServer,
    direct_db: String,
    larder_db: String,
    larder: LarderProcess,
    storage: PathBuf,
}

impl Setup {
    fn new(prefix: &str) -> Setup {
        static N: AtomicU64 = AtomicU64::new(0);
        let pg = PgServer::shared();
        let direct_db = pg.create_database(&format!("{prefix}_d")).unwrap();
        let larder_db = pg.create_database(&format!("{prefix}_l")).unwrap();
        let storage = std::env::temp_dir().join(format!(
            "larder-transparency-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&storage);
        std::fs::create_dir_all(&storage).unwrap();
        let url = pg.url(&larder_db);
        let storage_s = storage.display().to_string();
        let larder = LarderProcess::spawn(
            &[
                "--upstream-db-url",
                &url,
                "--deployment",
                &larder_db,
                "--storage-dir",
                &storage_s,
                "--shutdown-grace-ms",
                "2000",
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("starting larder: {e:#}"));
        Setup {
            pg,
            direct_db,
            larder_db,
            larder,
            storage,
        }
    }

    /// Runs psql (no `ON_ERROR_STOP`, echoing errors like pg_regress does) with `input` on
    /// stdin; returns stdout+stderr and the exit status.
    fn psql(&self, through_larder: bool, input: &str) -> (String, i32) {
        let (port, db) = if through_larder {
            (self.larder.port(), &self.larder_db)
        } else {
            (self.pg.port(), &self.direct_db)
        };
        let mut child = Command::new(larder_testkit::require_binary("psql"))
            .args(["-X", "-a", "-q", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-U", self.pg.admin_user(), "-d", db])
            .env("PGPASSWORD", self.pg.admin_password())
            .env("PGTZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning psql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().expect("psql");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .replace(&self.larder_db, "<DB>")
        .replace(&self.direct_db, "<DB>");
        (text, out.status.code().unwrap_or(-1))
    }

    fn assert_same(&self, input: &str) {
        let (direct, direct_status) = self.psql(false, input);
        let (through, through_status) = self.psql(true, input);
        assert_eq!(
            through,
            direct,
            "psql output through larder (left) differs from direct (right); larder log:\n{}",
            self.larder.log()
        );
        assert_eq!(through_status, direct_status, "psql exit status");
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.storage);
    }
}

/// Issue #10 (copy2): DDL makes the router capture the upstream's WAL position; the capture
/// was sent right behind the client's Query, which here goes on with COPY FROM STDIN, so the
/// upstream got Parse during COPY ("unexpected message type 0x50 during COPY from stdin") and
/// psql lost its session ("protocol synchronization was lost").
#[test]
fn ddl_followed_by_copy_from_stdin_in_one_query() {
    let s = Setup::new("tr_copy");
    s.assert_same(
        "create temp table tt(a int) \\; copy tt from stdin;\n\
         1\n\
         2\n\
         \\.\n\
         select count(*) from tt;\n\
         create table t2(a int, b text);\n\
         copy t2 from stdin;\n\
         3\tx\n\
         \\.\n\
         select * from t2;\n",
    );
    let (out, status) = s.psql(true, "select 1 as still_here;\n");
    assert_eq!(status, 0, "{out}");
}

/// A COPY whose data arrives in later reads than its Query (the client streams it), while the
/// router has a capture to send: nothing of Larder's may be interleaved with the CopyData.
#[test]
fn ddl_then_streamed_copy_and_failing_copy() {
    let s = Setup::new("tr_copy2");
    let mut input = String::from("create table big(a int, b text) \\; copy big from stdin;\n");
    for i in 0..20000 {
        input.push_str(&format!(
            "{i}\tsome text to make the copy span many reads {i}\n"
        ));
    }
    input.push_str("\\.\nselect count(*), sum(a) from big;\n");
    // A COPY that fails halfway (bad row) right after DDL, then the session goes on.
    input.push_str(
        "alter table big add column c int \\; copy big (a, b) from stdin;\n\
         1\tok\n\
         notanumber\tbad\n\
         \\.\n\
         select count(*) from big;\n",
    );
    s.assert_same(&input);
}

/// Issue #10: a statement the client prepared while the cache answered it is prepared upstream
/// when the client first uses it for something the cache does not answer. Larder used to send
/// that Parse with a Sync of its own. In the middle of a client's pipeline (messages sent and
/// flushed, Sync not yet sent) that Sync ended the client's implicit transaction early: here an
/// INSERT that a later error must roll back was committed. Now the Parse joins the client's
/// segment and only its ParseComplete is dropped. When an earlier error makes the upstream skip
/// it, Larder knows the statement is still not prepared upstream and prepares it again later.
#[test]
fn statement_prepared_from_the_cache_joins_the_clients_pipeline() {
    use raw::{
        bind, describe_statement, execute, flush, login, parse, query, read_n, read_until, summary,
        sync, until_ready,
    };
    use std::io::Write as _;

    let s = Setup::new("tr_pipe");
    raw::plain_role(s.pg);
    let setup = "CREATE TABLE t (id int PRIMARY KEY, v text); \
                 INSERT INTO t VALUES (1, 'a'), (2, 'b'); CREATE TABLE w (x int); \
                 GRANT ALL ON t, w TO larder_plain;";
    for db in [&s.direct_db, &s.larder_db] {
        s.pg.psql(db, setup).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (out, status) = s.psql(
            true,
            "\\set ON_ERROR_STOP 1\nCREATE CACHE FROM SELECT v FROM t WHERE id = $1;\n",
        );
        if status == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "CREATE CACHE: {out}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let cached = "SELECT v FROM t WHERE id = $1";

    let run = |through_larder: bool| -> Vec<Vec<String>> {
        let (port, db) = if through_larder {
            (s.larder.port(), &s.larder_db)
        } else {
            (s.pg.port(), &s.direct_db)
        };
        let mut c = login(&format!("127.0.0.1:{port}"), db);
        let mut out = Vec::new();
        let send = |c: &mut std::net::TcpStream, parts: &[Vec<u8>]| {
            c.write_all(&parts.concat()).unwrap();
        };
        // A role created a moment ago may not be known to Larder yet: its session then learns
        // its role and search_path from the upstream first (asked by its first query of a
        // cached table). Wait until the cache answers this session.
        for attempt in 0.. {
            if !through_larder {
                break;
            }
            send(&mut c, &[query("SELECT v FROM t WHERE id = 2")]);
            until_ready(&mut c);
            send(&mut c, &[query("EXPLAIN LAST STATEMENT")]);
            if summary(&until_ready(&mut c))
                .iter()
                .any(|m| m.starts_with("D cache"))
            {
                break;
            }
            assert!(attempt < 100, "the cache never answered this session");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Prepared and answered from the cache: the upstream has no s1 yet.
        send(
            &mut c,
            &[parse("s1", cached), bind("s1", &["1"]), execute(), sync()],
        );
        out.push(summary(&until_ready(&mut c)));
        if through_larder {
            send(&mut c, &[query("EXPLAIN LAST STATEMENT")]);
            let explain = summary(&until_ready(&mut c));
            assert!(
                explain.iter().any(|m| m.starts_with("D cache")),
                "s1 was not answered by the cache: {explain:?}"
            );
        }
        // A pipeline: an INSERT, flushed and answered, then s1 (not answerable by the cache in
        // this unit) and an error, then Sync. The error rolls back the INSERT.
        send(
            &mut c,
            &[
                parse("", "INSERT INTO w VALUES (1)"),
                bind("", &[]),
                execute(),
                flush(),
            ],
        );
        out.push(summary(&read_n(&mut c, 3)));
        send(
            &mut c,
            &[
                bind("s1", &["2"]),
                execute(),
                parse("", "SELECT 1/0"),
                bind("", &[]),
                execute(),
                sync(),
            ],
        );
        out.push(summary(&until_ready(&mut c)));
        send(&mut c, &[query("SELECT count(*) FROM w")]);
        out.push(summary(&until_ready(&mut c)));

        // s2 answered from the cache; then an error, flushed; then a use of s2 in the same
        // segment: the upstream skips the Parse Larder injects for it.
        send(
            &mut c,
            &[parse("s2", cached), bind("s2", &["1"]), execute(), sync()],
        );
        out.push(summary(&until_ready(&mut c)));
        send(
            &mut c,
            &[parse("", "SELECT 1/0"), bind("", &[]), execute(), flush()],
        );
        out.push(summary(&read_until(&mut c, b'E')));
        send(&mut c, &[bind("s2", &["2"]), execute(), sync()]);
        out.push(summary(&until_ready(&mut c)));
        // s2 must still work: Larder prepares it upstream again.
        send(&mut c, &[describe_statement("s2"), sync()]);
        out.push(summary(&until_ready(&mut c)));
        send(
            &mut c,
            &[
                bind("s2", &["2"]),
                execute(),
                parse("", "SELECT 1"),
                bind("", &[]),
                execute(),
                sync(),
            ],
        );
        out.push(summary(&until_ready(&mut c)));
        out
    };
    let direct = run(false);
    let through = run(true);
    assert_eq!(
        through,
        direct,
        "responses through larder (left) differ from direct (right); larder log:\n{}",
        s.larder.log()
    );
    assert_eq!(
        direct[3][1], "D 0",
        "the INSERT must have been rolled back: {direct:?}"
    );
}
