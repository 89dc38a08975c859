//! Dialect-neutral change records emitted by every source.
//!
//! Rows are full-width (one value per column of the relation's [`TableSchema`]), so the server
//! never has to know which upstream produced them. Where the upstream omits data (key-only old
//! rows, unchanged TOAST values) the gap is explicit in the type instead of hidden in a `Null`.

use larder_sql::{Row, TableSchema};

/// How the upstream identifies the old version of a row in updates and deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// Primary key (`relreplident = 'd'`).
    Default,
    /// A chosen unique index (`'i'`).
    Index,
    /// The whole old row (`'f'`).
    Full,
    /// Nothing (`'n'`): updates and deletes cannot be replicated.
    Nothing,
}

impl ReplicaIdentity {
    /// From the `relreplident` / pgoutput replica identity byte.
    pub fn from_pg_byte(b: u8) -> Option<ReplicaIdentity> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'i' => Some(ReplicaIdentity::Index),
            b'f' => Some(ReplicaIdentity::Full),
            b'n' => Some(ReplicaIdentity::Nothing),
            _ => None,
        }
    }
}

/// Whether Larder keeps a copy of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableStatus {
    Replicated,
    /// The table is visible upstream but Larder does not replicate it; queries on it go
    /// upstream. `reason` is meant for operators (names the column, the missing key, ...).
    NotReplicated {
        reason: String,
    },
}

impl TableStatus {
    pub fn is_replicated(&self) -> bool {
        matches!(self, TableStatus::Replicated)
    }
}

/// A table's identity and shape as the upstream describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationInfo {
    /// Upstream relation id (Postgres `pg_class.oid`); stable across renames and ALTERs.
    pub oid: u32,
    /// Columns in upstream order. For a column of an unsupported type, `ty` is a placeholder
    /// (`SqlType::Text`) and `status` is `NotReplicated` naming that column.
    pub schema: TableSchema,
    pub replica_identity: ReplicaIdentity,
    pub status: TableStatus,
}

/// The old row carried by an update or delete.
#[derive(Clone, Debug, PartialEq)]
pub enum OldRow {
    /// Only the key columns (`schema.key`) are meaningful; all other values are `Null`.
    Key(Row),
    /// The complete old row (REPLICA IDENTITY FULL).
    Full(Row),
}

impl OldRow {
    pub fn row(&self) -> &Row {
        match self {
            OldRow::Key(r) | OldRow::Full(r) => r,
        }
    }
}

/// The new row of an update.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRow {
    pub row: Row,
    /// Column indices whose value did not change and was not sent (Postgres unchanged TOAST).
    /// `row` holds `Null` there; the server must take the value from its stored row.
    pub unchanged_toast: Vec<usize>,
}

/// One change inside an upstream transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The shape of relation `oid` (sent before its first change in a session and after every
    /// shape change). Changes that follow refer to it by oid.
    Relation(RelationInfo),
    Insert {
        rel: u32,
        row: Row,
    },
    Update {
        rel: u32,
        /// `None` when the key did not change and the identity is not FULL: the key of
        /// `new` identifies the row.
        old: Option<OldRow>,
        new: NewRow,
    },
    Delete {
        rel: u32,
        old: OldRow,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// The relation's definition changed (ALTER, DROP) in this transaction, as announced by
    /// Larder's event trigger. Logical replication itself carries no DDL.
    SchemaChanged {
        rel: u32,
    },
}
