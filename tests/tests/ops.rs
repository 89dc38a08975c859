//! Operations (issue #8): `/health`, `/ready` and `/metrics` on `--metrics-address`, scraped by a
//! real Prometheus and checked by `promtool`; the Grafana dashboard's metrics against the live
//! `/metrics`; JSON logs; and the staleness bound `--max-replication-lag-ms`, for real: a
//! walsender that stops (SIGSTOP) or a replication connection that dies and cannot come back
//! makes caches go upstream with the reason once the bound has passed, and they serve again by
//! themselves once replication resumes; a slot dropped upstream stops them for good; an idle
//! upstream never counts as lagging.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;

use larder_testkit::{free_port, LarderProcess, PgServer};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(30);
const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, category text NOT NULL, price int NOT NULL);
     INSERT INTO items SELECT g, CASE WHEN g % 2 = 0 THEN 'books' ELSE 'games' END, g FROM generate_series(1, 200) g;";
const QUERY: &str = "SELECT id, price FROM items WHERE category = 'books' AND id = 10";

/// A database with a Larder in front that serves the operator's endpoints.
struct OpsDeployment {
    pg: &'static PgServer,
    db: String,
    larder: LarderProcess,
    http: u16,
}

impl OpsDeployment {
    fn start(prefix: &str, extra: &[&str], envs: &[(&str, &str)]) -> OpsDeployment {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let pg = PgServer::shared();
        let db = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        pg.psql("postgres", &format!("CREATE DATABASE \"{db}\""))
            .expect("create database");
        pg.psql(&db, SETUP).expect("setup sql");
        let http = free_port();
        let url = pg.url(&db);
        let metrics = format!("127.0.0.1:{http}");
        let mut args = vec![
            "--upstream-db-url",
            &url,
            "--deployment",
            &db,
            "--metrics-address",
            &metrics,
        ];
        args.extend_from_slice(extra);
        let larder =
            LarderProcess::spawn(&args, envs).unwrap_or_else(|e| panic!("starting larder: {e:#}"));
        OpsDeployment {
            pg,
            db,
            larder,
            http,
        }
    }

