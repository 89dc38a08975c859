//! End-to-end: real Postgres clients through Larder, compared with the same client talking to
//! Postgres directly. Each test makes two identical fresh databases on the shared server; one
//! is used directly and one through a Larder in front of it, and the outputs must match after
//! normalizing what legitimately differs (database names, ports, backend pids).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_same, run_python, text, Scratch, Twin};
use larder_testkit::require_binary;

/// Runs tests/clients/psql_suite.sql with `psql -a` in a scratch dir (so `\copy` file names are
/// relative and identical) and returns (stdout, stderr, out.csv).
fn run_psql_suite(url: &str) -> (String, String, String) {
    let dir = Scratch::new("psql");
    std::fs::copy(
        common::clients_dir().join("psql_suite.sql"),
        dir.0.join("psql_suite.sql"),
    )
    .unwrap();
    std::fs::write(
        dir.0.join("in.csv"),
        "id,name,price\n300,from file,3.00\n301,\"quoted, name\",\n",
    )
    .unwrap();
    std::fs::write(
        dir.0.join("in_bad.csv"),
        "id,name,price\n400,ok,1\n401,bad,-1\n",
    )
    .unwrap();
    let out = Command::new(require_binary("psql"))
        .args(["-X", "-a", "-f", "psql_suite.sql", "-d", url])
        .current_dir(&dir.0)
        .env("LC_ALL", "C")
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGOPTIONS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.0.join("out.csv")).unwrap_or_default();
    (text(&out.stdout), text(&out.stderr), csv)
}

#[test]
fn psql_session_is_identical_through_larder() {
    let twin = Twin::new("psql");
    let (d_out, d_err, d_csv) = run_psql_suite(&twin.direct_url());
    let (p_out, p_err, p_csv) = run_psql_suite(&twin.proxy_url());
    // The suite must really have exercised what it claims to (guards against a silently short run).
    for needle in [
        "Asynchronous notification \"larder_chan\" with payload \"payload one\"",
        "1,item 1,1.25,",
        "COPY 2",
        " done\n",
    ] {
        assert!(
            d_out.contains(needle),
            "direct psql output lacks {needle:?}"
        );
    }
    for needle in [
        "ERROR:  22012: division by zero",
        "HINT:  Perhaps you meant to reference the column \"items.name\".",
        "LINE 1: SELECT nosuchcol FROM items;",
        "NOTICE:  00000: hello 42 from DO",
        "ERROR:  57014: canceling statement due to statement timeout",
        "CONTEXT:  COPY items, line 3: \"401,bad,-1\"",
    ] {
        assert!(
            d_err.contains(needle),
            "direct psql stderr lacks {needle:?}"
        );
    }
    assert_same(
        "psql stdout",
        &twin.normalize(&d_out),
        &twin.normalize(&p_out),
    );
    assert_same(
        "psql stderr",
        &twin.normalize(&d_err),
        &twin.normalize(&p_err),
    );
    assert!(
        d_csv.starts_with("id,name,price\n1,item 1,1.25\n"),
        "{d_csv}"
    );
    assert_same("\\copy out.csv", &d_csv, &p_csv);
    assert!(twin.larder.is_running());
}

fn pgbench(url: &str, args: &[&str]) -> String {
    let out = Command::new(require_binary("pgbench"))
        .args(args)
        .arg(url)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "pgbench {args:?} failed ({}):\n{all}",
        out.status
    );
    all
}

#[test]
fn pgbench_runs_through_larder_in_all_protocol_modes() {
    let twin = Twin::new("pgbench");
    let url = twin.proxy_url();
    let init = pgbench(&url, &["-i", "-s", "1", "-q"]);
    assert!(init.contains("done in"), "{init}");
    let count = twin
        .pg
        .psql(&twin.proxy_db, "SELECT count(*) FROM pgbench_accounts")
        .unwrap();
    assert_eq!(count, "100000\n");
    for mode in ["simple", "extended", "prepared"] {
        let started = Instant::now();
        let out = pgbench(&url, &["-n", "-t", "200", "-c", "4", "-j", "2", "-M", mode]);
        assert!(
            out.contains("number of transactions actually processed: 800/800"),
            "mode {mode}:\n{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 "),
            "mode {mode}:\n{out}"
        );
        eprintln!("pgbench -M {mode}: {:?}", started.elapsed());
    }
    let history = twin
        .pg
        .psql(&twin.proxy_db, "SELECT count(*) FROM pgbench_history")
        .unwrap();
    assert_eq!(history, "2400\n");
}

fn python_suite(script: &str) {
    let twin = Twin::new(script.trim_end_matches(".py"));
    let direct = run_python(script, &twin.direct_url());
    assert!(
        direct.status.success(),
        "{script} failed directly: {}",
        text(&direct.stderr)
    );
    let proxied = run_python(script, &twin.proxy_url());
    assert!(
        proxied.status.success(),
        "{script} failed through larder: {}\n{}",
        text(&proxied.stderr),
        text(&proxied.stdout)
    );
    let d = twin.normalize(&text(&direct.stdout));
    let p = twin.normalize(&text(&proxied.stdout));
    assert!(d.len() > 1000, "suspiciously short output: {d}");
    assert_same(script, &d, &p);
}

