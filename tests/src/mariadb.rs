//! Throwaway MariaDB servers: `mariadb-install-db` into a private temp dir, then `mariadbd` on
//! 127.0.0.1 and a free port with a row-based binlog (what a change-stream reader needs).
//!
//! `--no-defaults` keeps the machine's /etc/mysql config out of the picture. Root gets a
//! password right after the first start (through the private unix socket), so the URL we hand
//! out uses ordinary password authentication over TCP.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::supervise::{self, ManagedProc, Registration, TempDir};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const PORT_ATTEMPTS_MAX: usize = 5;

/// The `mariadb` CLI's connect timeout for TCP connections the tests make.
pub const CONNECT_TIMEOUT_ARG: &str = "--connect-timeout=30";

/// A real MariaDB server in a private temp dir; same shape as [`crate::PgServer`].
pub struct MariaDbServer {
    dir: TempDir,
    data_dir: PathBuf,
    socket: PathBuf,
    log_path: PathBuf,
    port: u16,
    password: String,
    proc: Arc<ManagedProc>,
    registration: Option<Registration>,
    /// More `mariadbd` options (e.g. `--ssl-cert`), from [`MariaDbServer::start_with_args`].
    extra_args: Vec<String>,
}

impl MariaDbServer {
    /// The server shared by all tests of this process; started on first use, stopped at exit.
    pub fn shared() -> &'static MariaDbServer {
        static SHARED: OnceLock<MariaDbServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            MariaDbServer::start().unwrap_or_else(|e| panic!("starting shared MariaDB: {e:#}"))
        })
    }

    /// Starts a server owned by the caller; stopped and removed on drop.
    pub fn start() -> Result<MariaDbServer> {
        MariaDbServer::start_with_args(&[])
    }

    /// [`MariaDbServer::start`] with more `mariadbd` options.
    pub fn start_with_args(extra_args: &[&str]) -> Result<MariaDbServer> {
        let install_db = crate::require_binary("mariadb-install-db");
        crate::require_binary("mariadbd");
        crate::require_binary("mariadb");
        let dir = TempDir::new("mariadb").context("creating temp dir")?;
        let mut server = MariaDbServer {
            data_dir: dir.path().join("data"),
            socket: dir.path().join("sock"),
            log_path: dir.path().join("mariadb.log"),
            dir,
            port: 0,
            password: crate::random_password(),
            proc: ManagedProc::new(libc::SIGKILL),
            registration: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        // A private tmpdir: the bootstrap's temp table names collide across parallel installs.
        let tmp_dir = server.dir.path().join("tmp");
        std::fs::create_dir_all(&tmp_dir)?;
        let mut cmd = Command::new(install_db);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", server.data_dir.display()))
            .arg(format!("--tmpdir={}", tmp_dir.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                "--basedir=/usr",
            ]);
        if is_root() {
            cmd.arg("--user=root");
        }
        let out = cmd
            .current_dir(server.dir.path())
            .stdin(Stdio::null())
            .output()
            .context("running mariadb-install-db")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        server.registration = Some(supervise::register_for_exit(
            server.proc.clone(),
            server.dir.path(),
        ));
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS_MAX {
            server.port = crate::free_port();
            match server.spawn_and_wait() {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let clash = supervise::read_log(&server.log_path)
                        .contains("Address already in use")
                        || supervise::read_log(&server.log_path)
                            .contains("Can't start server: Bind");
                    last_err = Some(e);
                    if !clash {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        server.set_root_password()?;
        Ok(server)
    }

    fn spawn_and_wait(&self) -> Result<()> {
        let mariadbd = crate::require_binary("mariadbd");
        let (out, err) = supervise::log_stdio(&self.log_path)?;
        let mut cmd = Command::new(mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("mariadbd.pid").display()
            ))
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--tmpdir={}",
                self.dir.path().join("tmp").display()
            ))
            .arg(format!(
                "--log-bin={}",
                self.data_dir.join("binlog").display()
            ))
            .args([
                "--bind-address=127.0.0.1",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--server-id=1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--sync-binlog=0",
                "--max-connections=300",
                "--default-time-zone=+00:00",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ])
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if is_root() {
            cmd.arg("--user=root");
        }
        let child = supervise::spawn_supervised(cmd).context("spawning mariadbd")?;
        self.proc.set(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self.proc.try_wait() {
                bail!(
                    "mariadbd exited during startup ({st}); log tail:\n{}",
                    supervise::log_tail(&self.log_path, 30)
                );
            }
            // Ready means the unix socket and the TCP port both accept.
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.proc.teardown();
                bail!(
                    "mariadbd did not accept connections within {START_TIMEOUT:?}; log tail:\n{}",
                    supervise::log_tail(&self.log_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn set_root_password(&self) -> Result<()> {
        let pw = &self.password;
        let sql = format!(
            "ALTER USER 'root'@'localhost' IDENTIFIED BY '{pw}';\n\
             ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '{pw}';\n\
             ALTER USER 'root'@'::1' IDENTIFIED BY '{pw}';\n\
             FLUSH PRIVILEGES;\n"
        );
        let mut cmd = Command::new(crate::require_binary("mariadb"));
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B"]);
        run_with_stdin(cmd, &sql).context("setting the MariaDB root password")?;
        Ok(())
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root:<pw>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "mysql://root:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    pub fn admin_user(&self) -> &str {
        "root"
    }

    pub fn admin_password(&self) -> &str {
        &self.password
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's error log (stderr of mariadbd), for diagnostics.
    pub fn log(&self) -> String {
        supervise::read_log(&self.log_path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Creates a fresh database named `<prefix>_<pid>_<n>` and returns the name.
    pub fn create_database(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_db_name(prefix);
        self.query("", &format!("CREATE DATABASE `{name}`"))?;
        Ok(name)
    }

    /// Runs `sql` through `mariadb -N -B` over TCP as root against `db` ("" for none); returns
    /// stdout (tab-separated, no headers). The error carries stderr.
    pub fn query(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(crate::require_binary("mariadb"));
        cmd.arg("--no-defaults")
            .args(["--protocol=TCP", "-h", "127.0.0.1", "-uroot", "-N", "-B"])
            // 0 (the default) fails at once when a loaded machine has not finished a loopback
            // handshake by the time a non-blocking connect returns (error 2002, errno 115).
            .arg(CONNECT_TIMEOUT_ARG)
            .arg(format!("-P{}", self.port))
            .env("MYSQL_PWD", &self.password);
        if !db.is_empty() {
            cmd.arg(db);
        }
        run_with_stdin(cmd, sql)
    }

    /// Clean shutdown (SIGTERM); data and port are kept for [`MariaDbServer::start_again`].
    pub fn stop(&self) -> Result<()> {
        match self.proc.stop_with(libc::SIGTERM, Duration::from_secs(30)) {
            Some(_) => Ok(()),
            None => bail!("mariadbd is not running"),
        }
    }

    /// Starts the server again on the same port with the same data after [`MariaDbServer::stop`].
    pub fn start_again(&self) -> Result<()> {
        if self.proc.pid().is_some() && self.proc.try_wait().is_none() {
            bail!("mariadbd is already running");
        }
        self.spawn_and_wait()
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.proc.teardown();
        if let Some(reg) = self.registration.take() {
            supervise::unregister(&reg);
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run_with_stdin(mut cmd: Command, input: &str) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning mariadb client")?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("client stdin"))?;
    let owned = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(owned.as_bytes());
    });
    let out = child
        .wait_with_output()
        .context("waiting for mariadb client")?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "mariadb client failed ({}): {}\nSQL: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            input.chars().take(2000).collect::<String>()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
