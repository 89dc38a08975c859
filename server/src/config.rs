//! Typed configuration. Every flag can also be given as an environment variable; the whole
//! value is passed down as a context object (never a global), so tests can run many Larders
//! in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use thiserror::Error;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "larder",
    version,
    about = "A caching proxy for PostgreSQL and MySQL"
)]
pub struct Config {
    /// Upstream database URL; the scheme picks the dialect (postgresql://, postgres://, mysql://).
    /// A password given here is visible to `ps` when passed as a flag: prefer the environment
    /// variable or --upstream-db-password-file.
    #[arg(long, env = "UPSTREAM_DB_URL", hide_env_values = true)]
    pub upstream_db_url: UpstreamUrl,

    // --- Secrets and storage identity (issue #9) ---
    /// File holding the upstream password (trailing newlines are ignored); the URL must then
    /// carry no password.
    #[arg(long, env = "UPSTREAM_DB_PASSWORD_FILE")]
    pub upstream_db_password_file: Option<PathBuf>,

    /// When the storage directory belongs to another upstream server or database, discard it
    /// and start afresh instead of refusing to start.
    #[arg(
        long,
        env = "RESET_STORAGE_ON_UPSTREAM_CHANGE",
        default_value_t = false
    )]
    pub reset_storage_on_upstream_change: bool,
    // --- end of secrets and storage identity ---
    /// Address to accept client connections on.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "127.0.0.1:5433")]
    pub address: SocketAddr,

    /// Directory for RocksDB base tables and replication positions.
    #[arg(long, env = "STORAGE_DIR", default_value = "./larder-data")]
    pub storage_dir: PathBuf,

    /// Deployment name: names the replication slot/publication and on-disk files.
    #[arg(long, env = "DEPLOYMENT", default_value = "larder")]
    pub deployment: String,

    /// MySQL/MariaDB: the server id Larder reads the binlog as (unique among the upstream's
    /// replicas). Default: one derived from --deployment.
    #[arg(long, env = "REPLICATION_SERVER_ID")]
    pub replication_server_id: Option<u32>,

    /// Replicate only these tables (comma-separated `schema.table` or `table`, `*` wildcards).
    #[arg(long, env = "REPLICATION_TABLES", value_delimiter = ',')]
    pub replication_tables: Vec<String>,

    /// Remove this deployment's replication slot, publication, storage (and the DDL event
    /// triggers when no other Larder deployment uses the database), then exit.
    #[arg(long, env = "CLEANUP", default_value_t = false)]
    pub cleanup: bool,

    /// Also accept clients on a Unix socket in this directory: `<dir>/.s.PGSQL.<port>`, the port
    /// being that of --address (so `psql -h <dir> -p <port>` works). A stale socket file is
    /// removed at start and the socket is removed at exit. No TLS on it (as in Postgres).
    #[arg(long, env = "UNIX_SOCKET_DIR")]
    pub unix_socket_dir: Option<PathBuf>,

    /// Run as a plain proxy: no replication and no caches.
    #[arg(long, env = "PROXY_ONLY", default_value_t = false)]
    pub proxy_only: bool,

    /// The emergency switch at start: `off` sends every query upstream while replication and
    /// caches keep running, until `ALTER LARDER SET caching = on`.
    #[arg(long, env = "CACHING", value_enum, default_value_t = Switch::On)]
    pub caching: Switch,

    /// Read-your-writes: after a session writes to a table a cache reads (or commits a
    /// transaction that did), its reads from caches wait until replication has applied the
    /// write (they go upstream meanwhile). Each session may `SET larder.read_your_writes`.
    #[arg(long, env = "READ_YOUR_WRITES", value_enum, default_value_t = Switch::On)]
    pub read_your_writes: Switch,

    /// Who makes caches: `explicit`, only `CREATE CACHE`; `async`, also Larder itself, in the
    /// background, for a query the dataflow supports once it has gone upstream (as the role
    /// that ran it), up to --query-caching-caches-max caches made this way; a shape that
    /// could not be cached for a passing reason is tried again when seen again.
    #[arg(long, env = "QUERY_CACHING", value_enum, default_value_t = QueryCaching::Explicit)]
    pub query_caching: QueryCaching,

    /// Most caches `--query-caching async` makes (per process).
    #[arg(long, env = "QUERY_CACHING_CACHES_MAX", default_value_t = 100)]
    pub query_caching_caches_max: usize,

    /// What a plain `CREATE CACHE` makes: `deep` (incremental dataflow, fresh with
    /// replication), `shallow` (upstream results kept for a TTL), or `deep-then-shallow` (deep
    /// when the dataflow supports the query, else shallow).
    #[arg(long, env = "CACHE_MODE", value_enum, default_value_t = CacheMode::Deep)]
    pub cache_mode: CacheMode,

    /// TTL of a shallow cache created without `POLICY TTL n SECONDS` (refreshed in the
    /// background after half of it).
    #[arg(long, env = "SHALLOW_TTL_SECONDS", default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub shallow_ttl_seconds: u64,

    /// What shallow caches may do that is refused by default, comma-separated:
    /// `nondeterministic` (now(), random(), sequences: served results then keep the value of
    /// their fetch), `catalogs` (system catalogs), `session` (functions that read the
    /// session, such as current_setting()), `transactions` (`CREATE SHALLOW CACHE ALWAYS`:
    /// served inside transaction blocks too, outside their snapshot).
    #[arg(long, env = "SHALLOW_ALLOW", value_enum, value_delimiter = ',')]
    pub shallow_allow: Vec<ShallowAllow>,

    /// Partial caches: a cache keyed on its table's primary key through filters and
    /// projections starts empty and holds only the keys read (each filled from storage on its
    /// first read); under --memory-limit, keys not read lately are evicted. `off`: every cache
    /// holds its whole result.
    #[arg(long, env = "PARTIAL_CACHES", value_enum, default_value_t = Switch::On)]
    pub partial_caches: Switch,

    /// Joins read a side that is a base table (through filters and projections, joined on
    /// plain columns of integer, text, boolean, uuid, date or timestamp type) from storage,
    /// through the primary key or a secondary index kept in the same write batch as the
    /// rows, instead of holding it in memory. `off`: both sides of every join in memory.
    #[arg(long, env = "STORED_JOINS", value_enum, default_value_t = Switch::On)]
    pub stored_joins: Switch,

    /// Memory for cached results, in bytes (units: kB, MB, GB, KiB, MiB, GiB). Shallow cache
    /// entries are evicted to keep them within what the deep caches' accounted state leaves
    /// of it, and partial caches' keys are evicted to keep the deep caches within it.
    /// Default: no limit on deep caches, 1 GiB for shallow cache entries.
    #[arg(long, env = "MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,

    /// RocksDB's block cache (table data, index and filter blocks, shared by all tables), in
    /// bytes (units as --memory-limit). With --memory-limit and --storage-write-buffer-bytes it
    /// bounds what Larder's resident size grows with.
    #[arg(long, env = "STORAGE_BLOCK_CACHE_BYTES", value_parser = parse_bytes, default_value = "32MiB")]
    pub storage_block_cache_bytes: u64,

    /// RocksDB's write buffers (memtables) of all column families together, in bytes (units as
    /// --memory-limit); writes past it flush to disk.
    #[arg(long, env = "STORAGE_WRITE_BUFFER_BYTES", value_parser = parse_bytes, default_value = "32MiB")]
    pub storage_write_buffer_bytes: u64,

    /// Maximum concurrent client connections; the excess gets SQLSTATE 53300.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,

    /// Load shedding: most client statements in flight to the database across all sessions;
    /// past it a new statement from a session at rest (not in a transaction) is refused with
    /// SQLSTATE 53400 instead of queueing. Default: 4 x --max-connections; 0: no bound.
    #[arg(long, env = "UPSTREAM_QUERIES_MAX")]
    pub upstream_queries_max: Option<usize>,

    /// Largest protocol message accepted from a client or upstream.
    #[arg(long, env = "MESSAGE_SIZE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub message_size_max_bytes: usize,

    /// Most response bytes a client may leave unread while Larder keeps answering its
    /// statements from caches; past this its session ends with SQLSTATE 53400.
    #[arg(long, env = "CLIENT_OUTPUT_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub client_output_max_bytes: usize,

    /// Largest part of one upstream transaction held in memory while replicating; a larger
    /// transaction is applied in parts (its tables' caches go upstream meanwhile).
    #[arg(long, env = "TRANSACTION_MEMORY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub transaction_memory_max_bytes: usize,

    /// Initial snapshot: tables (or ranges of large tables) copied at once, each on its own
    /// upstream connection importing the same exported snapshot.
    #[arg(long, env = "SNAPSHOT_PARALLELISM", default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(1..=64))]
    pub snapshot_parallelism: u16,

    /// Initial snapshot: memory the copy may hold in all (decoded batches and buffers of
    /// encoded rows, divided between the workers).
    #[arg(long, env = "SNAPSHOT_MEMORY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub snapshot_memory_max_bytes: usize,

    /// Initial snapshot: a keyed table whose heap is at least this large is copied in ranges
    /// of pages by several workers (Postgres 14 and later; 0: never split).
    #[arg(long, env = "SNAPSHOT_SPLIT_MIN_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub snapshot_split_min_bytes: usize,

    /// Time a client has to finish start-up and authentication.
    #[arg(long, env = "STARTUP_TIMEOUT_MS", default_value_t = 30_000)]
    pub startup_timeout_ms: u64,

    /// Close sessions idle for this long (0 = never).
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = 0)]
    pub idle_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight statements may take to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// PEM certificate chain for client TLS (with --tls-key).
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for client TLS (with --tls-cert).
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Members of this upstream role (besides superusers) may drop caches and proxied-query
    /// lists (`DROP CACHE`, `DROP ALL CACHES`, `DROP ALL PROXIED QUERIES`).
    #[arg(long, env = "ADMIN_ROLE")]
    pub admin_role: Option<String>,

    /// How client sessions are scheduled. `per-core`: on --worker-threads single-threaded
    /// runtimes, one thread each, each accepting on its own listener on --address
    /// (SO_REUSEPORT; the kernel spreads connections over them, a session stays on its thread);
    /// the Unix socket is served by the first; replication and the controller keep a small
    /// multi-thread runtime of their own. `multi-thread`: on the one work-stealing runtime that
    /// also runs replication (balances uneven sessions, at the cost of wake-ups between
    /// workers).
    #[arg(long, env = "SESSION_RUNTIME", value_enum, default_value_t = SessionRuntime::PerCore)]
    pub session_runtime: SessionRuntime,

    /// Threads serving sessions: 0 = one per core. With `--session-runtime multi-thread`, the
    /// runtime's workers (1 = every session on one worker, no wake-ups between workers); with
    /// `per-core`, the number of session runtimes.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Log format: `text` (one line per event, human-readable), `json` (one JSON object per
    /// line: timestamp, level, target, message and fields), or `full` (text with every span).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Testing only: applying a replicated transaction that writes to a table of this name
    /// fails, once per transaction position, as a storage failure would (exercises the
    /// retry after a whole-transaction apply error).
    #[arg(long, env = "LARDER_FAILPOINT_APPLY_TABLE", hide = true)]
    pub failpoint_apply_table: Option<String>,

    // --- Operations (issue #8) ---
    /// Serve `/health`, `/ready` and `/metrics` (Prometheus text) over HTTP on this address;
    /// off unless set.
    #[arg(long, env = "METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,

    /// Staleness bound: when replication has not confirmed the upstream's WAL position of
    /// more than this many milliseconds ago (a stalled or dead stream, an apply error, a lost
    /// slot, an unreachable upstream), caches stop serving and queries go upstream, until it
    /// has caught up again. `/ready` answers 503 meanwhile.
    #[arg(long, env = "MAX_REPLICATION_LAG_MS", default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..))]
    pub max_replication_lag_ms: u64,
    // --- end of operations ---
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    Deep,
    Shallow,
    DeepThenShallow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShallowAllow {
    Nondeterministic,
    Catalogs,
    Session,
    Transactions,
}

