//! The operator's HTTP endpoints on `--metrics-address`:
//! - `GET /health`: 200 while the process runs;
//! - `GET /ready`: 200 when the proxy can serve (the upstream answers, and replication is within
//!   `--max-replication-lag-ms`, unless `--proxy-only`), else 503 with the reason;
//! - `GET /metrics`: Prometheus text (see [`super::metrics`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::metrics::MetricsRegistry;
use super::Ops;
use crate::core::Core;

/// Most concurrent HTTP connections; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 64;
/// A connection that sends no complete request for this long is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoints read.
pub struct Endpoints {
    pub ops: Arc<Ops>,
    /// `None` with `--proxy-only`.
    pub core: Option<Arc<Core>>,
    pub registry: MetricsRegistry,
}

impl Endpoints {
    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<String> {
        let fr = &self.ops.freshness;
        if let Some(core) = &self.core {
            if core.is_shutting_down() {
                return Some("shutting down".into());
            }
        }
        if !fr.upstream_reachable.load(Ordering::Relaxed) {
            let e = fr
                .upstream_error
                .lock()
                .expect("freshness lock")
                .clone()
                .unwrap_or_else(|| "not polled yet".into());
            return Some(format!("the upstream is not reachable: {e}"));
        }
        self.core.as_ref()?;
        fr.stale_reason(Instant::now())
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match req.uri().path() {
            "/health" => text(StatusCode::OK, "ok\n".into()),
            "/ready" => match self.not_ready() {
                None => text(StatusCode::OK, "ready\n".into()),
                Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.registry.render());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                );
                r
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /health, /ready or /metrics\n".into(),
            ),
        }
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Binds `address` (failing start-up if it cannot), then serves until `shutdown`.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    info!(address = %listener.local_addr().unwrap_or(address), "serving /health, /ready and /metrics");
    Ok(listener)
}

pub async fn serve(
    listener: TcpListener,
    endpoints: Arc<Endpoints>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut shutdown) => return,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = endpoints.respond(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
            drop(permit);
        });
    }
}
