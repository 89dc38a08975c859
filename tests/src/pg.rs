//! Throwaway Postgres servers: `initdb` into a private temp dir, then `postgres` listening on
//! 127.0.0.1 and a free port, configured for logical replication and for speed (no fsync).
//!
//! When the tests run as root, initdb/postgres run as the `postgres` OS user (they refuse root).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::supervise::{self, ManagedProc, Registration, TempDir};

const ADMIN_USER: &str = "larder_admin";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const PORT_ATTEMPTS_MAX: usize = 5;

/// Names of binaries that live in the Postgres server bin dir rather than on PATH.
pub(crate) fn is_pg_server_binary(name: &str) -> bool {
    matches!(
        name,
        "initdb" | "pg_ctl" | "postgres" | "postmaster" | "pg_controldata" | "pg_resetwal"
    )
}

/// Finds the Postgres server bin dir: `$PG_BIN_DIR`, else the newest `/usr/lib/postgresql/*/bin`
/// containing `initdb`, else the dir of an `initdb` on PATH.
pub(crate) fn find_pg_bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PG_BIN_DIR") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).find(|d| d.join("initdb").exists())
}

/// The Postgres server bin dir; panics with an install hint when there is none.
pub fn pg_bin_dir() -> PathBuf {
    find_pg_bin_dir().unwrap_or_else(|| {
        panic!(
            "Postgres server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin \
             nor on PATH; install them: `apt-get install postgresql-15` (or set PG_BIN_DIR)"
        )
    })
}

/// A real Postgres server in a private temp dir. See the module docs.
pub struct PgServer {
    dir: TempDir,
    data_dir: PathBuf,
    sock_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    ids: Option<(u32, u32)>,
    proc: Arc<ManagedProc>,
    registration: Option<Registration>,
}

