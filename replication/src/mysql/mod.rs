//! MySQL/MariaDB source: a consistent snapshot of one database, then its row-based binlog.
//!
//! Life cycle, as a server would drive it (the same shape as [`crate::pg`]):
//! 1. [`MySource::new`] with `mysql://USER:PASS@HOST:PORT/DB` and this replica's server id
//!    (`--replication-server-id`, unique among the upstream's replicas), then
//!    [`MySource::check_prerequisites`] (log_bin ON, binlog_format ROW, binlog_row_image
//!    FULL, the privileges to read the binlog position and to stream the binlog).
//! 2. Without a stored position: [`MySource::snapshot`] copies every replicated table into
//!    a [`SnapshotSink`] and returns the [`Position`] the copy is consistent at (see
//!    [`snapshot`] for how each flavor gets it); store it once the copy is applied.
//! 3. [`MySource::stream_after`] the snapshot, or [`MySource::stream`] from the stored position: [`MyStream::next_batch`] yields one
//!    [`MyChangeBatch`] per upstream transaction; apply it, then store its position. On
//!    restart, streaming from the stored position neither loses nor repeats a transaction.
//!
//! Tables: every base table of the database, described by [`MySource::discover_tables`];
//! one without a primary key or with a column type Larder cannot represent is listed as not
//! replicated (see [`types`] for the type map). Relation ids are a hash of the name (see
//! [`schema`]).

mod collations;
mod ended;
mod events;
mod position;
mod schema;
mod snapshot;
mod source;
mod stream;
mod types;

use std::time::Duration;

pub use events::{GtidState, MariaGtid};
pub use position::Position;
pub use schema::{relation_id, MyTable};
pub use snapshot::MySnapshot;
pub use source::{DescribedColumn, MySource};
pub use stream::{MyChangeBatch, MyStream, MyTxnPart};

use crate::change::RelationInfo;
use crate::error::ReplicationError;
use crate::pg::SnapshotSink;

/// Which server the upstream is (from `@@version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    MySql,
}

/// Tunables; every buffer filled from upstream data is bounded by one of these.
#[derive(Clone, Debug)]
pub struct MySourceOptions {
    /// Rows per snapshot batch, and per keyset page.
    pub snapshot_batch_rows_max: usize,
    /// Approximate decoded bytes per snapshot batch.
    pub snapshot_batch_bytes_max: usize,
    /// Largest part of an upstream transaction held in memory (approximate); a larger one is
    /// delivered in several [`MyChangeBatch`]es marked with a [`MyTxnPart`].
    pub transaction_memory_max_bytes: usize,
    /// MariaDB: resume from the position's GTID (`@slave_connect_state`) rather than its
    /// file and offset, when the position has one.
    pub resume_by_gtid: bool,
    /// The upstream sends a heartbeat event this often when it has nothing else
    /// (`@master_heartbeat_period`); a stream that hears nothing for three periods fails
    /// with a retryable error instead of waiting forever on a dead connection.
    pub heartbeat_interval: Duration,
}

impl Default for MySourceOptions {
    fn default() -> Self {
        MySourceOptions {
            snapshot_batch_rows_max: 16_384,
            snapshot_batch_bytes_max: 8 << 20,
            transaction_memory_max_bytes: 256 << 20,
            resume_by_gtid: true,
            heartbeat_interval: Duration::from_secs(10),
        }
    }
}

impl MySource {
    /// Every base table of the database with its shape and replication status.
    pub async fn discover_tables(&self) -> Result<Vec<RelationInfo>, ReplicationError> {
        Ok(self
            .discover()
            .await?
            .into_iter()
            .map(|t| t.relation)
            .collect())
    }

    /// [`MySource::discover_tables`] with each table's value decoders.
    pub async fn discover(&self) -> Result<Vec<MyTable>, ReplicationError> {
        let mut conn = self.connect().await?;
        schema::discover(&mut conn, &self.database, None).await
    }

    /// Copies every replicated table as of one binlog position; see [`snapshot`].
    pub async fn snapshot<S: SnapshotSink>(
        &self,
        sink: &mut S,
    ) -> Result<MySnapshot, ReplicationError> {
        snapshot::run(self, sink).await
    }

    /// Copies one table as of now (after DDL changed it while streaming): its description,
    /// its rows into `sink`, and the position the copy is consistent at (stream changes to
    /// it after that position only). `None` when the table is gone; a table that is not
    /// replicated is described and not copied.
    pub async fn copy_table_now<S: SnapshotSink>(
        &self,
        oid: u32,
        sink: &mut S,
    ) -> Result<Option<(RelationInfo, Position)>, ReplicationError> {
        let snap = snapshot::run_tables(self, sink, Some(oid)).await?;
        Ok(snap
            .tables
            .into_iter()
            .find(|t| t.relation.oid == oid)
            .map(|t| (t.relation, snap.position)))
    }

    /// Opens the binlog stream after `from` (a batch's stored position). Tables are
    /// described as the catalog is now: a table altered after `from` by DDL the stream has
    /// not reached yet makes its older row events fail to decode (the error says so).
    pub async fn stream(&self, from: &Position) -> Result<MyStream, ReplicationError> {
        MyStream::open(self, from, None, false).await
    }

    /// Opens the binlog stream right after a snapshot, with the tables as the snapshot
    /// described them (so DDL run while the copy took place is met in order).
    pub async fn stream_after(&self, snapshot: &MySnapshot) -> Result<MyStream, ReplicationError> {
        MyStream::open(self, &snapshot.position, Some(&snapshot.tables), false).await
    }

    /// Like [`MySource::stream`], but [`MyStream::next_batch`] returns `Ok(None)` once the
    /// end of the binlog is reached (for catching up, and for tests).
    pub async fn stream_to_end(&self, from: &Position) -> Result<MyStream, ReplicationError> {
        MyStream::open(self, from, None, true).await
    }

    /// The upstream's current binlog end (`SHOW MASTER STATUS`; on MariaDB with the GTID
    /// position of exactly that offset, `BINLOG_GTID_POS(file, offset)`).
    pub async fn current_position(&self) -> Result<Position, ReplicationError> {
        let mut conn = self.connect().await?;
        let flavor = source::flavor_of(&mut conn).await?;
        let (file, offset) = source::master_status(&mut conn)
            .await
            .map_err(source::my_err("reading the binlog position"))?
            .ok_or(ReplicationError::MySqlSetting {
                setting: "log_bin",
                current: "OFF".into(),
                needed: "ON",
            })?;
        let gtid = if flavor == Flavor::MariaDb {
            use mysql_async::prelude::Queryable;
            conn.exec_first::<Option<String>, _, _>("SELECT BINLOG_GTID_POS(?, ?)", (&file, offset))
                .await
                .map_err(source::my_err("reading the GTID position"))?
                .flatten()
        } else {
            None
        };
        Ok(Position::new(file, offset, gtid))
    }
}

/// Backtick-quotes an identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}
