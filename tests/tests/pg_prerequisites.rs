//! End-to-end: when the upstream cannot be replicated from (a role without REPLICATION,
//! `wal_level` not logical), Larder stops with a message that says what to change, instead of
//! retrying forever or half-working.

use std::time::Duration;

use larder_testkit::{LarderProcess, PgServer};

/// Runs Larder against `url` and returns (exit success, everything it logged).
fn run_until_exit(url: &str, deployment: &str) -> (bool, String) {
    let storage =
        std::env::temp_dir().join(format!("larder-prereq-{}-{deployment}", std::process::id()));
    let storage_arg = storage.display().to_string();
    let args = [
        "--upstream-db-url",
        url,
        "--deployment",
        deployment,
        "--storage-dir",
        &storage_arg,
    ];
    let result = match LarderProcess::spawn(&args, &[]) {
        // It may already have stopped before it listened; the error carries its log.
        Err(e) => (false, format!("{e:#}")),
        Ok(larder) => {
            let status = larder
                .wait_exit(Duration::from_secs(60))
                .unwrap_or_else(|| panic!("larder kept running; log:\n{}", larder.log()));
            (status.success(), larder.log())
        }
    };
    let _ = std::fs::remove_dir_all(&storage);
    result
}

#[test]
fn role_without_replication_stops_larder_and_names_the_fix() {
    let pg = PgServer::shared();
    let db = pg.create_database("prereq_role").unwrap();
    let role = format!("larder_norepl_{}", std::process::id());
    pg.psql(
        &db,
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'pw' NOSUPERUSER NOREPLICATION; GRANT ALL ON DATABASE {db} TO {role};"),
    )
    .unwrap();
    let url = format!("postgresql://{role}:pw@127.0.0.1:{}/{db}", pg.port());
    let (success, log) = run_until_exit(&url, "prereq_role");
    assert!(!success, "larder must exit with an error; log:\n{log}");
    assert!(
        log.contains("REPLICATION"),
        "the message must name the missing privilege; log:\n{log}"
    );
}

#[test]
fn wal_level_not_logical_stops_larder_and_names_the_setting() {
    let pg = PgServer::start().unwrap();
    pg.psql("postgres", "ALTER SYSTEM SET wal_level = replica")
        .unwrap();
    pg.stop().unwrap();
    pg.start_again().unwrap();
    assert_eq!(
        pg.psql("postgres", "SHOW wal_level").unwrap().trim(),
        "replica"
    );
    let (success, log) = run_until_exit(&pg.url("postgres"), "prereq_wal");
    assert!(!success, "larder must exit with an error; log:\n{log}");
    assert!(
        log.contains("wal_level"),
        "the message must name wal_level; log:\n{log}"
    );
}

/// `--cleanup` removes what a deployment created: its slot, its publication, the DDL event
/// triggers (no other Larder deployment uses the database) and its storage.
#[test]
fn cleanup_removes_slot_publication_triggers_and_storage() {
    let pg = PgServer::shared();
    let db = pg.create_database("cleanup").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    let storage = std::env::temp_dir().join(format!("larder-cleanup-{}", std::process::id()));
    let storage_arg = storage.display().to_string();
    let url = pg.url(&db);
    let args = [
        "--upstream-db-url",
        url.as_str(),
        "--deployment",
        "cleanme",
        "--storage-dir",
        &storage_arg,
    ];
    let larder = LarderProcess::spawn(&args, &[]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let count = |sql: &str| pg.psql(&db, sql).unwrap().trim().to_string();
    let slot = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'larder_cleanme'";
    let publication = "SELECT count(*) FROM pg_publication WHERE pubname = 'larder_cleanme'";
    let triggers = "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'larder_ddl%'";
    while count(slot) != "1" || count(triggers) != "2" {
        assert!(
            std::time::Instant::now() < deadline,
            "larder did not set up; log:\n{}",
            larder.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(publication), "1");
    larder.sigterm();
    let status = larder
        .wait_exit(Duration::from_secs(30))
        .expect("larder stops on SIGTERM");
    assert!(status.success());
    assert!(storage.exists(), "storage was created");

    let mut cleanup_args = args.to_vec();
    cleanup_args.push("--cleanup");
    let (success, log) = run_cleanup(&cleanup_args);
    assert!(success, "cleanup must succeed; log:\n{log}");
    assert_eq!(count(slot), "0", "slot left behind; log:\n{log}");
    assert_eq!(
        count(publication),
        "0",
        "publication left behind; log:\n{log}"
    );
    assert_eq!(
        count(triggers),
        "0",
        "event triggers left behind; log:\n{log}"
    );
    assert!(
        !storage.join("larder_cleanme.db").exists(),
        "storage left behind; log:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&storage);
}

/// Runs `larder` to completion (it exits by itself) and returns (success, output).
fn run_cleanup(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(larder_testkit::larder_binary())
        .args(args)
        .output()
        .expect("running larder --cleanup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
