//! Client helpers for the end-to-end suites that talk to Larder with tokio-postgres: connect
//! with retries, simple queries as text, SQLSTATEs, `EXPLAIN LAST STATEMENT`, and waiting for
//! replication (the differential rule: after a direct commit, wait until Larder's "Replication
//! Offset" reaches the upstream's `pg_current_wal_lsn()`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Upper bound for any "eventually" (start-up, catch-up, rebuilds).
pub const WAIT: Duration = Duration::from_secs(40);
pub const POLL: Duration = Duration::from_millis(50);

pub async fn try_connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects, retrying for a while (Larder or the upstream may be coming up).
pub async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), try_connect(url)).await {
            Ok(Ok(c)) => return c,
            Ok(Err(e)) if Instant::now() > deadline => panic!("connecting to {url}: {e}"),
            Err(_) if Instant::now() > deadline => panic!("connecting to {url} timed out"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A simple-query result in text form: column names and rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Answer {
    pub fn sorted(mut self) -> Answer {
        self.rows.sort();
        self
    }

    pub fn cell(&self, row: usize, col: &str) -> &str {
        let i = self
            .columns
            .iter()
            .position(|c| c == col)
            .unwrap_or_else(|| panic!("no column {col} in {:?}", self.columns));
        self.rows[row][i].as_deref().unwrap_or("")
    }
}

pub async fn try_query(c: &Client, sql: &str) -> Result<Answer, tokio_postgres::Error> {
    let msgs = tokio::time::timeout(WAIT, c.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("query hung: {sql}"))?;
    let mut a = Answer {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                a.columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                if a.columns.is_empty() {
                    a.columns = r.columns().iter().map(|c| c.name().to_string()).collect();
                }
                a.rows
                    .push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
            _ => {}
        }
    }
    Ok(a)
}

pub async fn q(c: &Client, sql: &str) -> Answer {
    try_query(c, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)))
}

pub fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A statement without result rows, through the extended protocol.
pub async fn command(c: &Client, sql: &str) {
    tokio::time::timeout(WAIT, c.execute(sql, &[]))
        .await
        .unwrap_or_else(|_| panic!("hung: {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
}

/// (SQLSTATE, message) of a statement that must fail.
pub async fn query_err(c: &Client, sql: &str) -> (String, String) {
    match try_query(c, sql).await {
        Ok(a) => panic!("{sql} succeeded: {a:?}"),
        Err(e) => match e.as_db_error() {
            Some(db) => (db.code().code().to_string(), db.message().to_string()),
            None => panic!("{sql}: not a database error: {e}"),
        },
    }
}

/// (query_destination, reason) of the previous statement on this session.
pub async fn explain_last(c: &Client) -> (String, String) {
    let a = q(c, "EXPLAIN LAST STATEMENT").await;
    assert_eq!(a.rows.len(), 1, "{a:?}");
    (
        a.cell(0, "query_destination").to_string(),
        a.cell(0, "reason").to_string(),
    )
}

pub async fn larder_status(c: &Client) -> HashMap<String, String> {
    q(c, "SHOW LARDER STATUS")
        .await
        .rows
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
}

pub fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {s:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {s:?}"));
    (hi << 32) | lo
}

/// Waits until the snapshot is complete and the change stream runs.
pub async fn wait_streaming(c: &Client) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = larder_status(c).await;
        if s.get("Snapshot Status").map(String::as_str) == Some("Completed")
            && s.get("Replication Status").map(String::as_str) == Some("Streaming")
        {
            return;
        }
        assert!(Instant::now() < deadline, "larder never streamed: {s:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// The differential rule: wait until Larder applied everything committed upstream so far.
pub async fn wait_caught_up(direct: &Client, larder: &Client) {
    let target = parse_lsn(
        q(direct, "SELECT pg_current_wal_lsn()::text").await.rows[0][0]
            .as_deref()
            .unwrap_or(""),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let s = larder_status(larder).await;
        let offset = s
            .get("Replication Offset")
            .map(|v| parse_lsn(v))
            .unwrap_or(0);
        if offset >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "larder did not catch up to {target:X}: {s:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}
