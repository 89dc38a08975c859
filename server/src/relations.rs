//! Larder's own knowledge of the upstream database's relations, so that an unqualified table
//! name can be resolved along a session's `search_path` without asking the upstream.
//!
//! Every relation of every schema is known (tables, views, indexes, sequences, temporary
//! tables of every session: anything that can shadow a name), by oid, schema and name. The
//! list is reloaded whenever a cheap digest of `pg_class`/`pg_namespace` changes, checked every
//! [`POLL_INTERVAL_MS`] (and at once when a session asks for a newer one). Each load records the
//! upstream WAL position read *before* the catalog was read: a DDL statement whose commit a
//! session saw before it asked for `pg_current_wal_lsn()` (the read-your-DDL barrier) is
//! therefore in every load whose position is at or past that barrier, and the router uses local
//! resolution only then. DDL of other sessions is seen within one poll interval, whatever
//! removed or created the relation (`DROP SCHEMA … CASCADE`, `DROP OWNED`, renames, a table
//! re-created under an old name), because the list is rebuilt, not patched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use larder_replication::PgSource;
use tokio::sync::Notify;
use tracing::debug;

use crate::core::Core;

pub const POLL_INTERVAL_MS: u64 = 1_000;
/// Relations kept at most; a larger catalog is not used for local resolution (sessions then
/// ask the upstream), so memory stays bounded.
const RELATIONS_MAX: usize = 1_000_000;

/// One load of the catalog.
#[derive(Default)]
pub struct RelationSnapshot {
    /// The upstream WAL position read before this load: it reflects every DDL committed
    /// before that position.
    pub as_of_lsn: u64,
    /// schema -> relation name -> oid.
    by_schema: HashMap<String, HashMap<String, u32>>,
}

impl RelationSnapshot {
    pub fn oid(&self, schema: &str, name: &str) -> Option<u32> {
        self.by_schema.get(schema)?.get(name).copied()
    }

    pub fn has(&self, schema: &str, name: &str) -> bool {
        self.oid(schema, name).is_some()
    }
}

#[derive(Default)]
pub struct Relations {
    snapshot: RwLock<Option<Arc<RelationSnapshot>>>,
    /// Bumped whenever a load with different content is stored.
    generation: AtomicU64,
    wanted: Notify,
    /// A session is waiting for a newer load.
    hurry: AtomicBool,
}

impl Relations {
    /// The last load, if any.
    pub fn snapshot(&self) -> Option<Arc<RelationSnapshot>> {
        self.snapshot
            .read()
            .expect("relations lock poisoned")
            .clone()
    }

    /// The last load if it covers `min_lsn`; otherwise asks for a new one and returns `None`.
    pub fn current(&self, min_lsn: u64) -> Option<Arc<RelationSnapshot>> {
        match self.snapshot() {
            Some(s) if s.as_of_lsn >= min_lsn => Some(s),
            _ => {
                if !self.hurry.swap(true, Ordering::AcqRel) {
                    self.wanted.notify_one();
                }
                None
            }
        }
    }

    /// The oid of `schema.name` in the last load. Each thread keeps the load it last used
    /// while the generation stays the same, so a cache hit takes neither the lock nor a
    /// reference count shared with other cores.
    pub fn oid(&self, schema: &str, name: &str) -> Option<u32> {
        thread_local! {
            static LAST: std::cell::RefCell<Option<(usize, u64, Arc<RelationSnapshot>)>> =
                const { std::cell::RefCell::new(None) };
        }
        let me = self as *const Relations as usize;
        let generation = self.generation();
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((p, g, snap)) if *p == me && *g == generation => snap.oid(schema, name),
                _ => {
                    let snap = self.snapshot()?;
                    let oid = snap.oid(schema, name);
                    *last = Some((me, generation, snap));
                    oid
                }
            }
        })
    }

    /// See [`Relations::store`]; content that did not change keeps the generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn store(&self, s: RelationSnapshot) {
        let mut slot = self.snapshot.write().expect("relations lock poisoned");
        let same = slot
            .as_ref()
            .is_some_and(|old| old.by_schema == s.by_schema);
        if !same {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        *slot = Some(Arc::new(s));
    }
}

/// Keeps [`Relations`] current.
pub async fn run(relations: Arc<Relations>, core: Arc<Core>, source: Arc<PgSource>) {
    let mut interval = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut digest: Option<(i64, i64)> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = relations.wanted.notified() => {}
        }
        relations.hurry.store(false, Ordering::Release);
        if core.is_shutting_down() {
            return;
        }
        if client.is_none() {
            client = source.client().await.ok();
        }
        let Some(c) = &client else { continue };
        if let Err(e) = refresh(&relations, c, &mut digest).await {
            debug!(error = %e, "reading the relation catalog failed; reconnecting next time");
            client = None;
            digest = None;
        }
    }
}

async fn refresh(
    relations: &Relations,
    client: &tokio_postgres::Client,
    digest: &mut Option<(i64, i64)>,
) -> Result<(), tokio_postgres::Error> {
    // The position first, in its own statement: the catalog read below takes a later snapshot.
    let as_of_lsn = current_wal_position(client).await?;
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(c.oid::int8 * 31 \
                 + pg_catalog.hashtext(n.nspname || '.' || c.relname)), 0)::int8 \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
            &[],
        )
        .await?;
    let now = (row.get::<_, i64>(0), row.get::<_, i64>(1));
    if *digest == Some(now) {
        // Unchanged: the last load holds as of this position too.
        if let Some(old) = relations.snapshot() {
            relations.store(RelationSnapshot {
                as_of_lsn,
                by_schema: old.by_schema.clone(),
            });
            return Ok(());
        }
    }
    if now.0 as usize > RELATIONS_MAX {
        *digest = None;
        *relations.snapshot.write().expect("relations lock poisoned") = None;
        relations.generation.fetch_add(1, Ordering::AcqRel);
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.oid \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
            &[],
        )
        .await?;
    let mut by_schema: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for r in rows {
        by_schema
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), r.get(2));
    }
    *digest = Some(now);
    relations.store(RelationSnapshot {
        as_of_lsn,
        by_schema,
    });
    Ok(())
}

/// The upstream's current WAL position, as a number (no text to parse).
pub async fn current_wal_position(
    client: &tokio_postgres::Client,
) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT (pg_catalog.pg_current_wal_lsn() - '0/0'::pg_catalog.pg_lsn)::int8",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_serves_only_barriers_it_covers() {
        let r = Relations::default();
        assert!(r.current(0).is_none());
        let mut by_schema = HashMap::new();
        by_schema.insert(
            "public".to_string(),
            HashMap::from([("items".to_string(), 42u32)]),
        );
        r.store(RelationSnapshot {
            as_of_lsn: 100,
            by_schema,
        });
        let s = r.current(100).expect("covers its own position");
        assert_eq!(s.oid("public", "items"), Some(42));
        assert!(!s.has("public", "other"));
        assert!(r.current(101).is_none());
    }
}
