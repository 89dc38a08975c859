//! The upstream handle: URL, server id, SQL connections, flavor, prerequisites.

use std::fmt;

use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, OptsBuilder};

use super::{Flavor, MySourceOptions};
use crate::error::ReplicationError;

/// A MySQL or MariaDB upstream, one database of it replicated.
#[derive(Clone)]
pub struct MySource {
    pub(crate) opts: Opts,
    pub(crate) database: String,
    pub(crate) server_id: u32,
    pub(crate) options: MySourceOptions,
    /// Counts privilege statements (GRANT, REVOKE, ...) the stream has read: sessions check
    /// again what they may read when it moves.
    pub(crate) access_epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The control session ([`MySource::describe`], [`MySource::current_progress`]): opened
    /// on first use and again after it fails.
    control: std::sync::Arc<tokio::sync::Mutex<Option<Conn>>>,
    /// Whether new sessions start in UTC (`@@global.time_zone`): 0 unknown, 1 yes, 2 no.
    sessions_utc: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// Weight tables fetched so far, by collation name ([`MySource::collation`]).
    pub(crate) collations: super::collations::Fetched,
}

impl fmt::Debug for MySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it carries the password.
        f.debug_struct("MySource")
            .field("host", &self.opts.ip_or_hostname())
            .field("port", &self.opts.tcp_port())
            .field("database", &self.database)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn my_err(context: &'static str) -> impl FnOnce(mysql_async::Error) -> ReplicationError {
    move |source| ReplicationError::MySql { context, source }
}

/// The server error code of `e`, if it is one.
pub(crate) fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// ER_SPECIFIC_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR.
fn is_access_denied(e: &mysql_async::Error) -> bool {
    matches!(server_code(e), Some(1227 | 1045 | 1044 | 1142))
}

