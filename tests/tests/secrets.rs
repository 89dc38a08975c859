//! End-to-end: the upstream password never shows up in Larder's output.
//!
//! Why: Larder holds the credentials of a REPLICATION role; its logs go to log aggregators and
//! its `--help` is pasted into tickets. These tests start the real `larder` binary at the most
//! verbose log level (`LARDER_LOG=trace`), once with the password in the URL and once with
//! `--upstream-db-password-file`, drive traffic through it (reads, writes, a cache creation and
//! a cache hit, a failed login, status statements), stop it, and search everything it wrote
//! for the password. They also check `larder --help` with the URL in the environment and the
//! refusals of ambiguous or unreadable password configuration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use larder_testkit::{larder_binary, psql_url, LarderProcess, PgServer};

const WAIT: Duration = Duration::from_secs(60);

/// A private directory removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let base = std::env::var_os("LARDER_TESTKIT_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!("larder-secrets-{}-{name}", std::process::id()));
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

/// A password no log line could contain by accident.
fn distinctive_password() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("LrdSekr3t{:x}Zq{}", nanos, std::process::id())
}

/// A REPLICATION role (not a superuser) that owns the replicated table, in a fresh database.
struct Upstream {
    pg: &'static PgServer,
    db: String,
    role: String,
    password: String,
}

impl Upstream {
    fn new(prefix: &str) -> Upstream {
        let pg = PgServer::shared();
        let db = pg.create_database(prefix).unwrap();
        let role = format!("{db}_role");
        let password = distinctive_password();
        pg.psql(
            &db,
            &format!(
                "CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{password}';
                 GRANT CREATE ON DATABASE {db} TO {role};
                 CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price int);
                 INSERT INTO items SELECT g, 'item ' || g, g * 10 FROM generate_series(1, 50) g;
                 ALTER TABLE items OWNER TO {role};"
            ),
        )
        .unwrap();
        Upstream {
            pg,
            db,
            role,
            password,
        }
    }

    fn url_with_password(&self) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}",
            self.role,
            self.password,
            self.pg.port(),
            self.db
        )
    }

    fn url_without_password(&self) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/{}",
            self.role,
            self.pg.port(),
            self.db
        )
    }
}

/// Retries `f` until it succeeds or `WAIT` passes.
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

/// Reads, writes, a failed login, a cache creation and a cache hit through `larder`.
fn drive_traffic(up: &Upstream, larder: &LarderProcess) {
    let through = larder.pg_url(&up.role, &up.password, &up.db);
    let wrong = larder.pg_url(&up.role, "not-the-password", &up.db);
    let err = psql_url(&wrong, "SELECT 1").expect_err("a wrong password must be refused");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err:#}"
    );
    assert_eq!(
        psql_url(&through, "SELECT count(*) FROM items")
            .unwrap()
            .trim(),
        "50"
    );
    psql_url(
        &through,
        "UPDATE items SET price = price + 1 WHERE id = 7; INSERT INTO items VALUES (51, 'new', 5)",
    )
    .unwrap();
    eventually("creating a cache", || {
        psql_url(
            &through,
            "CREATE CACHE FROM SELECT name, price FROM items WHERE id = $1",
        )
    });
    let hit = eventually("a cache hit", || {
        let out = psql_url(
            &through,
            "SELECT name, price FROM items WHERE id = 7;
             SELECT name, price FROM items WHERE id = 7;
             SELECT name, price FROM items WHERE id = 7;
             EXPLAIN LAST STATEMENT;",
        )?;
        let lines: Vec<&str> = out.lines().collect();
        anyhow::ensure!(
            lines.last().is_some_and(|l| l.starts_with("cache|")),
            "not from the cache yet: {out}"
        );
        Ok(lines[0].to_string())
    });
    assert_eq!(hit, "item 7|71");
    let status = psql_url(
        &through,
        "SHOW LARDER STATUS; SHOW LARDER TABLES; SHOW CACHES",
    )
    .unwrap();
    assert!(status.contains("items"), "{status}");
}

