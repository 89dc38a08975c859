//! Per-core session runtimes: client sessions served by N single-threaded (`current_thread`)
//! tokio runtimes, one OS thread each, every one accepting on its own TCP listener bound to the
//! same address with `SO_REUSEPORT`, so the kernel spreads new connections over them and a
//! session lives on one thread from its first byte to its last (no wake-ups between workers).
//!
//! All of them serve with one [`Proxy`] (one connection limit, one table of cancel keys). The
//! Unix-domain listener, which `SO_REUSEPORT` cannot spread, is served by the first runtime.
//! Whatever a session awaits that another runtime drives (replication, the controller) is
//! reached through tokio's synchronisation primitives, which work across runtimes; Larder's own
//! statements, which may need a multi-thread runtime, run there through [`ExecuteOn`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tracing::info;

use larder_sql::search_path::{PathEntry, Resolved};
use larder_sql::statement::LarderStatement;

use crate::cache::{
    BoxFuture, CacheBackend, CachedQuery, StatementContext, StatementError, TextTable,
    UpstreamTiming,
};
use crate::pg::Proxy;
use crate::AdapterError;

/// Pending connections each listener queues (as tokio's `TcpListener::bind`).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `n` (at least 1) listeners on `addr` with `SO_REUSEPORT`, each returned as a
/// non-blocking std listener for the runtime that will serve it. A plain bind first checks
/// that the address is free (with `SO_REUSEPORT` alone, a second Larder of the same user would
/// silently share the port) and resolves port 0. Call from within a tokio runtime.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..n.max(1)).map(|_| bind_one(addr)).collect()
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// What a session runtime awaits: a future that stays on its thread.
pub type LocalFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AdapterError>> + 'a>>;

/// A proxy whose sessions per-core runtimes serve (Postgres' or MySQL's): it accepts on the
/// listeners it is given until `shutdown`, then drains its sessions.
pub trait SessionServer: Send + Sync + 'static {
    fn serve_listeners(
        &self,
        tcp: TcpListener,
        unix: Option<UnixListener>,
        shutdown: watch::Receiver<bool>,
    ) -> LocalFuture<'_>;
}

impl SessionServer for Proxy {
    fn serve_listeners(
        &self,
        tcp: TcpListener,
        unix: Option<UnixListener>,
        shutdown: watch::Receiver<bool>,
    ) -> LocalFuture<'_> {
        Box::pin(self.serve(tcp, unix, shutdown))
    }
}

/// Serves `proxy` on one `current_thread` runtime per listener in `tcp` (threads named
/// `larder-sessions-<i>`), the first also serving `unix`, until `shutdown` becomes true and
/// every runtime has drained its sessions.
pub async fn serve_per_core<P: SessionServer>(
    proxy: Arc<P>,
    tcp: Vec<std::net::TcpListener>,
    mut unix: Option<std::os::unix::net::UnixListener>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AdapterError> {
    let runtimes = tcp.len();
    let mut stopped = Vec::with_capacity(runtimes);
    for (i, listener) in tcp.into_iter().enumerate() {
        let served = Served {
            tcp: listener,
            unix: unix.take(),
        };
        stopped.push(spawn_runtime(i, proxy.clone(), served, shutdown.clone())?);
    }
    info!(runtimes, "sessions served by per-core runtimes");
    let mut result = Ok(());
    for done in stopped {
        let outcome = done.await.unwrap_or_else(|_| {
            Err(AdapterError::Config(
                "a session runtime stopped unexpectedly".into(),
            ))
        });
        result = result.and(outcome);
    }
    info!("session runtimes stopped");
    result
}

/// The listeners one session runtime serves.
struct Served {
    tcp: std::net::TcpListener,
    unix: Option<std::os::unix::net::UnixListener>,
}

/// Starts session runtime `i` on its own thread; the receiver gets how its serving ended.
fn spawn_runtime<P: SessionServer>(
    i: usize,
    proxy: Arc<P>,
    served: Served,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<oneshot::Receiver<Result<(), AdapterError>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("larder-sessions-{i}"))
        .spawn(move || {
            let outcome = runtime.block_on(serve_on(proxy.as_ref(), served, shutdown));
            let _ = done.send(outcome);
        })?;
    Ok(stopped)
}

