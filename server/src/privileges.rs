//! Which role may be answered from which cache.
//!
//! A cache holds every row of its query, whoever asked first. Before a hit is served, the
//! session's current role must hold what the upstream would require of it for the same query:
//! USAGE on the schema, and SELECT on the table or on every column the query reads (directly,
//! through role membership, or through PUBLIC). Tables with row security are never served to a
//! role a policy applies to: only superusers, BYPASSRLS roles and the owner (when the table is
//! not FORCEd) are exempt, which is exactly when Postgres applies no policy.
//!
//! Privileges are learned from the upstream per role (not per session), with the upstream's own
//! `has_*_privilege` functions, and kept in [`Privileges`]. A role that is not known yet is
//! answered upstream while one background fetch learns it. Every [`POLL_INTERVAL_MS`] a
//! fingerprint of the catalog rows privileges depend on (ACLs, owners, row security flags,
//! role attributes and memberships) is compared with the last one; on any change everything
//! learned is forgotten at once and re-learned, so a GRANT or REVOKE takes effect within about
//! one poll interval.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use larder_replication::PgSource;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::core::Core;

pub const POLL_INTERVAL_MS: u64 = 1_000;
/// Roles whose privileges are kept; past it, everything is forgotten and re-learned on demand.
const ROLES_MAX: usize = 4_096;
/// Fetch requests waiting for the background task; more are dropped (and asked again by the
/// next query of that role).
const REQUESTS_MAX: usize = 256;

/// What one role may do with one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableAccess {
    pub schema_usage: bool,
    /// SELECT on the whole table.
    pub table_select: bool,
    /// Columns the role may SELECT (all of them when `table_select`).
    pub columns: Vec<String>,
    /// A row security policy applies to this role on this table.
    pub row_security: bool,
}

/// What one role may do, for the tables caches read.
#[derive(Clone, Debug, Default)]
pub struct RoleAccess {
    /// The role exists upstream.
    pub exists: bool,
    pub superuser: bool,
    /// Superuser, or a member of `--admin-role`.
    pub admin: bool,
    pub tables: HashMap<u32, TableAccess>,
}

/// A relation a query reads, for a privilege check.
pub struct Reads<'a> {
    pub oid: u32,
    pub schema: &'a str,
    pub name: &'a str,
    pub columns: &'a [String],
}

impl RoleAccess {
    /// `Ok` when the role may read these columns of this table the way the upstream would let
    /// it, `Err` with the reason otherwise. `None` when the table is not known for the role.
    pub fn check(&self, role: &str, reads: &Reads<'_>) -> Option<Result<(), String>> {
        if !self.exists {
            return Some(Err(format!("role {role} does not exist upstream")));
        }
        let t = self.tables.get(&reads.oid)?;
        Some(self.may_select(role, reads).and_then(|()| {
            if t.row_security {
                Err(format!(
                    "row security policies on {}.{} apply to role {role}",
                    reads.schema, reads.name
                ))
            } else {
                Ok(())
            }
        }))
    }

    /// Whether the upstream would let the role run a SELECT reading these columns (row
    /// security aside, which filters rows rather than refusing).
    pub fn may_select(&self, role: &str, reads: &Reads<'_>) -> Result<(), String> {
        let (schema, name) = (reads.schema, reads.name);
        let Some(t) = self.tables.get(&reads.oid).filter(|_| self.exists) else {
            return Err(format!(
                "role {role} has no SELECT privilege on {schema}.{name}"
            ));
        };
        if !t.schema_usage {
            Err(format!(
                "role {role} has no USAGE privilege on schema {schema}"
            ))
        } else if t.table_select
            || (!reads.columns.is_empty() && reads.columns.iter().all(|c| t.columns.contains(c)))
        {
            Ok(())
        } else {
            Err(format!(
                "role {role} has no SELECT privilege on {schema}.{name} (or on a column the query reads)"
            ))
        }
    }
}

