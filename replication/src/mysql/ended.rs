//! Why a binlog dump ended: another replica with our server id, a stored position the
//! upstream no longer has (the database must be copied again), or an ordinary failure (the
//! stream is opened again from the stored position).

use mysql_async::prelude::Queryable;

use super::source::server_code;
use super::MySource;
use crate::error::ReplicationError;

/// Longest wait for the upstream while finding out why a stream ended.
const DIAGNOSIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the upstream ended the dump: a duplicate server id, a position it no longer has, or an
/// ordinary failure.
pub(super) async fn why(
    source: &MySource,
    report_host: &str,
    err: Option<mysql_async::Error>,
) -> ReplicationError {
    let detail = err
        .as_ref()
        .map_or_else(|| "the dump ended".to_string(), |e| e.to_string());
    let lower = detail.to_ascii_lowercase();
    // MariaDB: 4052 ER_SLAVE_SAME_ID; MySQL: 1236 naming the server_id/server_uuid.
    let code = server_code_opt(&err);
    let named = ["server_id", "server_uuid", "same server"]
        .iter()
        .any(|w| lower.contains(w));
    if code == Some(4052) || (code == Some(1236) && named) {
        return ReplicationError::DuplicateServerId {
            server_id: source.server_id,
            detail,
        };
    }
    // ER_MASTER_FATAL_ERROR_READING_BINLOG otherwise: the position (file or GTID) is not
    // in the upstream's binlog.
    if code == Some(1236) {
        return ReplicationError::PositionLost { detail };
    }
    // Is another replica registered with our id?
    let connect = tokio::time::timeout(DIAGNOSIS_TIMEOUT, source.connect()).await;
    if let Ok(Ok(mut conn)) = connect {
        let mut hosts: Result<Vec<mysql_async::Row>, _> = conn.query("SHOW SLAVE HOSTS").await;
        if hosts.as_ref().is_err_and(|e| server_code(e) == Some(1064)) {
            hosts = conn.query("SHOW REPLICAS").await; // MySQL 8.4
        }
        if let Ok(hosts) = hosts {
            // Server_id, Host, ...: a registration of our id from another host name.
            if hosts.iter().any(|r| {
                r.get::<u32, _>(0) == Some(source.server_id)
                    && r.get::<String, _>(1).as_deref() != Some(report_host)
            }) {
                return ReplicationError::DuplicateServerId {
                    server_id: source.server_id,
                    detail,
                };
            }
        }
    }
    match err {
        Some(source) => ReplicationError::MySql {
            context: "reading the binlog stream",
            source,
        },
        None => ReplicationError::MySql {
            context: "reading the binlog stream",
            source: mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the upstream ended the binlog dump",
            ))),
        },
    }
}

fn server_code_opt(e: &Option<mysql_async::Error>) -> Option<u16> {
    e.as_ref().and_then(server_code)
}
