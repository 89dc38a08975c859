//! End-to-end: limits and failures. Larder must refuse what exceeds its limits with proper
//! Postgres errors (never a hang), survive hostile clients and upstream restarts, relay the
//! upstream's authentication errors, and exit 0 on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::spawn_larder;
use larder_testkit::PgServer;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const STEP_TIMEOUT: Duration = Duration::from_secs(15);

async fn try_connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects within STEP_TIMEOUT or panics (a hang is a failure too).
async fn connect_within(url: &str) -> Result<Client, tokio_postgres::Error> {
    tokio::time::timeout(STEP_TIMEOUT, try_connect(url))
        .await
        .unwrap_or_else(|_| panic!("connect did not finish within {STEP_TIMEOUT:?}"))
}

async fn one(client: &Client, sql: &str) -> i64 {
    tokio::time::timeout(STEP_TIMEOUT, client.query_one(sql, &[]))
        .await
        .expect("query timed out")
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn proxy_url(pg: &PgServer, larder: &larder_testkit::LarderProcess, db: &str) -> String {
    larder.pg_url(pg.admin_user(), pg.admin_password(), db)
}

/// Load shedding (issue #8): with `--upstream-queries-max 1`, while one statement is in
/// flight upstream, a new statement from another session at rest is refused at once with
/// SQLSTATE 53400 (simple and extended protocol alike) instead of queueing on the database;
/// the refused session stays usable and runs normally once the upstream has room again. A
/// session inside a transaction is never refused (its statements would fail the transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_past_the_in_flight_bound_get_53400() {
    let pg = PgServer::shared();
    let (db, larder) = blocking(move || {
        let db = pg.create_database("shed").unwrap();
        let l = spawn_larder(pg, &db, &["--upstream-queries-max", "1"]);
        (db, l)
    })
    .await;
    let url = proxy_url(pg, &larder, &db);
    let busy = connect_within(&url).await.unwrap();
    let other = connect_within(&url).await.unwrap();
    let in_tx = connect_within(&url).await.unwrap();
    in_tx.batch_execute("BEGIN").await.unwrap();
    let sleeper =
        tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(2)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let simple = other
        .simple_query("SELECT 1")
        .await
        .expect_err("not refused");
    assert_eq!(
        simple.code(),
        Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED),
        "{simple}"
    );
    let message = simple
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("in flight"), "{message}");
    let extended = other
        .query_one("SELECT $1::int", &[&7i32])
        .await
        .expect_err("not refused");
    assert_eq!(
        extended.code(),
        Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED),
        "{extended}"
    );
    // Inside a transaction: queued behind the bound, never refused.
    assert_eq!(one(&in_tx, "SELECT 2::int8").await, 2);
    in_tx.batch_execute("COMMIT").await.unwrap();
    sleeper
        .await
        .unwrap()
        .expect("the statement in flight completes");
    assert_eq!(one(&other, "SELECT 3::int8").await, 3);
    let row = other.query_one("SELECT $1::int8", &[&4i64]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_get_53300_not_a_hang() {
    let pg = PgServer::shared();
    let (db, larder) = blocking(move || {
        let db = pg.create_database("flood").unwrap();
        let l = spawn_larder(pg, &db, &["--max-connections", "4"]);
        (db, l)
    })
    .await;
    let url = proxy_url(pg, &larder, &db);
    let mut held = Vec::new();
    for _ in 0..4 {
        let c = connect_within(&url).await.expect("within the limit");
        assert_eq!(one(&c, "SELECT 1::int8").await, 1);
        held.push(c);
    }
    let attempts: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { connect_within(&url).await.map(|_| ()) })
        })
        .collect();
    for a in attempts {
        let err = a
            .await
            .unwrap()
            .expect_err("a connection beyond --max-connections was accepted");
        assert_eq!(
            err.code(),
            Some(&SqlState::TOO_MANY_CONNECTIONS),
            "expected SQLSTATE 53300, got {err:?}"
        );
    }
    // The held sessions are unaffected.
    for c in &held {
        assert_eq!(one(c, "SELECT 2::int8").await, 2);
    }
    // Freeing a slot lets a new client in.
    drop(held.pop());
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match connect_within(&url).await {
            Ok(c) => {
                assert_eq!(one(&c, "SELECT 3::int8").await, 3);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("slot was not released: {e:?}"),
        }
    }
    assert!(larder.is_running());
    blocking(move || drop(larder)).await;
}

