//! Watches the upstream catalog for shape changes the change stream does not announce.
//!
//! Logical replication carries no DDL: after `ALTER TABLE ... ADD COLUMN` the new shape only
//! arrives with the table's next change, and `DROP TABLE` or a rename never arrives at all.
//! Until then a cache on that table would serve rows of the old shape. So every
//! [`POLL_INTERVAL_MS`] the replicated tables' columns and names are compared with what Larder
//! holds; on any difference the caches on that table stop serving (they go upstream), and they
//! are rebuilt once the stream delivers the new shape (see `replicator::handle_relation`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use larder_replication::PgSource;
use tracing::{debug, warn};

use crate::core::{Core, SearchPathDefaults};

pub const POLL_INTERVAL_MS: u64 = 1_000;

/// (schema, name, columns as (name, type oid, typmod)).
type Shape = (String, String, Vec<(String, u32, i32)>);

pub async fn run(core: Arc<Core>, source: Arc<PgSource>) {
    let mut interval = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    let mut client = None;
    loop {
        interval.tick().await;
        if core.is_shutting_down() {
            return;
        }
        if client.is_none() {
            client = source.client().await.ok();
        }
        let Some(c) = &client else { continue };
        if let Err(e) = keep_ddl_triggers(&core, &source, c).await {
            debug!(error = %e, "checking the DDL event triggers failed");
        }
        match check_once(&core, c).await {
            Ok(()) => {}
            Err(e) => {
                debug!(error = %e, "catalog check failed; reconnecting next time");
                client = None;
            }
        }
    }
}

/// Puts Larder's DDL event triggers back when a user's DDL removed them (say `DROP SCHEMA
/// larder CASCADE`, or an `ALTER EVENT TRIGGER ... DISABLE`). Meanwhile this watch's own
/// polling notices shape changes, as it does for a role that cannot install them.
async fn keep_ddl_triggers(
    core: &Core,
    source: &PgSource,
    client: &tokio_postgres::Client,
) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    if !core.ddl_triggers.load(Ordering::SeqCst)
        || PgSource::ddl_announcements_present(client)
            .await
            .map_err(|e| e.to_string())?
    {
        return Ok(());
    }
    warn!("Larder's DDL event triggers were removed upstream; installing them again");
    // A disabled trigger is not replaced by the idempotent install: drop them first.
    client
        .batch_execute(
            "DROP EVENT TRIGGER IF EXISTS larder_ddl_end; DROP EVENT TRIGGER IF EXISTS larder_ddl_drop",
        )
        .await
        .map_err(|e| e.to_string())?;
    source
        .ensure_ddl_announcements()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn check_once(
    core: &Core,
    client: &tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    check_output_overrides(core, client).await?;
    let held: Vec<(u32, Shape)> = {
        let tables = core.tables.read().expect("tables lock poisoned");
        tables
            .all()
            .filter(|t| t.stored.is_some())
            .map(|t| {
                let cols = t
                    .schema
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_oid, c.typmod))
                    .collect();
                (
                    t.oid,
                    (t.schema.schema.clone(), t.schema.name.clone(), cols),
                )
            })
            .collect()
    };
    // Only tables some cache reads matter: the others are fixed by their next change.
    let watched: Vec<u32> = {
        let caches = core.caches.all();
        held.iter()
            .map(|(oid, _)| *oid)
            .filter(|oid| caches.iter().any(|c| c.reads(*oid)))
            .collect()
    };
    if watched.is_empty() {
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT c.oid, n.nspname, c.relname, a.attname, a.atttypid, a.atttypmod \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
               AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             WHERE c.oid = ANY($1) ORDER BY c.oid, a.attnum",
            &[&watched],
        )
        .await?;
    let mut upstream: HashMap<u32, Shape> = HashMap::new();
    for r in rows {
        let oid: u32 = r.get(0);
        let entry = upstream
            .entry(oid)
            .or_insert_with(|| (r.get(1), r.get(2), Vec::new()));
        entry.2.push((r.get(3), r.get(4), r.get(5)));
    }
    for (oid, shape) in held.into_iter().filter(|(oid, _)| watched.contains(oid)) {
        let reason = match upstream.get(&oid) {
            None => format!("table {}.{} was dropped upstream", shape.0, shape.1),
            Some(now) if *now != shape => format!(
                "table {}.{} changed upstream; the cache is rebuilt with the table's next change",
                shape.0, shape.1
            ),
            Some(_) => continue,
        };
        for cache in core.caches.reading(oid) {
            if cache.invalid_reason().is_none() {
                warn!(cache = %cache.name, %reason, "cache stops serving");
                cache.invalidate(&reason);
            }
        }
    }
    Ok(())
}

/// Role and database defaults that change how floats or bytea print (`ALTER ROLE/DATABASE
/// ... SET`): sessions they apply to are not answered from caches with such columns.
async fn check_output_overrides(
    core: &Core,
    client: &tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT coalesce(r.rolname::text, ''), coalesce(d.datname::text, ''), s.setconfig \
             FROM pg_catalog.pg_db_role_setting s \
             LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole \
             LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase",
            &[],
        )
        .await?;
    let mut overrides = Vec::new();
    let mut paths = Vec::new();
    for r in rows {
        let settings: Vec<String> = r.get::<_, Option<Vec<String>>>(2).unwrap_or_default();
        for kv in &settings {
            if let Some((k, v)) = kv.split_once('=') {
                if k.trim().eq_ignore_ascii_case("search_path") {
                    paths.push((r.get(0), r.get(1), v.to_string()));
                }
            }
        }
        let custom = settings.iter().any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k.trim().to_ascii_lowercase().as_str() {
                "extra_float_digits" => v.trim().parse::<i32>().map_or(true, |d| d < 1),
                "bytea_output" => !v.trim().eq_ignore_ascii_case("hex"),
                _ => false,
            }
        });
        if custom {
            overrides.push((r.get(0), r.get(1)));
        }
    }
    *core
        .output_overrides
        .write()
        .expect("overrides lock poisoned") = overrides;
    // The server's own default, as Larder's own session sees it when no role or database
    // default applies to it (otherwise unknown, and sessions ask the upstream).
    let server = client
        .query_one(
            "SELECT setting, source FROM pg_catalog.pg_settings WHERE name = 'search_path'",
            &[],
        )
        .await
        .ok()
        .and_then(|r| {
            let source: String = r.get(1);
            matches!(
                source.as_str(),
                "default" | "configuration file" | "command line" | "environment variable"
            )
            .then(|| r.get::<_, String>(0))
        });
    *core
        .search_path_defaults
        .write()
        .expect("defaults lock poisoned") = server.map(|server| SearchPathDefaults {
        server,
        settings: paths,
    });
    Ok(())
}
