//! Library-level tests of the Postgres proxy against a real Postgres server (larder-testkit):
//! every test starts its own proxy with `serve`/`serve_with` in-process and talks to it with
//! tokio-postgres, psql or raw sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use larder_adapter::pg::messages::{
    CommandComplete, DataRow, Decode, Encode, ErrorResponse, FieldDescription, Frame, Query,
    ReadyForQuery, RowDescription, StartupMessage, TransactionStatus,
};
use larder_adapter::pg::{
    ClientBatch, Dispatch, Interceptor, InterceptorFactory, PgProxyConfig, ResponseMode,
    SessionState,
};
use larder_adapter::{AdapterError, UpstreamConfig};
use larder_testkit::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

async fn pg() -> &'static PgServer {
    tokio::task::spawn_blocking(PgServer::shared)
        .await
        .expect("starting the shared Postgres server")
}

async fn create_db(prefix: &'static str) -> Result<String> {
    let server = pg().await;
    tokio::task::spawn_blocking(move || server.create_database(prefix)).await?
}

/// A proxy running in this process.
struct Proxy {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AdapterError>>,
}

impl Proxy {
    async fn start(db: &str, tweak: impl FnOnce(&mut PgProxyConfig)) -> Result<Proxy> {
        Proxy::start_with(db, tweak, None).await
    }

    async fn start_with(
        db: &str,
        tweak: impl FnOnce(&mut PgProxyConfig),
        interceptors: Option<Arc<dyn InterceptorFactory>>,
    ) -> Result<Proxy> {
        let server = pg().await;
        let upstream = UpstreamConfig::from_url(&server.url(db))?;
        Proxy::start_upstream(upstream, tweak, interceptors).await
    }

