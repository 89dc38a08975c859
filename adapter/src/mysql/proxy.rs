//! The accept loop: connection limits, per-connection tasks and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::session::{handle_connection, ConnectionIds, Shared};
use super::upstream::MyUpstreamConnector;
use super::MyProxyConfig;
use crate::AdapterError;

/// Connections beyond `max_connections` that may still be told "too many connections";
/// past this, new connections are closed at once.
const HANDSHAKES_EXTRA_MAX: usize = 128;
/// Pause after a failed accept (e.g. out of file descriptors) to avoid a busy loop.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// The MySQL relay: one connection limit and one table of connection ids, however many
/// listeners (and runtimes) serve it.
pub struct MyProxy {
    shared: Arc<Shared>,
    handshakes: Arc<Semaphore>,
}

impl MyProxy {
    /// Validates `cfg` and sets up the shared state.
    pub fn new(cfg: Arc<MyProxyConfig>) -> Result<Arc<MyProxy>, AdapterError> {
        cfg.validate()?;
        let shared = Arc::new(Shared {
            connector: MyUpstreamConnector::new(cfg.upstream.clone())?,
            sessions: Arc::new(Semaphore::new(cfg.max_connections)),
            ids: ConnectionIds::default(),
            cfg: cfg.clone(),
            views: Default::default(),
        });
        let handshakes = Arc::new(Semaphore::new(
            cfg.max_connections.saturating_add(HANDSHAKES_EXTRA_MAX),
        ));
        Ok(Arc::new(MyProxy { shared, handshakes }))
    }

    pub fn log_listening(&self, listen: Option<std::net::SocketAddr>) {
        let cfg = &self.shared.cfg;
        info!(listen = ?listen, upstream = %cfg.upstream.address(),
            max_connections = cfg.max_connections, client_tls = cfg.tls.is_some(),
            caching = cfg.backend.is_some(), "mysql relay listening");
    }

    /// Serves MySQL clients on `listener` until `shutdown` becomes true.
    ///
    /// On shutdown it stops accepting; idle sessions are told ER_SERVER_SHUTDOWN and closed,
    /// busy ones finish their in-flight command, for up to `shutdown_grace_ms`; then the rest
    /// are dropped. If the shutdown sender is dropped without signalling, Larder keeps serving.
    pub async fn serve(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AdapterError> {
        let cfg = &self.shared.cfg;
        let mut tasks = JoinSet::new();
        let mut watching = true;
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed(), if watching => watching = changed.is_ok(),
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                            warn!(%peer, "too many connections; closing");
                            cfg.metrics.refused.inc();
                            continue;
                        };
                        tasks.spawn(handle_connection(
                            self.shared.clone(), tcp, peer, shutdown.clone(), permit,
                        ));
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(listener);
        drain(tasks, cfg.shutdown_grace_ms).await;
        info!("mysql relay stopped");
        Ok(())
    }
}

impl crate::runtime::SessionServer for MyProxy {
    fn serve_listeners(
        &self,
        tcp: TcpListener,
        _unix: Option<tokio::net::UnixListener>,
        shutdown: watch::Receiver<bool>,
    ) -> crate::runtime::LocalFuture<'_> {
        Box::pin(self.serve(tcp, shutdown))
    }
}

async fn drain(mut tasks: JoinSet<()>, grace_ms: u64) {
    if !tasks.is_empty() {
        info!(
            sessions = tasks.len(),
            grace_ms, "mysql relay shutting down"
        );
    }
    let grace = tokio::time::sleep(Duration::from_millis(grace_ms));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            _ = &mut grace => {
                warn!(sessions = tasks.len(), "shutdown grace expired; closing remaining sessions");
                tasks.shutdown().await;
                break;
            }
        }
    }
    debug!("mysql relay accept loop stopped");
}