    fn larder_url(&self) -> String {
        self.larder
            .pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path)
    }

    fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        Metrics::parse(&body)
    }

    fn slot(&self) -> String {
        format!("larder_{}", self.db.to_ascii_lowercase())
    }

    /// Waits until the metrics satisfy `ok`; returns them.
    async fn wait_metrics(&self, ok: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = self.metrics();
            if ok(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never as expected:\n{}",
                m.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/ready` answers `want`; returns the body.
    async fn wait_ready(&self, want: u16) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.get("/ready");
            if status == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/ready stayed {status} ({body}), expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One HTTP/1.1 GET on 127.0.0.1:`port`: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the HTTP response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Samples of a Prometheus exposition: `name{labels}` -> value.
struct Metrics {
    text: String,
    samples: HashMap<String, f64>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in /metrics:\n{}", self.text))
    }

    fn has_family(&self, name: &str) -> bool {
        self.text.contains(&format!("# TYPE {name} "))
    }
}

async fn first_cell(c: &Client, sql: &str) -> String {
    kit::text_rows(c, sql)
        .await
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default()
}

async fn create_cache(larder: &Client) -> String {
    kit::wait_online(larder).await;
    larder
        .simple_query(&format!("CREATE CACHE ops_items FROM {QUERY}"))
        .await
        .expect("CREATE CACHE");
    let deadline = Instant::now() + WAIT;
    loop {
        larder.simple_query(QUERY).await.expect("query");
        if kit::explain_last(larder).await.0 == "cache" {
            return "ops_items".into();
        }
        assert!(
            Instant::now() < deadline,
            "the cache never answered: {:?}",
            kit::explain_last(larder).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    larder
        .batch_execute(&format!("BEGIN; {QUERY}; COMMIT"))
        .await
        .unwrap();
    larder.simple_query("BEGIN").await.unwrap();
    larder.simple_query(QUERY).await.unwrap();
    let (dest, reason) = kit::explain_last(&larder).await;
    assert_eq!(dest, "upstream", "{reason}");
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
        "{}",
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
    assert!(m.get("larder_cache_rows") >= 1.0);
    assert!(m.get("larder_tables{state=\"online\"}") >= 1.0);
    assert!(m.get("larder_snapshot_rows_total") >= 200.0);
    assert!(m.get("larder_replication_lag_seconds") < 5.0);
    assert!(m.get("process_resident_memory_bytes") > 0.0);
    assert!(m.get("process_open_fds") > 0.0);
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

/// Resumes a stopped process when dropped (so a failing test never leaves a walsender stopped).
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        // SAFETY: sending a signal to a process id has no memory effects.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Runs `QUERY` through Larder until `EXPLAIN LAST STATEMENT` says `dest`; returns the rows
/// of that answer and the reason.
async fn query_until(
    larder: &Client,
    dest: &str,
    within: Duration,
) -> (Vec<Vec<Option<String>>>, String) {
    let deadline = Instant::now() + within;
    loop {
        let rows = kit::text_rows(larder, QUERY).await;
        let (d, reason) = kit::explain_last(larder).await;
        if d == dest {
            return (rows, reason);
        }
        assert!(
            Instant::now() < deadline,
            "no answer from {dest} within {within:?}; last: {d} ({reason})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_sends_queries_upstream_within_the_bound_and_caches_come_back() {
    const BOUND_MS: u64 = 1500;
    let bound = BOUND_MS.to_string();
    let d = OpsDeployment::start("ops_stall", &["--max-replication-lag-ms", &bound], &[]);
    let larder = kit::connect(&d.larder_url()).await;
    let direct = kit::connect(&d.pg.url(&d.db)).await;
    create_cache(&larder).await;

    // An idle upstream is not lagging: several bounds later, the cache still answers.
    tokio::time::sleep(Duration::from_millis(3 * BOUND_MS)).await;
    let (_, reason) = query_until(&larder, "cache", Duration::from_millis(1)).await;
    assert!(reason.contains("answered by the cache"), "{reason}");
    assert_eq!(d.get("/ready").0, 200);

    // Stop the walsender: the stream says nothing more, while the upstream moves on.
    let pid: i32 = first_cell(
        &direct,
        &format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}'",
            d.slot()
        ),
    )
    .await
    .parse()
    .expect("the slot's walsender pid");
    let stopped = Stopped::stop(pid);
    let stalled_at = Instant::now();
    direct
        .batch_execute("UPDATE items SET price = price + 1000 WHERE id = 10")
        .await
        .unwrap();
    let fresh_rows = kit::text_rows(&direct, QUERY).await;
    let (rows, reason) =
        query_until(&larder, "upstream", Duration::from_millis(BOUND_MS + 5_000)).await;
    let waited = stalled_at.elapsed();
    assert!(
        reason.contains("staleness bound")
            && reason.contains(&format!("--max-replication-lag-ms={BOUND_MS}")),
        "{reason}"
    );
    assert_eq!(rows, fresh_rows, "the upstream's answer is the fresh one");
    // The bound counts from the last position replication confirmed (polled at most a poll
    // interval before the stall), so caches stop within the bound plus that and some slack.
    assert!(
        waited < Duration::from_millis(BOUND_MS + 3_000),
        "caches served for {waited:?} after the stall"
    );
    let body = d.wait_ready(503).await;
    assert!(body.contains("staleness bound"), "{body}");
    // The poller notices at its next poll.
    let m = d
        .wait_metrics(|m| m.get("larder_replication_stale_total") >= 1.0)
        .await;
    assert!(m.get("larder_cache_fallbacks_total{reason=\"replication_lag\"}") >= 1.0);
    assert_eq!(m.get("larder_caches_fresh"), 0.0);
    assert!(m.get("larder_replication_lag_seconds") >= 1.0);
    assert!(m.get("larder_replication_lag_bytes") > 0.0);
    assert!(m.get("larder_replication_stale_total") >= 1.0);

    // Resume it: caches serve again on their own, with the new row.
    drop(stopped);
    let (rows, _) = query_until(&larder, "cache", WAIT).await;
    assert_eq!(rows, fresh_rows);
    assert_eq!(d.wait_ready(200).await, "ready\n");
    d.wait_metrics(|m| m.get("larder_caches_fresh") == 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_upstream_stops_caches_for_good() {
    let d = OpsDeployment::start("ops_slot", &["--max-replication-lag-ms", "2000"], &[]);
    let larder = kit::connect(&d.larder_url()).await;
    let direct = kit::connect(&d.pg.url(&d.db)).await;
    create_cache(&larder).await;
    // Terminate the walsender and drop the slot in the moment before Larder reconnects.
    let slot = d.slot();
    let deadline = Instant::now() + WAIT;
    loop {
        direct
            .simple_query(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
            ))
            .await
            .unwrap();
        let dropped = direct
            .simple_query(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .await;
        if dropped.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "could not drop the slot: {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    direct
        .batch_execute("UPDATE items SET price = price + 1000 WHERE id = 10")
        .await
        .unwrap();
    let fresh_rows = kit::text_rows(&direct, QUERY).await;
    let (rows, reason) = query_until(&larder, "upstream", WAIT).await;
    assert_eq!(rows, fresh_rows);
    assert!(reason.contains("replication slot is gone"), "{reason}");
    let body = d.wait_ready(503).await;
    assert!(body.contains("replication slot is gone"), "{body}");
    // It stays so (the stored tables can never catch up), and the slot Larder created while
    // reconnecting is dropped again, so a restart takes a fresh snapshot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    larder.simple_query(QUERY).await.unwrap();
    assert_eq!(kit::explain_last(&larder).await.0, "upstream");
    let deadline = Instant::now() + WAIT;
    while first_cell(
        &direct,
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .await
        != "0"
    {
        assert!(
            Instant::now() < deadline,
            "the re-created slot was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = kit::status(&larder).await;
    assert!(
        status
            .get("Replication Status")
            .is_some_and(|s| s.contains("slot lost")),
        "{status:?}"
    );
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
async fn a_dead_replication_connection_sends_queries_upstream_until_it_is_back() {
    const BOUND_MS: u64 = 1500;
    let bound = BOUND_MS.to_string();
    let d = OpsDeployment::start("ops_dead", &["--max-replication-lag-ms", &bound], &[]);
    let larder = kit::connect(&d.larder_url()).await;
    let direct = kit::connect(&d.pg.url(&d.db)).await;
    create_cache(&larder).await;
    // Kill the walsender while no new connection to the database is allowed: replication
    // cannot reconnect (the sessions already open, and Larder's poll, keep working).
    let allow = |on: bool| {
        d.pg.psql(
            "postgres",
            &format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS {on}", d.db),
        )
        .expect("ALTER DATABASE ... ALLOW_CONNECTIONS")
    };
    allow(false);
    direct
        .simple_query(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = '{}' AND active_pid IS NOT NULL",
            d.slot()
        ))
        .await
        .unwrap();
    direct
        .batch_execute("UPDATE items SET price = price + 1000 WHERE id = 10")
        .await
        .unwrap();
    let fresh_rows = kit::text_rows(&direct, QUERY).await;
    let (rows, reason) =
        query_until(&larder, "upstream", Duration::from_millis(BOUND_MS + 5_000)).await;
    assert_eq!(rows, fresh_rows);
    assert!(reason.contains("staleness bound"), "{reason}");
    let body = d.wait_ready(503).await;
    assert!(body.contains("staleness bound"), "{body}");
    allow(true);
    let (rows, _) = query_until(&larder, "cache", WAIT).await;
    assert_eq!(rows, fresh_rows);
    assert_eq!(d.wait_ready(200).await, "ready\n");
}
