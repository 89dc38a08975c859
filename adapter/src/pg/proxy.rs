//! The accept loop: connection limits, per-connection tasks and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::cancel::CancelRegistry;
use super::conn::Conn;
use super::intercept::{InterceptorFactory, PassThrough, Peer};
use super::session::{handle_connection, Shared};
use super::upstream::UpstreamConnector;
use super::PgProxyConfig;
use crate::AdapterError;

/// Connections still negotiating (TLS, startup packet) beyond `max_connections`; past this,
/// new connections are closed at once so a flood of idle sockets cannot pile up tasks.
const HANDSHAKES_EXTRA_MAX: usize = 128;
/// Pause after a failed accept (e.g. out of file descriptors) to avoid a busy loop.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// Serves Postgres clients on `listener` as a transparent proxy until `shutdown` becomes true.
///
/// On shutdown it stops accepting, lets every session finish its in-flight statement (sessions
/// close when idle at ReadyForQuery) for up to `shutdown_grace_ms`, then drops the rest and
/// returns. If the shutdown sender is dropped without signalling, Larder keeps serving.
pub async fn serve(
    listener: TcpListener,
    cfg: Arc<PgProxyConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AdapterError> {
    serve_with(listener, cfg, shutdown, Arc::new(PassThrough)).await
}

/// [`serve`] with an interceptor per session (the cache layer's entry point).
pub async fn serve_with(
    listener: TcpListener,
    cfg: Arc<PgProxyConfig>,
    shutdown: watch::Receiver<bool>,
    interceptors: Arc<dyn InterceptorFactory>,
) -> Result<(), AdapterError> {
    serve_with_unix(listener, None, cfg, shutdown, interceptors).await
}

async fn accept_unix(listener: Option<&UnixListener>) -> std::io::Result<UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(unix, _)| unix),
        None => std::future::pending().await,
    }
}

/// [`serve_with`], also accepting clients on a Unix-domain listener. Both listeners share the
/// limits (connections, handshakes, timeouts), the cancel keys and the shutdown. Clients on
/// the Unix socket get no TLS (an SSLRequest there is answered `N`, as Postgres does). The
/// caller owns the socket file (creating it, removing it after this returns).
pub async fn serve_with_unix(
    listener: TcpListener,
    unix_listener: Option<UnixListener>,
    cfg: Arc<PgProxyConfig>,
    mut shutdown: watch::Receiver<bool>,
    interceptors: Arc<dyn InterceptorFactory>,
) -> Result<(), AdapterError> {
    cfg.validate()?;
    let shared = Arc::new(Shared {
        connector: UpstreamConnector::new(cfg.upstream.clone())?,
        cancels: CancelRegistry::new(),
        sessions: Arc::new(Semaphore::new(cfg.max_connections)),
        interceptors,
        cfg,
    });
    let handshakes = Arc::new(Semaphore::new(
        shared
            .cfg
            .max_connections
            .saturating_add(HANDSHAKES_EXTRA_MAX),
    ));
    let local = listener.local_addr().ok();
    let local_unix = unix_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
    info!(listen = ?local, listen_unix = ?local_unix, upstream = %shared.cfg.upstream.address(),
        max_connections = shared.cfg.max_connections, client_tls = shared.cfg.tls.is_some(),
        "postgres proxy listening");
    let mut tasks = JoinSet::new();
    let mut watching = true;
    while !*shutdown.borrow_and_update() {
        tokio::select! {
            changed = shutdown.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        warn!(%peer, "too many connections negotiating; closing");
                        drop(tcp);
                        continue;
                    };
                    tasks.spawn(handle_connection(
                        shared.clone(), Conn::Plain(tcp), Peer::Tcp(peer), shutdown.clone(),
                        permit,
                    ));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                }
            },
            accepted = accept_unix(unix_listener.as_ref()) => match accepted {
                Ok(unix) => {
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        warn!(peer = %Peer::Unix, "too many connections negotiating; closing");
                        drop(unix);
                        continue;
                    };
                    tasks.spawn(handle_connection(
                        shared.clone(), Conn::Unix(unix), Peer::Unix, shutdown.clone(), permit,
                    ));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed (Unix socket)");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    drop(unix_listener);
    info!(
        sessions = tasks.len(),
        grace_ms = shared.cfg.shutdown_grace_ms,
        "postgres proxy shutting down"
    );
    let grace = tokio::time::sleep(Duration::from_millis(shared.cfg.shutdown_grace_ms));
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
    info!("postgres proxy stopped");
    Ok(())
}
