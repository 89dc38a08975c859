//! Runs the Postgres proxy alone, for manual testing and benchmarks:
//! `cargo run --release -p larder-adapter --example pgproxy -- UPSTREAM_URL 127.0.0.1:6432 [WORKERS]` (0 = current-thread runtime)

use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: pgproxy URL ADDR [WORKERS]"))?;
    let addr: std::net::SocketAddr = args.next().unwrap_or("127.0.0.1:6432".into()).parse()?;
    let workers: usize = args.next().map(|w| w.parse()).transpose()?.unwrap_or(2);
    // WORKERS = 0 runs everything on one current-thread runtime.
    let rt = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let upstream = larder_adapter::UpstreamConfig::from_url(&url)?;
        let cfg = Arc::new(larder_adapter::PgProxyConfig::new(addr, upstream));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = tx.send(true);
        });
        larder_adapter::serve(listener, cfg, rx).await?;
        Ok(())
    })
}