pub struct Privileges {
    roles: RwLock<HashMap<String, Arc<RoleAccess>>>,
    /// Roles a fetch has been asked for and not finished.
    pending: Mutex<HashSet<String>>,
    requests: mpsc::Sender<String>,
    admin_role: Option<String>,
    /// Bumped whenever everything learned is forgotten: an answer fetched before that must not
    /// be stored after it (it may predate a REVOKE).
    generation: AtomicU64,
    /// Bumped (under the write lock) whenever `roles` changes at all: a thread's memo of the
    /// last role it checked is good while this stays the same.
    version: AtomicU64,
}

/// The last role a cache hit on a thread checked.
struct RoleMemo {
    /// The `Privileges` it came from (its address).
    from: usize,
    /// Its `version` then.
    version: u64,
    role: String,
    access: Arc<RoleAccess>,
}

thread_local! {
    /// Spares the hit path the shared lock and the map lookup: a session's hits nearly always
    /// check the same role again.
    static LAST_ROLE: std::cell::RefCell<Option<RoleMemo>> =
        const { std::cell::RefCell::new(None) };
}

impl Privileges {
    /// The `--admin-role`, if any.
    pub fn admin_role(&self) -> Option<&str> {
        self.admin_role.as_deref()
    }

    pub fn new(admin_role: Option<String>) -> (Arc<Privileges>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(REQUESTS_MAX);
        let p = Privileges {
            roles: RwLock::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
            requests: tx,
            admin_role: admin_role.filter(|r| !r.is_empty()),
            generation: AtomicU64::new(0),
            version: AtomicU64::new(0),
        };
        (Arc::new(p), rx)
    }

    /// The hit-path check: `Err` names why `role` may not be answered from a cache reading
    /// `reads` (or that its privileges are being learned: then a fetch is requested).
    pub fn may_read(&self, role: &str, reads: &Reads<'_>) -> Result<(), String> {
        let me = self as *const Privileges as usize;
        let version = self.version.load(Ordering::Acquire);
        let memo = LAST_ROLE.with(|m| match &*m.borrow() {
            Some(m) if m.from == me && m.version == version && m.role == role => {
                Some(m.access.check(role, reads))
            }
            _ => None,
        });
        let verdict = match memo {
            Some(v) => v,
            None => {
                let access = self
                    .roles
                    .read()
                    .expect("privileges lock poisoned")
                    .get(role)
                    .cloned();
                access.and_then(|a| {
                    let verdict = a.check(role, reads);
                    LAST_ROLE.with(|m| {
                        *m.borrow_mut() = Some(RoleMemo {
                            from: me,
                            version,
                            role: role.to_string(),
                            access: a,
                        });
                    });
                    verdict
                })
            }
        };
        match verdict {
            Some(v) => v,
            None => {
                self.request(role);
                Err(format!("learning the privileges of role {role}"))
            }
        }
    }

    /// Learns `role` in the background unless it is known already (a new session's role).
    pub fn prefetch(&self, role: &str) {
        let known = self
            .roles
            .read()
            .expect("privileges lock poisoned")
            .contains_key(role);
        if !known {
            self.request(role);
        }
    }

    /// Asks the background task to learn `role` (at most one request per role at a time).
    pub fn request(&self, role: &str) {
        let mut pending = self.pending.lock().expect("privileges lock poisoned");
        if pending.len() >= REQUESTS_MAX || pending.contains(role) {
            return;
        }
        if self.requests.try_send(role.to_string()).is_ok() {
            pending.insert(role.to_string());
        }
    }

