//! Postgres source: publication + logical replication slot (pgoutput), exported-snapshot COPY,
//! then the change stream.
//!
//! Life cycle, as the server drives it:
//! 1. [`PgSource::check_prerequisites`], [`PgSource::ensure_publication`].
//! 2. [`PgSource::open`] with the stored position (if any):
//!    * slot exists + position stored -> [`OpenOutcome::Resume`];
//!    * slot missing -> the slot is created with an exported snapshot -> [`OpenOutcome::Fresh`]
//!      (a stored position is then useless: the caller must discard its data);
//!    * slot exists, nothing stored -> [`ReplicationError::SlotExistsWithoutPosition`]; the
//!      caller logs it, calls [`PgSource::drop_slot`] and opens again.
//! 3. Fresh only: [`PgSource::discover_tables`] and [`PgSource::snapshot`] while the
//!    [`FreshSlot`] is alive (its walsender connection keeps the exported snapshot valid).
//! 4. [`PgSource::stream`] with the outcome: one [`ChangeBatch`] per upstream transaction. The
//!    caller reports what it has durably applied through a `watch` channel; only that is
//!    confirmed to Postgres, so WAL is retained exactly until Larder no longer needs it.
//!
//! Naming: the publication and the slot are both called `larder_<deployment>` with the
//! deployment name lower-cased and every character outside `[a-z0-9_]` replaced by `_`.
//!
//! Publication: `FOR ALL TABLES` when the role is a superuser (it must be, for that form), so
//! tables created later are replicated without operator action. Otherwise, with a table filter
//! of literal names, `FOR TABLE` those tables (the role must own them). Pitfall of
//! `FOR ALL TABLES`: upstream UPDATE/DELETE on a table with neither a primary key nor a replica
//! identity then fail ("cannot update table ... because it does not have a replica identity");
//! such tables need `REPLICA IDENTITY FULL` (or a key) before Larder is deployed.
//!
//! Runtime: pg_walstream's walsender connection issues its commands (slot creation, start)
//! synchronously via `block_in_place` on a multi-thread tokio runtime (on a current-thread
//! runtime it uses a worker thread and blocks the caller while a command runs). Use the
//! multi-thread runtime.

mod conn;
mod copy_text;

/// The COPY text-format decoder, exposed only for the fuzz targets in `tests/fuzz.rs`.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::copy_text::{decode_field, decode_row};
}
mod discovery;
mod filter;
mod lsn;
mod prereq;
mod snapshot;
mod snapshot_plan;
mod stream;

use std::fmt;
use std::time::Duration;

use pg_walstream::{PgReplicationConnection, ReplicationSlotOptions, SlotType};
use tokio::sync::{mpsc, watch};
use tokio_postgres::{Client, Config};
use tracing::{info, warn};

pub use discovery::DiscoveredTable;
pub use filter::TableFilter;
pub use lsn::Lsn;
pub use snapshot::{SnapshotBatch, SnapshotMemory, SnapshotSink, SnapshotSummary};
pub use stream::{ChangeBatch, TxnPart};

use crate::error::ReplicationError;

/// Tunables; every buffer Larder fills from upstream data is bounded by one of these.
#[derive(Clone, Debug)]
pub struct PgSourceOptions {
    /// Rows per [`SnapshotBatch`].
    pub snapshot_batch_rows_max: usize,
    /// Approximate decoded bytes per [`SnapshotBatch`] (at most; see [`SnapshotMemory`]).
    pub snapshot_batch_bytes_max: usize,
    /// Tables or table ranges copied at once, each on its own connection.
    pub snapshot_parallelism: usize,
    /// Memory the snapshot copy may hold in all (batches and sink buffers of every worker).
    pub snapshot_memory_max_bytes: usize,
    /// Heap size from which a keyed table is copied in ranges by several workers (0: never).
    pub snapshot_split_min_bytes: usize,
    /// Longest single COPY row accepted.
    pub copy_row_bytes_max: usize,
    /// Largest part of an upstream transaction held in memory (approximate: sum of the
    /// column texts plus a per-column overhead). A larger transaction is delivered in several
    /// [`ChangeBatch`]es marked with a [`TxnPart`]; see the stream module.
    pub transaction_memory_max_bytes: usize,
    /// How often the applied position is reported to Postgres.
    pub status_interval_ms: u64,
}