fn stop(larder: &LarderProcess) {
    larder.sigterm();
    assert!(
        larder.wait_exit(Duration::from_secs(30)).is_some(),
        "larder did not stop on SIGTERM"
    );
}

fn assert_no_password(what: &str, text: &str, password: &str) {
    assert!(
        !text.contains(password),
        "the upstream password appears in {what}:\n{}",
        text.lines()
            .filter(|l| l.contains(password))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const TRACE: [(&str, &str); 2] = [("LARDER_LOG", "trace"), ("RUST_LOG", "trace")];

#[test]
fn password_in_url_never_reaches_logs_at_trace() {
    let up = Upstream::new("secrets_url");
    let storage = ScratchDir::new("url");
    let url = up.url_with_password();
    let larder = LarderProcess::spawn(
        &[
            "--upstream-db-url",
            &url,
            "--storage-dir",
            &storage.path().display().to_string(),
            "--deployment",
            &up.db,
            "--replication-tables",
            "items",
            "--log-format",
            "full",
        ],
        &TRACE,
    )
    .unwrap();
    drive_traffic(&up, &larder);
    stop(&larder);
    let log = larder.log();
    assert!(
        log.contains("TRACE") && log.contains("cache"),
        "the log is not at trace level:\n{}",
        &log[..log.len().min(2000)]
    );
    assert_no_password("the trace log (password in the URL)", &log, &up.password);
}

#[test]
fn password_file_works_and_never_reaches_logs_at_trace() {
    let up = Upstream::new("secrets_file");
    let storage = ScratchDir::new("file");
    let pw_file = storage.path().join("upstream-password");
    std::fs::write(&pw_file, format!("{}\n", up.password)).unwrap();
    let url = up.url_without_password();
    let larder = LarderProcess::spawn(
        &[
            "--storage-dir",
            &storage.path().join("data").display().to_string(),
            "--deployment",
            &up.db,
            "--replication-tables",
            "items",
            "--log-format",
            "json",
        ],
        &[
            TRACE[0],
            TRACE[1],
            ("UPSTREAM_DB_URL", url.as_str()),
            (
                "UPSTREAM_DB_PASSWORD_FILE",
                pw_file.display().to_string().as_str(),
            ),
        ],
    )
    .unwrap();
    drive_traffic(&up, &larder);
    stop(&larder);
    let log = larder.log();
    assert!(log.contains("\"TRACE\""), "the log is not at trace level");
    assert_no_password("the trace log (password file)", &log, &up.password);
}

fn run_larder(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(larder_binary());
    cmd.args(args).env_remove("UPSTREAM_DB_URL");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running larder");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn help_and_configuration_errors_do_not_print_the_password() {
    let password = distinctive_password();
    let url = format!("postgresql://someone:{password}@127.0.0.1:1/db");
    let (ok, help) = run_larder(&["--help"], &[("UPSTREAM_DB_URL", &url)]);
    assert!(ok, "{help}");
    assert!(help.contains("UPSTREAM_DB_URL"), "{help}");
    assert!(help.contains("--upstream-db-password-file"), "{help}");
    assert_no_password("larder --help", &help, &password);

    // A password both in the URL and in a file: refused, naming the fix, not the password.
    let dir = ScratchDir::new("conflict");
    let file = dir.path().join("pw");
    std::fs::write(&file, "other\n").unwrap();
    let file_arg = file.display().to_string();
    let (ok, out) = run_larder(
        &["--upstream-db-password-file", &file_arg, "--proxy-only"],
        &[("UPSTREAM_DB_URL", &url), ("LARDER_LOG", "trace")],
    );
    assert!(!ok, "a password in both places must be refused: {out}");
    assert!(out.contains("given twice"), "{out}");
    assert_no_password("the refusal of two passwords", &out, &password);

    // An unreadable file: a clear error naming the file.
    let missing = dir.path().join("missing").display().to_string();
    let (ok, out) = run_larder(
        &[
            "--upstream-db-url",
            "postgresql://someone@127.0.0.1:1/db",
            "--upstream-db-password-file",
            &missing,
            "--proxy-only",
        ],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot read --upstream-db-password-file") && out.contains(&missing),
        "{out}"
    );
}
