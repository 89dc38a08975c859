//! Starting and stopping one Larder process.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use larder_replication::PgSource;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, Dialect, SessionRuntime, UpstreamUrl};
use crate::controller::{Controller, ProxiedQueries};
use crate::core::Core;
use crate::storage::{IdentityDecision, Storage, UpstreamIdentity};

/// Run until a shutdown signal arrives on `shutdown` (true), then stop gracefully.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    match cfg.dialect().map_err(anyhow::Error::msg)? {
        Dialect::Postgres => run_postgres(cfg, shutdown).await,
        Dialect::MySql => crate::run_mysql::run_mysql(cfg, shutdown).await,
    }
}

/// `--cleanup`: remove what this deployment created upstream and on disk.
async fn clean_up(cfg: &Config, url: &UpstreamUrl) -> anyhow::Result<()> {
    let source = PgSource::new(url.expose(), &cfg.deployment, &cfg.replication_tables)
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
    // The URL with the password from --upstream-db-password-file; every consumer (the proxy's
    // upstream sessions, replication, clean-up) connects with this one.
    let url = cfg.effective_upstream_url()?;
    if cfg.cleanup {
        return clean_up(&cfg, &url).await;
    }
    let upstream = larder_adapter::UpstreamConfig::from_url(url.expose())
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
    if upstream.is_unix_socket() {
        warn!(socket = %upstream.address(),
            "the upstream is reached over a Unix socket: if its pg_hba.conf lets local \
             connections in by the OS user (peer) or without a password (trust), every client \
             of Larder gets that too; use password authentication (scram-sha-256) for them");
    }
    let ops = Arc::new(crate::ops::Ops::new(std::time::Duration::from_millis(
        cfg.max_replication_lag_ms,
    )));
    let metrics_listener = match cfg.metrics_address {
        Some(addr) => Some(
            crate::ops::http::bind(addr)
                .await
                .with_context(|| format!("binding --metrics-address {addr}"))?,
        ),
        None => None,
    };
    let proxy_cfg = Arc::new(larder_adapter::PgProxyConfig {
        listen: cfg.address,
        upstream,
        max_connections: cfg.max_connections,
        upstream_queries_max: cfg
            .upstream_queries_max
            .unwrap_or(cfg.max_connections.saturating_mul(4)),
        message_size_max_bytes: cfg.message_size_max_bytes,
        client_output_max_bytes: cfg.client_output_max_bytes,
        startup_timeout_ms: cfg.startup_timeout_ms,
        idle_timeout_ms: cfg.idle_timeout_ms,
        shutdown_grace_ms: cfg.shutdown_grace_ms,
        tls,
        metrics: ops.proxy.clone(),
    });
    // Removes the socket file when this function returns, however it returns.
    let (listeners, _unix_socket_file) = bind_listeners(&cfg).await?;

    if cfg.proxy_only {
        let source = Arc::new(
            PgSource::new(url.expose(), &cfg.deployment, &cfg.replication_tables)
                .context("parsing --upstream-db-url")?,
        );
        start_ops(&ops, metrics_listener, source, None, &shutdown);
        let passthrough = Arc::new(larder_adapter::pg::PassThrough);
        serve_sessions(listeners, proxy_cfg, shutdown, passthrough).await?;
        info!("stopped");
        return Ok(());
    }

    std::fs::create_dir_all(&cfg.storage_dir)
        .with_context(|| format!("creating --storage-dir {}", cfg.storage_dir.display()))?;
    let storage_path = cfg.storage_dir.join(format!(
        "{}.db",
        larder_replication::pg::object_name(&cfg.deployment)
    ));
    let storage = Storage::open_with(&storage_path, cfg.storage_memory())
        .with_context(|| format!("opening storage at {}", storage_path.display()))?;
    // Stored tables are loaded only once the upstream is known to be the one they were copied
    // from (in `start_replication`): until then nothing stored is served or shown.
    let core = Core::with_ops(
        storage,
        crate::core::Failpoints {
            apply_table: cfg.failpoint_apply_table.clone(),
            ..Default::default()
        },
        ops.clone(),
    );
    core.status.caching_on.store(
        cfg.caching == crate::config::Switch::On,
        std::sync::atomic::Ordering::SeqCst,
    );
    if cfg.caching == crate::config::Switch::Off {
        warn!("caching is off (--caching off): every query goes upstream until ALTER LARDER SET caching = on");
    }
    let source = Arc::new(
        PgSource::new(url.expose(), &cfg.deployment, &cfg.replication_tables)
            .context("configuring replication")?
            .with_options(larder_replication::PgSourceOptions {
                transaction_memory_max_bytes: cfg.transaction_memory_max_bytes,
                snapshot_parallelism: cfg.snapshot_parallelism.into(),
                snapshot_memory_max_bytes: cfg.snapshot_memory_max_bytes,
                snapshot_split_min_bytes: cfg.snapshot_split_min_bytes,
                ..Default::default()
            }),
    );
    start_ops(
        &ops,
        metrics_listener,
        source.clone(),
        Some(core.clone()),
        &shutdown,
    );
    let relations = Arc::new(crate::relations::Relations::default());
    tokio::spawn(crate::relations::run(
        relations.clone(),
        core.clone(),
        source.clone(),
    ));
    let (privileges, privilege_requests) =
        crate::privileges::Privileges::new(cfg.admin_role.clone());
    tokio::spawn(crate::privileges::run(
        privileges.clone(),
        core.clone(),
        source.clone(),
        privilege_requests,
    ));
    let controller = Arc::new(Controller {
        core: core.clone(),
        source: Some(source.clone()),
        proxied: ProxiedQueries::default(),
        database,
        upstream_display,
        connections: AtomicU64::new(0),
        unbuilt: std::sync::Mutex::new(Vec::new()),
        privileges,
        relations: relations.clone(),
        upstream: tokio::sync::Mutex::new(None),
        shallow: crate::controller::ShallowSettings::from_config(&cfg),
        dialect: larder_sql::statement::Dialect::Postgres,
        mysql: None,
    });
    start_caching(&core, &cfg)?;
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<String>(1);
    tokio::spawn(start_replication(
        controller.clone(),
        source.clone(),
        fatal_tx,
        IdentityGuard {
            reset_allowed: cfg.reset_storage_on_upstream_change,
            storage_path,
            upstream_display: controller.upstream_display.clone(),
        },
    ));

    let backend: Arc<dyn larder_adapter::cache::CacheBackend> =
        Arc::new(crate::backend::Backend::new(
            controller.clone(),
            (cfg.query_caching == crate::config::QueryCaching::Async).then(|| {
                crate::backend::AutoCaching::new(
                    cfg.query_caching_caches_max,
                    tokio::runtime::Handle::current(),
                )
            }),
        ));
    // Larder's own statements run on this (multi-thread) runtime, whichever runs the session.
    let backend = Arc::new(larder_adapter::runtime::ExecuteOn::new(
        backend,
        tokio::runtime::Handle::current(),
    ));
    let backend = Arc::new(larder_adapter::pg::CacheRouter::new(
        backend,
        cfg.read_your_writes == crate::config::Switch::On,
    ));
    let serve = serve_sessions(listeners, proxy_cfg, shutdown.clone(), backend);
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

/// Starts the freshness poller (the staleness bound) and, with `--metrics-address`, the HTTP
/// endpoints.
fn start_ops(
    ops: &Arc<crate::ops::Ops>,
    listener: Option<TcpListener>,
    source: Arc<PgSource>,
    core: Option<Arc<Core>>,
    shutdown: &watch::Receiver<bool>,
) {
    // With --proxy-only the poll only feeds /ready: without the endpoints it is not needed.
    if core.is_some() || listener.is_some() {
        tokio::spawn(crate::ops::freshness::run(
            ops.clone(),
            crate::ops::freshness::PolledSource::Pg(source),
            core.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(listener) = listener {
        let endpoints = Arc::new(crate::ops::http::Endpoints {
            registry: crate::ops::metrics::MetricsRegistry::new(ops.clone(), core.clone()),
            ops: ops.clone(),
            core,
        });
        tokio::spawn(crate::ops::http::serve(
            listener,
            endpoints,
            shutdown.clone(),
        ));
    }
}

/// Where client sessions are accepted.
struct Listeners {
    tcp: TcpListeners,
    unix: Option<UnixListener>,
}

enum TcpListeners {
    /// One listener, served on the current (multi-thread) runtime.
    Shared(TcpListener),
    /// One `SO_REUSEPORT` listener per session runtime.
    PerCore(Vec<std::net::TcpListener>),
}

/// Binds --address (as --session-runtime wants it) and the Unix socket of --unix-socket-dir.
async fn bind_listeners(cfg: &Config) -> anyhow::Result<(Listeners, Option<UnixSocketFile>)> {
    let binding = || format!("binding {}", cfg.address);
    let (tcp, port) = match cfg.session_runtime {
        SessionRuntime::MultiThread => {
            let l = TcpListener::bind(cfg.address).await.with_context(binding)?;
            let port = l.local_addr().map_or(cfg.address.port(), |a| a.port());
            (TcpListeners::Shared(l), port)
        }
        SessionRuntime::PerCore => {
            let ls = larder_adapter::runtime::bind_reuseport(cfg.address, cfg.session_threads())
                .with_context(binding)?;
            let port = ls[0].local_addr().map_or(cfg.address.port(), |a| a.port());
            (TcpListeners::PerCore(ls), port)
        }
    };
    info!(address = %cfg.address, session_runtime = ?cfg.session_runtime,
        session_threads = cfg.session_threads(), "accepting Postgres clients");
    let (unix, file) = match &cfg.unix_socket_dir {
        Some(dir) => {
            let (l, f) = bind_unix_socket(dir, port)?;
            (Some(l), Some(f))
        }
        None => (None, None),
    };
    Ok((Listeners { tcp, unix }, file))
}

/// Serves client sessions on `listeners` until `shutdown` (see `larder_adapter::serve`).
async fn serve_sessions(
    listeners: Listeners,
    proxy_cfg: Arc<larder_adapter::PgProxyConfig>,
    shutdown: watch::Receiver<bool>,
    interceptors: Arc<dyn larder_adapter::pg::InterceptorFactory>,
) -> anyhow::Result<()> {
    match listeners.tcp {
        TcpListeners::Shared(tcp) => {
            larder_adapter::serve_with_unix(tcp, listeners.unix, proxy_cfg, shutdown, interceptors)
                .await?
        }
        TcpListeners::PerCore(tcp) => {
            let proxy = larder_adapter::Proxy::new(proxy_cfg, interceptors)?;
            let unix = listeners.unix.map(|l| l.into_std()).transpose()?;
            let unix_path = unix.as_ref().and_then(|l| l.local_addr().ok());
            let unix_path = unix_path.as_ref().and_then(|a| a.as_pathname());
            proxy.log_listening(tcp[0].local_addr().ok(), unix_path);
            larder_adapter::runtime::serve_per_core(proxy, tcp, unix, shutdown).await?
        }
    }
    Ok(())
}

/// What the storage-identity check needs besides the source.
struct IdentityGuard {
    reset_allowed: bool,
    storage_path: std::path::PathBuf,
    upstream_display: String,
}

/// The identity of the upstream `source` connects to. `pg_control_system()` is executable by
/// every role, so this works for a REPLICATION role that is not a superuser.
async fn upstream_identity(source: &PgSource) -> Result<UpstreamIdentity, String> {
    let client = source.client().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT system_identifier::text, current_database()::text \
             FROM pg_catalog.pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| format!("reading the upstream's system identifier: {e}"))?;
    Ok(UpstreamIdentity {
        system_identifier: row.get(0),
        database: row.get(1),
    })
}

enum IdentityOutcome {
    Verified,
    /// The upstream could not be asked; retry.
    Retry(String),
    /// Stored data belongs to another upstream and no reset was allowed.
    Refused(String),
}

/// Compare the upstream with the identity recorded in storage, and adopt, reset or refuse.
async fn check_identity(core: &Core, source: &PgSource, guard: &IdentityGuard) -> IdentityOutcome {
    let current = match upstream_identity(source).await {
        Ok(c) => c,
        Err(e) => return IdentityOutcome::Retry(e),
    };
    let stored = match core.storage.upstream_identity() {
        Ok(s) => s,
        Err(e) => return IdentityOutcome::Refused(format!("reading the storage: {e}")),
    };
    let result = match IdentityDecision::decide(stored.as_ref(), &current, guard.reset_allowed) {
        IdentityDecision::Same => Ok(()),
        IdentityDecision::Adopt => {
            info!(upstream = %current, "recording the upstream's identity in the storage");
            core.storage.put_upstream_identity(&current)
        }
        IdentityDecision::Reset { stored } => {
            warn!(
                stored = %stored,
                upstream = %current,
                path = %guard.storage_path.display(),
                "the storage belongs to another upstream: discarding it \
                 (--reset-storage-on-upstream-change)"
            );
            core.storage.reset_for_upstream(&current)
        }
        IdentityDecision::Refuse { stored } => {
            return IdentityOutcome::Refused(format!(
                "the storage directory {path} holds data copied from another upstream \
                 ({stored}), but {addr} is {current}. Larder will not serve or replace \
                 that data on its own: start with --reset-storage-on-upstream-change \
                 (RESET_STORAGE_ON_UPSTREAM_CHANGE=true) to discard it and copy the new \
                 upstream, or use another --storage-dir",
                path = guard.storage_path.display(),
                addr = guard.upstream_display,
            ))
        }
    };
    match result {
        Ok(()) => IdentityOutcome::Verified,
        Err(e) => IdentityOutcome::Refused(format!("updating the storage: {e}")),
    }
}

/// Replication start-up runs in the background so the proxy serves from the first second;
/// caches become available once their tables are online. Stored data is loaded only after
/// the upstream's identity matched the storage's.
async fn start_replication(
    controller: Arc<Controller>,
    source: Arc<PgSource>,
    fatal: tokio::sync::mpsc::Sender<String>,
    guard: IdentityGuard,
) {
    let core = controller.core.clone();
    let mut backoff_ms = 500u64;
    core.set_replication_status("Checking the upstream's identity");
    loop {
        match check_identity(&core, &source, &guard).await {
            IdentityOutcome::Verified => break,
            IdentityOutcome::Refused(message) => {
                error!(error = %message, "refusing to start");
                let _ = fatal.send(message).await;
                return;
            }
            IdentityOutcome::Retry(e) => {
                error!(error = %e, retry_in_ms = backoff_ms, "cannot ask the upstream for its identity");
                core.set_last_error(e.clone());
                core.set_replication_status(&format!("Not started: {e}"));
                if core.is_shutting_down() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(30_000);
            }
        }
    }
    if let Err(e) = crate::replicator::load_stored_tables(&core) {
        let _ = fatal.send(format!("loading stored tables: {e}")).await;
        return;
    }
    if let Err(e) = crate::replicator::hold_partial_tables(&core) {
        let _ = fatal
            .send(format!("reading the partly applied transaction: {e}"))
            .await;
        return;
    }
    backoff_ms = 500;
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
    tokio::spawn(refill_caches_forever(controller.clone()));
    rebuild_caches_forever(controller).await;
}

/// Builds `cache` again from its stored query (after a table change, or an eviction); `None`
/// when the query no longer reads as a cache, which stops it for good.
async fn build_again(
    controller: &Controller,
    cache: &crate::core::CacheEntry,
) -> Option<Result<Arc<crate::core::CacheEntry>, crate::controller::ControllerError>> {
    let (text, normalized) = match controller.stored_query(&cache.query) {
        Ok(q) => q,
        Err(e) => {
            cache.invalidate(&format!("cannot be rebuilt: {e}"));
            return None;
        }
    };
    Some(
        controller
            .build_cache(&cache.name, &text, &normalized, cache.always)
            .await,
    )
}

/// Fill dormant caches (evicted, or not filled since the restart) when a read asks for them
/// (see `memory.rs`).
pub(crate) async fn refill_caches_forever(controller: Arc<Controller>) {
    loop {
        let query_id = controller.core.refills.next().await;
        let Some(cache) = controller.core.caches.get(&query_id) else {
            continue;
        };
        if !cache.evicted.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let Some(built) = build_again(&controller, &cache).await else {
            continue;
        };
        match built {
            // Dropped (or replaced) while it was filled: the new one goes.
            Ok(entry) => {
                if controller.publish_replacing(&cache, entry).await {
                    info!(cache = %cache.name, "dormant cache filled");
                }
            }
            // Still evicted: a later read asks again.
            Err(e) => {
                warn!(cache = %cache.name, error = %e, "a dormant cache could not be filled")
            }
        }
    }
}

/// Brings back the caches stored by an earlier run, without scanning a table: partial
/// caches serve at once and fill their keys on demand, the others fill on their first read
/// (`Controller::restore_cache`).
pub(crate) async fn restore_caches(controller: &Controller) {
    let stored = match controller.core.storage.caches() {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "reading stored caches");
            return;
        }
    };
    for c in stored {
        if c.shallow.is_some() {
            restore_shallow(controller, &c).await;
            continue;
        }
        let (text, normalized) = match controller.stored_query(&c.query) {
            Ok(q) => q,
            Err(e) => {
                error!(cache = %c.name, error = %e, "stored cache no longer parses; skipping");
                continue;
            }
        };
        match controller
            .restore_cache(&c.name, &text, &normalized, c.always)
            .await
        {
            Ok(entry) => {
                let dormant = entry.evicted.load(std::sync::atomic::Ordering::SeqCst);
                info!(cache = %c.name, dormant, "cache restored");
                controller.publish(entry).await;
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

/// Re-creates a stored shallow cache once Larder knows the upstream's relations.
async fn restore_shallow(controller: &Controller, c: &crate::storage::StoredCache) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mysql = controller.dialect == larder_sql::statement::Dialect::MySql;
    while !mysql
        && controller.relations.current(0).is_none()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match controller.restore_shallow(c) {
        Ok(()) => info!(cache = %c.name, "shallow cache restored"),
        Err(e) => warn!(cache = %c.name, error = %e,
            "shallow cache not restored (DROP CACHE removes it; CREATE it again once its relations exist)"),
    }
}

/// How often `--memory-limit` is checked.
const MEMORY_CHECK_INTERVAL_MS: u64 = 200;
/// How often, at most, memory freed by eviction is given back to the system.
const RELEASE_INTERVAL_MS: u64 = 1000;

/// What shallow cache entries may hold when `--memory-limit` is not given.
const SHALLOW_BUDGET_DEFAULT_BYTES: usize = 1 << 30;

/// Keeps shallow cache entries within what `--memory-limit` leaves after the deep caches'
/// accounted state, checked every second (and at every insert, per shard).
/// What caching needs besides the controller, on either upstream: the memory limit and its
/// keeper, the graph's switches, and the thread that fills partial caches' queued holes.
pub(crate) fn start_caching(core: &Arc<Core>, cfg: &Config) -> anyhow::Result<()> {
    core.status.memory_limit_bytes.store(
        cfg.memory_limit.unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    tokio::spawn(keep_memory_limit(core.clone(), cfg.memory_limit));
    {
        let mut graph = core.dataflow.lock().expect("dataflow lock poisoned");
        graph.set_partial(cfg.partial_caches == crate::config::Switch::On);
        graph.set_stored_joins(cfg.stored_joins == crate::config::Switch::On);
    }
    let (queue, core) = (Arc::clone(&core.holes), Arc::downgrade(core));
    std::thread::Builder::new()
        .name("larder-filler".into())
        .spawn(move || crate::partial::run_filler(queue, core))
        .context("starting the partial-cache filler thread")?;
    Ok(())
}

async fn keep_memory_limit(core: Arc<Core>, limit: Option<u64>) {
    let Some(limit) = limit else {
        // Everything that grows has a bound: without --memory-limit, shallow entries get one
        // of their own.
        core.shallow.store.set_budget(SHALLOW_BUDGET_DEFAULT_BYTES);
        return;
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let clock = Arc::new(std::sync::Mutex::new(crate::memory::CacheClock::default()));
    let mut trimmed = std::time::Instant::now();
    loop {
        // Partial caches' keys first, then whole caches by the clock (off the async
        // workers: both take the dataflow lock).
        let (c, clock) = (core.clone(), clock.clone());
        let trim = trimmed.elapsed() >= std::time::Duration::from_millis(RELEASE_INTERVAL_MS);
        let (deep, released) = tokio::task::spawn_blocking(move || {
            let keys = crate::partial::evict_within(&c, limit as u64);
            let mut clock = clock.lock().expect("cache clock poisoned");
            let caches = crate::memory::evict_caches_within(&c, limit as u64, &mut clock);
            // What eviction freed goes back to the system, or the resident size would stay
            // at its peak.
            let release = trim && keys + caches > 0;
            if release {
                crate::memory::release_freed();
            }
            (crate::partial::cache_bytes(&c), release)
        })
        .await
        .unwrap_or((0, false));
        if released {
            trimmed = std::time::Instant::now();
        }
        let deep = usize::try_from(deep).unwrap_or(usize::MAX);
        core.shallow.store.set_budget(limit.saturating_sub(deep));
        core.shallow.store.trim();
        if core.is_shutting_down() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(MEMORY_CHECK_INTERVAL_MS)).await;
    }
}

/// Rebuild the caches of tables that came back online after a shape change.
pub(crate) async fn rebuild_caches_forever(controller: Arc<Controller>) {
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
    // A dormant cache (evicted, or not filled since the restart) is not broken: it is filled
    // on its next read.
    let stale = controller.core.caches.all().into_iter().filter(|c| {
        c.reads_named(&schema, &name)
            && !c.evicted.load(std::sync::atomic::Ordering::SeqCst)
            && (c.invalid_reason().is_some() || !c.reads(oid))
    });
    for cache in stale {
        let Some(built) = build_again(controller, &cache).await else {
            continue;
        };
        match built {
            Ok(entry) => {
                info!(cache = %cache.name, "cache rebuilt after a table change");
                controller.publish(entry).await;
            }
            Err(e) => {
                warn!(cache = %cache.name, error = %e, "cache cannot be rebuilt after a table change");
                cache.invalidate(&format!("its table changed and it cannot be rebuilt: {e}"));
            }
        }
    }
}

/// Larder's Unix socket file; removed when dropped (at exit).
struct UnixSocketFile(PathBuf);

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => info!(path = %self.0.display(), "removed the Unix socket"),
            Err(e) => warn!(path = %self.0.display(), error = %e, "removing the Unix socket"),
        }
    }
}

/// Listens on `<dir>/.s.PGSQL.<port>`. A socket file nobody listens on any more (left by a
/// crash) is removed first; one that a live server answers on is an error, and so is a file
/// there that is not a socket. Like Postgres' default `unix_socket_permissions`, the socket
/// is open to every local user: authentication is the upstream's, as over TCP.
fn bind_unix_socket(dir: &Path, port: u16) -> anyhow::Result<(UnixListener, UnixSocketFile)> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        Ok(meta) if !meta.file_type().is_socket() => {
            bail!("{} exists and is not a socket", path.display())
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                bail!(
                    "{} is in use: another server is listening on it",
                    path.display()
                );
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
            info!(path = %path.display(), "removed a stale Unix socket");
        }
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("binding the Unix socket {}", path.display()))?;
    let file = UnixSocketFile(path.clone());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    info!(path = %path.display(), "accepting Postgres clients on a Unix socket");
    Ok((listener, file))
}