impl Default for PgSourceOptions {
    fn default() -> Self {
        PgSourceOptions {
            snapshot_batch_rows_max: 16_384,
            snapshot_batch_bytes_max: 8 << 20,
            snapshot_parallelism: 1,
            snapshot_memory_max_bytes: 256 << 20,
            snapshot_split_min_bytes: 64 << 20,
            copy_row_bytes_max: 256 << 20,
            transaction_memory_max_bytes: 256 << 20,
            status_interval_ms: 1_000,
        }
    }
}

/// Session settings that fix the text output format of values (snapshot COPY and pgoutput
/// alike) to the one `pgtypes::parse_text` reads, whatever the server's defaults are.
const SESSION_SETTINGS: [&str; 5] = [
    "SET DateStyle = 'ISO, MDY'",
    "SET TimeZone = 'UTC'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
    "SET IntervalStyle = 'postgres'",
];

/// A Postgres upstream for one Larder deployment.
pub struct PgSource {
    config: Config,
    replication_conninfo: String,
    /// The upstream's socket file when it is reached over a Unix socket.
    unix_socket: Option<std::path::PathBuf>,
    /// Publication and slot name.
    name: String,
    filter: TableFilter,
    options: PgSourceOptions,
}

impl fmt::Debug for PgSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No conninfo: it carries the password.
        f.debug_struct("PgSource")
            .field("name", &self.name)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

/// Result of [`PgSource::open`].
#[derive(Debug)]
pub enum OpenOutcome {
    /// Stream from the caller's stored position (end LSN of the last applied transaction).
    Resume { start_lsn: Lsn },
    /// The slot was just created: snapshot every table, then stream.
    Fresh(FreshSlot),
}

/// A just-created slot with its exported snapshot. Keep it alive until the snapshot COPYs are
/// done (dropping it closes the walsender session, which invalidates the snapshot), then hand
/// it to [`PgSource::stream`] inside [`OpenOutcome::Fresh`].
pub struct FreshSlot {
    /// Exported snapshot name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
    /// The position the snapshot is consistent at: the snapshot holds every transaction
    /// committed before it, the stream every transaction after it. Store it as the position
    /// once the snapshot is applied.
    pub consistent_point: Lsn,
    conn: Box<PgReplicationConnection>,
}

impl fmt::Debug for FreshSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreshSlot")
            .field("snapshot", &self.snapshot)
            .field("consistent_point", &self.consistent_point)
            .finish_non_exhaustive()
    }
}

