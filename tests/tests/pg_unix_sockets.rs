//! End-to-end: Unix-domain sockets on both sides of Larder.
//!
//! Why: on a single host the cheapest path is a Unix socket: clients talk to Larder over
//! `--unix-socket-dir` (`psql -h <dir> -p <port>`), and Larder reaches its upstream with a
//! libpq-style `host=/dir` URL. Everything that works over TCP must work there too: the relay
//! for psql and tokio-postgres, authentication (scram over the upstream's socket), cancel
//! requests, cache hits, and replication (whose walsender session goes through Larder's
//! one-shot loopback relay, pg_walstream being TCP-only). The socket file itself is Larder's
//! to manage: a stale one is replaced at start, a live one is never stolen, and it is removed at
//! exit. The connection limit applies to both listeners together.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::client::{connect, explain_last, q, try_connect, wait_caught_up, wait_streaming};
use common::Scratch;
use larder_testkit::{psql_url, LarderProcess, PgServer};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

const WAIT: Duration = Duration::from_secs(40);

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn socket_file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

fn wait_for_socket(path: &Path, larder: &LarderProcess) {
    let deadline = Instant::now() + WAIT;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "larder never listened on {}; log:\n{}",
            path.display(),
            larder.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client URL for Larder's Unix socket in `dir`.
fn larder_unix_url(pg: &PgServer, dir: &Path, larder: &LarderProcess, db: &str) -> String {
    format!(
        "postgresql://{}:{}@/{db}?host={}&port={}",
        pg.admin_user(),
        pg.admin_password(),
        dir.display(),
        larder.port()
    )
}

/// Runs `sql` (one row, one column: `want`) until the answer comes from the cache (a new
/// session's first statements may go upstream while the router learns about the session).
async fn until_cache_hit(c: &tokio_postgres::Client, sql: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = q(c, sql).await;
        assert_eq!(a.rows, vec![vec![Some(want.to_string())]], "{sql}");
        let (dest, reason) = explain_last(c).await;
        if dest == "cache" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never served from the cache: {dest} ({reason})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes the deployment's replication slot from the shared server.
fn drop_slot(pg: &PgServer, deployment: &str) {
    let sql = format!(
        "SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name) \
         FROM pg_replication_slots WHERE slot_name = 'larder_{deployment}' AND NOT active) d"
    );
    for _ in 0..40 {
        if pg.psql("postgres", &sql).is_ok() {
            let left = pg
                .psql(
                    "postgres",
                    &format!(
                        "SELECT count(*) FROM pg_replication_slots \
                         WHERE slot_name = 'larder_{deployment}'"
                    ),
                )
                .unwrap_or_default();
            if left.trim() == "0" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_upstream_and_unix_clients_relay_cache_and_replicate() {
    let pg = PgServer::shared();
    let scratch = Scratch::new("unix");
    let sock_dir = scratch.0.join("sock");
    let storage = scratch.0.join("storage");
    std::fs::create_dir_all(&sock_dir).unwrap();
    let (db, larder) = {
        let sock_dir = sock_dir.clone();
        blocking(move || {
            let db = pg.create_database("unixsock").unwrap();
            pg.psql(
                &db,
                "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL); \
                 INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 50) g;",
            )
            .unwrap();
            let upstream = pg.unix_url(&db);
            let storage = storage.display().to_string();
            let sock = sock_dir.display().to_string();
            let larder = LarderProcess::spawn(
                &[
                    "--upstream-db-url",
                    &upstream,
                    "--deployment",
                    &db,
                    "--storage-dir",
                    &storage,
                    "--unix-socket-dir",
                    &sock,
                    "--shutdown-grace-ms",
                    "2000",
                ],
                &[],
            )
            .unwrap_or_else(|e| panic!("starting larder: {e:#}"));
            wait_for_socket(&socket_file(&sock_dir, larder.port()), &larder);
            (db, larder)
        })
        .await
    };
    let client_url = larder_unix_url(pg, &sock_dir, &larder, &db);

    // psql over Larder's socket; the upstream session is on the upstream's socket (no inet
    // address), and authenticated with scram (pg_hba: `local all all scram-sha-256`).
    let out = {
        let url = client_url.clone();
        blocking(move || {
            psql_url(
                &url,
                "SELECT 40 + 2; SELECT inet_server_addr() IS NULL; \
                 SELECT count(*) FROM items;",
            )
        })
        .await
        .unwrap_or_else(|e| panic!("psql over the Unix socket: {e:#}"))
    };
    assert_eq!(out, "42\nt\n50\n", "psql output");

    // tokio-postgres over the socket: queries, prepared statements, replication, a cache hit.
    let c = connect(&client_url).await;
    let direct = connect(&pg.unix_url(&db)).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE id <= $1", &[&10i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);
    wait_streaming(&c).await;
    q(&c, "CREATE CACHE FROM SELECT v FROM items WHERE id = 1").await;
    until_cache_hit(&c, "SELECT v FROM items WHERE id = 7", "v7").await;
    // Extended protocol hits too.
    let v: String = c
        .query_one("SELECT v FROM items WHERE id = $1", &[&8i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "v8");
    assert_eq!(explain_last(&c).await.0, "cache");

    // A write through Larder's socket reaches the cache through the (relayed) walsender.
    q(&c, "UPDATE items SET v = 'changed' WHERE id = 7").await;
    wait_caught_up(&direct, &c).await;
    let a = q(&c, "SELECT v FROM items WHERE id = 7").await;
    assert_eq!(a.rows, vec![vec![Some("changed".to_string())]]);
    assert_eq!(explain_last(&c).await.0, "cache");

    // Cancel requests work over the socket on both sides.
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), c.query("SELECT pg_sleep(30)", &[]))
        .await
        .expect("cancelled query hung");
    canceller
        .await
        .unwrap()
        .expect("sending the cancel request");
    let e = r.expect_err("pg_sleep(30) was not cancelled");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(q(&c, "SELECT 5").await.rows[0][0].as_deref(), Some("5"));

    // TCP clients of the same Larder share the same cache.
    let tcp = connect(&larder.pg_url(pg.admin_user(), pg.admin_password(), &db)).await;
    until_cache_hit(&tcp, "SELECT v FROM items WHERE id = 7", "changed").await;

    drop((c, direct, tcp));
    let sock = socket_file(&sock_dir, larder.port());
    blocking(move || {
        larder.sigterm();
        assert!(
            larder.wait_exit(Duration::from_secs(20)).is_some(),
            "larder did not exit"
        );
        assert!(!sock.exists(), "the socket file was left behind");
        drop(larder);
        drop_slot(pg, &db);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_file_lifecycle_and_shared_limits() {
    let pg = PgServer::shared();
    let scratch = Scratch::new("unixlife");
    let sock_dir = scratch.0.join("sock");
    std::fs::create_dir_all(&sock_dir).unwrap();
    let db = blocking(move || pg.create_database("unixlife").unwrap()).await;
    // kill -9 leaves the socket file behind (stale); the next Larder on that directory and
    // port replaces it.
    let spawn = {
        let sock_dir = sock_dir.clone();
        let db = db.clone();
        move |port: Option<u16>| -> LarderProcess {
            let upstream = pg.unix_url(&db);
            let sock = sock_dir.display().to_string();
            let args = [
                "--upstream-db-url",
                &upstream,
                "--proxy-only",
                "--unix-socket-dir",
                &sock,
                "--max-connections",
                "1",
            ];
            match port {
                None => LarderProcess::spawn(&args, &[]),
                Some(port) => LarderProcess::spawn_on_port(port, &args, &[]),
            }
            .unwrap_or_else(|e| panic!("starting larder: {e:#}"))
        }
    };
    let first = {
        let spawn = spawn.clone();
        blocking(move || spawn(None)).await
    };
    let port = first.port();
    let sock = socket_file(&sock_dir, port);
    {
        let sock = sock.clone();
        let first = blocking(move || {
            wait_for_socket(&sock, &first);
            first
        })
        .await;
        let url_first = larder_unix_url(pg, &sock_dir, &first, &db);
        let c = connect(&url_first).await;
        assert_eq!(q(&c, "SELECT 1").await.rows[0][0].as_deref(), Some("1"));
        // --max-connections counts sessions of both listeners: a TCP client is refused while
        // the Unix one holds the only slot.
        let tcp = try_connect(&first.pg_url(pg.admin_user(), pg.admin_password(), &db)).await;
        let Err(e) = tcp else {
            panic!("a second session was admitted past --max-connections 1");
        };
        assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
        drop(c);
        blocking(move || {
            first.kill9();
            first.wait_exit(Duration::from_secs(10));
            drop(first);
        })
        .await;
    }
    assert!(sock.exists(), "kill -9 should leave the socket file behind");
    // The stale file is replaced by the next Larder on that port.
    let second = {
        let spawn = spawn.clone();
        let sock = sock.clone();
        blocking(move || {
            let l = spawn(Some(port));
            wait_for_socket(&sock, &l);
            l
        })
        .await
    };
    assert!(
        second.log().contains("removed a stale Unix socket"),
        "{}",
        second.log()
    );
    let c = connect(&larder_unix_url(pg, &sock_dir, &second, &db)).await;
    assert_eq!(q(&c, "SELECT 2").await.rows[0][0].as_deref(), Some("2"));
    drop(c);
    // An SSLRequest on the Unix socket is declined (no TLS there), and the session proceeds.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"N");
    }
    blocking(move || {
        second.sigterm();
        assert!(second.wait_exit(Duration::from_secs(20)).is_some());
        drop(second);
    })
    .await;
    assert!(!sock.exists(), "the socket file was left behind at exit");
}

#[test]
fn a_live_socket_is_never_taken_over() {
    // Point Larder's socket at the Postgres server's own (same directory and port; TCP on
    // 127.0.0.2 so the TCP bind does not clash): Larder must refuse to start and leave the
    // server's socket alone.
    let pg = PgServer::shared();
    let pg_sock = socket_file(pg.socket_dir(), pg.port());
    assert!(pg_sock.exists());
    let mut child = std::process::Command::new(larder_testkit::larder_binary())
        .args([
            "--upstream-db-url",
            &pg.url("postgres"),
            "--proxy-only",
            "--address",
            &format!("127.0.0.2:{}", pg.port()),
            "--unix-socket-dir",
            &pg.socket_dir().display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("larder kept running on a socket a live server owns");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("is in use"), "{err}");
    assert!(pg_sock.exists(), "the server's socket was removed");
    assert_eq!(
        psql_url(&pg.unix_url("postgres"), "SELECT 1").unwrap(),
        "1\n"
    );
}