impl MySource {
    /// `url`: `mysql://USER:PASS@HOST:PORT/DB`; DB is the database replicated. `server_id`
    /// is this replica's id in the upstream's replication topology (`--replication-server-id`):
    /// unique among all replicas of the upstream, and not the upstream's own.
    pub fn new(url: &str, server_id: u32) -> Result<MySource, ReplicationError> {
        let opts = Opts::from_url(url)
            .map_err(|e| ReplicationError::InvalidConfig(format!("upstream URL: {e}")))?;
        let database = opts
            .db_name()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                ReplicationError::InvalidConfig(
                    "the upstream URL names no database (mysql://USER:PASS@HOST:PORT/DB)".into(),
                )
            })?
            .to_string();
        if server_id == 0 {
            return Err(ReplicationError::InvalidConfig(
                "--replication-server-id must not be 0 (the upstream refuses replica id 0)".into(),
            ));
        }
        Ok(MySource {
            opts,
            database,
            server_id,
            options: MySourceOptions::default(),
            access_epoch: Default::default(),
            control: Default::default(),
            sessions_utc: Default::default(),
            collations: Default::default(),
        })
    }

    /// Replaces the tunables; zero sizes are raised to 1.
    pub fn with_options(mut self, mut options: MySourceOptions) -> MySource {
        options.snapshot_batch_rows_max = options.snapshot_batch_rows_max.max(1);
        options.snapshot_batch_bytes_max = options.snapshot_batch_bytes_max.max(1);
        options.transaction_memory_max_bytes = options.transaction_memory_max_bytes.max(1);
        options.heartbeat_interval = options
            .heartbeat_interval
            .max(std::time::Duration::from_millis(1));
        self.options = options;
        self
    }

    pub fn options(&self) -> &MySourceOptions {
        &self.options
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// Whether a new session starts with its time zone at UTC, as last learned
    /// ([`MySource::learn_time_zone`]); `false` while unknown.
    pub fn sessions_start_in_utc(&self) -> bool {
        self.sessions_utc.load(std::sync::atomic::Ordering::Relaxed) == 1
    }

    /// Learns whether new sessions start in UTC: `@@global.time_zone` is an offset of zero,
    /// `UTC`, or `SYSTEM` on a server whose system time zone is UTC.
    pub async fn learn_time_zone(&self) -> Result<bool, ReplicationError> {
        let row: Option<(String, String)> = self
            .on_control(|conn| {
                Box::pin(async move {
                    conn.query_first("SELECT @@global.time_zone, @@system_time_zone")
                        .await
                        .map_err(my_err("reading the time zone"))
                })
            })
            .await?;
        let utc = row.is_some_and(|(global, system)| {
            let zero = |z: &str| larder_sql::mysql::is_utc_zone(z);
            zero(&global) || (global.eq_ignore_ascii_case("SYSTEM") && zero(&system))
        });
        self.sessions_utc.store(
            if utc { 1 } else { 2 },
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(utc)
    }

    /// Moves whenever the stream reads a statement that changes privileges.
    pub fn access_epoch(&self) -> u64 {
        self.access_epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs `f` on the control session, opening it first if needed; a failed call closes it.
    pub(crate) async fn on_control<T>(
        &self,
        f: impl for<'c> FnOnce(
            &'c mut Conn,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ReplicationError>> + Send + 'c>,
        >,
    ) -> Result<T, ReplicationError> {
        let mut slot = self.control.lock().await;
        let mut conn = match slot.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let result = f(&mut conn).await;
        if result.is_ok() {
            *slot = Some(conn);
        }
        result
    }

    /// The upstream's binlog position now, as [`super::Position::progress`] counts it:
    /// once replication has applied this much, it has every transaction committed before
    /// the call.
    pub async fn current_progress(&self) -> Result<u64, ReplicationError> {
        self.on_control(|conn| {
            Box::pin(async move {
                let (file, offset) = master_status(conn)
                    .await
                    .map_err(my_err("reading the binlog position"))?
                    .ok_or_else(|| {
                        ReplicationError::InvalidConfig("the binlog is off (log_bin)".into())
                    })?;
                Ok(super::Position::new(file, offset, None).progress())
            })
        })
        .await
    }

    /// What the upstream says `sql` returns: each result column's name, MySQL type code,
    /// flags and decimals, from preparing it (nothing runs). `Err` carries the server's
    /// message when it rejects the query.
    pub async fn describe(&self, sql: &str) -> Result<Vec<DescribedColumn>, ReplicationError> {
        let sql = sql.to_string();
        self.on_control(move |conn| {
            Box::pin(async move {
                let stmt = match conn.prep(sql).await {
                    Ok(s) => s,
                    Err(mysql_async::Error::Server(e)) => {
                        return Ok(Err(e.message));
                    }
                    Err(e) => return Err(my_err("preparing the query")(e)),
                };
                let out = stmt
                    .columns()
                    .iter()
                    .map(|c| DescribedColumn {
                        name: c.name_str().into_owned(),
                        type_code: c.column_type() as u8,
                        flags: c.flags().bits(),
                        decimals: c.decimals(),
                        charset: c.character_set(),
                    })
                    .collect();
                conn.close(stmt)
                    .await
                    .map_err(my_err("closing a statement"))?;
                Ok(Ok(out))
            })
        })
        .await?
        .map_err(ReplicationError::Rejected)
    }
}

/// One result column as the upstream describes a prepared statement's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedColumn {
    pub name: String,
    pub type_code: u8,
    pub flags: u16,
    pub decimals: u8,
    pub charset: u16,
}

impl MySource {
    /// An SQL session in UTC (TIMESTAMP values print in UTC) with utf8mb4 results.
    pub async fn connect(&self) -> Result<Conn, ReplicationError> {
        let opts = OptsBuilder::from_opts(self.opts.clone())
            .init(vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"]);
        Conn::new(opts)
            .await
            .map_err(my_err("connecting to the upstream"))
    }

    /// MariaDB or MySQL, from `@@version`.
    pub async fn flavor(&self) -> Result<Flavor, ReplicationError> {
        let mut conn = self.connect().await?;
        flavor_of(&mut conn).await
    }

    /// Checks what the binlog source needs and names the setting or privilege that is
    /// missing: `log_bin` ON, `binlog_format` ROW, `binlog_row_image` FULL, the right to read
    /// the binlog position (REPLICATION CLIENT / MariaDB BINLOG MONITOR), and the right to
    /// stream the binlog (REPLICATION SLAVE), tried by registering as a replica with this
    /// source's server id and asking for a non-blocking dump. The upstream ends any other
    /// dump with the same server id then, so call it before streaming, not while a stream of
    /// this id runs.
    pub async fn check_prerequisites(&self) -> Result<Flavor, ReplicationError> {
        let mut conn = self.connect().await?;
        let flavor = flavor_of(&mut conn).await?;
        let row: Option<(String, String, String)> = conn
            .query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image")
            .await
            .map_err(my_err("reading the binlog settings"))?;
        let (log_bin, format, image) = row.unwrap_or_default();
        if !matches!(log_bin.to_ascii_uppercase().as_str(), "1" | "ON") {
            return Err(ReplicationError::MySqlSetting {
                setting: "log_bin",
                current: if log_bin == "0" {
                    "OFF".into()
                } else {
                    log_bin
                },
                needed: "ON",
            });
        }
        if !format.eq_ignore_ascii_case("ROW") {
            return Err(ReplicationError::MySqlSetting {
                setting: "binlog_format",
                current: format,
                needed: "ROW",
            });
        }
        if !image.eq_ignore_ascii_case("FULL") {
            return Err(ReplicationError::MySqlSetting {
                setting: "binlog_row_image",
                current: image,
                needed: "FULL",
            });
        }
        let (file, pos) = match master_status(&mut conn).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(ReplicationError::MySqlSetting {
                    setting: "log_bin",
                    current: "OFF".into(),
                    needed: "ON",
                })
            }
            Err(e) if is_access_denied(&e) => {
                return Err(ReplicationError::MySqlPrivilege {
                    action: "read the binlog position (SHOW MASTER STATUS)",
                    privilege: flavor.client_privilege(),
                    detail: e.to_string(),
                })
            }
            Err(e) => return Err(my_err("reading the binlog position")(e)),
        };
        drop(conn);
        // Try to stream: register and dump without blocking from the current end.
        let probe = self.connect().await?;
        let request = BinlogStreamRequest::new(self.server_id)
            .with_non_blocking()
            .with_filename(file.as_bytes())
            .with_pos(pos);
        let denied = |e: mysql_async::Error| ReplicationError::MySqlPrivilege {
            action: "stream the binlog (COM_REGISTER_SLAVE / COM_BINLOG_DUMP)",
            privilege: "REPLICATION SLAVE",
            detail: e.to_string(),
        };
        let mut stream = match probe.get_binlog_stream(request).await {
            Ok(s) => s,
            Err(e) if is_access_denied(&e) => return Err(denied(e)),
            Err(e) => return Err(my_err("trying a binlog dump")(e)),
        };
        use futures_util::StreamExt;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {}
                Err(e) if is_access_denied(&e) => return Err(denied(e)),
                Err(e) => return Err(my_err("trying a binlog dump")(e)),
            }
        }
        let _ = stream.close().await;
        Ok(flavor)
    }
}

