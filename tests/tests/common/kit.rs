//! Harness pieces of the differential suites (connections, consistency waits, raw result
//! capture), shared by `pg_cache_differential` and `pg_dataflow_differential`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::error::Error;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use larder_testkit::{LarderProcess, PgServer};
use tokio_postgres::types::{to_sql_checked, Format, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

/// How long Larder may take to catch up with Postgres before the test fails.
pub const CONSISTENCY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Larder may take to snapshot and start streaming.
pub const ONLINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A column value exactly as it came off the wire (text or binary); `None` is SQL NULL.
pub type Cell = Option<Vec<u8>>;
pub type Rows = Vec<Vec<Cell>>;

/// What one statement produced: column descriptions and rows, or the SQLSTATE of its error.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Rows { columns: Vec<String>, rows: Rows },
    Error(String),
}

/// The raw bytes of a value in a binary-format result, whatever its type.
pub struct Raw(pub Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A parameter value of the generated queries.
#[derive(Clone, Debug, PartialEq)]
pub enum P {
    Int(i64),
    Text(String),
    /// numeric, written as decimal text
    Num(String),
    Float(f64),
    Bool(bool),
    /// timestamp, written as text
    Ts(String),
    Null,
}

impl P {
    /// The value as a SQL literal for the simple protocol.
    pub fn literal(&self) -> String {
        match self {
            P::Int(i) => i.to_string(),
            P::Text(s) | P::Ts(s) => quote(s),
            P::Num(s) => s.clone(),
            P::Float(f) if f.is_finite() => format!("{f:?}"),
            P::Float(_) => quote(&self.text().unwrap_or_default()),
            P::Bool(b) => b.to_string(),
            P::Null => "NULL".into(),
        }
    }

    /// The value in Postgres text input format (`None` for NULL).
    pub fn text(&self) -> Option<String> {
        Some(match self {
            P::Int(i) => i.to_string(),
            P::Text(s) | P::Ts(s) | P::Num(s) => s.clone(),
            P::Float(f) if f.is_nan() => "NaN".into(),
            P::Float(f) if f.is_infinite() => {
                if *f > 0.0 { "Infinity" } else { "-Infinity" }.into()
            }
            P::Float(f) => format!("{f:?}"),
            P::Bool(b) => if *b { "t" } else { "f" }.into(),
            P::Null => return None,
        })
    }
}

pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A parameter bound with the extended protocol, in binary format when `binary` and the
/// type allows it, else in text format.
#[derive(Debug)]
pub struct Arg {
    pub value: P,
    pub binary: bool,
}

impl Arg {
    fn binary_for(&self, ty: &Type) -> bool {
        self.binary
            && match &self.value {
                P::Int(_) => matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8),
                P::Float(_) => matches!(*ty, Type::FLOAT4 | Type::FLOAT8),
                P::Bool(_) => *ty == Type::BOOL,
                P::Text(_) => matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR),
                _ => false,
            }
    }
}

impl ToSql for Arg {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if self.value == P::Null {
            return Ok(IsNull::Yes);
        }
        if !self.binary_for(ty) {
            out.put_slice(self.value.text().unwrap_or_default().as_bytes());
            return Ok(IsNull::No);
        }
        match (&self.value, ty) {
            (P::Int(i), &Type::INT2) => out.put_i16(i16::try_from(*i)?),
            (P::Int(i), &Type::INT4) => out.put_i32(i32::try_from(*i)?),
            (P::Int(i), _) => out.put_i64(*i),
            (P::Float(f), &Type::FLOAT4) => out.put_f32(*f as f32),
            (P::Float(f), _) => out.put_f64(*f),
            (P::Bool(b), _) => out.put_u8(u8::from(*b)),
            (P::Text(s), _) => out.put_slice(s.as_bytes()),
            (other, ty) => return Err(format!("cannot bind {other:?} as {ty}").into()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, ty: &Type) -> Format {
        if self.binary_for(ty) {
            Format::Binary
        } else {
            Format::Text
        }
    }

    to_sql_checked!();
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn error_code(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => format!("client error: {e}"),
    }
}

/// A connection plus the statements prepared on it (keyed by SQL text).
pub struct Conn {
    pub client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    pub async fn new(url: &str) -> Conn {
        Conn {
            client: connect(url).await,
            statements: HashMap::new(),
        }
    }