    /// Keeps `access`, fetched while the generation was `generation`, unless everything was
    /// forgotten since.
    fn store(&self, generation: u64, role: String, access: RoleAccess) {
        let mut roles = self.roles.write().expect("privileges lock poisoned");
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if roles.len() >= ROLES_MAX && !roles.contains_key(&role) {
            roles.clear();
        }
        roles.insert(role, Arc::new(access));
        self.version.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn forget_all(&self) -> Vec<String> {
        let mut roles = self.roles.write().expect("privileges lock poisoned");
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.version.fetch_add(1, Ordering::Release);
        roles.drain().map(|(r, _)| r).collect()
    }

    /// Learns `role`'s privileges on `oids` directly (for Larder statements, which are rare).
    pub async fn fetch_now(
        &self,
        client: &tokio_postgres::Client,
        role: &str,
        oids: &[u32],
    ) -> Result<RoleAccess, tokio_postgres::Error> {
        fetch(client, role, oids, self.admin_role.as_deref()).await
    }
}

/// Learns every login role's privileges (and those of roles already known) on every cached
/// table plus `also`, now, in two queries, and keeps them: run before a cache is published
/// (created, restored or rebuilt) so that the first query of any role is a hit.
pub async fn learn_everyone(
    privileges: &Privileges,
    core: &Core,
    client: &tokio_postgres::Client,
    also: &[u32],
) -> Result<(), tokio_postgres::Error> {
    let mut oids = cached_tables(core);
    for oid in also {
        if !oids.contains(oid) {
            oids.push(*oid);
        }
    }
    let known: Vec<String> = privileges
        .roles
        .read()
        .expect("privileges lock poisoned")
        .keys()
        .cloned()
        .collect();
    let generation = privileges.generation();
    let learned = fetch_many(
        client,
        &known,
        true,
        &oids,
        privileges.admin_role.as_deref(),
    )
    .await?;
    for (role, access) in learned {
        privileges.store(generation, role, access);
    }
    Ok(())
}

/// Reads `role`'s attributes and its privileges on `oids` from the upstream.
pub async fn fetch(
    client: &tokio_postgres::Client,
    role: &str,
    oids: &[u32],
    admin_role: Option<&str>,
) -> Result<RoleAccess, tokio_postgres::Error> {
    let mut learned = fetch_many(client, &[role.to_string()], false, oids, admin_role).await?;
    Ok(learned.remove(role).unwrap_or_default())
}

/// Reads the attributes and the privileges on `oids` of the roles named in `roles` (and of
/// every role that can log in, with `all_login`; at most [`ROLES_MAX`] roles), in two queries.
/// Roles that do not exist are absent from the answer.
async fn fetch_many(
    client: &tokio_postgres::Client,
    roles: &[String],
    all_login: bool,
    oids: &[u32],
    admin_role: Option<&str>,
) -> Result<HashMap<String, RoleAccess>, tokio_postgres::Error> {
    const ROLES: &str = "(SELECT * FROM pg_catalog.pg_roles \
         WHERE rolname = ANY($1) OR ($2 AND rolcanlogin) ORDER BY oid LIMIT 4096)";
    let limit_ok = ROLES_MAX >= 4096;
    debug_assert!(limit_ok);
    let rows = client
        .query(
            &format!(
                "SELECT r.rolname::text, r.rolsuper, \
                        r.rolsuper OR COALESCE((SELECT pg_catalog.pg_has_role(r.oid, a.oid, 'MEMBER') \
                                                FROM pg_catalog.pg_roles a WHERE a.rolname = $3), false) \
                 FROM {ROLES} r"
            ),
            &[&roles, &all_login, &admin_role],
        )
        .await?;
    let mut out: HashMap<String, RoleAccess> = rows
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                RoleAccess {
                    exists: true,
                    superuser: r.get(1),
                    admin: r.get(2),
                    tables: HashMap::new(),
                },
            )
        })
        .collect();
    if oids.is_empty() || out.is_empty() {
        return Ok(out);
    }
    let rows = client
        .query(
            &format!(
                "SELECT r.rolname::text, c.oid, \
                        pg_catalog.has_schema_privilege(r.oid, c.relnamespace, 'USAGE'), \
                        pg_catalog.has_table_privilege(r.oid, c.oid, 'SELECT'), \
                        ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                                AND pg_catalog.has_column_privilege(r.oid, c.oid, a.attnum, 'SELECT')), \
                        c.relrowsecurity AND NOT (r.rolsuper OR r.rolbypassrls \
                            OR (NOT c.relforcerowsecurity \
                                AND pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE'))) \
                 FROM pg_catalog.pg_class c, {ROLES} r \
                 WHERE c.oid = ANY($3)"
            ),
            &[&roles, &all_login, &oids],
        )
        .await?;
    for r in rows {
        let Some(access) = out.get_mut(r.get::<_, &str>(0)) else {
            continue;
        };
        access.tables.insert(
            r.get(1),
            TableAccess {
                schema_usage: r.get(2),
                table_select: r.get(3),
                columns: r.get(4),
                row_security: r.get(5),
            },
        );
    }
    // Tables that no longer exist upstream: nothing may be read from them.
    for access in out.values_mut() {
        for oid in oids {
            access.tables.entry(*oid).or_default();
        }
    }
    Ok(out)
}