impl PgServer {
    /// The server shared by all tests of this process; started on first use, stopped at exit.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            PgServer::start_inner(true, None)
                .unwrap_or_else(|e| panic!("starting shared Postgres: {e:#}"))
        })
    }

    /// Starts a server owned by the caller; stopped and removed on drop.
    pub fn start() -> Result<PgServer> {
        PgServer::start_inner(false, None)
    }

    /// Starts a new cluster (its own initdb, so another system identifier) on a given port,
    /// e.g. the port of a stopped server, to stand for a re-created server at the same
    /// address. Owned by the caller like [`PgServer::start`].
    pub fn start_on_port(port: u16) -> Result<PgServer> {
        PgServer::start_inner(false, Some(port))
    }

    fn start_inner(shared: bool, fixed_port: Option<u16>) -> Result<PgServer> {
        let bin_dir = pg_bin_dir();
        crate::require_binary("psql");
        let dir = TempDir::new("pg").context("creating temp dir")?;
        let ids = supervise::unprivileged_ids("postgres");
        let data_dir = dir.path().join("data");
        let sock_dir = dir.path().join("sock");
        std::fs::create_dir_all(&sock_dir)?;
        let password = crate::random_password();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        if let Some((uid, gid)) = ids {
            supervise::chown_recursive(dir.path(), uid, gid).context("chown temp dir")?;
        }
        let mut server = PgServer {
            log_path: dir.path().join("postgres.log"),
            dir,
            data_dir,
            sock_dir,
            bin_dir,
            port: 0,
            password,
            ids,
            proc: ManagedProc::new(libc::SIGQUIT),
            registration: None,
        };
        server.initdb(&pwfile)?;
        let _ = std::fs::remove_file(&pwfile);
        server.configure()?;
        // Register before the first spawn so a panic in between still cleans up at exit.
        server.registration = Some(supervise::register_for_exit(
            server.proc.clone(),
            server.dir.path(),
        ));
        let mut last_err = None;
        let attempts = if fixed_port.is_some() {
            1
        } else {
            PORT_ATTEMPTS_MAX
        };
        for _ in 0..attempts {
            server.port = fixed_port.unwrap_or_else(crate::free_port);
            match server.spawn_and_wait() {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let port_clash =
                        supervise::read_log(&server.log_path).contains("Address already in use");
                    last_err = Some(e);
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        if shared {
            // Keep the registration: the atexit handler tears the shared server down.
        }
        Ok(server)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env("LC_ALL", "C")
            .env("TZ", "UTC");
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        cmd
    }

    fn initdb(&self, pwfile: &Path) -> Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "--auth=scram-sha-256",
                "--username",
                ADMIN_USER,
                "--locale=C",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn configure(&self) -> Result<()> {
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))?;
        writeln!(
            conf,
            "\n# larder-testkit\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             wal_level = logical\n\
             max_replication_slots = 20\n\
             max_wal_senders = 20\n\
             max_connections = 300\n\
             shared_buffers = 32MB\n\
             fsync = off\n\
             synchronous_commit = on\n\
             full_page_writes = off\n\
             TimeZone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             lc_messages = 'C'\n\
             logging_collector = off\n\
             log_min_messages = warning\n\
             password_encryption = 'scram-sha-256'",
            self.sock_dir.display()
        )?;
        std::fs::write(
            self.data_dir.join("pg_hba.conf"),
            "# larder-testkit: password auth over TCP only\n\
             local   all          all                        scram-sha-256\n\
             host    all          larder_md5  127.0.0.1/32   md5\n\
             host    all          larder_plain 127.0.0.1/32  password\n\
             host    all          all         127.0.0.1/32   scram-sha-256\n\
             host    replication  all         127.0.0.1/32   scram-sha-256\n",
        )?;
        if let Some((uid, gid)) = self.ids {
            supervise::chown_recursive(&self.data_dir.join("pg_hba.conf"), uid, gid)?;
        }
        Ok(())
    }

    fn spawn_and_wait(&self) -> Result<()> {
        let (out, err) = supervise::log_stdio(&self.log_path)?;
        if let Some((uid, gid)) = self.ids {
            let _ = std::os::unix::fs::chown(&self.log_path, Some(uid), Some(gid));
        }
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = supervise::spawn_supervised(cmd).context("spawning postgres")?;
        self.proc.set(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let isready = self.bin_dir.join("pg_isready");
        loop {
            if let Some(st) = self.proc.try_wait() {
                bail!(
                    "postgres exited during startup ({st}); log tail:\n{}",
                    supervise::log_tail(&self.log_path, 30)
                );
            }
            let ok = Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", ADMIN_USER, "-d", "postgres", "-t", "2"])
                .stdin(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.proc.teardown();
                bail!(
                    "postgres did not accept connections within {START_TIMEOUT:?}; log tail:\n{}",
                    supervise::log_tail(&self.log_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Always "127.0.0.1".
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://larder_admin:<pw>@127.0.0.1:<port>/<db>` (superuser with REPLICATION).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{ADMIN_USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// The directory of the server's Unix socket (`unix_socket_directories`); the socket file
    /// is `<dir>/.s.PGSQL.<port>`. Local connections authenticate with scram-sha-256.
    pub fn socket_dir(&self) -> &Path {
        &self.sock_dir
    }

    /// Like [`PgServer::url`], over the Unix socket:
    /// `postgresql://larder_admin:<pw>@/<db>?host=<socket dir>&port=<port>`.
    pub fn unix_url(&self, db: &str) -> String {
        format!(
            "postgresql://{ADMIN_USER}:{}@/{db}?host={}&port={}",
            self.password,
            self.sock_dir.display(),
            self.port
        )
    }

    pub fn admin_user(&self) -> &str {
        ADMIN_USER
    }

    pub fn admin_password(&self) -> &str {
        &self.password
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (stderr of postgres), for diagnostics.
    pub fn log(&self) -> String {
        supervise::read_log(&self.log_path)
    }

    /// Pid of the running postmaster, if running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Creates a fresh database named `<prefix>_<pid>_<n>` and returns the name.
    pub fn create_database(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_db_name(prefix);
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(name)
    }

    /// Runs `sql` with `psql -X -At -v ON_ERROR_STOP=1` against `db` (as the admin) and returns
    /// stdout. The error carries stderr. `sql` may hold several statements and psql
    /// meta-commands.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        run_psql(&self.url(db), sql)
    }

    /// Fast shutdown (SIGINT); data and port are kept for [`PgServer::start_again`].
    /// Use it on an owned server ([`PgServer::start`]), never on [`PgServer::shared`], which
    /// other tests run against concurrently.
    pub fn stop(&self) -> Result<()> {
        match self.proc.stop_with(libc::SIGINT, Duration::from_secs(30)) {
            Some(_) => Ok(()),
            None => bail!("postgres is not running"),
        }
    }

    /// Starts the server again on the same port with the same data after [`PgServer::stop`].
    pub fn start_again(&self) -> Result<()> {
        if self.proc.pid().is_some() && self.proc.try_wait().is_none() {
            bail!("postgres is already running");
        }
        self.spawn_and_wait()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.proc.teardown();
        if let Some(reg) = self.registration.take() {
            supervise::unregister(&reg);
        }
        // TempDir's drop removes the directory.
    }
}

/// Runs psql against a connection URL; shared by the harness and tests.
pub(crate) fn run_psql(url: &str, sql: &str) -> Result<String> {
    let psql = crate::require_binary("psql");
    let mut child = Command::new(psql)
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-f",
            "-",
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGTZ", "UTC")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning psql")?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("psql stdin"))?;
    let sql_owned = sql.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(sql_owned.as_bytes());
    });
    let out = child.wait_with_output().context("waiting for psql")?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "psql failed ({}): {}\nSQL: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            truncate(sql, 2000)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        s.chars().take(max_chars).collect::<String>() + "..."
    }
}