/// `larder_<deployment>`, restricted to `[a-z0-9_]` and Postgres' 63-byte name limit.
pub fn object_name(deployment: &str) -> String {
    let mut s = String::from("larder_");
    s.extend(deployment.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    s.truncate(63);
    s
}

/// Prefix of the logical messages Larder's event trigger emits for every table whose
/// definition changes or that is dropped (content: the table's oid), or that is created
/// (content: the oid followed by ` created`). Every table of a renamed schema, and every
/// partition of an altered partitioned table, is announced.
pub const DDL_MESSAGE_PREFIX: &str = "larder_ddl";

/// The schema that holds Larder's own objects upstream (the event triggers' function), apart
/// from the users' schemas so that resetting one (`DROP SCHEMA public CASCADE`) leaves it.
pub const LARDER_SCHEMA: &str = "larder";

/// Installs (idempotently) the event triggers that announce DDL in the change stream. Shared by
/// every Larder deployment of the database. A function left in `public` by an older Larder is
/// dropped with the triggers that use it, which are then created again on the new function.
const DDL_TRIGGER_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS larder;
REVOKE ALL ON SCHEMA larder FROM PUBLIC;
DROP FUNCTION IF EXISTS public.larder_ddl_announce() CASCADE;
CREATE OR REPLACE FUNCTION larder.ddl_announce() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE r record;
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    FOR r IN SELECT objid FROM pg_event_trigger_dropped_objects()
             WHERE classid = 'pg_catalog.pg_class'::regclass AND objsubid = 0 LOOP
      PERFORM pg_logical_emit_message(true, 'larder_ddl', r.objid::text);
    END LOOP;
  ELSE
    FOR r IN SELECT objid, command_tag, object_type FROM pg_event_trigger_ddl_commands()
             WHERE classid = 'pg_catalog.pg_class'::regclass LOOP
      IF r.object_type = 'table'
         AND r.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') THEN
        PERFORM pg_logical_emit_message(true, 'larder_ddl', r.objid::text || ' created');
      ELSE
        PERFORM pg_logical_emit_message(true, 'larder_ddl', r.objid::text);
        -- A change to a partitioned table (a column's type or name, say) changes its
        -- partitions, which the command does not list: each is announced.
        IF r.object_type IN ('table', 'table column') THEN
          PERFORM pg_logical_emit_message(true, 'larder_ddl', t.relid::oid::text)
          FROM pg_catalog.pg_partition_tree(r.objid) t
          WHERE t.relid::oid <> r.objid;
        END IF;
      END IF;
    END LOOP;
    -- A renamed schema renames its tables: each is announced.
    FOR r IN SELECT c.oid AS objid FROM pg_event_trigger_ddl_commands() d
             JOIN pg_catalog.pg_class c ON c.relnamespace = d.objid
             WHERE d.classid = 'pg_catalog.pg_namespace'::regclass
               AND d.command_tag = 'ALTER SCHEMA' AND c.relkind IN ('r', 'p') LOOP
      PERFORM pg_logical_emit_message(true, 'larder_ddl', r.objid::text);
    END LOOP;
  END IF;
END
$fn$;
DO $do$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'larder_ddl_end') THEN
    CREATE EVENT TRIGGER larder_ddl_end ON ddl_command_end
      EXECUTE FUNCTION larder.ddl_announce();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'larder_ddl_drop') THEN
    CREATE EVENT TRIGGER larder_ddl_drop ON sql_drop
      EXECUTE FUNCTION larder.ddl_announce();
  END IF;
END
$do$;
"#;