/// A digest of every catalog row privileges depend on, for the tables in `oids`.
async fn fingerprint(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_catalog.md5(concat_ws('|', \
               (SELECT string_agg(c.oid::text || ':' || c.relname || ':' || n.nspname || ':' \
                  || coalesce(c.relacl::text, '-') || ':' || c.relowner::text || ':' \
                  || c.relrowsecurity::text || c.relforcerowsecurity::text || ':' \
                  || coalesce(n.nspacl::text, '-') || ':' || n.nspowner::text, ',' ORDER BY c.oid) \
                FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                WHERE c.oid = ANY($1)), \
               (SELECT string_agg(a.attrelid::text || '.' || a.attnum::text || ':' || a.attacl::text, \
                  ',' ORDER BY a.attrelid, a.attnum) \
                FROM pg_catalog.pg_attribute a WHERE a.attrelid = ANY($1) AND a.attacl IS NOT NULL), \
               (SELECT string_agg(m::text, ',' ORDER BY m::text) FROM pg_catalog.pg_auth_members m), \
               (SELECT string_agg(r.oid::text || ':' || r.rolname || ':' || r.rolsuper::text \
                  || r.rolinherit::text || r.rolbypassrls::text, ',' ORDER BY r.oid) \
                FROM pg_catalog.pg_roles r)))",
            &[&oids],
        )
        .await?;
    Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
}

/// Tables some cache reads: what privileges are learned for.
fn cached_tables(core: &Core) -> Vec<u32> {
    let mut oids: Vec<u32> = core
        .caches
        .all()
        .iter()
        .flat_map(|c| c.relations.iter().map(|r| r.oid))
        .collect();
    for c in core.shallow.all() {
        oids.extend(c.relations.iter().map(|r| r.oid));
    }
    oids.sort_unstable();
    oids.dedup();
    oids
}

/// Learns requested roles and watches the catalog for privilege changes.
pub async fn run(
    privileges: Arc<Privileges>,
    core: Arc<Core>,
    source: Arc<PgSource>,
    mut requests: mpsc::Receiver<String>,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut last: Option<(Vec<u32>, String)> = None;
    loop {
        let role = tokio::select! {
            _ = interval.tick() => None,
            r = requests.recv() => match r {
                Some(r) => Some(r),
                None => return,
            },
        };
        if core.is_shutting_down() {
            return;
        }
        if client.is_none() {
            client = source.client().await.ok();
        }
        let Some(c) = &client else {
            // Unreachable upstream: forget the pending requests (they are asked again).
            if let Some(role) = role {
                privileges
                    .pending
                    .lock()
                    .expect("privileges lock poisoned")
                    .remove(&role);
            }
            continue;
        };
        let oids = cached_tables(&core);
        let result = match role {
            Some(role) => learn(&privileges, c, role, &oids).await,
            None => watch(&privileges, &core, c, &oids, &mut last).await,
        };
        if let Err(e) = result {
            debug!(error = %e, "privilege check failed; reconnecting next time");
            client = None;
            last = None;
        }
    }
}

async fn learn(
    privileges: &Privileges,
    client: &tokio_postgres::Client,
    role: String,
    oids: &[u32],
) -> Result<(), tokio_postgres::Error> {
    let generation = privileges.generation();
    let fetched = fetch(client, &role, oids, privileges.admin_role.as_deref()).await;
    privileges
        .pending
        .lock()
        .expect("privileges lock poisoned")
        .remove(&role);
    let access = fetched?;
    debug!(role = %role, tables = access.tables.len(), "learned privileges");
    privileges.store(generation, role, access);
    Ok(())
}

