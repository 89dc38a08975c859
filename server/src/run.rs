//! Starting and stopping one Larder process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use larder_replication::PgSource;
use larder_sql::normalize::normalize;
use larder_sql::statement::Dialect as SqlDialect;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, Dialect};
use crate::controller::{Controller, ProxiedQueries};
use crate::core::Core;
use crate::storage::Storage;

/// Run until a shutdown signal arrives on `shutdown` (true), then stop gracefully.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    match cfg.dialect().map_err(anyhow::Error::msg)? {
        Dialect::Postgres => run_postgres(cfg, shutdown).await,
        Dialect::MySql => bail!("MySQL upstreams are not supported yet"),
    }
}

/// `--cleanup`: remove what this deployment created upstream and on disk.
async fn clean_up(cfg: &Config) -> anyhow::Result<()> {
    let source = PgSource::new(
        &cfg.upstream_db_url,
        &cfg.deployment,
        &cfg.replication_tables,
    )
    .context("configuring replication")?;
    let removed = source.clean_up().await.context("cleaning up upstream")?;
    for what in &removed {
        info!(%what, "removed");
    }
    let storage_path = cfg.storage_dir.join(format!(
        "{}.db",
        larder_replication::pg::object_name(&cfg.deployment)
    ));
    if storage_path.exists() {
        std::fs::remove_dir_all(&storage_path)
            .with_context(|| format!("removing {}", storage_path.display()))?;
        info!(path = %storage_path.display(), "removed storage");
    }
    info!(deployment = %cfg.deployment, "clean-up done");
    Ok(())
}

async fn run_postgres(cfg: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if cfg.cleanup {
        return clean_up(&cfg).await;
    }
    let upstream = larder_adapter::UpstreamConfig::from_url(&cfg.upstream_db_url)
        .context("parsing --upstream-db-url")?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(
            larder_adapter::load_tls_config(cert, key).context("loading --tls-cert/--tls-key")?,
        ),
        _ => None,
    };
    let database = upstream
        .dbname
        .clone()
        .or_else(|| upstream.user.clone())
        .unwrap_or_else(|| "postgres".into());
    let upstream_display = format!("{}:{}/{}", upstream.host, upstream.port, database);
    let proxy_cfg = Arc::new(larder_adapter::PgProxyConfig {
        listen: cfg.address,
        upstream,
        max_connections: cfg.max_connections,
        message_size_max_bytes: cfg.message_size_max_bytes,
        startup_timeout_ms: cfg.startup_timeout_ms,
        idle_timeout_ms: cfg.idle_timeout_ms,
        shutdown_grace_ms: cfg.shutdown_grace_ms,
        tls,
    });
    let listener = TcpListener::bind(cfg.address)
        .await
        .with_context(|| format!("binding {}", cfg.address))?;
    info!(address = %cfg.address, "accepting Postgres clients");

    if cfg.proxy_only {
        larder_adapter::serve(listener, proxy_cfg, shutdown).await?;
        info!("stopped");
        return Ok(());
    }

    std::fs::create_dir_all(&cfg.storage_dir)
        .with_context(|| format!("creating --storage-dir {}", cfg.storage_dir.display()))?;
    let storage_path = cfg.storage_dir.join(format!(
        "{}.db",
        larder_replication::pg::object_name(&cfg.deployment)
    ));
    let storage = Storage::open(&storage_path)
        .with_context(|| format!("opening storage at {}", storage_path.display()))?;
    let core = Core::new(storage);
    crate::replicator::load_stored_tables(&core).context("loading stored tables")?;
    crate::replicator::hold_partial_tables(&core)
        .context("reading the partly applied transaction")?;
    let source = Arc::new(
        PgSource::new(
            &cfg.upstream_db_url,
            &cfg.deployment,
            &cfg.replication_tables,
        )
        .context("configuring replication")?
        .with_options(larder_replication::PgSourceOptions {
            transaction_memory_max_bytes: cfg.transaction_memory_max_bytes,
            ..Default::default()
        }),
    );
    let controller = Arc::new(Controller {
        core: core.clone(),
        source: Some(source.clone()),
        proxied: ProxiedQueries::default(),
        database,
        upstream_display,
        connections: AtomicU64::new(0),
        unbuilt: std::sync::Mutex::new(Vec::new()),
    });
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<String>(1);
    tokio::spawn(start_replication(
        controller.clone(),
        source.clone(),
        fatal_tx,
    ));

    let backend: Arc<dyn larder_adapter::cache::CacheBackend> =
        Arc::new(crate::backend::Backend::new(controller.clone()));
    let backend = Arc::new(larder_adapter::pg::CacheRouter::new(backend));
    let serve = larder_adapter::serve_with(listener, proxy_cfg, shutdown.clone(), backend);
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => r?,
        _ = shutdown.wait_for(|s| *s) => {
            core.status.shutting_down.store(true, Ordering::SeqCst);
            serve.await?;
        }
        Some(message) = fatal_rx.recv() => {
            core.status.shutting_down.store(true, Ordering::SeqCst);
            bail!("{message}");
        }
    }
    core.status.shutting_down.store(true, Ordering::SeqCst);
    if let Err(e) = core.storage.flush_wal() {
        warn!(error = %e, "flushing storage at shutdown");
    }
    info!("stopped");
    Ok(())
}

