//! MySQL/MariaDB mode: Larder as a transparent relay (no caching, no replication yet).

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
        info!(
            "--cleanup: nothing to remove for a MySQL upstream (Larder creates nothing there yet)"
        );
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
    if let Some(addr) = cfg.metrics_address {
        let listener = crate::ops::http::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-address {addr}"))?;
        let endpoints = Arc::new(crate::ops::http::Endpoints {
            registry: crate::ops::metrics::MetricsRegistry::new(ops.clone(), None),
            ops: ops.clone(),
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
    larder_adapter::mysql::serve(listener, proxy_cfg, shutdown).await?;
    info!("stopped");
    Ok(())
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
