//! larder-testkit: throwaway *real* database servers and a handle on the `larder` binary, for tests.
//!
//! Why this exists: Larder's behaviour only means something against real Postgres and MariaDB
//! servers, so every end-to-end test starts (or shares) a real server in a private temp directory.
//! The kit guarantees that nothing outlives the test process:
//!
//! * every server and every `larder` process is spawned from one long-lived "spawner" thread with
//!   `PR_SET_PDEATHSIG = SIGKILL` set in the child *after* the uid switch (the kernel clears the
//!   death signal when credentials change, so the order matters), so a SIGKILLed test process
//!   takes its servers with it;
//! * shared servers (living in statics that are never dropped) are torn down by an `atexit`
//!   handler, owned servers by `Drop`;
//! * temp directories left behind by a killed test process are swept by the next test process.
//!
//! Missing binaries make tests panic with an install hint; nothing is ever skipped silently.
//!
//! Typical use in an integration test:
//!
//! ```no_run
//! use larder_testkit::{LarderProcess, PgServer};
//! let pg = PgServer::shared();                       // one server per test process
//! let db = pg.create_database("mytest").unwrap();     // a fresh database per test
//! pg.psql(&db, "CREATE TABLE t (id int PRIMARY KEY)").unwrap();
//! let larder = LarderProcess::spawn(&["--upstream-db-url", &pg.url(&db)], &[]).unwrap();
//! let client_url = larder.pg_url(pg.admin_user(), pg.admin_password(), &db);
//! # let _ = client_url;
//! ```
//!
//! Environment knobs: `PG_BIN_DIR` (Postgres server binaries), `LARDER_BIN` (use a prebuilt
//! `larder` instead of building it), `LARDER_TESTKIT_TMP` (where temp dirs go; default the
//! system temp dir).

mod larder;
mod mariadb;
mod pg;
mod supervise;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

pub use larder::LarderProcess;
pub use mariadb::{MariaDbServer, CONNECT_TIMEOUT_ARG as MARIADB_CONNECT_TIMEOUT_ARG};
pub use pg::{pg_bin_dir, PgServer};

/// Runs `sql` with `psql -X -At -v ON_ERROR_STOP=1` against any connection URL (a Larder, a
/// server as another role, or with TLS parameters) and returns stdout; the error carries stderr.
pub fn psql_url(url: &str, sql: &str) -> anyhow::Result<String> {
    pg::run_psql(url, sql)
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and has not been handed out before
/// by this process (so parallel tests in one process never race each other for a port).
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut set = handed.lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(port) {
            return port;
        }
    }
    panic!("could not find a free TCP port after 1000 attempts");
}

/// Finds `name` on PATH (or in the Postgres server bin dir) and returns its path. Panics with the
/// Debian package to install when it is missing: tests never skip silently.
pub fn require_binary(name: &str) -> PathBuf {
    if let Some(p) = find_binary(name) {
        return p;
    }
    panic!(
        "required binary `{name}` not found on PATH{}; install it: `apt-get install {}` \
         (or run scripts/test, which installs everything)",
        if pg::is_pg_server_binary(name) {
            " nor in /usr/lib/postgresql/*/bin"
        } else {
            ""
        },
        debian_package_for(name)
    );
}

pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    if pg::is_pg_server_binary(name) {
        if let Some(dir) = pg::find_pg_bin_dir() {
            let p = dir.join(name);
            if is_executable(&p) {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(
        ["/usr/sbin", "/usr/local/sbin", "/sbin"]
            .iter()
            .map(PathBuf::from),
    ) {
        let p = dir.join(name);
        if is_executable(&p) {
            return Some(p);
        }
    }
    None
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn debian_package_for(name: &str) -> &'static str {
    match name {
        "psql" | "pg_dump" | "pg_isready" | "pg_restore" | "pg_recvlogical" => "postgresql-client",
        "pgbench" => "postgresql-contrib (or postgresql-15)",
        n if pg::is_pg_server_binary(n) => "postgresql-15",
        "mariadbd" | "mariadb-install-db" | "mysqld" => "mariadb-server",
        "mariadb" | "mariadb-admin" | "mysql" | "mysqladmin" => "mariadb-client",
        "python3" => "python3",
        "sysbench" => "sysbench",
        _ => "the package that provides it",
    }
}

/// Builds the `larder` binary once per test process (`cargo build -q -p larder-server --bin
/// larder`) and returns `<target>/debug/larder`.
///
/// The target dir is `CARGO_TARGET_DIR` when set, else `<workspace>/target`, where the workspace
/// root is this crate's parent directory. Set `LARDER_BIN` to use a prebuilt binary instead.
pub fn larder_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_larder().unwrap_or_else(|e| panic!("{e:#}")))
        .clone()
}

fn build_larder() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LARDER_BIN") {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            is_executable(&p),
            "LARDER_BIN={} is not executable",
            p.display()
        );
        return Ok(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate dir has a parent")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "-q", "-p", "larder-server", "--bin", "larder"])
        .current_dir(&workspace)
        .output()
        .map_err(|e| anyhow::anyhow!("running {cargo:?} build: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "cargo build -p larder-server --bin larder failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        }
        None => workspace.join("target"),
    };
    let bin = target.join("debug").join("larder");
    anyhow::ensure!(
        is_executable(&bin),
        "built larder but {} is missing",
        bin.display()
    );
    Ok(bin)
}

/// Makes a unique, SQL-identifier-safe database name from `prefix`.
pub(crate) fn unique_db_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
        clean.insert(0, 'd');
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{clean}_{}_{n}", std::process::id())
}

/// A password that differs per server and per run (no `rand` dependency needed).
pub(crate) fn random_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("pw{:016x}", h.finish())
}