impl Flavor {
    fn client_privilege(self) -> &'static str {
        match self {
            Flavor::MariaDb => "BINLOG MONITOR (REPLICATION CLIENT before MariaDB 10.5)",
            Flavor::MySql => "REPLICATION CLIENT",
        }
    }
}

pub(crate) async fn flavor_of(conn: &mut Conn) -> Result<Flavor, ReplicationError> {
    let version: Option<String> = conn
        .query_first("SELECT @@version")
        .await
        .map_err(my_err("reading the server version"))?;
    Ok(if version.unwrap_or_default().contains("MariaDB") {
        Flavor::MariaDb
    } else {
        Flavor::MySql
    })
}

/// `SHOW MASTER STATUS`: the current binlog file and offset (`None` with the binlog off).
pub(crate) async fn master_status(
    conn: &mut Conn,
) -> Result<Option<(String, u64)>, mysql_async::Error> {
    let row = master_status_row(conn).await?;
    Ok(row.and_then(|r| {
        let file: Option<String> = r.get(0);
        let pos: Option<u64> = r.get(1);
        file.zip(pos)
    }))
}

/// `SHOW MASTER STATUS`, or `SHOW BINARY LOG STATUS` where the former is gone (MySQL 8.4).
pub(crate) async fn master_status_row(
    conn: &mut Conn,
) -> Result<Option<mysql_async::Row>, mysql_async::Error> {
    match conn.query_first("SHOW MASTER STATUS").await {
        Err(e) if server_code(&e) == Some(1064) => conn.query_first("SHOW BINARY LOG STATUS").await,
        other => other,
    }
}