impl PgSource {
    /// Removes what this deployment created upstream: its slot, its publication, and the DDL
    /// event triggers when no other Larder slot remains in the database. Returns what was
    /// removed, for the operator.
    pub async fn clean_up(&self) -> Result<Vec<String>, ReplicationError> {
        let mut removed = Vec::new();
        if self.drop_slot().await? {
            removed.push(format!("replication slot {}", self.name));
        }
        let client = self.client().await?;
        let dropped = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
                &[&self.name],
            )
            .await
            .map_err(ReplicationError::pg("looking up the publication"))?
            .is_some();
        if dropped {
            client
                .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(&self.name)))
                .await
                .map_err(ReplicationError::pg("dropping the publication"))?;
            removed.push(format!("publication {}", self.name));
        }
        let others: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name LIKE 'larder\\_%' AND database = current_database()",
                &[],
            )
            .await
            .map_err(ReplicationError::pg("looking for other Larder slots"))?
            .get(0);
        let triggers: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_event_trigger \
                 WHERE evtname IN ('larder_ddl_end', 'larder_ddl_drop')",
                &[],
            )
            .await
            .map_err(ReplicationError::pg("looking up the event triggers"))?
            .get(0);
        if others == 0 && triggers > 0 {
            client
                .batch_execute(
                    "DROP EVENT TRIGGER IF EXISTS larder_ddl_end; \
                     DROP EVENT TRIGGER IF EXISTS larder_ddl_drop; \
                     DROP FUNCTION IF EXISTS larder.ddl_announce(); \
                     DROP FUNCTION IF EXISTS public.larder_ddl_announce(); \
                     DROP SCHEMA IF EXISTS larder",
                )
                .await
                .map_err(ReplicationError::pg("dropping the DDL event triggers"))?;
            removed.push("DDL event triggers".to_string());
        }
        Ok(removed)
    }

    /// Installs the DDL event triggers when the role may (superuser). Returns whether DDL is
    /// announced in the stream; without it, shape changes are noticed by polling the catalog.
    pub async fn ensure_ddl_announcements(&self) -> Result<bool, ReplicationError> {
        let client = self.client().await?;
        let superuser = is_superuser(&client).await?;
        if !superuser {
            return Ok(false);
        }
        client
            .batch_execute(DDL_TRIGGER_SQL)
            .await
            .map_err(ReplicationError::pg("installing the DDL event triggers"))?;
        Ok(true)
    }

    /// Whether both DDL event triggers are present, enabled and run Larder's function (a
    /// user's DDL may have removed them, e.g. `DROP SCHEMA larder CASCADE`).
    pub async fn ddl_announcements_present(client: &Client) -> Result<bool, tokio_postgres::Error> {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_event_trigger t \
                 JOIN pg_catalog.pg_proc p ON p.oid = t.evtfoid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE t.evtname IN ('larder_ddl_end', 'larder_ddl_drop') \
                   AND t.evtenabled <> 'D' AND n.nspname = 'larder' \
                   AND p.proname = 'ddl_announce'",
                &[],
            )
            .await?
            .get(0);
        Ok(n == 2)
    }

    /// `url`: a libpq-style URL or key/value string (`sslmode` disable/prefer/require).
    /// `table_filter`: `table` / `schema.table` patterns with `*`; empty = every table.
    pub fn new(
        url: &str,
        deployment: &str,
        table_filter: &[String],
    ) -> Result<PgSource, ReplicationError> {
        if deployment.is_empty() {
            return Err(ReplicationError::InvalidConfig(
                "the deployment name is empty".into(),
            ));
        }
        let config: Config = url
            .parse()
            .map_err(|e| ReplicationError::InvalidConfig(format!("upstream URL: {e}")))?;
        let unix_socket = conn::unix_socket_path(&config);
        // Over a Unix socket the walsender conninfo is built per session (relay port).
        let replication_conninfo =
            conn::replication_conninfo(&config, unix_socket.as_ref().map(|_| 0))?;
        Ok(PgSource {
            config,
            replication_conninfo,
            unix_socket,
            name: object_name(deployment),
            filter: TableFilter::new(table_filter)?,
            options: PgSourceOptions::default(),
        })
    }

    /// Replaces the tunables; zero sizes/intervals are raised to 1.
    pub fn with_options(mut self, mut options: PgSourceOptions) -> PgSource {
        options.snapshot_batch_rows_max = options.snapshot_batch_rows_max.max(1);
        options.snapshot_parallelism = options.snapshot_parallelism.max(1);
        options.transaction_memory_max_bytes = options.transaction_memory_max_bytes.max(1);
        options.status_interval_ms = options.status_interval_ms.max(1);
        self.options = options;
        self
    }

    pub fn slot_name(&self) -> &str {
        &self.name
    }

    pub fn publication_name(&self) -> &str {
        &self.name
    }

    /// An SQL session with the output settings `pgtypes::parse_text` expects.
    pub async fn client(&self) -> Result<Client, ReplicationError> {
        let client = conn::connect(&self.config).await?;
        client
            .batch_execute(&SESSION_SETTINGS.join("; "))
            .await
            .map_err(ReplicationError::pg("setting session parameters"))?;
        Ok(client)
    }

    /// Checks wal_level, the REPLICATION attribute, and free slots / WAL senders.
    pub async fn check_prerequisites(&self) -> Result<(), ReplicationError> {
        let client = self.client().await?;
        prereq::check(&client, &self.name).await.map(|_| ())
    }

    /// Creates the publication if it does not exist (see the module docs for which form).
    /// An existing publication is left as it is.
    pub async fn ensure_publication(&self) -> Result<(), ReplicationError> {
        let client = self.client().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
                &[&self.name],
            )
            .await
            .map_err(ReplicationError::pg("looking up the publication"))?
            .is_some();
        if exists {
            return Ok(());
        }
        let superuser = is_superuser(&client).await?;
        let sql = if superuser {
            format!("CREATE PUBLICATION {} FOR ALL TABLES", self.name)
        } else {
            let tables = self.filter.literal_tables().filter(|t| !t.is_empty());
            let Some(tables) = tables else {
                return Err(ReplicationError::PublicationNotCreatable {
                    publication: self.name.clone(),
                    detail: "FOR ALL TABLES needs a superuser and no literal table filter is \
                             configured"
                        .into(),
                });
            };
            let list: Vec<String> = tables
                .iter()
                .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
                .collect();
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                self.name,
                list.join(", ")
            )
        };
        match client.batch_execute(&sql).await {
            Ok(()) => {
                info!(publication = %self.name, all_tables = superuser, "created publication");
                Ok(())
            }
            Err(e) if e.code().is_some_and(|c| c.code() == "42710") => Ok(()), // raced
            Err(e) if e.code().is_some_and(|c| c.code() == "42501") => {
                Err(ReplicationError::PublicationNotCreatable {
                    publication: self.name.clone(),
                    detail: e.to_string(),
                })
            }
            Err(e) => Err(ReplicationError::pg("creating the publication")(e)),
        }
    }

    /// The slot's `confirmed_flush_lsn`, or `None` when the slot does not exist.
    pub async fn slot_confirmed_flush(&self) -> Result<Option<Lsn>, ReplicationError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, database::text, current_database()::text \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .map_err(ReplicationError::pg("looking up the replication slot"))?;
        let Some(row) = row else { return Ok(None) };
        let database: Option<String> = row.get(1);
        let current: String = row.get(2);
        if database.as_deref() != Some(current.as_str()) {
            return Err(ReplicationError::InvalidConfig(format!(
                "replication slot '{}' exists for database {:?}, not '{current}': choose another \
                 deployment name",
                self.name, database
            )));
        }
        let lsn: Option<String> = row.get(0);
        Ok(Some(
            lsn.as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(Lsn::ZERO),
        ))
    }

    /// Drops the slot; returns whether it existed. Fails (retryable) while a session uses it.
    pub async fn drop_slot(&self) -> Result<bool, ReplicationError> {
        let client = self.client().await?;
        let dropped = client
            .query(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .map_err(ReplicationError::pg("dropping the replication slot"))?;
        if !dropped.is_empty() {
            info!(slot = %self.name, "dropped replication slot");
        }
        Ok(!dropped.is_empty())
    }

    /// Decides between resuming and a fresh start; see the module docs.
    pub async fn open(&self, stored: Option<Lsn>) -> Result<OpenOutcome, ReplicationError> {
        match (self.slot_confirmed_flush().await?, stored) {
            (Some(confirmed), Some(start_lsn)) => {
                if start_lsn < confirmed {
                    warn!(slot = %self.name, %start_lsn, %confirmed,
                        "stored position is behind the slot; Postgres resumes at the slot");
                }
                Ok(OpenOutcome::Resume { start_lsn })
            }
            (Some(_), None) => Err(ReplicationError::SlotExistsWithoutPosition {
                slot: self.name.clone(),
            }),
            (None, stored) => {
                if let Some(lsn) = stored {
                    warn!(slot = %self.name, stored = %lsn,
                        "replication slot is gone; the stored position cannot be resumed, \
                         taking a fresh snapshot");
                }
                self.create_slot().map(OpenOutcome::Fresh)
            }
        }
    }

    /// Opens a walsender session with the output settings `pgtypes::parse_text` expects.
    fn replication_connection(&self) -> Result<PgReplicationConnection, ReplicationError> {
        let mut conn = match &self.unix_socket {
            None => PgReplicationConnection::connect(&self.replication_conninfo)?,
            Some(path) => {
                let port = conn::unix_bridge(path)?;
                let conninfo = conn::replication_conninfo(&self.config, Some(port))?;
                PgReplicationConnection::connect(&conninfo)?
            }
        };
        for set in SESSION_SETTINGS {
            conn.exec(set)?;
        }
        Ok(conn)
    }

    fn create_slot(&self) -> Result<FreshSlot, ReplicationError> {
        let mut conn = self.replication_connection()?;
        let options = ReplicationSlotOptions {
            snapshot: Some("export".into()),
            ..Default::default()
        };
        let result = conn.create_replication_slot_with_options(
            &self.name,
            SlotType::Logical,
            Some("pgoutput"),
            &options,
        )?;
        let consistent_point: Lsn = result
            .get_value(0, 1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                ReplicationError::Protocol("CREATE_REPLICATION_SLOT returned no LSN".into())
            })?;
        let snapshot = result
            .get_value(0, 2)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ReplicationError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
            })?;
        info!(slot = %self.name, %consistent_point, %snapshot, "created replication slot");
        Ok(FreshSlot {
            snapshot,
            consistent_point,
            conn: Box::new(conn),
        })
    }

    /// Every table of the publication with its shape and replication status.
    pub async fn discover_tables(&self) -> Result<Vec<DiscoveredTable>, ReplicationError> {
        let client = self.client().await?;
        discovery::discover(&client, &self.name, &self.filter).await
    }

    /// Copies every `Replicated` table of `tables` as of `fresh`'s snapshot into `sink` (and
    /// its clones, one per worker beyond the first).
    pub async fn snapshot<S: SnapshotSink + Clone>(
        &self,
        fresh: &FreshSlot,
        tables: &[DiscoveredTable],
        sink: &mut S,
    ) -> Result<SnapshotSummary, ReplicationError> {
        snapshot::run(self, &fresh.snapshot, tables, sink, &self.options).await
    }

    /// Copies one table as it is now (after its shape changed); see `snapshot::run_now`.
    /// The table is described afresh from the catalog; returns it with the WAL position of the
    /// copy (no rows are copied when it is not replicated), or `None` when it no longer exists.
    pub async fn copy_table_now<S: SnapshotSink>(
        &self,
        oid: u32,
        sink: &mut S,
    ) -> Result<Option<(DiscoveredTable, Lsn)>, ReplicationError> {
        let client = self.client().await?;
        let Some(table) = discovery::discover(&client, &self.name, &self.filter)
            .await?
            .into_iter()
            .find(|t| t.relation.oid == oid)
        else {
            return Ok(None);
        };
        if !table.relation.status.is_replicated() {
            return Ok(Some((table, Lsn::ZERO)));
        }
        let lsn = snapshot::run_now(&client, &table, sink, &self.options).await?;
        Ok(Some((table, lsn)))
    }

    /// Streams committed transactions after `from` into `out` until `out` is closed (returns
    /// `Ok`) or an error occurs. `applied` carries the end LSN of the last batch the caller has
    /// durably applied (or the consistent point after a snapshot); it must never go backwards.
    pub async fn stream(
        &self,
        from: OpenOutcome,
        applied: watch::Receiver<Lsn>,
        out: mpsc::Sender<ChangeBatch>,
    ) -> Result<(), ReplicationError> {
        let (conn, start) = match from {
            OpenOutcome::Fresh(f) => (*f.conn, f.consistent_point),
            OpenOutcome::Resume { start_lsn } => (self.replication_connection()?, start_lsn),
        };
        let streamer = stream::Streamer::new(
            self,
            conn,
            start,
            applied,
            out,
            Duration::from_millis(self.options.status_interval_ms),
        );
        streamer.run().await
    }

    pub(crate) fn filter(&self) -> &TableFilter {
        &self.filter
    }

    pub fn options(&self) -> &PgSourceOptions {
        &self.options
    }
}

/// Whether the session's role is a superuser (needed for `FOR ALL TABLES` and event triggers).
async fn is_superuser(client: &Client) -> Result<bool, ReplicationError> {
    Ok(client
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(ReplicationError::pg("reading the role"))?
        .get(0))
}

/// Double-quotes an identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_sanitized() {
        assert_eq!(object_name("Prod-EU.1"), "larder_prod_eu_1");
        assert_eq!(object_name(&"x".repeat(100)).len(), 63);
    }
}