    /// Runs `sql` with the simple protocol; the values are the server's text.
    pub async fn simple(&self, sql: &str) -> Outcome {
        match self.client.simple_query(sql).await {
            Err(e) => Outcome::Error(error_code(&e)),
            Ok(msgs) => {
                let mut columns = Vec::new();
                let mut rows = Vec::new();
                for m in msgs {
                    match m {
                        SimpleQueryMessage::RowDescription(cols) => {
                            columns = cols.iter().map(|c| c.name().to_string()).collect();
                        }
                        SimpleQueryMessage::Row(r) => rows.push(
                            (0..r.len())
                                .map(|i| r.get(i).map(|s| s.as_bytes().to_vec()))
                                .collect(),
                        ),
                        _ => {}
                    }
                }
                Outcome::Rows { columns, rows }
            }
        }
    }

    /// Runs `sql` with the extended protocol on a statement prepared once per connection
    /// (or, when `fresh`, through `Client::query(&str)`, which prepares it anew); results
    /// are binary and kept as raw bytes.
    pub async fn extended(&mut self, sql: &str, args: &[Arg], fresh: bool) -> Outcome {
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let result = if fresh {
            self.client.query(sql, &params).await
        } else {
            let stmt = match self.statements.get(sql) {
                Some(s) => s.clone(),
                None => match self.client.prepare(sql).await {
                    Ok(s) => {
                        self.statements.insert(sql.to_string(), s.clone());
                        s
                    }
                    Err(e) => return Outcome::Error(error_code(&e)),
                },
            };
            self.client.query(&stmt, &params).await
        };
        match result {
            Err(e) => Outcome::Error(error_code(&e)),
            Ok(rows) => {
                let columns = rows
                    .first()
                    .map(|r| {
                        r.columns()
                            .iter()
                            .map(|c| format!("{}:{}", c.name(), c.type_().oid()))
                            .collect()
                    })
                    .unwrap_or_default();
                let rows = rows
                    .iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                r.try_get::<_, Option<Raw>>(i)
                                    .map(|v| v.map(|raw| raw.0))
                                    .unwrap_or_else(|e| {
                                        Some(format!("<undecodable: {e}>").into_bytes())
                                    })
                            })
                            .collect()
                    })
                    .collect();
                Outcome::Rows { columns, rows }
            }
        }
    }
}

/// Rows of a simple query as text (NULL as `None`); panics on error.
pub async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_code(&e)));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// `SHOW LARDER STATUS` as a name -> value map.
pub async fn status(larder: &Client) -> HashMap<String, String> {
    text_rows(larder, "SHOW LARDER STATUS")
        .await
        .into_iter()
        .filter_map(|r| Some((r.first()?.clone()?, r.get(1)?.clone().unwrap_or_default())))
        .collect()
}

