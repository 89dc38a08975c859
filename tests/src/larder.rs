//! A running `larder` process for end-to-end tests: free port, readiness wait, log capture,
//! signals. Its stdout+stderr go to a temp log file; when a test panics while the process handle
//! is alive, `Drop` prints the log so failures are diagnosable.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::supervise::{self, ManagedProc, Registration, TempDir};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const PORT_ATTEMPTS_MAX: usize = 5;

/// A supervised `larder` process listening on 127.0.0.1:`port()`.
pub struct LarderProcess {
    dir: TempDir,
    log_path: PathBuf,
    port: u16,
    pid: u32,
    proc: Arc<ManagedProc>,
    registration: Option<Registration>,
}

impl LarderProcess {
    /// Spawns [`crate::larder_binary`] with `args` plus `--address 127.0.0.1:<free port>` and
    /// `envs`, and waits until the port accepts TCP connections.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Result<LarderProcess> {
        LarderProcess::spawn_binary(&crate::larder_binary(), args, envs)
    }

    /// Like [`LarderProcess::spawn`] with an explicit binary.
    pub fn spawn_binary(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<LarderProcess> {
        LarderProcess::spawn_inner(bin, None, args, envs)
    }

    /// Like [`LarderProcess::spawn`] on a given port (e.g. that of a Larder that was killed),
    /// one attempt.
    pub fn spawn_on_port(port: u16, args: &[&str], envs: &[(&str, &str)]) -> Result<LarderProcess> {
        LarderProcess::spawn_inner(&crate::larder_binary(), Some(port), args, envs)
    }

    fn spawn_inner(
        bin: &Path,
        fixed_port: Option<u16>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<LarderProcess> {
        let dir = TempDir::new("larder").context("creating temp dir")?;
        let mut this = LarderProcess {
            log_path: dir.path().join("larder.log"),
            dir,
            port: 0,
            pid: 0,
            proc: ManagedProc::new(libc::SIGKILL),
            registration: None,
        };
        this.registration = Some(supervise::register_for_exit(
            this.proc.clone(),
            this.dir.path(),
        ));
        let mut last_err = None;
        let attempts = if fixed_port.is_some() {
            1
        } else {
            PORT_ATTEMPTS_MAX
        };
        for _ in 0..attempts {
            this.port = fixed_port.unwrap_or_else(crate::free_port);
            let (out, err) = supervise::log_stdio(&this.log_path)?;
            let mut cmd = Command::new(bin);
            cmd.args(args)
                .arg("--address")
                .arg(format!("127.0.0.1:{}", this.port))
                .current_dir(this.dir.path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            for (k, v) in envs {
                cmd.env(k, v);
            }
            let child = supervise::spawn_supervised(cmd)
                .with_context(|| format!("spawning {}", bin.display()))?;
            this.pid = child.id();
            this.proc.set(child);
            match this.wait_ready() {
                Ok(()) => return Ok(this),
                Err(e) => {
                    let log = this.log();
                    let clash = log.contains("Address already in use") || log.contains("AddrInUse");
                    last_err = Some(e);
                    this.proc.teardown();
                    if !clash {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("larder did not start")))
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.proc.try_wait() {
                bail!("larder exited during startup ({st}); log:\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "larder did not listen on port {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:<port>".
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A Postgres URL pointing at this Larder: `postgresql://user:password@127.0.0.1:<port>/db`.
    pub fn pg_url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        self.proc.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL.
    pub fn kill9(&self) {
        self.proc.signal(libc::SIGKILL);
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.proc.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        self.proc.pid().is_some() && self.proc.try_wait().is_none()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        supervise::read_log(&self.log_path)
    }
}

impl Drop for LarderProcess {
    fn drop(&mut self) {
        self.proc.teardown();
        if std::thread::panicking() {
            eprintln!(
                "----- larder log (pid {}, port {}) -----\n{}\n----- end larder log -----",
                self.pid,
                self.port,
                self.log()
            );
        }
        if let Some(reg) = self.registration.take() {
            supervise::unregister(&reg);
        }
    }
}
