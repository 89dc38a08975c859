//! MySQL/MariaDB mode: Larder as a transparent relay that replicates the database (snapshot,
//! then binlog) into its storage and dataflow, and answers cached queries from it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use std::sync::atomic::AtomicU64;

use larder_sql::statement::Dialect;

use crate::config::Config;
use crate::controller::{Controller, ProxiedQueries};

/// Serves MySQL clients as a relay until `shutdown`.
pub async fn run_mysql(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if cfg.cleanup {
        // Larder creates nothing upstream on MySQL (a replica leaves no trace there): only
        // its own storage goes.
        let path = storage_path(&cfg);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing the storage at {}", path.display()))?;
        }
        info!(storage = %path.display(), "--cleanup: storage removed (nothing to remove upstream)");
        return Ok(());
    }
    if cfg.unix_socket_dir.is_some() {
        bail!("--unix-socket-dir is not supported with a MySQL upstream yet");
    }
    let url = cfg.effective_upstream_url()?;
    let upstream = larder_adapter::mysql::MyUpstreamConfig::from_url(url.expose())
        .context("parsing --upstream-db-url")?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(
            larder_adapter::mysql::load_tls_config(cert, key)
                .context("loading --tls-cert/--tls-key")?,
        ),
        _ => None,
    };
    let ops = Arc::new(crate::ops::Ops::new(Duration::from_millis(
        cfg.max_replication_lag_ms,
    )));
    let auto = (cfg.query_caching == crate::config::QueryCaching::Async).then(|| {
        crate::backend::AutoCaching::new(
            cfg.query_caching_caches_max,
            tokio::runtime::Handle::current(),
        )
    });
    let (core, controller) = start_replication(
        &cfg,
        url.expose(),
        &upstream.address(),
        ops.clone(),
        shutdown.clone(),
    )?;
    // Larder's statements and upstream questions run on this (multi-thread) runtime, whatever
    // runtime a session is on.
    let backend: Option<Arc<dyn larder_adapter::cache::CacheBackend>> = controller.map(|c| {
        Arc::new(larder_adapter::runtime::ExecuteOn::new(
            Arc::new(crate::backend::Backend::new(c, auto)),
            tokio::runtime::Handle::current(),
        )) as Arc<_>
    });
    if let Some(addr) = cfg.metrics_address {
        let listener = crate::ops::http::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-address {addr}"))?;
        let endpoints = Arc::new(crate::ops::http::Endpoints {
            registry: crate::ops::metrics::MetricsRegistry::new(ops.clone(), Some(core.clone())),
            ops: ops.clone(),
            core: Some(core.clone()),
        });
        tokio::spawn(crate::ops::http::serve(
            listener,
            endpoints,
            shutdown.clone(),
        ));
    }
    info!(upstream = %upstream.address(), "MySQL mode");
    let proxy_cfg = Arc::new(larder_adapter::mysql::MyProxyConfig {
        listen: cfg.address,
        upstream,
        max_connections: cfg.max_connections,
        max_packet_bytes: cfg.message_size_max_bytes,
        startup_timeout_ms: cfg.startup_timeout_ms,
        idle_timeout_ms: cfg.idle_timeout_ms,
        shutdown_grace_ms: cfg.shutdown_grace_ms,
        tls,
        metrics: ops.proxy.clone(),
        backend,
    });
    let proxy = larder_adapter::mysql::MyProxy::new(proxy_cfg)?;
    let binding = || format!("binding {}", cfg.address);
    let served = match cfg.session_runtime {
        crate::config::SessionRuntime::MultiThread => {
            let listener = TcpListener::bind(cfg.address).await.with_context(binding)?;
            proxy.log_listening(listener.local_addr().ok());
            proxy.serve(listener, shutdown).await
        }
        crate::config::SessionRuntime::PerCore => {
            let listeners =
                larder_adapter::runtime::bind_reuseport(cfg.address, cfg.session_threads())
                    .with_context(binding)?;
            proxy.log_listening(listeners[0].local_addr().ok());
            larder_adapter::runtime::serve_per_core(proxy, listeners, None, shutdown).await
        }
    };
    // Replication stops; the storage is closed here, on this thread, once its tasks let go.
    core.status
        .shutting_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&core) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if Arc::strong_count(&core) > 1 {
        warn!("replication did not stop in time; its storage is left to the process exit");
        std::mem::forget(core);
    } else {
        drop(core);
    }
    served?;
    info!("stopped");
    Ok(())
}

