//! MySQL/MariaDB mode: Larder as a transparent relay that also replicates the database
//! (snapshot, then binlog) into its storage and dataflow. No cache answers yet: the router
//! is still to come.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;

/// How often `/ready` checks that the upstream accepts TCP connections.
const UPSTREAM_PROBE_INTERVAL: Duration = Duration::from_secs(5);

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
    let core = start_replication(&cfg, url.expose(), ops.clone())?;
    if let Some(addr) = cfg.metrics_address {
        let listener = crate::ops::http::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-address {addr}"))?;
        let endpoints = Arc::new(crate::ops::http::Endpoints {
            registry: crate::ops::metrics::MetricsRegistry::new(ops.clone(), Some(core.clone())),
            ops: ops.clone(),
            // Readiness is the relay's: no cache answers on MySQL yet, so replication's
            // freshness does not decide it.
            core: None,
        });
        tokio::spawn(crate::ops::http::serve(
            listener,
            endpoints,
            shutdown.clone(),
        ));
        tokio::spawn(probe_upstream(
            ops.clone(),
            upstream.address(),
            shutdown.clone(),
        ));
    }
    let listener = TcpListener::bind(cfg.address)
        .await
        .with_context(|| format!("binding {}", cfg.address))?;
    warn!(upstream = %upstream.address(),
        "MySQL mode: Larder relays every statement to the upstream and caches nothing yet; \
         CREATE CACHE and Larder's other statements are refused");
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
    });
    let served = larder_adapter::mysql::serve(listener, proxy_cfg, shutdown).await;
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
/// never stops the relay.
fn start_replication(
    cfg: &Config,
    url: &str,
    ops: Arc<crate::ops::Ops>,
) -> anyhow::Result<Arc<crate::core::Core>> {
    std::fs::create_dir_all(&cfg.storage_dir)
        .with_context(|| format!("creating --storage-dir {}", cfg.storage_dir.display()))?;
    let path = storage_path(cfg);
    let storage = crate::storage::Storage::open(&path)
        .with_context(|| format!("opening storage at {}", path.display()))?;
    if storage.position()?.is_some() && storage.resume()?.is_none() {
        bail!(
            "the storage at {} holds a Postgres upstream's data: use another --storage-dir or --deployment",
            path.display()
        );
    }
    let core = crate::core::Core::with_ops(storage, Default::default(), ops);
    let server_id = cfg
        .replication_server_id
        .unwrap_or_else(|| default_server_id(&cfg.deployment));
    let source = match larder_replication::mysql::MySource::new(url, server_id) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "MySQL replication cannot use this --upstream-db-url; the relay goes on without it");
            core.set_replication_status(&format!("Not started: {e}"));
            return Ok(core);
        }
    };
    let replicating = core.clone();
    tokio::spawn(async move {
        let mut backoff_ms = 500u64;
        loop {
            match crate::replicator::start_mysql(replicating.clone(), source.clone()).await {
                Ok(()) => return,
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
    Ok(core)
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

/// Keeps `/ready` informed: the upstream is reachable when it accepts a TCP connection.
async fn probe_upstream(
    ops: Arc<crate::ops::Ops>,
    address: String,
    mut shutdown: watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering;
    loop {
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(address.as_str()),
        )
        .await;
        let error = match result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("connect timed out".to_string()),
        };
        let fr = &ops.freshness;
        fr.upstream_reachable
            .store(error.is_none(), Ordering::Relaxed);
        *fr.upstream_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
        tokio::select! {
            _ = tokio::time::sleep(UPSTREAM_PROBE_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
