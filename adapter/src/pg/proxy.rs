//! The accept loop: connection limits, per-connection tasks and graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::cancel::CancelRegistry;
use super::conn::Conn;
use super::intercept::{InflightGauge, InterceptorFactory, PassThrough, Peer};
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

/// [`serve_with`], also accepting clients on a Unix-domain listener. Both listeners share the
/// limits (connections, handshakes, timeouts), the cancel keys and the shutdown. Clients on
/// the Unix socket get no TLS (an SSLRequest there is answered `N`, as Postgres does). The
/// caller owns the socket file (creating it, removing it after this returns).
pub async fn serve_with_unix(
    listener: TcpListener,
    unix_listener: Option<UnixListener>,
    cfg: Arc<PgProxyConfig>,
    shutdown: watch::Receiver<bool>,
    interceptors: Arc<dyn InterceptorFactory>,
) -> Result<(), AdapterError> {
    let proxy = Proxy::new(cfg, interceptors)?;
    let unix_path = unix_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    proxy.log_listening(listener.local_addr().ok(), unix_path.as_deref());
    proxy.serve(listener, unix_listener, shutdown).await?;
    info!("postgres proxy stopped");
    Ok(())
}

/// The state every accept loop of one Larder shares: limits, cancel keys, the upstream
/// connector and the interceptors. Several accept loops (one per session runtime, each on its
/// own listener) can serve with one `Proxy`, from any runtime: a cancel request then finds its
/// session whichever loop accepted either, and `max_connections` holds for them all.
pub struct Proxy {
    shared: Arc<Shared>,
    handshakes: Arc<Semaphore>,
}

impl Proxy {
    /// Validates `cfg` and sets up the shared state.
    pub fn new(
        cfg: Arc<PgProxyConfig>,
        interceptors: Arc<dyn InterceptorFactory>,
    ) -> Result<Arc<Proxy>, AdapterError> {
        cfg.validate()?;
        let handshakes = cfg.max_connections.saturating_add(HANDSHAKES_EXTRA_MAX);
        let shared = Arc::new(Shared {
            connector: UpstreamConnector::new(cfg.upstream.clone())?,
            cancels: CancelRegistry::new(),
            sessions: Arc::new(Semaphore::new(cfg.max_connections)),
            interceptors,
            inflight: Arc::new(InflightGauge::new(cfg.upstream_queries_max)),
            cfg,
        });
        Ok(Arc::new(Proxy {
            shared,
            handshakes: Arc::new(Semaphore::new(handshakes)),
        }))
    }

    /// Logs where clients are accepted (once per Larder, not per accept loop).
    pub fn log_listening(&self, tcp: Option<SocketAddr>, unix: Option<&Path>) {
        let cfg = &self.shared.cfg;
        info!(listen = ?tcp, listen_unix = ?unix.map(Path::display),
            upstream = %cfg.upstream.address(), max_connections = cfg.max_connections,
            client_tls = cfg.tls.is_some(), "postgres proxy listening");
    }

    /// Accepts on `listener` (and `unix_listener`) until `shutdown`, running each session as
    /// a task of the current runtime; then drains the sessions (see [`serve`]).
    pub async fn serve(
        &self,
        listener: TcpListener,
        unix_listener: Option<UnixListener>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AdapterError> {
        let mut tasks = JoinSet::new();
        let mut watching = true;
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed(), if watching => watching = changed.is_ok(),
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        self.start(&mut tasks, Conn::Plain(tcp), Peer::Tcp(peer), &shutdown);
                    }
                    Err(e) => accept_failed(e, "accept failed").await,
                },
                accepted = accept_unix(unix_listener.as_ref()) => match accepted {
                    Ok(unix) => self.start(&mut tasks, Conn::Unix(unix), Peer::Unix, &shutdown),
                    Err(e) => accept_failed(e, "accept failed (Unix socket)").await,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(listener);
        drop(unix_listener);
        self.drain(tasks).await;
        Ok(())
    }

    /// Spawns the session of an accepted connection, unless too many are negotiating.
    fn start(
        &self,
        tasks: &mut JoinSet<()>,
        conn: Conn,
        peer: Peer,
        shutdown: &watch::Receiver<bool>,
    ) {
        let Some(permit) = self.handshake_permit(&peer) else {
            self.shared.cfg.metrics.refused.inc();
            drop(conn);
            return;
        };
        tasks.spawn(handle_connection(
            self.shared.clone(),
            conn,
            peer,
            shutdown.clone(),
            permit,
        ));
    }

    fn handshake_permit(&self, peer: &Peer) -> Option<OwnedSemaphorePermit> {
        let permit = self.handshakes.clone().try_acquire_owned().ok();
        if permit.is_none() {
            warn!(%peer, "too many connections negotiating; closing");
        }
        permit
    }

    /// Lets the sessions finish their in-flight statements for up to `shutdown_grace_ms`.
    async fn drain(&self, mut tasks: JoinSet<()>) {
        let grace_ms = self.shared.cfg.shutdown_grace_ms;
        if !tasks.is_empty() {
            info!(
                sessions = tasks.len(),
                grace_ms, "postgres proxy shutting down"
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
        debug!("postgres proxy accept loop stopped");
    }
}

async fn accept_unix(listener: Option<&UnixListener>) -> std::io::Result<UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(unix, _)| unix),
        None => std::future::pending().await,
    }
}

async fn accept_failed(e: std::io::Error, what: &str) {
    warn!(error = %e, "{what}");
    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
}
