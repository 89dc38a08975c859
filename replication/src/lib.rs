//! Change capture from upstream databases: an initial consistent snapshot of every replicated
//! table, then a stream of committed transactions, each tagged with the upstream position the
//! server stores once the transaction is applied.
//!
//! Why this shape: the server keeps derived state (caches) that must equal "upstream at some
//! commit". So the snapshot is taken at exactly the position the change stream starts from,
//! changes arrive one upstream transaction per [`pg::ChangeBatch`] (applied atomically), and the
//! upstream is told to release WAL only up to what the server reports as durably applied.
//!
//! Postgres lives in [`pg`]; MySQL/MariaDB (snapshot + row-based binlog) in [`mysql`]. Both
//! emit the dialect-neutral change types in [`change`].

pub mod change;
pub mod error;
pub mod mysql;
pub mod pg;

pub(crate) use larder_sql::pgtypes;

pub use change::{Change, NewRow, OldRow, RelationInfo, ReplicaIdentity, TableStatus};
pub use error::ReplicationError;
pub use pg::{
    ChangeBatch, DiscoveredTable, FreshSlot, Lsn, OpenOutcome, PgSource, PgSourceOptions,
    SnapshotBatch, SnapshotMemory, SnapshotSink, SnapshotSummary, TxnPart,
};
