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
