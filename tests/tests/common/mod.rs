//! Helpers shared by the end-to-end suites: a Larder in front of a fresh database, a twin
//! database for direct comparison, and output normalization.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use larder_testkit::{LarderProcess, PgServer};

pub mod client;
pub mod lifecycle;

/// Flags every proxy test passes: these suites test the relay, not the cache.
pub const PROXY_FLAGS: &[&str] = &["--proxy-only"];

/// Starts Larder in front of `db` on `pg` with extra flags.
pub fn spawn_larder(pg: &PgServer, db: &str, extra: &[&str]) -> LarderProcess {
    let url = pg.url(db);
    let mut args: Vec<&str> = vec!["--upstream-db-url", &url];
    args.extend_from_slice(PROXY_FLAGS);
    args.extend_from_slice(extra);
    LarderProcess::spawn(&args, &[]).unwrap_or_else(|e| panic!("starting larder: {e:#}"))
}

/// Two fresh databases on the shared server: one used directly, one behind a Larder.
pub struct Twin {
    pub pg: &'static PgServer,
    pub direct_db: String,
    pub proxy_db: String,
    pub larder: LarderProcess,
}

impl Twin {
    pub fn new(prefix: &str) -> Twin {
        Twin::with_flags(prefix, &[])
    }

    pub fn with_flags(prefix: &str, extra: &[&str]) -> Twin {
        let pg = PgServer::shared();
        let direct_db = pg.create_database(&format!("{prefix}_d")).unwrap();
        let proxy_db = pg.create_database(&format!("{prefix}_p")).unwrap();
        let larder = spawn_larder(pg, &proxy_db, extra);
        Twin {
            pg,
            direct_db,
            proxy_db,
            larder,
        }
    }

    pub fn direct_url(&self) -> String {
        self.pg.url(&self.direct_db)
    }

    /// The client URL through Larder (same credentials as the upstream).
    pub fn proxy_url(&self) -> String {
        self.larder.pg_url(
            self.pg.admin_user(),
            self.pg.admin_password(),
            &self.proxy_db,
        )
    }

    /// Replaces what legitimately differs between the direct and the proxied run.
    pub fn normalize(&self, text: &str) -> String {
        let t = text
            .replace(&self.proxy_db, "<DB>")
            .replace(&self.direct_db, "<DB>")
            .replace(&self.larder.port().to_string(), "<PORT>")
            .replace(&self.pg.port().to_string(), "<PORT>");
        normalize_pids(&t)
    }
}

/// Replaces the digits after "PID " (psql's async notification line) with `<PID>`.
pub fn normalize_pids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("PID ") {
        out.push_str(&rest[..at + 4]);
        rest = &rest[at + 4..];
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            out.push_str("<PID>");
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Asserts equality with a readable first-difference report.
pub fn assert_same(what: &str, direct: &str, proxied: &str) {
    if direct == proxied {
        return;
    }
    let d: Vec<&str> = direct.lines().collect();
    let p: Vec<&str> = proxied.lines().collect();
    let first = d
        .iter()
        .zip(p.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(d.len().min(p.len()));
    let from = first.saturating_sub(5);
    panic!(
        "{what}: output through Larder differs from direct output at line {}\n\
         --- direct (lines {}..) ---\n{}\n--- through larder ---\n{}\n",
        first + 1,
        from + 1,
        d[from..(first + 10).min(d.len())].join("\n"),
        p[from..(first + 10).min(p.len())].join("\n"),
    );
}

/// Directory holding the client scripts (tests/clients).
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

pub fn python() -> PathBuf {
    std::env::var_os("LARDER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| larder_testkit::require_binary("python3"))
}

/// Runs a client script `tests/clients/<script>` with python, URL as the argument.
pub fn run_python(script: &str, url: &str) -> Output {
    let out = Command::new(python())
        .arg(clients_dir().join(script))
        .arg(url)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONHASHSEED", "0")
        .output()
        .expect("running python");
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A private scratch directory for one test run, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "larder-testkit-{}-scratch-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A caching-mode Larder (its own deployment name and storage dir) in front of one fresh
/// database on the shared server. Dropping it kills Larder and removes its replication slot.
pub struct CachingLarder {
    pub pg: &'static PgServer,
    pub db: String,
    pub larder: LarderProcess,
    _storage: Scratch,
}

impl CachingLarder {
    /// Creates the database, runs `setup_sql` in it directly, then starts Larder with `extra`
    /// flags.
    pub fn start(prefix: &str, setup_sql: &str, extra: &[&str]) -> CachingLarder {
        let pg = PgServer::shared();
        let db = pg.create_database(prefix).unwrap();
        if !setup_sql.is_empty() {
            pg.psql(&db, setup_sql).unwrap();
        }
        let storage = Scratch::new(&db);
        let url = pg.url(&db);
        let dir = storage.0.display().to_string();
        let mut args = vec![
            "--upstream-db-url",
            &url,
            "--deployment",
            &db,
            "--storage-dir",
            &dir,
        ];
        args.extend_from_slice(extra);
        let larder = LarderProcess::spawn(&args, &[]).unwrap();
        CachingLarder {
            pg,
            db,
            larder,
            _storage: storage,
        }
    }

    /// Through Larder as the harness superuser.
    pub fn admin_url(&self) -> String {
        self.larder
            .pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }
}

impl Drop for CachingLarder {
    fn drop(&mut self) {
        self.larder.kill9();
        let slot = format!("larder_{}", self.db);
        let _ = self.pg.psql(
            "postgres",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND NOT active"
            ),
        );
    }
}
