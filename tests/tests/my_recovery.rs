//! End-to-end: a MySQL/MariaDB binlog position Larder cannot resume from (purged while it was
//! down, or a file of the same name on another server) makes Larder copy the database again,
//! and its caches serve the upstream's current rows (issue #7).

use std::time::Duration;

use larder_testkit::{LarderProcess, MariaDbServer};

#[path = "common/my_kit.rs"]
mod my_kit;
#[path = "common/my_setup.rs"]
mod my_setup;
use my_kit::{assert_ok, cli};
use my_setup::{args, spawn};

/// The binlog Larder stopped at is purged while it is down: it copies the database again
/// (instead of retrying forever) and its caches serve the current rows. A server of its
/// own: purging the shared server's binlog would pull it from under the other tests.
#[test]
fn a_purged_binlog_position_is_copied_again() {
    let maria = MariaDbServer::start().expect("a MariaDB of its own");
    let db = maria.create_database("my_purged").expect("database");
    maria
        .query(
            &db,
            "CREATE TABLE items (id INT PRIMARY KEY, price DECIMAL(8,2));
             INSERT INTO items VALUES (1, 1.00), (2, 2.00);",
        )
        .expect("schema");
    let storage = std::env::temp_dir().join(format!("larder-mypurged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let server_id = my_kit::server_id("purged").to_string();
    let larder = spawn(&maria, &db, &storage, &server_id);
    let run = |larder: &LarderProcess, sql: &str| {
        assert_ok(&cli(
            larder.port(),
            maria.admin_user(),
            maria.admin_password(),
            &db,
            sql,
            &[],
        ))
    };
    run(
        &larder,
        "CREATE CACHE FROM SELECT price FROM items WHERE id = ?",
    );
    larder.kill9();
    drop(larder);
    maria
        .query(
            &db,
            "UPDATE items SET price = 1.50 WHERE id = 1; FLUSH BINARY LOGS;
             UPDATE items SET price = 2.50 WHERE id = 2; FLUSH BINARY LOGS;",
        )
        .expect("writes");
    // MariaDB purges a file only once InnoDB has checkpointed past it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        maria
            .query(
                &db,
                "FLUSH BINARY LOGS; PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 DAY",
            )
            .expect("purge");
        let logs = maria.query(&db, "SHOW BINARY LOGS").expect("logs");
        if logs.lines().filter(|l| l.starts_with("binlog.")).count() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never purged: {logs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = maria.url(&db);
    let storage_arg = storage.display().to_string();
    let larder = LarderProcess::spawn(&args(&url, &storage_arg, &server_id), &[])
        .expect("restarting larder");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(
            &larder,
            "SELECT price FROM items WHERE id = 1; SELECT price FROM items WHERE id = 2; \
             EXPLAIN LAST STATEMENT",
        );
        if out.starts_with("1.50\n2.50\nlarder") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{out}\n{}",
            larder.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = larder.log();
    assert!(
        log.contains("no longer has the binlog from the stored position")
            && log.contains("snapshot complete"),
        "{log}"
    );
}

/// A stored position is checked against the binlog file it was read in (its creation time):
/// the same file name on another server is not taken for it. Larder copies the new server's
/// data instead of resuming in the middle of someone else's binlog.
#[test]
fn another_server_with_the_same_binlog_names_is_copied_again() {
    let a = MariaDbServer::start().expect("a MariaDB of its own");
    let b = MariaDbServer::start().expect("another MariaDB of its own");
    let db = format!("my_other_{}", std::process::id());
    for m in [&a, &b] {
        m.query("", &format!("CREATE DATABASE `{db}`"))
            .expect("database");
        m.query(&db, "CREATE TABLE items (id INT PRIMARY KEY, price INT)")
            .expect("table");
    }
    a.query(&db, "INSERT INTO items VALUES (1, 10), (2, 20)")
        .expect("rows");
    let storage = std::env::temp_dir().join(format!("larder-myother-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let server_id = my_kit::server_id("other").to_string();
    let storage_arg = storage.display().to_string();
    let run = |larder: &LarderProcess, m: &MariaDbServer, sql: &str| {
        assert_ok(&cli(
            larder.port(),
            m.admin_user(),
            m.admin_password(),
            &db,
            sql,
            &[],
        ))
    };
    let served = |larder: &LarderProcess, m: &MariaDbServer, want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = run(
                larder,
                m,
                "SELECT price FROM items WHERE id = 1; EXPLAIN LAST STATEMENT",
            );
            if out.starts_with(&format!("{want}\nlarder")) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{out}\n{}",
                larder.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let url_a = a.url(&db);
    let larder = LarderProcess::spawn(&args(&url_a, &storage_arg, &server_id), &[])
        .expect("larder on the first server");
    run(
        &larder,
        &a,
        "CREATE CACHE FROM SELECT price FROM items WHERE id = ?",
    );
    served(&larder, &a, "10");
    // A new binlog file read from its start, then a transaction in it: the stored position
    // is in binlog.000002 of the first server, with that file's creation time.
    a.query(&db, "FLUSH BINARY LOGS").expect("rotate");
    a.query(&db, "UPDATE items SET price = 11 WHERE id = 1")
        .expect("write");
    served(&larder, &a, "11");
    larder.kill9();
    drop(larder);
    // The other server's binlog.000002 is created at least a second later, and holds as many
    // transactions as the first server's GTID position names.
    std::thread::sleep(Duration::from_millis(1100));
    b.query(&db, "FLUSH BINARY LOGS").expect("rotate");
    for i in 0..20 {
        b.query(
            &db,
            &format!("INSERT INTO items VALUES ({}, {})", i + 1, 100 + i),
        )
        .expect("rows");
    }
    let url_b = b.url(&db);
    let larder = LarderProcess::spawn(&args(&url_b, &storage_arg, &server_id), &[])
        .expect("larder on the other server");
    served(&larder, &b, "100");
    let log = larder.log();
    assert!(
        log.contains("was created at") && log.contains("snapshot complete"),
        "{log}"
    );
}