/// A byte count with an optional unit (`512MiB`, `2GB`, `1048576`).
impl Config {
    /// RocksDB's memory bounds (`--storage-block-cache-bytes`, `--storage-write-buffer-bytes`).
    pub fn storage_memory(&self) -> crate::storage::StorageMemory {
        crate::storage::StorageMemory {
            block_cache_bytes: usize::try_from(self.storage_block_cache_bytes)
                .unwrap_or(usize::MAX),
            write_buffer_bytes: usize::try_from(self.storage_write_buffer_bytes)
                .unwrap_or(usize::MAX),
        }
    }
}

pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 2GB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use kB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = n * mult;
    if !(1.0..1.0e18).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueryCaching {
    Explicit,
    Async,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One compact text line per event.
    #[value(alias = "compact")]
    Text,
    Full,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SessionRuntime {
    /// Sessions on the shared multi-thread (work-stealing) runtime.
    MultiThread,
    /// Sessions on one single-threaded runtime per core, with SO_REUSEPORT listeners.
    PerCore,
}

/// Workers of the multi-thread runtime that keeps replication and the controller when sessions
/// run per core (at most one per core).
pub const BACKGROUND_WORKERS_PER_CORE_MODE: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

/// Configuration that cannot be used as given.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read --upstream-db-password-file {path}: {source}")]
    PasswordFileUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("--upstream-db-password-file {path} is empty")]
    PasswordFileEmpty { path: String },
    #[error("--upstream-db-password-file {path} is not UTF-8")]
    PasswordFileNotUtf8 { path: String },
    #[error(
        "the upstream password is given twice: in --upstream-db-url and in \
         --upstream-db-password-file {path}; remove it from the URL"
    )]
    PasswordTwice { path: String },
}