/// Parses an LSN `X/Y` into `X << 32 | Y`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Waits until Larder has finished its snapshot and is streaming.
pub async fn wait_online(larder: &Client) {
    let deadline = Instant::now() + ONLINE_TIMEOUT;
    loop {
        let st = status(larder).await;
        if st.get("Snapshot Status").map(String::as_str) == Some("Completed")
            && st.get("Replication Status").map(String::as_str) == Some("Streaming")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "larder did not come online within {ONLINE_TIMEOUT:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The differential rule: after writes committed upstream, wait until Larder's applied
/// offset reaches Postgres' current WAL position.
pub async fn wait_consistent(direct: &Client, larder: &Client) -> Duration {
    let started = Instant::now();
    let lsn_text = text_rows(direct, "SELECT pg_current_wal_lsn()::text").await;
    let target = lsn_text
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|s| parse_lsn(&s))
        .expect("pg_current_wal_lsn");
    loop {
        let st = status(larder).await;
        let offset = st.get("Replication Offset").and_then(|s| parse_lsn(s));
        if offset.is_some_and(|o| o >= target) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < CONSISTENCY_TIMEOUT,
            "larder did not reach LSN {target:X} within {CONSISTENCY_TIMEOUT:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `EXPLAIN LAST STATEMENT`: (destination, reason).
pub async fn explain_last(larder: &Client) -> (String, String) {
    let rows = text_rows(larder, "EXPLAIN LAST STATEMENT").await;
    let row = rows
        .first()
        .expect("EXPLAIN LAST STATEMENT returned no row");
    (
        row.first().cloned().flatten().unwrap_or_default(),
        row.get(1).cloned().flatten().unwrap_or_default(),
    )
}

/// `SHOW CACHES`: query_id -> (name, hit count).
pub async fn cache_counts(larder: &Client) -> HashMap<String, (String, u64)> {
    text_rows(larder, "SHOW CACHES")
        .await
        .into_iter()
        .map(|r| {
            let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            (get(0), (get(1), get(4).parse().unwrap_or(0)))
        })
        .collect()
}

/// A fresh database on the shared server with a Larder (replicating it) in front.
pub struct Deployment {
    pub pg: &'static PgServer,
    pub db: String,
    pub larder: LarderProcess,
}

impl Deployment {
    /// Creates the database, runs `setup_sql` in it directly, then starts Larder.
    pub fn start(prefix: &str, setup_sql: &str) -> Deployment {
        Deployment::start_with(prefix, "", setup_sql)
    }

    /// Like [`Deployment::start`], with extra `CREATE DATABASE` options (e.g. a locale).
    pub fn start_with(prefix: &str, create_options: &str, setup_sql: &str) -> Deployment {
        Deployment::start_env(prefix, create_options, setup_sql, &[])
    }

    /// Like [`Deployment::start_with`], with extra environment for Larder (settings by their
    /// environment variables).
    pub fn start_env(
        prefix: &str,
        create_options: &str,
        setup_sql: &str,
        env: &[(&str, &str)],
    ) -> Deployment {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let pg = PgServer::shared();
        let db = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE \"{db}\" {create_options}"),
        )
        .expect("create database");
        if !setup_sql.is_empty() {
            pg.psql(&db, setup_sql).expect("setup sql");
        }
        let url = pg.url(&db);
        let larder = LarderProcess::spawn(&["--upstream-db-url", &url, "--deployment", &db], env)
            .unwrap_or_else(|e| panic!("starting larder: {e:#}"));
        Deployment { pg, db, larder }
    }

    pub fn direct_url(&self) -> String {
        self.pg.url(&self.db)
    }

    pub fn larder_url(&self) -> String {
        self.larder
            .pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }
}

/// Human-readable rows for failure messages.
pub fn show_rows(rows: &Rows, max: usize) -> String {
    let mut out = String::new();
    for r in rows.iter().take(max) {
        let cells: Vec<String> = r
            .iter()
            .map(|c| match c {
                None => "NULL".into(),
                Some(b) => match std::str::from_utf8(b) {
                    Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
                    _ => format!(
                        "0x{}",
                        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                    ),
                },
            })
            .collect();
        out.push_str(&format!("  [{}]\n", cells.join(", ")));
    }
    if rows.len() > max {
        out.push_str(&format!("  ... {} rows in all\n", rows.len()));
    }
    out
}

pub fn show_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Error(e) => format!("ERROR {e}\n"),
        Outcome::Rows { columns, rows } => {
            format!(
                "columns {columns:?}, {} rows\n{}",
                rows.len(),
                show_rows(rows, 25)
            )
        }
    }
}