#[test]
fn psycopg3_suite_is_identical_through_larder() {
    python_suite("psycopg_suite.py");
}

#[test]
fn asyncpg_suite_is_identical_through_larder() {
    python_suite("asyncpg_suite.py");
}

mod tokio_pg {
    use bytes::Bytes;
    use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
    use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
    use tokio_postgres::types::Type;
    use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

    async fn connect(url: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    fn db_err(e: &tokio_postgres::Error) -> String {
        match e.as_db_error() {
            Some(d) => format!(
                "{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}",
                d.code().code(),
                d.message(),
                d.detail(),
                d.hint(),
                d.position(),
                d.constraint(),
                d.table()
            ),
            None => format!("non-db error: {e}"),
        }
    }

    /// One session exercising the extended protocol with binary formats; returns a transcript.
    pub async fn session(url: &str) -> Vec<String> {
        let client = connect(url).await;
        let mut log = Vec::new();
        client
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, name text, data bytea, f float8, b bool, \
                 n bigint, ts timestamp); SET TimeZone = 'UTC';",
            )
            .await
            .unwrap();

        // prepare + binary parameters
        let ins = client
            .prepare("INSERT INTO t (id, name, data, f, b, n) VALUES ($1, $2, $3, $4, $5, $6)")
            .await
            .unwrap();
        log.push(format!("params {:?}", ins.params()));
        for i in 0..50i32 {
            let n = client
                .execute(
                    &ins,
                    &[
                        &i,
                        &format!("name {i}"),
                        &vec![i as u8, 0, 255],
                        &(i as f64 / 3.0),
                        &(i % 2 == 0),
                        &((i as i64) << 40),
                    ],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
        let rows = client
            .query(
                "SELECT id, name, data, f, b, n FROM t WHERE id < $1 ORDER BY id",
                &[&5i32],
            )
            .await
            .unwrap();
        for r in &rows {
            let (id, name, data, f, b, n): (i32, String, Vec<u8>, f64, bool, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            log.push(format!("row {id} {name} {data:?} {f} {b} {n}"));
        }
        let cols: Vec<String> = rows[0]
            .columns()
            .iter()
            .map(|c| format!("{}:{}", c.name(), c.type_()))
            .collect();
        log.push(format!("columns {cols:?}"));
        let typed = client
            .prepare_typed("SELECT $1::text || '!', $2 + 1", &[Type::TEXT, Type::INT8])
            .await
            .unwrap();
        let r = client.query_one(&typed, &[&"hi", &41i64]).await.unwrap();
        log.push(format!(
            "typed {} {}",
            r.get::<_, String>(0),
            r.get::<_, i64>(1)
        ));
        let none = client
            .query_opt("SELECT id FROM t WHERE id = $1", &[&1000i32])
            .await
            .unwrap();
        log.push(format!("opt {none:?}"));
        let null: Option<String> = client
            .query_one("SELECT NULL::text", &[])
            .await
            .unwrap()
            .get(0);
        log.push(format!("null {null:?}"));

        // simple query protocol: several statements, text rows
        for m in client
            .simple_query("SELECT 1 AS a, 'x' AS b; SELECT count(*) FROM t; UPDATE t SET b = NOT b WHERE id < 3")
            .await
            .unwrap()
        {
            match m {
                SimpleQueryMessage::Row(r) => {
                    log.push(format!("simple row {:?} {:?}", r.get(0), r.try_get(1).ok().flatten()))
                }
                SimpleQueryMessage::CommandComplete(n) => log.push(format!("simple complete {n}")),
                other => log.push(format!("simple other {}", matches!(other, SimpleQueryMessage::RowDescription(_)))),
            }
        }

        // errors keep the session usable
        for q in [
            "SELECT 1/0",
            "SELECT nme FROM t",
            "INSERT INTO t (id) VALUES (1)",
        ] {
            let e = client.query(q, &[]).await.unwrap_err();
            log.push(format!("error {q}: {}", db_err(&e)));
        }
        let e = client.prepare("SELEC 1").await.unwrap_err();
        log.push(format!("prepare error: {}", db_err(&e)));
        let e = client
            .query("SELECT $1::int", &[&"not an int"])
            .await
            .unwrap_err();
        log.push(format!("param type error: {e}"));

        // transactions and savepoints
        let mut client = client;
        {
            let mut tx = client.transaction().await.unwrap();
            tx.execute("INSERT INTO t (id, name) VALUES (100, 'tx')", &[])
                .await
                .unwrap();
            {
                let sp = tx.savepoint("sp1").await.unwrap();
                sp.execute("INSERT INTO t (id, name) VALUES (101, 'rolled back')", &[])
                    .await
                    .unwrap();
                let e = sp
                    .execute("INSERT INTO t (id, name) VALUES (100, 'dup')", &[])
                    .await
                    .unwrap_err();
                log.push(format!("savepoint error: {}", db_err(&e)));
                sp.rollback().await.unwrap();
            }
            // Portal read in chunks: Execute with a row limit, PortalSuspended.
            let stmt = tx
                .prepare("SELECT g FROM generate_series(1, 25) g")
                .await
                .unwrap();
            let portal = tx.bind(&stmt, &[]).await.unwrap();
            loop {
                let chunk = tx.query_portal(&portal, 10).await.unwrap();
                log.push(format!(
                    "portal chunk {:?}",
                    chunk.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
                ));
                if chunk.len() < 10 {
                    break;
                }
            }
            tx.commit().await.unwrap();
        }
        {
            let tx = client.transaction().await.unwrap();
            tx.execute("DELETE FROM t", &[]).await.unwrap();
            tx.rollback().await.unwrap();
        }
        let ids: Vec<i32> = client
            .query("SELECT id FROM t WHERE id >= 100 ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        log.push(format!("after tx {ids:?}"));

        // COPY FROM STDIN (text), in several chunks
        let sink = client
            .copy_in("COPY t (id, name) FROM STDIN")
            .await
            .unwrap();
        pin_mut!(sink);
        for chunk in 0..4 {
            let mut data = String::new();
            for i in 0..25 {
                let id = 1000 + chunk * 25 + i;
                data.push_str(&format!("{id}\tcopied {id}\n"));
            }
            sink.send(Bytes::from(data)).await.unwrap();
        }
        let n = sink.finish().await.unwrap();
        log.push(format!("copy_in {n}"));

        // binary COPY in and out
        let sink = client
            .copy_in("COPY t (id, name, f) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT, Type::FLOAT8]);
        pin_mut!(writer);
        for i in 2000..2010i32 {
            writer
                .as_mut()
                .write(&[&i, &format!("bin {i}"), &(i as f64 * 0.5)])
                .await
                .unwrap();
        }
        log.push(format!("binary copy_in {}", writer.finish().await.unwrap()));
        let stream = client
            .copy_out("COPY (SELECT id, name, f FROM t WHERE id >= 2000 ORDER BY id) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        let rows: Vec<_> =
            BinaryCopyOutStream::new(stream, &[Type::INT4, Type::TEXT, Type::FLOAT8])
                .try_collect()
                .await
                .unwrap();
        for r in rows.iter().take(3) {
            log.push(format!(
                "binary copy_out {} {} {}",
                r.get::<i32>(0),
                r.get::<String>(1),
                r.get::<f64>(2)
            ));
        }

        // COPY TO STDOUT (text)
        let stream = client
            .copy_out("COPY (SELECT id, name FROM t WHERE id >= 1000 AND id < 2000 ORDER BY id) TO STDOUT")
            .await
            .unwrap();
        pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        let out = String::from_utf8(out).unwrap();
        log.push(format!(
            "copy_out {} lines, first {:?}, last {:?}",
            out.lines().count(),
            out.lines().next(),
            out.lines().last()
        ));
        let e = client
            .copy_in::<_, Bytes>("COPY t (id, name) FROM STDIN")
            .await
            .unwrap();
        pin_mut!(e);
        e.send(Bytes::from_static(b"1\tdup\n")).await.unwrap();
        let err = e.finish().await.unwrap_err();
        log.push(format!("copy_in error: {}", db_err(&err)));

        // pipelining: several queries in flight on one connection
        let futs: Vec<_> = (0..20i32)
            .map(|i| {
                let c = &client;
                async move {
                    c.query_one("SELECT $1::int * 2, pg_sleep(0)::text", &[&i])
                        .await
                        .unwrap()
                        .get::<_, i32>(0)
                }
            })
            .collect();
        let results = futures_util::future::join_all(futs).await;
        log.push(format!("pipelined {results:?}"));

        // a large result set
        let big = client
            .query(
                "SELECT g, repeat('z', 300) FROM generate_series(1, 4000) g",
                &[],
            )
            .await
            .unwrap();
        log.push(format!("big {} {}", big.len(), big[3999].get::<_, i32>(0)));
        log.push(format!(
            "final count {}",
            client
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        ));
        log
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_session_is_identical_through_larder() {
    let twin = tokio::task::spawn_blocking(|| Twin::new("tokiopg"))
        .await
        .unwrap();
    let direct = tokio::time::timeout(
        Duration::from_secs(120),
        tokio_pg::session(&twin.direct_url()),
    )
    .await
    .expect("direct session timed out");
    let proxied = tokio::time::timeout(
        Duration::from_secs(120),
        tokio_pg::session(&twin.proxy_url()),
    )
    .await
    .expect("proxied session timed out");
    assert!(direct.len() > 30, "{direct:#?}");
    assert_same(
        "tokio-postgres transcript",
        &twin.normalize(&direct.join("\n")),
        &twin.normalize(&proxied.join("\n")),
    );
    tokio::task::spawn_blocking(move || drop(twin))
        .await
        .unwrap();
}