/// Opens the storage and replicates the upstream database into it in the background: a
/// replication that cannot start (binlog settings, privileges) is logged and retried, and
/// never stops the relay. Once replication runs, the stored caches are built again. The
/// controller is `None` when the URL cannot be replicated (the relay runs alone).
fn start_replication(
    cfg: &Config,
    url: &str,
    address: &str,
    ops: Arc<crate::ops::Ops>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Arc<crate::core::Core>, Option<Arc<Controller>>)> {
    std::fs::create_dir_all(&cfg.storage_dir)
        .with_context(|| format!("creating --storage-dir {}", cfg.storage_dir.display()))?;
    let path = storage_path(cfg);
    let storage = crate::storage::Storage::open_with(&path, cfg.storage_memory())
        .with_context(|| format!("opening storage at {}", path.display()))?;
    if storage.position()?.is_some() && storage.resume()?.is_none() {
        bail!(
            "the storage at {} holds a Postgres upstream's data: use another --storage-dir or --deployment",
            path.display()
        );
    }
    let core = crate::core::Core::with_ops(storage, Default::default(), ops.clone());
    let server_id = cfg
        .replication_server_id
        .unwrap_or_else(|| default_server_id(&cfg.deployment));
    let source = match larder_replication::mysql::MySource::new(url, server_id) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "MySQL replication cannot use this --upstream-db-url; the relay goes on without it");
            core.set_replication_status(&format!("Not started: {e}"));
            return Ok((core, None));
        }
    };
    crate::run::start_caching(&core, cfg)?;
    let (privileges, _requests) = crate::privileges::Privileges::new(None);
    let controller = Arc::new(Controller {
        core: core.clone(),
        source: None,
        proxied: ProxiedQueries::default(),
        database: source.database().to_string(),
        upstream_display: format!("{address}/{}", source.database()),
        connections: AtomicU64::new(0),
        unbuilt: std::sync::Mutex::new(Vec::new()),
        privileges,
        relations: Arc::new(crate::relations::Relations::default()),
        upstream: tokio::sync::Mutex::new(None),
        shallow: crate::controller::ShallowSettings::from_config(cfg),
        dialect: Dialect::MySql,
        mysql: Some(source.clone()),
    });
    let replicating = core.clone();
    tokio::spawn(learn_time_zone(source.clone(), shutdown.clone()));
    tokio::spawn(crate::ops::freshness::run(
        ops,
        crate::ops::freshness::PolledSource::My(source.clone()),
        Some(core.clone()),
        shutdown,
    ));
    let caches = controller.clone();
    tokio::spawn(async move {
        let mut backoff_ms = 500u64;
        loop {
            match crate::replicator::start_mysql(replicating.clone(), source.clone()).await {
                Ok(()) => {
                    crate::run::restore_caches(&caches).await;
                    tokio::spawn(crate::run::refill_caches_forever(caches.clone()));
                    crate::run::rebuild_caches_forever(caches).await;
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff_ms,
                        "MySQL replication could not start; the relay goes on");
                    replicating.set_last_error(e.to_string());
                    replicating.set_replication_status(&format!("Not started: {e}"));
                    if replicating.is_shutting_down() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(30_000);
                }
            }
        }
    });
    Ok((core, Some(controller)))
}
/// How often the upstream's default time zone is read again (`SET GLOBAL time_zone` is not
/// in the binlog).
const TIME_ZONE_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Keeps `MySource::sessions_start_in_utc` current until shutdown.
async fn learn_time_zone(
    source: Arc<larder_replication::mysql::MySource>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = source.learn_time_zone().await {
            tracing::debug!(error = %e, "reading the upstream's time zone");
        }
        tokio::select! {
            _ = tokio::time::sleep(TIME_ZONE_POLL_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Where this deployment's storage lives (as on Postgres).
fn storage_path(cfg: &Config) -> std::path::PathBuf {
    cfg.storage_dir.join(format!(
        "{}.db",
        larder_replication::pg::object_name(&cfg.deployment)
    ))
}

/// A server id from the deployment name, away from the small ids servers usually take.
fn default_server_id(deployment: &str) -> u32 {
    let hash = deployment.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    0x4000_0000 | (hash as u32 & 0x3fff_ffff)
}
