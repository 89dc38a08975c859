//! Starting and stopping one Larder process.

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::config::{Config, Dialect};

/// Run until a shutdown signal arrives on `shutdown` (true), then stop gracefully.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    match cfg.dialect().map_err(anyhow::Error::msg)? {
        Dialect::Postgres => run_postgres(cfg, shutdown).await,
        Dialect::MySql => bail!("MySQL upstreams are not supported yet"),
    }
}

async fn run_postgres(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let upstream = larder_adapter::UpstreamConfig::from_url(&cfg.upstream_db_url)
        .context("parsing --upstream-db-url")?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(
            larder_adapter::load_tls_config(cert, key).context("loading --tls-cert/--tls-key")?,
        ),
        _ => None,
    };
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
    larder_adapter::serve(listener, proxy_cfg, shutdown).await?;
    info!("stopped");
    Ok(())
}