/// Replication start-up runs in the background so the proxy serves from the first second;
/// caches become available once their tables are online.
async fn start_replication(
    controller: Arc<Controller>,
    source: Arc<PgSource>,
    fatal: tokio::sync::mpsc::Sender<String>,
) {
    let core = controller.core.clone();
    let mut backoff_ms = 500u64;
    loop {
        match crate::replicator::start(core.clone(), source.clone()).await {
            Ok(()) => break,
            Err(e) if e.needs_operator() => {
                error!(error = %e, "replication prerequisites are not met; stopping");
                let _ = fatal
                    .send(format!("cannot replicate from the upstream: {e}"))
                    .await;
                return;
            }
            Err(e) => {
                error!(error = %e, retry_in_ms = backoff_ms, "replication could not start");
                core.set_last_error(e.to_string());
                core.set_replication_status(&format!("Not started: {e}"));
                if core.is_shutting_down() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(30_000);
            }
        }
    }
    restore_caches(&controller).await;
    tokio::spawn(crate::catalog_watch::run(core.clone(), source.clone()));
    rebuild_caches_forever(controller).await;
}

/// Rebuild the caches stored by an earlier run.
async fn restore_caches(controller: &Controller) {
    let stored = match controller.core.storage.caches() {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "reading stored caches");
            return;
        }
    };
    for c in stored {
        let normalized = match normalize(&c.query, SqlDialect::Postgres) {
            Ok(n) => n,
            Err(e) => {
                error!(cache = %c.name, error = %e, "stored cache no longer parses; skipping");
                continue;
            }
        };
        match controller
            .build_cache(&c.name, &c.query, &normalized, c.always)
            .await
        {
            Ok(entry) => {
                info!(cache = %c.name, "cache restored");
                controller.core.caches.insert(entry);
            }
            Err(e) => {
                warn!(cache = %c.name, error = %e, "cache not restored yet; retried when its table is online");
                controller
                    .unbuilt
                    .lock()
                    .expect("unbuilt lock poisoned")
                    .push((c, e.to_string()));
            }
        }
    }
}

/// Rebuild the caches of tables that came back online after a shape change.
async fn rebuild_caches_forever(controller: Arc<Controller>) {
    loop {
        let oids = match controller.core.rebuild.next().await {
            crate::core::Rebuild::Table(oid) => vec![oid],
            crate::core::Rebuild::All => controller
                .core
                .tables
                .read()
                .expect("tables lock poisoned")
                .all()
                .map(|t| t.oid)
                .collect(),
        };
        controller.retry_unbuilt().await;
        for oid in oids {
            rebuild_caches_of(&controller, oid).await;
        }
    }
}

/// Rebuild the caches of one table that are not serving (or were built on an older oid).
async fn rebuild_caches_of(controller: &Controller, oid: u32) {
    let Some((schema, name)) = controller
        .core
        .tables
        .read()
        .expect("tables lock poisoned")
        .get(oid)
        .map(|t| (t.schema.schema.clone(), t.schema.name.clone()))
    else {
        return;
    };
    let stale = controller.core.caches.all().into_iter().filter(|c| {
        c.table_schema == schema
            && c.table_name == name
            && (c.invalid_reason().is_some() || c.table_oid != oid)
    });
    for cache in stale {
        let normalized = match normalize(&cache.query, SqlDialect::Postgres) {
            Ok(n) => n,
            Err(e) => {
                cache.invalidate(&format!("cannot be rebuilt: {e}"));
                continue;
            }
        };
        match controller
            .build_cache(&cache.name, &cache.query, &normalized, cache.always)
            .await
        {
            Ok(entry) => {
                info!(cache = %cache.name, "cache rebuilt after a table change");
                controller.core.caches.insert(entry);
            }
            Err(e) => {
                warn!(cache = %cache.name, error = %e, "cache cannot be rebuilt after a table change");
                cache.invalidate(&format!("its table changed and it cannot be rebuilt: {e}"));
            }
        }
    }
}
