//! The `larder` binary: parse configuration, set up logging, run until SIGTERM/SIGINT.

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use larder_server::config::{Config, LogFormat};

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    init_logging(cfg.log_format);
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a TLS crypto provider was already installed"))?;
    // The multi-thread scheduler always runs replication and the controller (replication's
    // walsender commands need `block_in_place`); with `--session-runtime multi-thread` it
    // serves the sessions too, with `per-core` those get runtimes of their own (see
    // `larder_adapter::runtime`). Blocking work (RocksDB, snapshots) has its own pool.
    // MySQL mode likewise.
    let workers = cfg.multi_thread_workers();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers);
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        let (tx, rx) = watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
            let _ = tx.send(true);
        });
        larder_server::run::run(cfg, rx).await
    })
}

/// Log directives LARDER_LOG cannot override: these crates log statement values.
const QUIET: [&str; 2] = ["sqlparser=off", "tokio_postgres=info"];

fn init_logging(format: LogFormat) {
    // pg_walstream logs every standby status update at info level.
    let filter = EnvFilter::try_from_env("LARDER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,pg_walstream=warn"));
    // Whatever LARDER_LOG says: sqlparser's debug output prints the literals of the statements
    // it parses, and tokio-postgres' prints the parameters of the statements it runs; neither
    // may ever reach the log.
    let filter = QUIET.iter().fold(filter, |f, d| {
        f.add_directive(d.parse().expect("a valid directive"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.compact().init(),
        LogFormat::Full => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
