//! MySQL mode replicates the upstream database into Larder's storage (issue #7): the
//! snapshot, the binlog applied transaction by transaction, a table copied again after
//! DDL, and a `kill -9` resumed from the stored binlog position without a new snapshot.
//! Seen through `/metrics` (tables by state, the applied position), since no cache answers
//! on MySQL yet.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use larder_testkit::{free_port, LarderProcess, MariaDbServer};

const WAIT: Duration = Duration::from_secs(30);

fn metrics(port: u16) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read /metrics");
    raw.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The upstream's binlog end as Larder orders positions (file sequence, offset).
fn upstream_progress(maria: &MariaDbServer, db: &str) -> f64 {
    let out = maria
        .query(db, "SHOW MASTER STATUS")
        .expect("SHOW MASTER STATUS");
    let line = out.lines().last().expect("a binlog status row");
    let mut cols = line.split('\t');
    let file = cols.next().expect("file");
    let offset: u64 = cols.next().and_then(|o| o.parse().ok()).expect("offset");
    let seq: u64 = file
        .rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("a numbered binlog file");
    ((seq << 32) | offset) as f64
}

fn wait_for(port: u16, what: &str, ok: impl Fn(&HashMap<String, f64>) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(port);
        if ok(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never so; metrics {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn caught_up(maria: &MariaDbServer, db: &str, port: u16, what: &str) {
    let upstream = upstream_progress(maria, db);
    wait_for(port, what, |m| {
        m.get("larder_replication_applied_position")
            .is_some_and(|&p| p >= upstream)
    });
}

fn online(m: &HashMap<String, f64>) -> f64 {
    m.get("larder_tables{state=\"online\"}")
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn snapshot_binlog_ddl_and_kill9_resume() {
    let maria = MariaDbServer::shared();
    let db = maria.create_database("myrepl").expect("database");
    maria
        .query(
            &db,
            "CREATE TABLE a (id INT PRIMARY KEY, v INT);
             INSERT INTO a VALUES (1, 1), (2, 2);
             CREATE TABLE b (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(20));
             CREATE TABLE nokey (v INT);",
        )
        .expect("setup");
    let storage = std::env::temp_dir().join(format!("larder-myrepl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let http = free_port();
    let url = maria.url(&db);
    let storage_arg = storage.display().to_string();
    let metrics_arg = format!("127.0.0.1:{http}");
    let server_id = (0x2000_0000 + std::process::id()).to_string();
    let args = [
        "--upstream-db-url",
        url.as_str(),
        "--storage-dir",
        storage_arg.as_str(),
        "--metrics-address",
        metrics_arg.as_str(),
        "--replication-server-id",
        server_id.as_str(),
    ];
    let larder = LarderProcess::spawn(&args, &[]).expect("starting larder");
    // Two tables copied; the one without a key is listed as not replicated.
    wait_for(http, "tables online after the snapshot", |m| {
        online(m) == 2.0 && m.get("larder_tables{state=\"not_replicated\"}").copied() == Some(1.0)
    });
    // The tables are online a moment before the snapshot's last step logs.
    let deadline = Instant::now() + WAIT;
    while !larder.log().contains("snapshot complete") {
        assert!(Instant::now() < deadline, "{}", larder.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metrics(http).get("larder_snapshot_rows_total").copied(),
        Some(2.0),
        "the two rows of a"
    );

    // Transactions reach storage in order; the applied position follows the binlog.
    maria
        .query(
            &db,
            "START TRANSACTION; INSERT INTO a VALUES (3, 3); UPDATE a SET v = 10 WHERE id = 1;
             INSERT INTO b VALUES (18446744073709551615, 'max'); COMMIT;
             DELETE FROM a WHERE id = 2;",
        )
        .expect("writes");
    caught_up(maria, &db, http, "applied the writes");
    // A rotation with nothing after it: the new file's first events move the position, so
    // replication is caught up with it (and caches keep serving).
    maria.query(&db, "FLUSH BINARY LOGS").expect("rotate");
    caught_up(maria, &db, http, "caught up after a binlog rotation");

    // kill -9, writes while down, then a restart streams on from the stored position.
    larder.kill9();
    drop(larder);
    maria
        .query(
            &db,
            "INSERT INTO a VALUES (4, 4); INSERT INTO b VALUES (1, 'one');",
        )
        .expect("writes while down");
    let larder = LarderProcess::spawn(&args, &[]).expect("restarting larder");
    caught_up(maria, &db, http, "caught up after kill -9");
    let log = larder.log();
    assert!(
        log.contains("resuming replication from the stored binlog position")
            && !log.contains("snapshot complete"),
        "a restart must resume, not copy again:\n{log}"
    );
    wait_for(http, "tables online after the restart", |m| {
        online(m) == 2.0
    });

    // DDL: the table is copied again as of a position and comes back online.
    maria
        .query(
            &db,
            "ALTER TABLE a ADD COLUMN w INT; INSERT INTO a VALUES (5, 5, 5);",
        )
        .expect("ddl");
    caught_up(maria, &db, http, "applied the DDL");
    wait_for(http, "the altered table online again", |m| online(m) == 2.0);
    // Copied again (this process copied nothing before): ids 1, 3, 4 and perhaps 5.
    let copied = metrics(http)
        .get("larder_snapshot_rows_total")
        .copied()
        .unwrap_or(0.0);
    assert!(
        (3.0..=4.0).contains(&copied),
        "{copied} rows copied again:\n{}",
        larder.log()
    );
    let restarts = metrics(http)
        .get("larder_replication_restarts_total")
        .copied()
        .unwrap_or(0.0);
    assert_eq!(restarts, 0.0, "{}", larder.log());
    larder.sigterm();
    let _ = std::fs::remove_dir_all(&storage);
}