/// Reads until EOF or an ErrorResponse, within `timeout`. Returns the bytes read.
fn read_until_close(mut s: TcpStream, timeout: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(timeout)).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => return got,
            Err(e) => panic!(
                "connection neither closed nor answered within {:?} ({e}); read so far: {got:?}",
                started.elapsed()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_clients_are_cut_off_while_good_sessions_continue() {
    let pg = PgServer::shared();
    let (db, larder) = blocking(move || {
        let db = pg.create_database("garbage").unwrap();
        let l = spawn_larder(
            pg,
            &db,
            &[
                "--startup-timeout-ms",
                "2000",
                "--message-size-max-bytes",
                "1048576",
            ],
        );
        (db, l)
    })
    .await;
    let url = proxy_url(pg, &larder, &db);
    let good = connect_within(&url).await.unwrap();
    assert_eq!(one(&good, "SELECT 1::int8").await, 1);
    let addr = larder.address();

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // An unknown protocol version with random payload.
    let mut v = 64u32.to_be_bytes().to_vec();
    v.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    v.extend((0..56).map(|_| rand::random::<u8>()));
    cases.push(("unknown protocol version", v));
    // A length far beyond any limit.
    let mut v = 0x7fff_fff0u32.to_be_bytes().to_vec();
    v.extend_from_slice(&196608u32.to_be_bytes());
    cases.push(("huge startup length", v));
    // A length too small to hold the protocol code.
    cases.push(("tiny startup length", vec![0, 0, 0, 3, 0, 0, 0, 0]));
    // Pure random bytes (first byte forced to 0 so the length is below 16 MiB).
    let mut v: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    v[0] = 0;
    v[1] = 0;
    v[2] = 0x08;
    v[3] = 0;
    cases.push(("random bytes", v));
    // An HTTP request.
    cases.push((
        "http request",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
    ));
    // A valid startup without a user.
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    body.extend_from_slice(b"database\0x\0\0");
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    cases.push(("startup without user", v));

    for (name, bytes) in cases {
        let addr = addr.clone();
        let started = Instant::now();
        let reply = blocking(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            // The server may close before we finish writing: that is fine.
            let _ = s.write_all(&bytes);
            read_until_close(s, STEP_TIMEOUT)
        })
        .await;
        if let Some(&first) = reply.first() {
            assert!(
                first == b'E' || first == b'N',
                "{name}: unexpected reply {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        eprintln!(
            "{name}: closed after {:?} with {} bytes",
            started.elapsed(),
            reply.len()
        );
        assert_eq!(
            one(&good, "SELECT 2::int8").await,
            2,
            "good session after {name}"
        );
    }

    // A client that connects and says nothing is dropped after the startup timeout.
    let silent = {
        let addr = addr.clone();
        blocking(move || {
            let s = TcpStream::connect(&addr).unwrap();
            let started = Instant::now();
            read_until_close(s, STEP_TIMEOUT);
            started.elapsed()
        })
    };
    // Meanwhile the good session keeps working.
    for i in 0..10i64 {
        assert_eq!(one(&good, &format!("SELECT {i}::int8")).await, i);
    }
    let waited = silent.await;
    assert!(
        waited >= Duration::from_millis(1500),
        "closed too early: {waited:?}"
    );
    // New well-behaved sessions still work.
    let c = connect_within(&url).await.unwrap();
    assert_eq!(one(&c, "SELECT 5::int8").await, 5);
    assert!(larder.is_running());
    blocking(move || drop(larder)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_authentication_errors_reach_the_client() {
    let pg = PgServer::shared();
    let (db, larder) = blocking(move || {
        let db = pg.create_database("auth").unwrap();
        let l = spawn_larder(pg, &db, &[]);
        (db, l)
    })
    .await;
    let port = larder.port();
    let bad_pw = format!(
        "postgresql://{}:wrong@127.0.0.1:{port}/{db}",
        pg.admin_user()
    );
    let err = connect_within(&bad_pw)
        .await
        .expect_err("wrong password accepted");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    let msg = err.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("password authentication failed"), "{msg}");

    let no_user = format!("postgresql://nosuchuser:pw@127.0.0.1:{port}/{db}");
    let err = connect_within(&no_user)
        .await
        .expect_err("unknown user accepted");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");

    // A second role with its own password authenticates as itself.
    let role_pw = "role_pw_123";
    let db2 = db.clone();
    blocking(move || {
        pg.psql(
            &db2,
            &format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'larder_app') \
                 THEN CREATE ROLE larder_app LOGIN PASSWORD '{role_pw}'; END IF; END $$;"
            ),
        )
        .unwrap()
    })
    .await;
    let app = format!("postgresql://larder_app:{role_pw}@127.0.0.1:{port}/{db}");
    let c = connect_within(&app).await.unwrap();
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "larder_app");

    // MD5 and cleartext password methods (pg_hba entries of the harness) pass through too.
    let db3 = db.clone();
    blocking(move || {
        pg.psql(
            &db3,
            "DO $$ BEGIN \
               SET LOCAL password_encryption = 'md5'; \
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'larder_md5') \
               THEN CREATE ROLE larder_md5 LOGIN PASSWORD 'md5_pw'; END IF; \
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'larder_plain') \
               THEN CREATE ROLE larder_plain LOGIN PASSWORD 'plain_pw'; END IF; END $$;",
        )
        .unwrap()
    })
    .await;
    for (user, pw) in [("larder_md5", "md5_pw"), ("larder_plain", "plain_pw")] {
        let ok = format!("postgresql://{user}:{pw}@127.0.0.1:{port}/{db}");
        let c = connect_within(&ok)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}"));
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
        let bad = format!("postgresql://{user}:nope@127.0.0.1:{port}/{db}");
        let err = connect_within(&bad)
            .await
            .expect_err("wrong password accepted");
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}: {err:?}"
        );
    }

    // The right credentials still work afterwards.
    let c = connect_within(&proxy_url(pg, &larder, &db)).await.unwrap();
    assert_eq!(one(&c, "SELECT 1::int8").await, 1);
    assert!(larder.is_running());
    blocking(move || drop(larder)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_fails_sessions_cleanly_and_recovers() {
    let (pg, db, larder) = blocking(|| {
        let pg = PgServer::start().unwrap();
        let db = pg.create_database("restart").unwrap();
        let l = spawn_larder(&pg, &db, &[]);
        (pg, db, l)
    })
    .await;
    let pg = std::sync::Arc::new(pg);
    let url = proxy_url(&pg, &larder, &db);
    let before = connect_within(&url).await.unwrap();
    assert_eq!(one(&before, "SELECT 1::int8").await, 1);

    let p = pg.clone();
    blocking(move || p.stop().unwrap()).await;

    // The existing session gets an error, not a hang.
    let r = tokio::time::timeout(STEP_TIMEOUT, before.query_one("SELECT 2::int8", &[]))
        .await
        .expect("query on a session whose upstream died hung");
    assert!(r.is_err(), "query succeeded with the upstream down");
    // New sessions fail promptly while the upstream is down.
    let r = connect_within(&url).await.and(Ok(()));
    assert!(r.is_err(), "connect succeeded with the upstream down");
    assert!(
        larder.is_running(),
        "larder died with its upstream:\n{}",
        larder.log()
    );

    let p = pg.clone();
    blocking(move || p.start_again().unwrap()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match connect_within(&url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reconnect not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no session after the upstream came back: {e:?}"),
        }
    };
    assert_eq!(one(&after, "SELECT 3::int8").await, 3);
    assert!(larder.is_running());
    drop(after);
    drop(before);
    blocking(move || {
        drop(larder);
        drop(pg);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_through_larder_cancels_the_query() {
    let pg = PgServer::shared();
    let (db, larder) = blocking(move || {
        let db = pg.create_database("cancel").unwrap();
        let l = spawn_larder(pg, &db, &[]);
        (db, l)
    })
    .await;
    let c = connect_within(&proxy_url(pg, &larder, &db)).await.unwrap();
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let r = tokio::time::timeout(STEP_TIMEOUT, c.query("SELECT pg_sleep(30)", &[]))
        .await
        .expect("cancelled query hung");
    canceller
        .await
        .unwrap()
        .expect("sending the cancel request");
    let e = r.expect_err("pg_sleep(30) was not cancelled");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The session survives a cancel.
    assert_eq!(one(&c, "SELECT 4::int8").await, 4);
    blocking(move || drop(larder)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_clients_release_their_upstream_sessions() {
    let pg = PgServer::shared();
    let (db, larder) = blocking(move || {
        let db = pg.create_database("release").unwrap();
        let l = spawn_larder(pg, &db, &[]);
        (db, l)
    })
    .await;
    let url = proxy_url(pg, &larder, &db);
    let mut clients = Vec::new();
    for _ in 0..10 {
        let c = connect_within(&url).await.unwrap();
        assert_eq!(one(&c, "SELECT 1::int8").await, 1);
        clients.push(c);
    }
    let count_sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    );
    let q = count_sql.clone();
    let during: i64 =
        blocking(move || pg.psql("postgres", &q).unwrap().trim().parse().unwrap()).await;
    assert!(
        during >= 10,
        "expected >= 10 upstream sessions, saw {during}"
    );
    drop(clients);
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let q = count_sql.clone();
        let n: i64 =
            blocking(move || pg.psql("postgres", &q).unwrap().trim().parse().unwrap()).await;
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} upstream sessions still open after their clients left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    blocking(move || drop(larder)).await;
}

#[test]
fn sigterm_exits_zero() {
    let pg = PgServer::shared();
    let db = pg.create_database("sigterm").unwrap();
    let larder = spawn_larder(pg, &db, &["--shutdown-grace-ms", "2000"]);
    let url = proxy_url(pg, &larder, &db);
    assert_eq!(larder_testkit_psql(&url, "SELECT 1"), "1\n");
    larder.sigterm();
    let status = larder
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("larder did not exit after SIGTERM:\n{}", larder.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}:\n{}",
        larder.log()
    );
    assert!(
        TcpStream::connect(larder.address()).is_err(),
        "still listening"
    );
}

#[test]
fn sigterm_with_an_idle_session_exits_zero_within_the_grace_period() {
    let pg = PgServer::shared();
    let db = pg.create_database("sigterm_idle").unwrap();
    let larder = spawn_larder(pg, &db, &["--shutdown-grace-ms", "1000"]);
    let url = proxy_url(pg, &larder, &db);
    // An idle psql session that stays connected (reads from a pipe we keep open).
    let mut idle = std::process::Command::new(larder_testkit::require_binary("psql"))
        .args(["-X", "-q", "-d", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    idle.stdin
        .as_mut()
        .unwrap()
        .write_all(b"SELECT 1;\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    larder.sigterm();
    let status = larder
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("larder did not exit after SIGTERM:\n{}", larder.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}:\n{}",
        larder.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let _ = idle.kill();
    let _ = idle.wait();
}

fn larder_testkit_psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new(larder_testkit::require_binary("psql"))
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