/// The upstream URL. It may carry a password, so its `Debug` and `Display` redact the password
/// (userinfo and a `password=` query parameter); [`UpstreamUrl::expose`] gives the real text to
/// the code that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl(String);

impl UpstreamUrl {
    pub fn new(url: impl Into<String>) -> UpstreamUrl {
        UpstreamUrl(url.into())
    }

    /// The URL with its password, for connecting only: never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the URL carries a password (in the userinfo or as a `password=` parameter).
    pub fn has_password(&self) -> bool {
        let (authority, query) = split_url(&self.0);
        let userinfo_pw = authority
            .rsplit_once('@')
            .is_some_and(|(ui, _)| ui.contains(':'));
        userinfo_pw
            || query
                .split('&')
                .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == "password")
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let (authority, query) = split_url(url);
        let mut out = String::with_capacity(url.len());
        let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
        out.push_str(&url[..scheme_end]);
        match authority.rsplit_once('@') {
            Some((ui, host)) => {
                match ui.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(ui),
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        let path_start = scheme_end + authority.len();
        let path_end = url.find('?').unwrap_or(url.len());
        out.push_str(&url[path_start.min(path_end)..path_end]);
        if url.contains('?') {
            out.push('?');
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=***".to_string(),
                    _ => kv.to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
        }
        out
    }

    /// This URL with `password` added as a (percent-encoded) `password=` query parameter.
    fn with_password(&self, password: &str) -> UpstreamUrl {
        let mut url = self.0.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("password=");
        for b in password.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
        UpstreamUrl(url)
    }
}

/// `(authority, query)` of `scheme://authority/path?query`.
fn split_url(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or("");
    (authority, query)
}

impl std::fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamUrl({:?})", self.redacted())
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for UpstreamUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(UpstreamUrl(s.to_string()))
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Reads a password file: the content without trailing newlines (`\n` or `\r\n`).
fn read_password_file(path: &Path) -> Result<String, ConfigError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ConfigError::PasswordFileUnreadable {
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::PasswordFileNotUtf8 {
        path: shown.clone(),
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(ConfigError::PasswordFileEmpty { path: shown });
    }
    Ok(password.to_string())
}

impl Config {
    /// The URL to connect with: `--upstream-db-url`, plus the password from
    /// `--upstream-db-password-file` when given. A password in both places is refused: which
    /// one the user meant is not knowable, and a silently ignored secret hides mistakes.
    pub fn effective_upstream_url(&self) -> Result<UpstreamUrl, ConfigError> {
        let Some(path) = &self.upstream_db_password_file else {
            return Ok(self.upstream_db_url.clone());
        };
        if self.upstream_db_url.has_password() {
            return Err(ConfigError::PasswordTwice {
                path: path.display().to_string(),
            });
        }
        let password = read_password_file(path)?;
        Ok(self.upstream_db_url.with_password(&password))
    }

