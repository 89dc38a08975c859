//! Shared by `ops.rs` and `ops_staleness.rs`: a database with a Larder that serves the
//! operator's endpoints, an HTTP client for them, and the exposition parsed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use larder_testkit::{free_port, LarderProcess, PgServer};
use tokio_postgres::Client;

use crate::kit;

pub const WAIT: Duration = Duration::from_secs(30);
pub const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, category text NOT NULL, price int NOT NULL);
     INSERT INTO items SELECT g, CASE WHEN g % 2 = 0 THEN 'books' ELSE 'games' END, g FROM generate_series(1, 200) g;";
pub const QUERY: &str = "SELECT id, price FROM items WHERE category = 'books' AND id = 10";

/// A database with a Larder in front that serves the operator's endpoints.
pub struct OpsDeployment {
    pub pg: &'static PgServer,
    pub db: String,
    pub larder: LarderProcess,
    pub http: u16,
}

impl OpsDeployment {
    pub fn start(prefix: &str, extra: &[&str], envs: &[(&str, &str)]) -> OpsDeployment {
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

    pub fn larder_url(&self) -> String {
        self.larder
            .pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path)
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        Metrics::parse(&body)
    }

    pub fn slot(&self) -> String {
        format!("larder_{}", self.db.to_ascii_lowercase())
    }

    /// Waits until the metrics satisfy `ok`; returns them.
    pub async fn wait_metrics(&self, ok: impl Fn(&Metrics) -> bool) -> Metrics {
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
    pub async fn wait_ready(&self, want: u16) -> String {
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
pub fn http_get(port: u16, path: &str) -> (u16, String) {
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
pub struct Metrics {
    pub text: String,
    pub samples: HashMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
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

    pub fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in /metrics:\n{}", self.text))
    }

    pub fn has_family(&self, name: &str) -> bool {
        self.text.contains(&format!("# TYPE {name} "))
    }
}

pub async fn first_cell(c: &Client, sql: &str) -> String {
    kit::text_rows(c, sql)
        .await
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default()
}

pub async fn create_cache(larder: &Client) -> String {
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

/// Resumes a stopped process when dropped (so a failing test never leaves a walsender stopped).
pub struct Stopped(i32);

impl Stopped {
    pub fn stop(pid: i32) -> Stopped {
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
pub async fn query_until(
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
