//! End-to-end: Larder's storage belongs to one upstream.
//!
//! Why: the storage directory holds copies of an upstream's rows and cache definitions. When
//! the server at the configured address is replaced (re-created, restored elsewhere, another
//! cluster on the same port), serving those rows would answer with another server's data. The
//! storage records the upstream's system identifier and database name; Larder refuses to start
//! against another one (naming both and the way out) unless `--reset-storage-on-upstream-change`
//! tells it to start afresh. Here a second cluster (its own initdb) takes over the first one's
//! port, with the same database and table names but different rows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use larder_testkit::{psql_url, LarderProcess, PgServer};

const WAIT: Duration = Duration::from_secs(60);
const DB: &str = "shop";
const DEPLOYMENT: &str = "ident";

struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let base = std::env::var_os("LARDER_TESTKIT_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!("larder-identity-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a scratch dir");
        ScratchDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> anyhow::Result<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A database `shop` with `items(1, <label>)` and the cluster's system identifier.
fn prepare(pg: &PgServer, label: &str) -> String {
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"))
        .unwrap();
    pg.psql(
        DB,
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items VALUES (1, '{label}'), (2, '{label} two');"
        ),
    )
    .unwrap();
    pg.psql(DB, "SELECT system_identifier FROM pg_control_system()")
        .unwrap()
        .trim()
        .to_string()
}

fn start_larder(pg: &PgServer, storage: &Path, extra: &[&str]) -> anyhow::Result<LarderProcess> {
    let url = pg.url(DB);
    let storage = storage.display().to_string();
    let mut args = vec![
        "--upstream-db-url",
        &url,
        "--storage-dir",
        &storage,
        "--deployment",
        DEPLOYMENT,
    ];
    args.extend_from_slice(extra);
    LarderProcess::spawn(&args, &[])
}

fn client_url(pg: &PgServer, larder: &LarderProcess) -> String {
    larder.pg_url(pg.admin_user(), pg.admin_password(), DB)
}

/// Item 1's name as served by a cache hit (retried until the cache answers).
fn cached_name(url: &str) -> String {
    eventually("a cache hit", || {
        let out = psql_url(
            url,
            "SELECT name FROM items WHERE id = 1;
             SELECT name FROM items WHERE id = 1;
             EXPLAIN LAST STATEMENT;",
        )?;
        let lines: Vec<&str> = out.lines().collect();
        anyhow::ensure!(
            lines.last().is_some_and(|l| l.starts_with("cache|")),
            "not from the cache: {out}"
        );
        Ok(lines[0].to_string())
    })
}

fn stop(larder: &LarderProcess) {
    larder.sigterm();
    assert!(
        larder.wait_exit(Duration::from_secs(30)).is_some(),
        "larder did not stop on SIGTERM"
    );
}

#[test]
fn storage_of_another_upstream_is_refused_or_reset_on_request() {
    let storage = ScratchDir::new("storage");
    let a = PgServer::start().unwrap();
    let port = a.port();
    let sysid_a = prepare(&a, "from A");

    // 1. Larder copies A, caches a query and records A's identity.
    let larder = start_larder(&a, storage.path(), &[]).unwrap();
    let through = client_url(&a, &larder);
    eventually("creating the cache", || {
        psql_url(
            &through,
            "CREATE CACHE FROM SELECT name FROM items WHERE id = $1",
        )
    });
    assert_eq!(cached_name(&through), "from A");
    stop(&larder);
    drop(larder);

    // 2. A goes away; a different cluster B appears at the same address.
    a.stop().unwrap();
    let b = PgServer::start_on_port(port).unwrap();
    let sysid_b = prepare(&b, "from B");
    assert_ne!(
        sysid_a, sysid_b,
        "initdb gives every cluster its own identifier"
    );

    // 3. Without the flag: Larder refuses to start, naming both identities and the way out,
    //    and serves nothing stored in the meantime.
    let outcome = start_larder(&b, storage.path(), &[]);
    let log = match outcome {
        Err(e) => format!("{e:#}"),
        Ok(larder) => {
            let through = client_url(&b, &larder);
            // Whatever answers while it is still up must be B's rows, never A's.
            if let Ok(out) = psql_url(
                &through,
                "SELECT name FROM items WHERE id = 1; SHOW CACHES;",
            ) {
                assert!(!out.contains("from A"), "served A's data: {out}");
            }
            let status = larder.wait_exit(WAIT).expect("larder must exit");
            assert!(!status.success(), "larder must fail: {}", larder.log());
            larder.log()
        }
    };
    assert!(log.contains(&sysid_a), "{log}");
    assert!(log.contains(&sysid_b), "{log}");
    assert!(log.contains("--reset-storage-on-upstream-change"), "{log}");
    assert!(!log.contains("from A"), "{log}");

    // 4. With the flag: the storage is discarded (A's cache with it) and B is copied.
    let larder = start_larder(&b, storage.path(), &["--reset-storage-on-upstream-change"]).unwrap();
    let through = client_url(&b, &larder);
    eventually("B's table online", || {
        let out = psql_url(&through, "SHOW LARDER TABLES")?;
        anyhow::ensure!(out.contains("items"), "{out}");
        Ok(())
    });
    let caches = psql_url(&through, "SHOW CACHES").unwrap();
    assert_eq!(caches.trim(), "", "A's cache definitions must be gone");
    eventually("creating the cache on B", || {
        psql_url(
            &through,
            "CREATE CACHE FROM SELECT name FROM items WHERE id = $1",
        )
    });
    assert_eq!(cached_name(&through), "from B");
    stop(&larder);
    assert!(
        larder.log().contains("discarding"),
        "the reset must be logged: {}",
        larder.log()
    );
    drop(larder);

    // 5. The storage now belongs to B: a plain restart resumes, with the cache restored.
    let larder = start_larder(&b, storage.path(), &[]).unwrap();
    let through = client_url(&b, &larder);
    assert_eq!(cached_name(&through), "from B");
    stop(&larder);
}
