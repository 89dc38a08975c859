//! Process supervision: spawning children that cannot outlive the test process, and cleaning up
//! at exit.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and test threads come
//! and go, so all children are forked by one dedicated thread that lives as long as the process.
//! The death signal is armed in `pre_exec`, which std runs after `setgid`/`setuid`; arming it
//! before the uid switch would be useless because the kernel clears it on credential changes.
//!
//! Statics are never dropped, so shared servers register themselves here and an `atexit` handler
//! stops them and removes their directories when the test binary exits normally.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// Prefix of every temp directory this kit creates; the pid of the owning process follows.
const DIR_PREFIX: &str = "larder-testkit-";

type SpawnJob = Box<dyn FnOnce() + Send>;

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                // Lives until the process exits: the channel sender is in a static.
                for job in rx {
                    job();
                }
            })
            .expect("start testkit spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` from the long-lived spawner thread with `PR_SET_PDEATHSIG = SIGKILL`, so the
/// child is killed if this process dies for any reason (including SIGKILL).
pub(crate) fn spawn_supervised(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid, raise).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    let job: SpawnJob = Box::new(move || {
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("testkit spawner thread dropped the job"))?
}

/// A supervised child process that can be stopped with a chosen signal and replaced (restart).
pub(crate) struct ManagedProc {
    child: Mutex<Option<Child>>,
    /// Signal for a quick teardown (Postgres: SIGQUIT = immediate shutdown).
    teardown_signal: i32,
}

impl ManagedProc {
    pub(crate) fn new(teardown_signal: i32) -> Arc<Self> {
        Arc::new(ManagedProc {
            child: Mutex::new(None),
            teardown_signal,
        })
    }

    pub(crate) fn set(&self, child: Child) {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        assert!(g.is_none(), "ManagedProc::set while a child is running");
        *g = Some(child);
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.id())
    }

    /// Returns the exit status if the child has exited (and forgets it), `None` if running or
    /// absent.
    pub(crate) fn try_wait(&self) -> Option<ExitStatus> {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let status = g.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() {
            *g = None;
        }
        status
    }

    pub(crate) fn signal(&self, sig: i32) -> bool {
        match self.pid() {
            // SAFETY: plain kill(2) on a child we have not reaped yet (pid cannot be reused).
            Some(pid) => unsafe { libc::kill(pid as libc::pid_t, sig) == 0 },
            None => false,
        }
    }

    /// Sends `sig`, waits up to `timeout` for exit, then SIGKILLs. Returns the exit status.
    pub(crate) fn stop_with(&self, sig: i32, timeout: Duration) -> Option<ExitStatus> {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = g.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // SAFETY: kill(2) on our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }

    pub(crate) fn teardown(&self) {
        self.stop_with(self.teardown_signal, Duration::from_secs(10));
    }
}

/// A temp directory owned by this process, removed on drop (or at exit for shared servers).
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(kind: &str) -> io::Result<TempDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        sweep_stale_dirs();
        let base = std::env::var_os("LARDER_TESTKIT_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{DIR_PREFIX}{}-{n}-{kind}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes `larder-testkit-<pid>-*` dirs whose process no longer exists (left by a killed run).
fn sweep_stale_dirs() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let base = std::env::var_os("LARDER_TESTKIT_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let Ok(entries) = std::fs::read_dir(&base) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: kill with signal 0 only checks existence.
            let alive = unsafe { libc::kill(pid, 0) == 0 }
                || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

/// Something to tear down at process exit.
pub(crate) struct Registration {
    id: u64,
}

struct Entry {
    id: u64,
    proc: Arc<ManagedProc>,
    dir: PathBuf,
}

fn registry() -> &'static Mutex<Vec<Entry>> {
    static REG: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(Vec::new()))
}

/// Registers a process + dir to be stopped/removed at exit unless unregistered first.
pub(crate) fn register_for_exit(proc: Arc<ManagedProc>, dir: &Path) -> Registration {
    static ATEXIT: Once = Once::new();
    static IDS: AtomicU64 = AtomicU64::new(0);
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" fn.
        unsafe { libc::atexit(teardown_all_at_exit) };
    });
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Entry {
            id,
            proc,
            dir: dir.to_path_buf(),
        });
    Registration { id }
}

pub(crate) fn unregister(reg: &Registration) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|e| e.id != reg.id);
}

extern "C" fn teardown_all_at_exit() {
    let entries: Vec<Entry> = match registry().lock() {
        Ok(mut g) => std::mem::take(&mut *g),
        Err(e) => std::mem::take(&mut *e.into_inner()),
    };
    // Signal everything first, then wait: parallel shutdown is faster.
    for e in &entries {
        e.proc.signal(e.proc.teardown_signal);
    }
    for e in entries {
        e.proc.teardown();
        let _ = std::fs::remove_dir_all(&e.dir);
    }
}

/// Uid/gid to run Postgres as: the `postgres` user when we are root (initdb/postgres refuse to
/// run as root), else ourselves.
pub(crate) fn unprivileged_ids(user: &str) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let cname = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy fields at once.
    // Called under a lock to avoid racing other getpwnam callers in this process.
    static PW_LOCK: Mutex<()> = Mutex::new(());
    let _g = PW_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        panic!(
            "running as root but there is no `{user}` OS user to run the database as; \
             install it: `apt-get install postgresql-15`"
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd struct.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

/// chown -R path to uid:gid.
pub(crate) fn chown_recursive(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_recursive(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Opens (append) a log file for a child's stdout+stderr.
pub(crate) fn log_stdio(path: &Path) -> io::Result<(std::process::Stdio, std::process::Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let f2 = f.try_clone()?;
    Ok((f.into(), f2.into()))
}

pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Last `n` lines of a log, for error messages.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = read_log(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
