//! Typed configuration. Every flag can also be given as an environment variable; the whole
//! value is passed down as a context object (never a global), so tests can run many Larders
//! in one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "larder",
    version,
    about = "A caching proxy for PostgreSQL and MySQL"
)]
pub struct Config {
    /// Upstream database URL; the scheme picks the dialect (postgresql://, postgres://, mysql://).
    #[arg(long, env = "UPSTREAM_DB_URL")]
    pub upstream_db_url: String,

    /// Address to accept client connections on.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "127.0.0.1:5433")]
    pub address: SocketAddr,

    /// Directory for RocksDB base tables and replication positions.
    #[arg(long, env = "STORAGE_DIR", default_value = "./larder-data")]
    pub storage_dir: PathBuf,

    /// Deployment name: names the replication slot/publication and on-disk files.
    #[arg(long, env = "DEPLOYMENT", default_value = "larder")]
    pub deployment: String,

    /// Replicate only these tables (comma-separated `schema.table` or `table`, `*` wildcards).
    #[arg(long, env = "REPLICATION_TABLES", value_delimiter = ',')]
    pub replication_tables: Vec<String>,

    /// Remove this deployment's replication slot, publication, storage (and the DDL event
    /// triggers when no other Larder deployment uses the database), then exit.
    #[arg(long, env = "CLEANUP", default_value_t = false)]
    pub cleanup: bool,

    /// Run as a plain proxy: no replication and no caches.
    #[arg(long, env = "PROXY_ONLY", default_value_t = false)]
    pub proxy_only: bool,

    /// Maximum concurrent client connections; the excess gets SQLSTATE 53300.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,

    /// Largest protocol message accepted from a client or upstream.
    #[arg(long, env = "MESSAGE_SIZE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub message_size_max_bytes: usize,

    /// Largest part of one upstream transaction held in memory while replicating; a larger
    /// transaction is applied in parts (its tables' caches go upstream meanwhile).
    #[arg(long, env = "TRANSACTION_MEMORY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub transaction_memory_max_bytes: usize,

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

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Compact)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Compact,
    Full,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

impl Config {
    pub fn dialect(&self) -> Result<Dialect, String> {
        let url = self.upstream_db_url.as_str();
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