    async fn start_upstream(
        upstream: UpstreamConfig,
        tweak: impl FnOnce(&mut PgProxyConfig),
        interceptors: Option<Arc<dyn InterceptorFactory>>,
    ) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut cfg = PgProxyConfig::new(addr, upstream);
        cfg.startup_timeout_ms = 10_000;
        tweak(&mut cfg);
        let (tx, rx) = watch::channel(false);
        let cfg = Arc::new(cfg);
        let task = match interceptors {
            Some(f) => tokio::spawn(larder_adapter::serve_with(listener, cfg, rx, f)),
            None => tokio::spawn(larder_adapter::serve(listener, cfg, rx)),
        };
        Ok(Proxy {
            addr,
            shutdown: tx,
            task,
        })
    }

    fn config(&self, db: &str) -> tokio_postgres::Config {
        let server = PgServer::shared();
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.addr.port())
            .user(server.admin_user())
            .password(server.admin_password())
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// Connects through the proxy; the connection task's result is returned by the handle.
    async fn connect(
        &self,
        db: &str,
    ) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>)> {
        let (client, conn) = self.config(db).connect(NoTls).await?;
        Ok((client, tokio::spawn(conn)))
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.send(true)?;
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("proxy did not stop")???;
        Ok(())
    }
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_with_binary_params() -> Result<()> {
    let db = create_db("proxy_queries").await?;
    let proxy = Proxy::start(&db, |_| {}).await?;
    let (client, _conn) = proxy.connect(&db).await?;

    let msgs = client
        .simple_query("CREATE TABLE t (id int PRIMARY KEY, name text, data bytea, f float8); SELECT 42 AS answer")
        .await?;
    let row = msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .context("a row")?;
    assert_eq!(row.get("answer"), Some("42"));

    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2, $3, $4)")
        .await?;
    for i in 0..50i32 {
        let name = format!("name-{i}-ü");
        let data: Vec<u8> = (0..=255u8).cycle().take(i as usize * 7).collect();
        client
            .execute(&insert, &[&i, &name, &data, &(i as f64 / 3.0)])
            .await?;
    }
    let rows = client
        .query(
            "SELECT id, name, data, f FROM t WHERE id >= $1 ORDER BY id",
            &[&45i32],
        )
        .await?;
    assert_eq!(rows.len(), 5);
    let data: Vec<u8> = rows[2].get(2);
    assert_eq!(data.len(), 47 * 7);
    assert_eq!(rows[2].get::<_, String>(1), "name-47-ü");
    assert!((rows[2].get::<_, f64>(3) - 47.0 / 3.0).abs() < 1e-12);

    // Pipelined queries (tokio-postgres sends them without waiting) come back in order.
    let stmt = client.prepare("SELECT $1::int4 * 2").await?;
    let futures: Vec<_> = (0..200i32)
        .map(|i| {
            let client = &client;
            let stmt = &stmt;
            async move {
                client
                    .query_one(stmt, &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        })
        .collect();
    let results = futures_util::future::try_join_all(futures).await?;
    assert_eq!(results, (0..200).map(|i| i * 2).collect::<Vec<_>>());

    // A large result set and a large query text cross the proxy intact.
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT repeat('x', 100) FROM generate_series(1, 200000)) s",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(n, 200000);
    let rows = client
        .query(
            "SELECT g, repeat('y', 200) FROM generate_series(1, 50000) g",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 50000);
    let big = "x".repeat(1 << 20);
    let len: i32 = client
        .query_one(&format!("SELECT length('{big}')"), &[])
        .await?
        .get(0);
    assert_eq!(len, 1 << 20);

    // Transactions work as usual.
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1000, 'tx', NULL, NULL); ROLLBACK")
        .await?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM t WHERE id = 1000", &[])
        .await?
        .get(0);
    assert_eq!(n, 0);
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_all_fields_and_the_session_survives() -> Result<()> {
    let db = create_db("proxy_errors").await?;
    let proxy = Proxy::start(&db, |_| {}).await?;
    let (client, _conn) = proxy.connect(&db).await?;
    client
        .batch_execute("CREATE TABLE items (id int CONSTRAINT items_pkey PRIMARY KEY); INSERT INTO items VALUES (1)")
        .await?;
    let err = client
        .execute("INSERT INTO items VALUES ($1)", &[&1i32])
        .await
        .expect_err("duplicate key");
    let db_err = err.as_db_error().context("a database error")?;
    assert_eq!(db_err.code(), &SqlState::UNIQUE_VIOLATION);
    assert_eq!(db_err.constraint(), Some("items_pkey"));
    assert_eq!(db_err.table(), Some("items"));
    assert_eq!(db_err.schema(), Some("public"));
    assert!(db_err.detail().unwrap_or("").contains("(id)=(1)"));
    assert!(db_err.routine().is_some());

    let err = client
        .simple_query("SELEC 1")
        .await
        .expect_err("syntax error");
    let db_err = err.as_db_error().context("a database error")?;
    assert_eq!(db_err.code(), &SqlState::SYNTAX_ERROR);
    assert!(db_err.position().is_some());

    // Notices flow through too, and the session is still usable.
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await?;
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() -> Result<()> {
    let db = create_db("proxy_copy").await?;
    let proxy = Proxy::start(&db, |_| {}).await?;
    let (client, _conn) = proxy.connect(&db).await?;
    client
        .batch_execute("CREATE TABLE c (id int, v text)")
        .await?;

    let sink = client.copy_in("COPY c FROM STDIN").await?;
    let mut sink = std::pin::pin!(sink);
    let mut expected = String::new();
    for chunk in 0..20 {
        let mut data = String::new();
        for i in 0..5000 {
            let id = chunk * 5000 + i;
            data.push_str(&format!("{id}\tvalue {id}\n"));
        }
        expected.push_str(&data);
        sink.send(Bytes::from(data)).await?;
    }
    let copied = sink.finish().await?;
    assert_eq!(copied, 100_000);

    let stream = client
        .copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT")
        .await?;
    let chunks: Vec<Bytes> = stream
        .map(|r| r.map_err(anyhow::Error::from))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out)?, expected);

    // A failed COPY (bad data) reports the error and leaves the session usable.
    let sink = client.copy_in("COPY c FROM STDIN").await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\n")).await?;
    let err = sink.finish().await.expect_err("bad data");
    assert_eq!(code(&err), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    let n: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await?
        .get(0);
    assert_eq!(n, 100_000);
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_delivers_async_notifications() -> Result<()> {
    let db = create_db("proxy_notify").await?;
    let proxy = Proxy::start(&db, |_| {}).await?;
    let (listener, mut conn) = proxy.config(&db).connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await?;
    let (notifier, _c2) = proxy.connect(&db).await?;
    for i in 0..3 {
        notifier
            .execute("SELECT pg_notify('jobs', $1)", &[&format!("payload {i}")])
            .await?;
    }
    for i in 0..3 {
        let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("notification timed out")?
            .context("listener connection ended")?;
        assert_eq!(channel, "jobs");
        assert_eq!(payload, format!("payload {i}"));
    }
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_right_upstream_session() -> Result<()> {
    let db = create_db("proxy_cancel").await?;
    let proxy = Proxy::start(&db, |_| {}).await?;
    let (client, _conn) = proxy.connect(&db).await?;
    let (bystander, _c2) = proxy.connect(&db).await?;
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(NoTls).await?;
    let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .context("cancel did not take effect")??
        .expect_err("query was cancelled");
    assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED));
    assert!(started.elapsed() < Duration::from_secs(15));
    // The other session was not affected.
    let one: i32 = bystander.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_passed_through() -> Result<()> {
    let db = create_db("proxy_auth").await?;
    let server = pg().await;
    let proxy = Proxy::start(&db, |_| {}).await?;

    // Wrong password: the upstream's own error reaches the client.
    let mut cfg = proxy.config(&db);
    cfg.password("definitely wrong");
    let err = cfg
        .connect(NoTls)
        .await
        .err()
        .context("wrong password must fail")?;
    let db_err = err.as_db_error().context("a database error")?;
    assert_eq!(db_err.code(), &SqlState::INVALID_PASSWORD);
    assert!(db_err.message().contains("password authentication failed"));

    // MD5 (pg_hba uses md5 for this role) and the client's own user/database are used.
    let (admin, _c) = proxy.connect(&db).await?;
    admin
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'larder_md5') THEN
                 SET LOCAL password_encryption = 'md5';
                 CREATE ROLE larder_md5 LOGIN PASSWORD 'md5-secret';
               END IF;
             END $$",
        )
        .await?;
    let mut cfg = proxy.config(&db);
    cfg.user("larder_md5").password("md5-secret");
    let (md5_client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(conn);
    let who: String = md5_client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    assert_eq!(who, "larder_md5");

    // SCRAM as the admin, connecting to a database other than the URL's default.
    let (c, _c3) = proxy.connect("postgres").await?;
    let (user, dbname): (String, String) = {
        let r = c
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .await?;
        (r.get(0), r.get(1))
    };
    assert_eq!(user, server.admin_user());
    assert_eq!(dbname, "postgres");
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_clients_get_53300_and_larder_keeps_serving() -> Result<()> {
    let db = create_db("proxy_maxconn").await?;
    let proxy = Proxy::start(&db, |c| c.max_connections = 2).await?;
    let (a, _ca) = proxy.connect(&db).await?;
    let (_b, _cb) = proxy.connect(&db).await?;
    let err = tokio::time::timeout(Duration::from_secs(10), proxy.config(&db).connect(NoTls))
        .await
        .context("excess client must not hang")?
        .err()
        .context("third client must be refused")?;
    assert_eq!(code(&err), Some(&SqlState::TOO_MANY_CONNECTIONS));
    drop(a);
    // Once a slot frees up, new clients get in again.
    let mut connected = None;
    for _ in 0..50 {
        match proxy.connect(&db).await {
            Ok(c) => {
                connected = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (c, _cc) = connected.context("slot was never released")?;
    let one: i32 = c.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    proxy.stop().await
}

/// Reads everything the proxy sends until it closes the connection (or 10 s pass). A reset
/// (the proxy closed with our garbage still unread) also counts as closed.
async fn read_until_close(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    read.await.context("proxy did not close the connection")??;
    Ok(out)
}

fn startup_packet(user: &str, db: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    StartupMessage::new(vec![
        ("user".into(), user.into()),
        ("database".into(), db.into()),
    ])
    .encode(&mut buf);
    buf
}

/// The SQLSTATE of the first ErrorResponse among the backend messages in `bytes`.
fn error_code_in(bytes: &[u8]) -> Option<String> {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(frame)) = Frame::parse(&mut buf, 1 << 20) {
        if let Ok(err) = ErrorResponse::decode(&frame.as_ref()) {
            return err.0.code().map(str::to_string);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_end_only_that_session() -> Result<()> {
    let db = create_db("proxy_garbage").await?;
    let server = pg().await;
    let proxy = Proxy::start(&db, |c| c.message_size_max_bytes = 64 * 1024).await?;

    // 1. Garbage instead of a startup packet.
    let mut s = TcpStream::connect(proxy.addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let _ = read_until_close(&mut s).await?;

    // 2. Hostile lengths / unknown message types after the startup packet.
    for garbage in [
        &b"p\x00\x00\x00\x02"[..],
        &b"p\xff\xff\xff\xff"[..],
        &b"Z\x00\x00\x00\x04"[..],
        &b"d\x7f\x00\x00\x00"[..],
    ] {
        let mut s = TcpStream::connect(proxy.addr).await?;
        s.write_all(&startup_packet(server.admin_user(), &db))
            .await?;
        s.write_all(garbage).await?;
        let reply = read_until_close(&mut s).await?;
        assert_eq!(
            error_code_in(&reply).as_deref(),
            Some("08P01"),
            "garbage {garbage:?} got {reply:?}"
        );
    }

    // 3. Random bytes, many times.
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.addr).await?;
        let mut bytes = Vec::new();
        for _ in 0..200 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        let _ = s.write_all(&bytes).await;
        let _ = read_until_close(&mut s).await;
    }

    // 4. A message over message_size_max_bytes from an authenticated client.
    let (client, conn) = proxy.connect(&db).await?;
    let big = "x".repeat(100 * 1024);
    let err = client
        .simple_query(&format!("SELECT '{big}'"))
        .await
        .expect_err("too large");
    let conn_err = conn.await?.err();
    let saw_protocol_violation = code(&err) == Some(&SqlState::PROTOCOL_VIOLATION)
        || conn_err.as_ref().and_then(|e| e.code()) == Some(&SqlState::PROTOCOL_VIOLATION);
    assert!(
        saw_protocol_violation,
        "query error {err:?}, connection error {conn_err:?}"
    );

    // The proxy still serves everyone else.
    let (client, _c) = proxy.connect(&db).await?;
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_reports_08006() -> Result<()> {
    pg().await;
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let upstream =
        UpstreamConfig::from_url(&format!("postgres://u@127.0.0.1:{port}/db?sslmode=disable"))?;
    let proxy = Proxy::start_upstream(upstream, |_| {}, None).await?;
    for _ in 0..2 {
        let err = tokio::time::timeout(Duration::from_secs(15), proxy.config("db").connect(NoTls))
            .await
            .context("must not hang")?
            .err()
            .context("must fail")?;
        let db_err = err.as_db_error().context("a database error")?;
        assert_eq!(db_err.code(), &SqlState::CONNECTION_FAILURE);
        assert!(
            db_err
                .message()
                .contains("larder: could not connect to upstream"),
            "{}",
            db_err.message()
        );
    }
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_time_out() -> Result<()> {
    let db = create_db("proxy_idle").await?;
    let proxy = Proxy::start(&db, |c| c.idle_timeout_ms = 300).await?;
    let (client, conn) = proxy.connect(&db).await?;
    // Busy for longer than the idle timeout: not idle, so not closed.
    client.simple_query("SELECT pg_sleep(0.6)").await?;
    let err = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .context("idle session was not closed")??
        .expect_err("closed with an error");
    assert_eq!(code(&err), Some(&SqlState::IDLE_SESSION_TIMEOUT));
    assert!(client.is_closed());
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_statements_finish() -> Result<()> {
    let db = create_db("proxy_shutdown").await?;
    let proxy = Proxy::start(&db, |c| c.shutdown_grace_ms = 20_000).await?;
    let (busy, busy_conn) = proxy.connect(&db).await?;
    let (_idle, idle_conn) = proxy.connect(&db).await?;
    let query = tokio::spawn(async move {
        busy.query_one("SELECT 7 FROM pg_sleep(1)", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let Proxy {
        addr,
        shutdown,
        task,
    } = proxy;
    shutdown.send(true)?;
    assert_eq!(query.await??, 7, "in-flight statement completes");
    for conn in [busy_conn, idle_conn] {
        let err = tokio::time::timeout(Duration::from_secs(10), conn)
            .await??
            .expect_err("closed by shutdown");
        assert_eq!(code(&err), Some(&SqlState::ADMIN_SHUTDOWN));
    }
    tokio::time::timeout(Duration::from_secs(10), task).await???;
    assert!(started.elapsed() < Duration::from_secs(10));
    // No longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
    Ok(())
}

fn openssl_self_signed(dir: &std::path::Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!("openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_clients_to_larder() -> Result<()> {
    let db = create_db("proxy_tls").await?;
    let server = pg().await;
    let dir = std::env::temp_dir().join(format!("larder-adapter-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = openssl_self_signed(&dir)?;
    let tls = larder_adapter::load_tls_config(&cert, &key)?;
    let proxy = Proxy::start(&db, |c| c.tls = Some(tls)).await?;
    for mode in ["require", "verify-full"] {
        let conninfo = format!(
            "host=localhost port={} user={} dbname={db} sslmode={mode} sslrootcert={}",
            proxy.addr.port(),
            server.admin_user(),
            cert.display()
        );
        let (user, pass) = (
            server.admin_user().to_string(),
            server.admin_password().to_string(),
        );
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("psql")
                .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
                .arg(&conninfo)
                .args(["-c", "\\conninfo", "-c", "SELECT current_user"])
                .env("PGPASSWORD", pass)
                .output()
        })
        .await??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("SSL connection"), "not TLS: {stdout}");
        assert!(stdout.contains(&user), "{stdout}");
    }
    // Plain clients still work when TLS is offered.
    let (client, _c) = proxy.connect(&db).await?;
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    let _ = std::fs::remove_dir_all(&dir);
    proxy.stop().await
}

/// Records what the session state looked like for each batch and answers one magic query
/// locally, to exercise the interception hook.
/// (TimeZone, transaction status, query text) per client message.
type Seen = Arc<Mutex<Vec<(Option<String>, TransactionStatus, String)>>>;

#[derive(Default)]
struct Recorder {
    seen: Seen,
    captured: Arc<Mutex<Vec<String>>>,
}

struct RecordingInterceptor {
    seen: Seen,
    captured: Arc<Mutex<Vec<String>>>,
}

impl InterceptorFactory for Recorder {
    fn create(&self, _session: &SessionState) -> Box<dyn Interceptor> {
        Box::new(RecordingInterceptor {
            seen: self.seen.clone(),
            captured: self.captured.clone(),
        })
    }
}

/// Answered locally; also forwarded with its upstream response discarded (it sets a variable
/// the test reads back, proving it ran upstream).
const MAGIC: &str = "SELECT set_config('larder.magic', 'ran', false)";

/// Answered later (asynchronously) while a query of the interceptor's own is captured.
const LATER: &str = "SELECT 'later'";

fn local_answer() -> Bytes {
    local_answer_with("local")
}

fn local_answer_with(value: &'static str) -> Bytes {
    let mut b = BytesMut::new();
    RowDescription {
        fields: vec![FieldDescription {
            name: "answer".into(),
            table_oid: 0,
            column_attr: 0,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }],
    }
    .encode(&mut b);
    DataRow {
        values: vec![Some(Bytes::from_static(value.as_bytes()))],
    }
    .encode(&mut b);
    CommandComplete {
        tag: "SELECT 1".into(),
    }
    .encode(&mut b);
    ReadyForQuery {
        status: TransactionStatus::Idle,
    }
    .encode(&mut b);
    b.freeze()
}

impl Interceptor for RecordingInterceptor {
    fn on_client_messages(
        &mut self,
        session: &SessionState,
        batch: &ClientBatch<'_>,
        dispatch: &mut Dispatch<'_>,
    ) -> Result<(), AdapterError> {
        for msg in batch.iter() {
            let sql = if msg.frame.tag == b'Q' {
                let q = Query::decode(&msg.frame).map_err(AdapterError::from)?;
                q.sql
            } else {
                String::new()
            };
            self.seen.lock().unwrap().push((
                session.parameter("TimeZone").map(str::to_string),
                session.transaction_status(),
                sql.clone(),
            ));
            if sql == LATER {
                let mut own = BytesMut::new();
                Query {
                    sql: "SELECT 40 + 2".into(),
                }
                .encode(&mut own);
                dispatch.capture(&own);
                dispatch.respond_later(Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    local_answer_with("later")
                }));
            } else if sql == MAGIC {
                dispatch.send_upstream(msg.raw, ResponseMode::Discard);
                dispatch.respond(local_answer());
            } else {
                dispatch.forward(&msg);
            }
        }
        Ok(())
    }

    fn on_captured(&mut self, _session: &SessionState, response: &[u8]) {
        let mut buf = BytesMut::from(response);
        while let Ok(Some(frame)) = Frame::parse(&mut buf, 1 << 20) {
            if let Ok(row) = DataRow::decode(&frame.as_ref()) {
                let v = row.values[0].as_deref().unwrap_or_default();
                self.captured
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interceptor_sees_state_and_local_answers_stay_in_order() -> Result<()> {
    let db = create_db("proxy_intercept").await?;
    let recorder = Recorder::default();
    let seen = recorder.seen.clone();
    let captured = recorder.captured.clone();
    let proxy = Proxy::start_with(&db, |_| {}, Some(Arc::new(recorder))).await?;
    let (client, _c) = proxy.connect(&db).await?;
    client
        .batch_execute("SET TimeZone = 'Europe/Paris'")
        .await?;
    client.batch_execute("BEGIN").await?;
    client.batch_execute("SELECT 1").await?;
    client.batch_execute("COMMIT").await?;

    // Pipeline: slow upstream query, local answer, upstream query. Order must hold.
    let (a, b, c) = tokio::join!(
        client.simple_query("SELECT 'first' FROM pg_sleep(0.3)"),
        client.simple_query(MAGIC),
        client.simple_query("SELECT 'third'"),
    );
    let value = |r: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>| -> Result<String> {
        r?.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .context("a row")
    };
    assert_eq!(value(a)?, "first");
    assert_eq!(value(b)?, "local");
    assert_eq!(value(c)?, "third");
    let magic = client
        .query_one("SELECT current_setting('larder.magic')", &[])
        .await?;
    assert_eq!(magic.get::<_, String>(0), "ran");

    // An asynchronous local answer between two forwarded queries, while the interceptor's own
    // query is captured.
    let (a, b, c) = tokio::join!(
        client.simple_query("SELECT 'before' FROM pg_sleep(0.1)"),
        client.simple_query(LATER),
        client.simple_query("SELECT 'after'"),
    );
    assert_eq!(value(a)?, "before");
    assert_eq!(value(b)?, "later");
    assert_eq!(value(c)?, "after");
    // Larder's own question waits for the upstream to be at a boundary (nothing of the
    // client's in flight), so its answer may arrive just after the client's last response.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while captured.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*captured.lock().unwrap(), vec!["42".to_string()]);

    let seen = seen.lock().unwrap().clone();
    let find = |sql: &str| seen.iter().find(|(_, _, s)| s == sql).cloned();
    let (tz, status, _) = find("SELECT 1").context("saw SELECT 1")?;
    assert_eq!(tz.as_deref(), Some("Europe/Paris"));
    assert_eq!(status, TransactionStatus::InTransaction);
    let (_, status, _) = find("COMMIT").context("saw COMMIT")?;
    assert_eq!(status, TransactionStatus::InTransaction);
    let (_, status, _) = find("SET TimeZone = 'Europe/Paris'").context("saw SET")?;
    assert_eq!(status, TransactionStatus::Idle);
    proxy.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_is_refused_and_ssl_declined_without_tls() -> Result<()> {
    let db = create_db("proxy_negotiate").await?;
    let proxy = Proxy::start(&db, |_| {}).await?;
    let mut s = TcpStream::connect(proxy.addr).await?;
    let mut req = BytesMut::new();
    req.put_i32(8);
    req.put_i32(80877104); // GSSENCRequest
    s.write_all(&req).await?;
    assert_eq!(s.read_u8().await?, b'N');
    let mut req = BytesMut::new();
    req.put_i32(8);
    req.put_i32(80877103); // SSLRequest
    s.write_all(&req).await?;
    assert_eq!(s.read_u8().await?, b'N');
    // Then a normal startup reaches the upstream, which asks for a password.
    s.write_all(&startup_packet(PgServer::shared().admin_user(), &db))
        .await?;
    assert_eq!(s.read_u8().await?, b'R');
    proxy.stop().await
}

fn openssl_cert(dir: &std::path::Path, name: &str, san: &str) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", &format!("subjectAltName={san}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!("openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

/// Whether the upstream session behind a proxied client uses TLS.
async fn upstream_ssl(proxy: &Proxy, server: &PgServer, db: &str) -> Result<bool> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(proxy.addr.port())
        .user(server.admin_user())
        .password(server.admin_password())
        .dbname(db);
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(conn);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    Ok(ssl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_follows_sslmode() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // An owned server: enabling TLS must not change the shared one.
    let server = tokio::task::spawn_blocking(PgServer::start).await??;
    let data = server.data_dir().to_path_buf();
    let meta = std::fs::metadata(&data)?;
    let dir = std::env::temp_dir().join(format!("larder-adapter-uptls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The server certificate names only "localhost" (no IP), to tell verify-ca from verify-full.
    let (cert, key) = openssl_cert(&dir, "server", "DNS:localhost")?;
    let (other_ca, _) = openssl_cert(&dir, "other", "DNS:localhost")?;
    for (src, dst) in [(&cert, "server.crt"), (&key, "server.key")] {
        let dst = data.join(dst);
        std::fs::copy(src, &dst)?;
        std::os::unix::fs::chown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600))?;
    }
    let psql = |sql: &'static str| {
        let server = &server;
        move || server.psql("postgres", sql)
    };
    tokio::task::block_in_place(psql("ALTER SYSTEM SET ssl = on"))?;
    tokio::task::block_in_place(psql("SELECT pg_reload_conf()"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let url = |host: &str, params: &str| {
        format!("postgres://x@{host}:{}/postgres?{params}", server.port())
    };
    let cases = [
        (url("127.0.0.1", "sslmode=disable"), Some(false)),
        (url("127.0.0.1", "sslmode=prefer"), Some(true)),
        (url("127.0.0.1", "sslmode=require"), Some(true)),
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", cert.display()),
            ),
            Some(true),
        ),
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={}", cert.display()),
            ),
            Some(true),
        ),
        // Host name does not match the certificate.
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={}", cert.display()),
            ),
            None,
        ),
        // Certificate not signed by the trusted root.
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
            ),
            None,
        ),
    ];
    for (url, expected) in cases {
        let upstream = UpstreamConfig::from_url(&url)?;
        let proxy = Proxy::start_upstream(upstream, |_| {}, None).await?;
        match expected {
            Some(ssl) => {
                let got = upstream_ssl(&proxy, &server, "postgres")
                    .await
                    .map_err(|e| anyhow::anyhow!("{url}: {e:?}"))?;
                assert_eq!(got, ssl, "{url}");
            }
            None => {
                let err = upstream_ssl(&proxy, &server, "postgres")
                    .await
                    .expect_err(&url);
                let pg_err = err
                    .downcast_ref::<tokio_postgres::Error>()
                    .context("a pg error")?;
                assert_eq!(
                    pg_err.code(),
                    Some(&SqlState::CONNECTION_FAILURE),
                    "{url}: {pg_err}"
                );
            }
        }
        proxy.stop().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