/// Registers the listeners with the current runtime and serves them.
async fn serve_on<P: SessionServer>(
    proxy: &P,
    served: Served,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AdapterError> {
    let tcp = TcpListener::from_std(served.tcp)?;
    let unix = served.unix.map(UnixListener::from_std).transpose()?;
    proxy.serve_listeners(tcp, unix, shutdown).await
}

/// A [`CacheBackend`] whose `execute` (Larder's own statements: `CREATE CACHE`, `SHOW ...`)
/// runs as a task of the given runtime, whatever runtime the session is on; everything else is
/// called directly. Dropping the returned future aborts the task, as dropping the statement's
/// own future would.
pub struct ExecuteOn {
    inner: Arc<dyn CacheBackend>,
    runtime: Handle,
}

impl ExecuteOn {
    pub fn new(inner: Arc<dyn CacheBackend>, runtime: Handle) -> ExecuteOn {
        ExecuteOn { inner, runtime }
    }
}

/// Aborts the task when the awaiting future is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl CacheBackend for ExecuteOn {
    fn database(&self) -> &str {
        self.inner.database()
    }
    fn lookup(&self, query_id: &str) -> Option<Arc<dyn CachedQuery>> {
        self.inner.lookup(query_id)
    }
    fn record_proxied(
        &self,
        query_id: &str,
        normalized_text: &str,
        context: &dyn Fn() -> StatementContext,
    ) -> Option<Arc<dyn UpstreamTiming>> {
        self.inner
            .record_proxied(query_id, normalized_text, context)
    }
    fn execute(
        &self,
        stmt: LarderStatement,
        ctx: StatementContext,
    ) -> BoxFuture<Result<TextTable, StatementError>> {
        let mut task = AbortOnDrop(self.runtime.spawn(self.inner.execute(stmt, ctx)));
        Box::pin(async move {
            (&mut task.0).await.unwrap_or_else(|e| {
                Err(StatementError {
                    sqlstate: "XX000",
                    message: format!("Larder's statement failed: {e}"),
                })
            })
        })
    }
    fn shallow(&self, query_id: &str) -> Option<Arc<crate::shallow::ShallowCache>> {
        self.inner.shallow(query_id)
    }
    fn may_read_shallow(
        &self,
        role: &str,
        cache: &crate::shallow::ShallowCache,
    ) -> Result<(), String> {
        self.inner.may_read_shallow(role, cache)
    }
    fn may_read(&self, role: &str, cache: &dyn CachedQuery) -> Result<(), String> {
        self.inner.may_read(role, cache)
    }
    fn resolve_relation(
        &self,
        path: &[PathEntry],
        role: &str,
        temp_schema: Option<&str>,
        name: &str,
        min_lsn: u64,
    ) -> Option<Resolved> {
        self.inner
            .resolve_relation(path, role, temp_schema, name, min_lsn)
    }
    fn caches_relation_named(&self, name: &str) -> bool {
        self.inner.caches_relation_named(name)
    }
    fn relations_generation(&self) -> u64 {
        self.inner.relations_generation()
    }
    fn relation_oid(&self, schema: &str, name: &str) -> Option<u32> {
        self.inner.relation_oid(schema, name)
    }
    fn default_search_path(&self, user: &str, database: &str) -> Option<String> {
        self.inner.default_search_path(user, database)
    }
    fn custom_output_for(&self, user: &str, database: &str) -> bool {
        self.inner.custom_output_for(user, database)
    }
    fn caching_on(&self) -> bool {
        self.inner.caching_on()
    }
    fn shape_epoch(&self) -> u64 {
        self.inner.shape_epoch()
    }
    fn applied_position(&self) -> u64 {
        self.inner.applied_position()
    }
    fn session_opened(&self, user: &str) {
        self.inner.session_opened(user)
    }
    fn session_closed(&self) {
        self.inner.session_closed()
    }
    fn fell_back(&self, query_id: &str, reason: &str) {
        self.inner.fell_back(query_id, reason)
    }
    fn answered_locally(&self) {
        self.inner.answered_locally()
    }
    fn access_epoch(&self) -> u64 {
        self.inner.access_epoch()
    }
    fn sessions_start_in_utc(&self) -> bool {
        self.inner.sessions_start_in_utc()
    }
    fn upstream_position(&self) -> BoxFuture<Result<u64, String>> {
        let mut task = AbortOnDrop(self.runtime.spawn(self.inner.upstream_position()));
        Box::pin(async move {
            (&mut task.0)
                .await
                .unwrap_or_else(|e| Err(format!("asking the upstream's position failed: {e}")))
        })
    }
}
