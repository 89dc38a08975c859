//! One error type for the replication layer, with a fatal/retryable split.
//!
//! The caller's policy is simple: [`ReplicationError::is_retryable`] errors (lost connections,
//! upstream restarts, a slot briefly held by an old session) are retried with backoff from the
//! last stored position; everything else needs an operator, and the message says what to do.

use crate::pg::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("invalid replication configuration: {0}")]
    InvalidConfig(String),

    /// The upstream no longer has the binlog from the stored position (purged, reset, or
    /// another server behind the same address): the database must be copied again.
    #[error("the upstream no longer has the binlog from the stored position: {detail}")]
    PositionLost { detail: String },

    /// The upstream's weights for a collation were not usable.
    #[error(transparent)]
    Collation(#[from] larder_sql::collation::CollationError),

    /// The upstream refused a query Larder asked about for a user (its message).
    #[error("the upstream rejects the query: {0}")]
    Rejected(String),

    #[error(
        "upstream wal_level is '{current}', logical replication needs 'logical': \
         set wal_level = logical in postgresql.conf and restart Postgres"
    )]
    WalLevelNotLogical { current: String },

    #[error(
        "role '{role}' may not replicate: run ALTER ROLE \"{role}\" WITH REPLICATION \
         (or connect as a superuser)"
    )]
    MissingReplicationPrivilege { role: String },

    #[error(
        "no free replication slot ({used} of max_replication_slots = {max} in use): raise \
         max_replication_slots in postgresql.conf and restart Postgres, or drop unused slots \
         with SELECT pg_drop_replication_slot('name')"
    )]
    NoFreeReplicationSlots { max: i64, used: i64 },

    #[error(
        "no free WAL sender ({used} of max_wal_senders = {max} in use): raise max_wal_senders \
         in postgresql.conf and restart Postgres"
    )]
    NoFreeWalSenders { max: i64, used: i64 },

    #[error(
        "cannot create publication '{publication}': {detail}. Create it as a superuser \
         (CREATE PUBLICATION {publication} FOR ALL TABLES), or configure a table filter so \
         Larder can publish the listed tables it owns"
    )]
    PublicationNotCreatable { publication: String, detail: String },

    /// The slot exists but the caller has no stored position: the caller should log it,
    /// [`crate::PgSource::drop_slot`] and open again (a fresh snapshot follows).
    #[error("replication slot '{slot}' exists but no position is stored for it")]
    SlotExistsWithoutPosition { slot: String },

    #[error("{context}: {source}")]
    Postgres {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("replication connection: {0}")]
    Stream(#[from] pg_walstream::ReplicationError),

    #[error("upstream TLS: {0}")]
    Tls(String),

    #[error("replication protocol: {0}")]
    Protocol(String),

    #[error("cannot decode {table}.{column}: {message}")]
    Decode {
        table: String,
        column: String,
        message: String,
    },

    #[error("a COPY row of {table} is larger than {limit_bytes} bytes")]
    RowTooLarge { table: String, limit_bytes: usize },

    #[error("position went backwards: {previous} then {new}")]
    PositionRegressed { previous: Lsn, new: Lsn },

    #[error("snapshot sink failed: {0}")]
    Sink(String),

    #[error("MySQL {context}: {source}")]
    MySql {
        context: &'static str,
        #[source]
        source: mysql_async::Error,
    },

    /// A MySQL/MariaDB server setting that the binlog change source needs.
    #[error(
        "upstream {setting} is '{current}', Larder needs '{needed}': set {setting} = {needed} \
         in the server's configuration (my.cnf) and restart it"
    )]
    MySqlSetting {
        setting: &'static str,
        current: String,
        needed: &'static str,
    },

    #[error(
        "the upstream user may not {action}: GRANT {privilege} ON *.* TO the user Larder \
         connects as ({detail})"
    )]
    MySqlPrivilege {
        action: &'static str,
        privilege: &'static str,
        detail: String,
    },

    #[error(
        "another replica connected to the upstream with server_id {server_id}, and the \
         upstream ended this binlog stream ({detail}): give every Larder instance (and every \
         other replica) its own --replication-server-id"
    )]
    DuplicateServerId { server_id: u32, detail: String },

    #[error("cannot decode binlog event {event_type} at {position}: {message}")]
    BinlogEvent {
        event_type: String,
        position: String,
        message: String,
    },

    #[error("binlog position went backwards: {previous} then {new}")]
    BinlogPositionRegressed { previous: String, new: String },

    #[error("invalid stored MySQL position: {0}")]
    InvalidPosition(String),
}

impl ReplicationError {
    /// True when retrying later (new connection, from the stored position) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicationError::Postgres { source, .. } => pg_error_is_retryable(source),
            ReplicationError::Stream(e) => e.is_transient(),
            ReplicationError::Tls(_) => true,
            ReplicationError::NoFreeWalSenders { .. } => true,
            ReplicationError::MySql { source, .. } => mysql_error_is_retryable(source),
            _ => false,
        }
    }

    pub(crate) fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| ReplicationError::Postgres { context, source }
    }
}

/// Connection-level failures and transient server states are retryable; SQL errors
/// (permissions, missing objects, syntax) are not.
fn pg_error_is_retryable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O, TLS or protocol failure of the connection itself.
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || c == "40001" // serialization failure
                || c == "40P01" // deadlock
                || c == "55006" // object in use (slot active in another session)
        }
    }
}

/// I/O failures and server states that pass (shutdown, lock wait, too many connections) are
/// retryable; SQL errors are not.
fn mysql_error_is_retryable(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Server(s) => matches!(
            s.code,
            1040 // too many connections
                | 1053 // server shutdown
                | 1205 // lock wait timeout
                | 1213 // deadlock
                | 1412 // table definition changed (DDL during a snapshot): take it again
                | 1927 // connection killed (MariaDB)
                | 2006 // server gone away
                | 2013 // lost connection
        ),
        _ => false,
    }
}
