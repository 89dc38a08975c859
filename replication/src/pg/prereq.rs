//! Upstream settings logical replication needs, checked up front so a misconfigured upstream
//! fails with an instruction ("set wal_level = logical ...") instead of a protocol error later.

use tokio_postgres::Client;

use crate::error::ReplicationError;

const PREREQ_SQL: &str = "\
SELECT current_setting('wal_level'),
       r.rolname::text, r.rolreplication, r.rolsuper,
       current_setting('max_replication_slots')::int8,
       (SELECT count(*) FROM pg_catalog.pg_replication_slots),
       (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1),
       current_setting('max_wal_senders')::int8,
       (SELECT count(*) FROM pg_catalog.pg_stat_replication)
FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

/// Checks wal_level, the role's REPLICATION attribute, and that a slot (unless ours exists
/// already) and a WAL sender are free. Returns whether the role is a superuser.
pub(crate) async fn check(client: &Client, slot: &str) -> Result<bool, ReplicationError> {
    let row = client
        .query_one(PREREQ_SQL, &[&slot])
        .await
        .map_err(ReplicationError::pg("checking replication prerequisites"))?;
    let wal_level: String = row.get(0);
    let role: String = row.get(1);
    let can_replicate: bool = row.get(2);
    let superuser: bool = row.get(3);
    let max_slots: i64 = row.get(4);
    let used_slots: i64 = row.get(5);
    let own_slot: i64 = row.get(6);
    let max_senders: i64 = row.get(7);
    let used_senders: i64 = row.get(8);
    if wal_level != "logical" {
        return Err(ReplicationError::WalLevelNotLogical { current: wal_level });
    }
    if !can_replicate && !superuser {
        return Err(ReplicationError::MissingReplicationPrivilege { role });
    }
    if own_slot == 0 && used_slots >= max_slots {
        return Err(ReplicationError::NoFreeReplicationSlots {
            max: max_slots,
            used: used_slots,
        });
    }
    if used_senders >= max_senders {
        return Err(ReplicationError::NoFreeWalSenders {
            max: max_senders,
            used: used_senders,
        });
    }
    Ok(superuser)
}