    /// Threads serving sessions: --worker-threads, or one per core when 0.
    pub fn session_threads(&self) -> usize {
        match self.worker_threads {
            0 => cores(),
            n => n,
        }
    }

    /// Workers of the multi-thread runtime.
    pub fn multi_thread_workers(&self) -> usize {
        match self.session_runtime {
            SessionRuntime::MultiThread => self.session_threads(),
            SessionRuntime::PerCore => BACKGROUND_WORKERS_PER_CORE_MODE.min(cores()),
        }
    }

    pub fn dialect(&self) -> Result<Dialect, String> {
        let url = self.upstream_db_url.expose();
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "postgresql" | "postgres" => Ok(Dialect::Postgres),
            "mysql" => Ok(Dialect::MySql),
            other => Err(format!(
                "unsupported upstream URL scheme {other:?}: use postgresql://, postgres:// or mysql://"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> UpstreamUrl {
        UpstreamUrl::new(s)
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("64kB"), Ok(64_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("2 parsecs").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn session_runtime_defaults_to_per_core_and_sizes_the_runtimes() {
        let base = ["larder", "--upstream-db-url", "postgresql://u@h/db"];
        let from_env = ["SESSION_RUNTIME", "WORKER_THREADS"].map(std::env::var_os);
        if from_env.iter().all(Option::is_none) {
            let cfg = Config::parse_from(base);
            assert_eq!(cfg.session_runtime, SessionRuntime::PerCore);
            assert_eq!(cfg.session_threads(), cores());
            assert!(cfg.multi_thread_workers() <= BACKGROUND_WORKERS_PER_CORE_MODE);
        }
        let flags = ["--session-runtime", "multi-thread", "--worker-threads", "3"];
        let cfg = Config::parse_from(base.into_iter().chain(flags));
        assert_eq!(cfg.session_runtime, SessionRuntime::MultiThread);
        assert_eq!((cfg.session_threads(), cfg.multi_thread_workers()), (3, 3));
    }

    #[test]
    fn redaction_hides_every_password_form() {
        let cases = [
            (
                "postgresql://u:s3cr%40t@h:5432/db?sslmode=disable",
                "postgresql://u:***@h:5432/db?sslmode=disable",
            ),
            (
                "postgres://u@h/db?password=s3cr%40t&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u:s3cr%40t@h", "postgres://u:***@h"),
        ];
        for (given, want) in cases {
            let u = url(given);
            assert_eq!(u.redacted(), want);
            assert!(!format!("{u:?}").contains("s3cr"), "{u:?}");
            assert!(!u.to_string().contains("s3cr"), "{u}");
        }
        assert!(url(cases[0].0).has_password());
        assert!(url(cases[1].0).has_password());
        assert!(!url(cases[2].0).has_password());
    }

    #[test]
    fn password_file_is_appended_encoded_and_conflicts_are_refused() {
        let dir = std::env::temp_dir().join(format!("larder-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "p@ss w&rd\n").unwrap();
        let mut cfg = Config::parse_from([
            "larder",
            "--upstream-db-url",
            "postgresql://u@h/db?sslmode=disable",
        ]);
        cfg.upstream_db_password_file = Some(file.clone());
        let eff = cfg.effective_upstream_url().unwrap();
        assert_eq!(
            eff.expose(),
            "postgresql://u@h/db?sslmode=disable&password=p%40ss%20w%26rd"
        );
        let parsed = larder_adapter::UpstreamConfig::from_url(eff.expose()).unwrap();
        assert_eq!(parsed.password.as_deref(), Some("p@ss w&rd"));

        cfg.upstream_db_url = url("postgresql://u:other@h/db");
        let err = cfg.effective_upstream_url().unwrap_err().to_string();
        assert!(err.contains("given twice"), "{err}");
        assert!(!err.contains("other"), "{err}");

        cfg.upstream_db_url = url("postgresql://u@h/db");
        cfg.upstream_db_password_file = Some(dir.join("missing"));
        let err = cfg.effective_upstream_url().unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
