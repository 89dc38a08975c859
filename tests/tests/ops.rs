//! Operations (issue #8): `/health`, `/ready` and `/metrics` on `--metrics-address`, scraped by a
//! real Prometheus and checked by `promtool`; the Grafana dashboard's metrics against the live
//! `/metrics`; JSON logs; `--proxy-only` readiness; snapshot progress per table. The staleness
//! bound is in `ops_staleness.rs`.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;
#[path = "common/ops_kit.rs"]
mod ops_kit;

use larder_testkit::{free_port, LarderProcess, PgServer};
use ops_kit::{create_cache, http_get, Metrics, OpsDeployment, QUERY, WAIT};

/// Finds `name` on PATH or in /usr/bin; the suite installs it (scripts/lib/deps.sh).
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run scripts/test (it installs Debian's prometheus)")
    })
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Metric names an expression of the dashboard reads (histogram series map to their family).
fn dashboard_metrics() -> Vec<String> {
    let dir = repo_root().join("deploy/grafana/dashboards");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let mut exprs = Vec::new();
        collect_exprs(&json, &mut exprs);
        assert!(!exprs.is_empty(), "{} has no queries", path.display());
        for e in exprs {
            let mut word = String::new();
            for ch in e.chars().chain([' ']) {
                if ch.is_ascii_alphanumeric() || ch == '_' {
                    word.push(ch);
                    continue;
                }
                if word.starts_with("larder_") || word.starts_with("process_") {
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(&word)
                        .to_string();
                    names.push(family);
                }
                word.clear();
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_metrics_dashboard_and_a_real_prometheus() {
    let d = OpsDeployment::start(
        "ops_metrics",
        &["--max-connections", "6", "--log-format", "json"],
        &[("LARDER_LOG", "trace,pg_walstream=warn,rustls=warn")],
    );
    // /health answers at once; /ready once replication has caught up.
    assert_eq!(d.get("/health"), (200, "ok\n".to_string()));
    assert_eq!(d.get("/nowhere").0, 404);
    let larder = kit::connect(&d.larder_url()).await;
    let cache = create_cache(&larder).await;
    assert_eq!(d.wait_ready(200).await, "ready\n");
    // Queries before replication first confirmed the upstream's position went upstream for
    // that reason; none does from now on.
    let lag_fallbacks = d
        .metrics()
        .get("larder_cache_fallbacks_total{reason=\"replication_lag\"}");

    // Hits, one fallback (inside a transaction), statements upstream, and bound parameters.
    for _ in 0..20 {
        larder.simple_query(QUERY).await.unwrap();
    }
    assert_eq!(kit::explain_last(&larder).await.0, "cache");
    larder.simple_query("BEGIN").await.unwrap();
    larder.simple_query(QUERY).await.unwrap();
    let (dest, reason) = kit::explain_last(&larder).await;
    assert_eq!(dest, "upstream", "{reason}");
    assert!(reason.contains("inside a transaction"), "{reason}");
    larder.simple_query("COMMIT").await.unwrap();
    let secret_literal = "needle-literal-7391";
    let secret_param = "needle-param-5527";
    larder
        .simple_query(&format!("SELECT '{secret_literal}'"))
        .await
        .unwrap();
    larder
        .query("SELECT $1::text", &[&secret_param])
        .await
        .unwrap();

    // The emergency switch: with caching off, the cache's queries fall back for that reason.
    larder
        .simple_query("ALTER LARDER SET caching = off")
        .await
        .unwrap();
    larder.simple_query(QUERY).await.unwrap();
    let (dest, reason) = kit::explain_last(&larder).await;
    assert_eq!(dest, "upstream", "{reason}");
    let m = d.metrics();
    assert_eq!(m.get("larder_caching_enabled"), 0.0);
    assert!(m.get("larder_cache_fallbacks_total{reason=\"caching_off\"}") >= 1.0);
    larder
        .simple_query("ALTER LARDER SET caching = on")
        .await
        .unwrap();
    assert_eq!(d.metrics().get("larder_caching_enabled"), 1.0);

    // Connections past --max-connections are refused and counted.
    let mut extra = Vec::new();
    let mut refused = false;
    for _ in 0..8 {
        match tokio_postgres::connect(&d.larder_url(), tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                extra.push(c);
            }
            Err(e) => {
                let code = e.as_db_error().map(|d| d.code().code().to_string());
                assert_eq!(code.as_deref(), Some("53300"), "{e:?}");
                refused = true;
                break;
            }
        }
    }
    assert!(
        refused,
        "no connection was refused past --max-connections 6"
    );

    let m = d.metrics();
    assert!(m.get("larder_queries_total{destination=\"cache\"}") >= 20.0);
    assert!(m.get("larder_queries_total{destination=\"upstream\"}") >= 4.0);
    assert!(m.get("larder_queries_total{destination=\"local\"}") >= 1.0);
    assert!(m.get(&format!("larder_cache_hits_total{{cache=\"{cache}\"}}")) >= 20.0);
    assert!(
        m.get("larder_cache_fallbacks_total{reason=\"transaction\"}") >= 1.0,
        "the fallback in a transaction ({reason}) is not counted:\n{}",
        m.text
    );
    assert_eq!(
        m.get("larder_cache_fallbacks_total{reason=\"replication_lag\"}"),
        lag_fallbacks
    );
    assert!(m.get("larder_query_duration_seconds_count{destination=\"cache\"}") >= 20.0);
    assert!(m.get("larder_query_duration_seconds_count{destination=\"upstream\"}") >= 4.0);
    assert!(
        m.get("larder_query_duration_seconds_bucket{destination=\"cache\",le=\"+Inf\"}") >= 20.0
    );
    assert!(m.get("larder_connections{state=\"session\"}") >= 6.0);
    assert!(m.get("larder_connections_refused_total") >= 1.0);
    assert!(m.get("larder_replication_applied_position") > 0.0);
    assert!(m.get("larder_upstream_wal_position") > 0.0);
    assert_eq!(m.get("larder_upstream_reachable"), 1.0);
    assert_eq!(m.get("larder_caches_fresh"), 1.0);
    assert_eq!(m.get("larder_caches{state=\"serving\"}"), 1.0);
    assert!(m.get("larder_cache_memory_bytes") > 0.0);
    assert!(m.get("larder_dataflow_state_bytes") >= 0.0);
    assert!(m.get("larder_cache_rows") >= 1.0);
    assert!(m.get("larder_tables{state=\"online\"}") >= 1.0);
    assert!(m.get("larder_snapshot_rows_total") >= 200.0);
    assert!(m.get("larder_replication_lag_seconds") < 5.0);
    assert!(m.get("process_resident_memory_bytes") > 0.0);
    assert!(m.get("process_open_fds") > 0.0);
    assert_eq!(m.get("larder_statements_shed_total"), 0.0);
    // Labels carry no query text and no values.
    for needle in ["SELECT", "select", "books", secret_literal, secret_param] {
        for key in m.samples.keys() {
            assert!(
                !key.contains(needle),
                "a label of /metrics contains {needle:?}: {key}"
            );
        }
    }

    // promtool accepts the exposition.
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(m.text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the Grafana dashboard reads exists in the live /metrics.
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 10, "the dashboard reads only {wanted:?}");
    let missing: Vec<_> = wanted.iter().filter(|n| !m.has_family(n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics Larder does not export: {missing:?}"
    );

    // A real Prometheus scrapes Larder.
    let prom = Prometheus::start(d.http);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = prom.query("up{job=\"larder\"}");
        let hits = prom.query("larder_queries_total{destination=\"cache\"}");
        if up.contains("\"1\"") && hits.contains("\"result\":[{") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape Larder: up = {up}, hits = {hits}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(extra);

    // JSON logs: one object per line with timestamp, level, target and message; at trace
    // level neither the literal nor the bound parameter appears.
    let log = d.larder.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        lines += 1;
    }
    assert!(lines > 10, "only {lines} log lines");
    assert!(log.contains("\"message\":\"serving /health, /ready and /metrics\""));
    assert!(log.contains("\"TRACE\""), "the log is not at trace level");
    for needle in [secret_literal, secret_param, d.pg.admin_password()] {
        assert!(!log.contains(needle), "the log contains {needle:?}");
    }
}

/// A throwaway Prometheus scraping Larder every second.
struct Prometheus {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("larder-prom-{}-{target}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: larder\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, dir, port }
    }

    /// The JSON answer of an instant query (empty while Prometheus is not up yet).
    fn query(&self, promql: &str) -> String {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        match TcpStream::connect(("127.0.0.1", self.port)) {
            Ok(_) => http_get(self.port, &format!("/api/v1/query?query={encoded}")).1,
            Err(_) => String::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_only_is_ready_while_the_upstream_answers() {
    let pg = PgServer::shared();
    let http = free_port();
    let metrics = format!("127.0.0.1:{http}");
    let url = pg.url("postgres");
    let larder = LarderProcess::spawn(
        &[
            "--upstream-db-url",
            &url,
            "--proxy-only",
            "--metrics-address",
            &metrics,
        ],
        &[],
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while http_get(http, "/ready").0 != 200 {
        assert!(Instant::now() < deadline, "{:?}", http_get(http, "/ready"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client =
        kit::connect(&larder.pg_url(pg.admin_user(), pg.admin_password(), "postgres")).await;
    client.simple_query("SELECT 1").await.unwrap();
    let (_, body) = http_get(http, "/metrics");
    let m = Metrics::parse(&body);
    assert!(m.get("larder_queries_total{destination=\"upstream\"}") >= 1.0);
    assert_eq!(m.get("larder_queries_total{destination=\"cache\"}"), 0.0);
    assert!(m.get("larder_connections{state=\"session\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_progress_is_shown_per_table_while_it_runs() {
    const ROWS: u64 = 500_000;
    let pg = PgServer::shared();
    let db = format!("ops_progress_{}", std::process::id());
    pg.psql("postgres", &format!("CREATE DATABASE \"{db}\""))
        .unwrap();
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL);
             INSERT INTO big SELECT g, repeat('x', 40) FROM generate_series(1, {ROWS}) g;
             ANALYZE big;"
        ),
    )
    .unwrap();
    let http = free_port();
    let (url, metrics) = (pg.url(&db), format!("127.0.0.1:{http}"));
    let larder = LarderProcess::spawn(
        &[
            "--upstream-db-url",
            &url,
            "--deployment",
            &db,
            "--metrics-address",
            &metrics,
        ],
        &[],
    )
    .unwrap();
    let c = kit::connect(&larder.pg_url(pg.admin_user(), pg.admin_password(), &db)).await;
    // While the copy runs: rows copied, the estimate (pg_class.reltuples), percent and ETA.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (row, m) = loop {
        let rows = kit::text_rows(&c, "SHOW LARDER TABLES").await;
        let m = Metrics::parse(&http_get(http, "/metrics").1);
        let big = rows
            .into_iter()
            .find(|r| r.first().cloned().flatten().as_deref() == Some("\"public\".\"big\""));
        let row: Vec<String> = big
            .unwrap_or_default()
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
        assert_ne!(
            row.get(1).map(String::as_str),
            Some("Online"),
            "the copy was never seen running"
        );
        if row.get(1).map(String::as_str) == Some("Snapshotting") && !row[6].is_empty() {
            break (row, m);
        }
        assert!(
            Instant::now() < deadline,
            "the snapshot never showed progress: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let copied: u64 = row[3].parse().unwrap();
    let estimated: u64 = row[4].parse().unwrap();
    let percent: f64 = row[5].parse().unwrap();
    let eta: u64 = row[6].parse().unwrap();
    assert!(copied > 0 && copied < ROWS, "{row:?}");
    assert!(
        (ROWS * 9 / 10..=ROWS * 11 / 10).contains(&estimated),
        "{row:?}"
    );
    assert!(percent > 0.0 && percent < 100.0, "{row:?}");
    assert!(eta < 3600, "{row:?}");
    assert!(
        row[2].contains(&format!("of ~{estimated} rows")) && row[2].contains("s left"),
        "{row:?}"
    );
    assert!(m.get("larder_snapshot_table_rows_copied{table=\"public.big\"}") > 0.0);
    assert_eq!(
        m.get("larder_snapshot_table_rows_estimated{table=\"public.big\"}"),
        estimated as f64
    );
    assert_eq!(m.get("larder_tables{state=\"snapshotting\"}"), 1.0);
    // Done: every row counted, the per-table gauges gone.
    kit::wait_online(&c).await;
    let m = Metrics::parse(&http_get(http, "/metrics").1);
    assert!(m.get("larder_snapshot_rows_total") >= ROWS as f64);
    assert_eq!(m.get("larder_tables{state=\"online\"}"), 1.0);
    assert!(
        !m.has_family("larder_snapshot_table_rows_copied"),
        "{}",
        m.text
    );
}