/// Keeps what was learned current. When the privilege catalog changed for the same tables,
/// everything learned is forgotten first (a REVOKE must stop hits before anything else
/// happens), then the roles that were known are learned again so their hits resume. When only
/// the set of cached tables changed, what is known stays valid and is extended in place.
async fn watch(
    privileges: &Privileges,
    core: &Core,
    client: &tokio_postgres::Client,
    oids: &[u32],
    last: &mut Option<(Vec<u32>, String)>,
) -> Result<(), tokio_postgres::Error> {
    let digest = fingerprint(client, oids).await?;
    let (changed, same_tables) = match last {
        Some((o, d)) => (o.as_slice() != oids || *d != digest, o.as_slice() == oids),
        None => (true, false),
    };
    if !changed {
        return Ok(());
    }
    let first = last.is_none();
    *last = Some((oids.to_vec(), digest));
    if same_tables || first {
        let forgotten = privileges.forget_all();
        if same_tables && !forgotten.is_empty() {
            info!(
                roles = forgotten.len(),
                "privileges changed upstream; re-learning"
            );
        }
        // Roles that were known are learned again with every login role.
        let generation = privileges.generation();
        let learned = fetch_many(
            client,
            &forgotten,
            true,
            oids,
            privileges.admin_role.as_deref(),
        )
        .await?;
        for (role, access) in learned {
            privileges.store(generation, role, access);
        }
        return Ok(());
    }
    // Only the set of cached tables changed: what is known stays valid and is extended.
    learn_everyone(privileges, core, client, &[]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads<'a>(columns: &'a [String]) -> Reads<'a> {
        Reads {
            oid: 7,
            schema: "public",
            name: "t",
            columns,
        }
    }

    fn access(t: TableAccess) -> RoleAccess {
        RoleAccess {
            exists: true,
            tables: HashMap::from([(7, t)]),
            ..RoleAccess::default()
        }
    }

    #[test]
    fn column_privileges_must_cover_every_column_read() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let some = access(TableAccess {
            schema_usage: true,
            columns: vec!["a".into()],
            ..TableAccess::default()
        });
        assert!(some.check("r", &reads(&cols)).unwrap().is_err());
        assert!(some.check("r", &reads(&cols[..1])).unwrap().is_ok());
        // Reading no column at all needs the table privilege.
        assert!(some.check("r", &reads(&[])).unwrap().is_err());
        let all = access(TableAccess {
            schema_usage: true,
            table_select: true,
            ..TableAccess::default()
        });
        assert!(all.check("r", &reads(&cols)).unwrap().is_ok());
    }

    #[test]
    fn schema_usage_row_security_and_unknown_tables() {
        let cols = vec!["a".to_string()];
        let no_usage = access(TableAccess {
            table_select: true,
            ..TableAccess::default()
        });
        let e = no_usage.check("r", &reads(&cols)).unwrap().unwrap_err();
        assert!(e.contains("USAGE"), "{e}");
        let rls = access(TableAccess {
            schema_usage: true,
            table_select: true,
            row_security: true,
            ..TableAccess::default()
        });
        let e = rls.check("r", &reads(&cols)).unwrap().unwrap_err();
        assert!(e.contains("row security"), "{e}");
        let other = RoleAccess {
            exists: true,
            ..RoleAccess::default()
        };
        assert!(other.check("r", &reads(&cols)).is_none());
        assert!(RoleAccess::default()
            .check("r", &reads(&cols))
            .unwrap()
            .is_err());
    }

    #[tokio::test]
    async fn unknown_roles_are_requested_once() {
        let (p, mut rx) = Privileges::new(None);
        let cols = vec!["a".to_string()];
        assert!(p.may_read("alice", &reads(&cols)).is_err());
        assert!(p.may_read("alice", &reads(&cols)).is_err());
        assert_eq!(rx.recv().await.as_deref(), Some("alice"));
        assert!(rx.try_recv().is_err());
        p.pending.lock().unwrap().remove("alice");
        p.store(
            0,
            "alice".into(),
            access(TableAccess {
                schema_usage: true,
                table_select: true,
                ..TableAccess::default()
            }),
        );
        assert!(p.may_read("alice", &reads(&cols)).is_ok());
        // An answer fetched before everything was forgotten is not kept.
        let before = p.generation();
        p.forget_all();
        p.store(before, "alice".into(), RoleAccess::default());
        assert!(!p.roles.read().unwrap().contains_key("alice"));
    }
}
