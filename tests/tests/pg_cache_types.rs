//! Type round-trips through Larder's caches: every supported column type (and arrays of them),
//! filled with edge values, read through a cache and directly, in text and in binary format.
//!
//! Why: a cached answer is produced by Larder's own encoders, not relayed from Postgres, so every
//! byte has to be re-created exactly (numeric scale and NaN/Infinity, float shortest
//! round-trip, -0, infinite and BC dates, 24:00:00, timestamptz in the session's zone, bytea
//! hex, jsonb normalization and its binary version byte, array quoting, NULL elements, empty
//! arrays, char(n) padding...). The comparison is strict: text values byte for byte (through
//! tokio-postgres' simple protocol, `psql -At`, and psycopg's extended protocol with text
//! results), binary values byte for byte (tokio-postgres prepared statements and psycopg with
//! binary results), and RowDescriptions (names, type OIDs, sizes, modifiers as psycopg reports
//! them).
//!
//! Session settings that change text output (TimeZone, DateStyle, extra_float_digits,
//! bytea_output, client_encoding, standard_conforming_strings) are tested too: Larder must
//! either render exactly what Postgres would or relay the query upstream.
//!
//! The table is schema-qualified in every query so that no read needs a `search_path`
//! resolution round-trip and every read through Larder is expected to hit the cache.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use larder_testkit::{require_binary, LarderProcess, PgServer};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------------
// The table and its edge values
// ---------------------------------------------------------------------------------------------

const COLUMNS: &[(&str, &str)] = &[
    ("c_int2", "int2"),
    ("c_int4", "int4"),
    ("c_int8", "int8"),
    ("c_num", "numeric"),
    ("c_num_s", "numeric(12,4)"),
    ("c_f4", "float4"),
    ("c_f8", "float8"),
    ("c_text", "text"),
    ("c_vc", "varchar(10)"),
    ("c_ch", "char(5)"),
    ("c_bool", "bool"),
    ("c_bytea", "bytea"),
    ("c_date", "date"),
    ("c_time", "time"),
    ("c_ts", "timestamp"),
    ("c_tstz", "timestamptz"),
    ("c_uuid", "uuid"),
    ("c_json", "json"),
    ("c_jsonb", "jsonb"),
    ("a_int2", "int2[]"),
    ("a_int4", "int4[]"),
    ("a_int8", "int8[]"),
    ("a_num", "numeric[]"),
    ("a_f4", "float4[]"),
    ("a_f8", "float8[]"),
    ("a_text", "text[]"),
    ("a_vc", "varchar(10)[]"),
    ("a_ch", "char(3)[]"),
    ("a_bool", "bool[]"),
    ("a_bytea", "bytea[]"),
    ("a_date", "date[]"),
    ("a_time", "time[]"),
    ("a_ts", "timestamp[]"),
    ("a_tstz", "timestamptz[]"),
    ("a_uuid", "uuid[]"),
    ("a_json", "json[]"),
    ("a_jsonb", "jsonb[]"),
];

/// Rows as `(id, [(column, SQL expression)])`; unlisted columns are NULL.
fn rows() -> Vec<(i32, Vec<(&'static str, &'static str)>)> {
    vec![
        (1, vec![]),
        (
            2,
            vec![
                ("c_int2", "1"),
                ("c_int4", "2"),
                ("c_int8", "3"),
                ("c_num", "'12.5'"),
                ("c_num_s", "'1.5'"),
                ("c_f4", "'1.5'"),
                ("c_f8", "'2.5'"),
                ("c_text", "'hello'"),
                ("c_vc", "'abc'"),
                ("c_ch", "'ab'"),
                ("c_bool", "true"),
                ("c_bytea", "'\\x0102ff'"),
                ("c_date", "'2024-02-29'"),
                ("c_time", "'12:34:56.789'"),
                ("c_ts", "'2024-02-29 12:34:56.789012'"),
                ("c_tstz", "'2024-02-29 12:34:56.789012+02'"),
                ("c_uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
                ("c_json", "'{\"a\": 1,  \"b\": [1, 2]}'"),
                ("c_jsonb", "'{\"b\": [1, 2], \"a\": 1}'"),
                ("a_int2", "'{1,2,3}'"),
                ("a_int4", "'{1,-2,3}'"),
                ("a_int8", "'{9223372036854775807,-1}'"),
                ("a_num", "'{1.50,-0.001,100,10000}'"),
                ("a_f4", "'{1.5,0.1}'"),
                ("a_f8", "'{0.1,1e300}'"),
                ("a_text", "'{a,b,c}'"),
                ("a_vc", "'{ab,cd}'"),
                ("a_ch", "'{a,bc}'"),
                ("a_bool", "'{t,f}'"),
                ("a_bytea", "'{\"\\\\x01\",\"\\\\xff00\"}'"),
                ("a_date", "'{2000-01-01,1999-12-31}'"),
                ("a_time", "'{00:00:01,23:59:59.5}'"),
                ("a_ts", "'{\"2000-01-01 00:00:00\",\"1970-01-01 00:00:00.000001\"}'"),
                ("a_tstz", "'{\"2000-01-01 00:00:00+01\",\"1970-01-01 00:00:00.000001-08\"}'"),
                ("a_uuid", "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'"),
                ("a_json", "'{\"{\\\"a\\\": 1}\",\"[1, 2]\"}'"),
                ("a_jsonb", "'{\"{\\\"b\\\": 1, \\\"a\\\": 2}\",\"[1, 2]\"}'"),
            ],
        ),
        (
            3,
            vec![
                ("c_int2", "-32768"),
                ("c_int4", "-2147483648"),
                ("c_int8", "-9223372036854775808"),
                ("c_num", "'-123456789012345678901234567890.123456789012345678901234567890'"),
                ("c_num_s", "'-99999999.9999'"),
                ("c_f4", "'-3.4028235e38'"),
                ("c_f8", "'-1.7976931348623157e308'"),
                ("c_text", "''"),
                ("c_vc", "''"),
                ("c_ch", "''"),
                ("c_bool", "false"),
                ("c_bytea", "'\\x'"),
                ("c_date", "'4713-01-01 BC'"),
                ("c_time", "'00:00:00'"),
                ("c_ts", "'4713-01-01 00:00:00 BC'"),
                ("c_tstz", "'4713-01-01 00:00:00+00 BC'"),
                ("c_uuid", "'00000000-0000-0000-0000-000000000000'"),
                ("c_json", "'\"\"'"),
                ("c_jsonb", "'\"\"'"),
                ("a_int2", "'{}'"),
                ("a_int4", "'{}'"),
                ("a_int8", "'{}'"),
                ("a_num", "'{}'"),
                ("a_f4", "'{}'"),
                ("a_f8", "'{}'"),
                ("a_text", "'{}'"),
                ("a_vc", "'{}'"),
                ("a_ch", "'{}'"),
                ("a_bool", "'{}'"),
                ("a_bytea", "'{}'"),
                ("a_date", "'{}'"),
                ("a_time", "'{}'"),
                ("a_ts", "'{}'"),
                ("a_tstz", "'{}'"),
                ("a_uuid", "'{}'"),
                ("a_json", "'{}'"),
                ("a_jsonb", "'{}'"),
            ],
        ),
        (
            4,
            vec![
                ("c_int2", "32767"),
                ("c_int4", "2147483647"),
                ("c_int8", "9223372036854775807"),
                ("c_num", "(repeat('9', 300) || '.' || repeat('1', 200))::numeric"),
                ("c_num_s", "'99999999.9999'"),
                ("c_f4", "'3.4028235e38'"),
                ("c_f8", "'1.7976931348623157e308'"),
                ("c_text", "repeat('long ', 3000)"),
                ("c_vc", "'ÿÿÿÿÿÿÿÿÿÿ'"),
                ("c_ch", "'abcde'"),
                ("c_bool", "true"),
                ("c_bytea", "decode(repeat('00ff7f805c27', 400), 'hex')"),
                ("c_date", "'5874897-12-31'"),
                ("c_time", "'24:00:00'"),
                ("c_ts", "'294276-12-31 23:59:59.999999'"),
                ("c_tstz", "'294276-12-31 23:59:59.999999+00'"),
                ("c_uuid", "'ffffffff-ffff-ffff-ffff-ffffffffffff'"),
                ("c_json", "'{\"nested\": {\"deep\": [[[1]]], \"s\": \"x\"}, \"n\": 1.0e+2}'"),
                ("c_jsonb", "'{\"nested\": {\"deep\": [[[1]]], \"s\": \"x\"}, \"n\": 1.0e+2, \"big\": 12345678901234567890.123}'"),
                ("a_int4", "(SELECT array_agg(g) FROM generate_series(1, 1000) g)"),
                ("a_text", "array_fill('x y'::text, ARRAY[300])"),
                ("a_num", "ARRAY[repeat('9', 100)::numeric, 'NaN']"),
            ],
        ),
        (
            5,
            vec![
                ("c_int2", "0"),
                ("c_int4", "0"),
                ("c_int8", "0"),
                ("c_num", "'NaN'"),
                ("c_num_s", "'NaN'"),
                ("c_f4", "'NaN'"),
                ("c_f8", "'NaN'"),
                ("c_text", "'it''s \"q\" \\ back\\slash \\\\ two'"),
                ("c_vc", "E'tab\\there'"),
                ("c_ch", "' x'"),
                ("c_bytea", "'\\x00'"),
                ("c_date", "'infinity'"),
                ("c_time", "'23:59:59.999999'"),
                ("c_ts", "'infinity'"),
                ("c_tstz", "'infinity'"),
                ("c_uuid", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"),
                ("c_json", "'{\"k\": \"\\u00e9\\n\", \"e\": \"\\\\\"}'"),
                ("c_jsonb", "'{\"k\": \"\\u00e9\\n\", \"a\": [1, 2.50, 1e3, -0, 1E+2]}'"),
            ],
        ),
        (
            6,
            vec![
                ("c_int2", "-1"),
                ("c_num", "'-Infinity'"),
                ("c_num_s", "'-0.0000'"),
                ("c_f4", "'-Infinity'"),
                ("c_f8", "'-Infinity'"),
                ("c_text", "'日本語 🎉 ñ'"),
                ("c_vc", "'ñ'"),
                ("c_ch", "'ñ'"),
                ("c_bytea", "'\\xdeadbeef'"),
                ("c_date", "'-infinity'"),
                ("c_ts", "'-infinity'"),
                ("c_tstz", "'-infinity'"),
                ("c_json", "'null'"),
                ("c_jsonb", "'null'"),
            ],
        ),
        (
            7,
            vec![
                ("c_num", "'0.000000000000000000001'"),
                ("c_num_s", "'0.0001'"),
                ("c_f4", "'1e-45'"),
                ("c_f8", "'5e-324'"),
                ("c_text", "E'ctl\\t\\n\\r\\x01 end'"),
                ("c_json", "'  {\"a\" : 1 }  '"),
                ("c_jsonb", "'{\"b\":1,\"a\":2,\"a\":3}'"),
                ("c_date", "'0001-01-01 BC'"),
                ("c_ts", "'0001-01-01 00:00:00 BC'"),
                ("c_tstz", "'1901-12-13 20:45:52+00'"),
                ("c_time", "'00:00:00.000001'"),
            ],
        ),
        (
            8,
            vec![
                ("c_num", "'Infinity'"),
                ("c_num_s", "'100'"),
                ("c_f4", "'1.17549435e-38'"),
                ("c_f8", "'2.2250738585072014e-308'"),
                ("c_int8", "10000"),
                ("c_text", "'NULL'"),
                ("c_ts", "'1999-12-31 23:59:59.999999'"),
                ("c_tstz", "'2000-01-01 00:00:00+14'"),
                ("c_date", "'1999-12-31'"),
            ],
        ),
        (
            9,
            vec![
                ("c_num", "'1e20'"),
                ("c_num_s", "'-0.0001'"),
                ("c_f4", "'-0'"),
                ("c_f8", "'-0'"),
                ("c_ts", "'0099-06-15 00:00:00'"),
                ("c_tstz", "'0999-12-31 23:59:59-12'"),
                ("c_date", "'0099-06-15'"),
                ("c_jsonb", "'[1, \"two\", null, true, {\"x\": []}]'"),
            ],
        ),
        (
            10,
            vec![
                ("c_num", "'10000'"),
                ("c_num_s", "'12345678.1234'"),
                ("c_f4", "'0.1'"),
                ("c_f8", "'0.30000000000000004'"),
                ("c_text", "'\\'"),
                ("c_tstz", "'2024-06-01 12:00:00.5+05:45'"),
                ("c_time", "'12:00:00.100'"),
            ],
        ),
        (
            11,
            vec![
                ("c_num", "'0.1000'"),
                ("c_f4", "'16777217'"),
                ("c_f8", "'1.2345678901234568e20'"),
                ("c_int2", "-32767"),
                ("c_num_s", "'0'"),
                ("c_text", "'{\"not\": \"json\"}'"),
            ],
        ),
        (
            12,
            vec![
                ("c_num", "'-0.001'"),
                ("c_f4", "'3e-39'"),
                ("c_f8", "'1e22'"),
                ("c_num_s", "'1234.5678'"),
                ("a_int2", "'{1,NULL,3}'"),
                ("a_int4", "'{NULL}'"),
                ("a_int8", "'{NULL,NULL}'"),
                ("a_num", "'{NaN,1.50,-0.001,NULL,Infinity,-Infinity}'"),
                ("a_f4", "'{NaN,Infinity,-0,NULL,1e-45}'"),
                ("a_f8", "'{NaN,-Infinity,-0,1e-300,5e-324}'"),
                ("a_text", "'{\"a b\",\"\",NULL,\"NULL\",\"quote\\\"d\",\"back\\\\slash\",\"{braces}\",\"comma,\",\" lead\",\"x\",\"ñ\",\"semi;colon\"}'"),
                ("a_vc", "'{\"\",NULL,\"with space\"}'"),
                ("a_ch", "'{a,\"b c\",NULL,\"\"}'"),
                ("a_bool", "'{t,f,NULL}'"),
                ("a_bytea", "'{\"\\\\x00ff\",NULL,\"\\\\x\"}'"),
                ("a_date", "'{infinity,-infinity,2000-01-01,NULL,\"4713-01-01 BC\"}'"),
                ("a_time", "'{\"24:00:00\",NULL}'"),
                ("a_ts", "'{infinity,\"2000-01-01 00:00:00\",NULL,\"0044-03-15 00:00:00 BC\"}'"),
                ("a_tstz", "'{-infinity,\"2024-06-01 12:00:00+05:30\",NULL}'"),
                ("a_uuid", "'{NULL,00000000-0000-0000-0000-000000000000}'"),
                ("a_json", "'{\"{\\\"a\\\": 1}\",\"null\",NULL,\"\\\"s\\\"\"}'"),
                ("a_jsonb", "'{\"{\\\"b\\\": 1, \\\"a\\\": 2}\",NULL,\"[]\"}'"),
            ],
        ),
        (
            13,
            vec![
                ("a_text", "'{\"\"}'"),
                ("a_vc", "'{\" \"}'"),
                ("a_ch", "'{\" \"}'"),
                ("a_int4", "'{0}'"),
                ("a_json", "'{\"\\\"\\\"\"}'"),
                ("a_bytea", "'{\"\\\\x\"}'"),
                ("c_text", "' '"),
                ("c_vc", "' '"),
                ("c_ch", "' '"),
            ],
        ),
    ]
}

fn setup_sql() -> String {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|(n, t)| format!("    {n} {t}"))
        .collect();
    let mut sql = format!(
        "CREATE TABLE t (\n    id int PRIMARY KEY,\n{}\n);\n",
        cols.join(",\n")
    );
    for (id, values) in rows() {
        let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
        let exprs: Vec<&str> = values.iter().map(|(_, e)| *e).collect();
        if names.is_empty() {
            sql.push_str(&format!("INSERT INTO t (id) VALUES ({id});\n"));
        } else {
            sql.push_str(&format!(
                "INSERT INTO t (id, {}) VALUES ({id}, {});\n",
                names.join(", "),
                exprs.join(", ")
            ));
        }
    }
    sql
}

fn ids() -> Vec<i32> {
    rows().iter().map(|(id, _)| *id).collect()
}

const SELECT_ALL: &str = "SELECT * FROM public.t WHERE id = $1";
const SELECT_TZ: &str = "SELECT id, c_tstz, a_tstz, c_ts, c_date FROM public.t WHERE id = $1";
/// Expressions over several types, incl. ones that overflow for the extreme rows (Postgres
/// raises an error there; the cache must not make up a value).
const SELECT_EXPR: &str = "SELECT id, c_f8 * 2 AS f2, c_f4 * 2 AS f4m, c_f4 + c_f4 AS f4s, \
     c_f4 + c_f8 AS mix, c_int2 + c_int2 AS i2s, c_int2 * 2 AS i2m, c_int4 + c_int8 AS i48, \
     -c_int4 AS ni4, c_text || c_vc AS tv, c_vc || 'z' AS vz, coalesce(c_vc, c_text) AS cv, \
     length(c_text) AS lt, length(c_vc) AS lv, coalesce(c_int2, c_int8) AS ci, abs(c_f8) AS af, \
     c_int8 / 2 AS i8h, c_f8 / 3 AS f8t FROM public.t WHERE id = $1";

// ---------------------------------------------------------------------------------------------
// Harness (local to this suite)
// ---------------------------------------------------------------------------------------------

/// The raw bytes of a binary-format value.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// One shared database + Larder for the read-only tests of this file, with the caches made.
struct Deployment {
    pg: &'static PgServer,
    db: String,
    larder: LarderProcess,
}

impl Deployment {
    fn direct_url(&self) -> String {
        self.pg.url(&self.db)
    }
    fn larder_url(&self) -> String {
        self.larder
            .pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }
}

/// Runs psql (`-X -At`, ON_ERROR_STOP) with `sql` on stdin, without environment that would
/// change session settings; returns stdout bytes.
fn psql(url: &str, sql: &str, envs: &[(&str, &str)]) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new(require_binary("psql"));
    cmd.args([
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-f",
        "-",
    ])
    .env("PGCONNECT_TIMEOUT", "10")
    .env("LC_ALL", "C.UTF-8");
    for var in [
        "PGTZ",
        "PGDATESTYLE",
        "PGCLIENTENCODING",
        "PGOPTIONS",
        "PGSERVICE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning psql: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("psql stdin")?;
    let owned = sql.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(owned.as_bytes());
    });
    let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(format!(
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

fn shared() -> &'static Deployment {
    static DEPLOYMENT: OnceLock<Deployment> = OnceLock::new();
    DEPLOYMENT.get_or_init(|| {
        let pg = PgServer::shared();
        let db = pg.create_database("cache_types").expect("create database");
        pg.psql(&db, &setup_sql()).expect("setup");
        let url = pg.url(&db);
        let larder = LarderProcess::spawn(&["--upstream-db-url", &url, "--deployment", &db], &[])
            .unwrap_or_else(|e| panic!("starting larder: {e:#}"));
        let d = Deployment { pg, db, larder };
        let lurl = d.larder_url();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st =
                String::from_utf8_lossy(&psql(&lurl, "SHOW LARDER STATUS", &[]).expect("status"))
                    .into_owned();
            if st.contains("Snapshot Status|Completed")
                && st.contains("Replication Status|Streaming")
            {
                break;
            }
            assert!(Instant::now() < deadline, "larder not online: {st}");
            std::thread::sleep(Duration::from_millis(50));
        }
        for (name, q) in [
            ("types_all", SELECT_ALL),
            ("types_tz", SELECT_TZ),
            ("types_expr", SELECT_EXPR),
        ] {
            psql(&lurl, &format!("CREATE CACHE {name} FROM {q}"), &[])
                .unwrap_or_else(|e| panic!("CREATE CACHE {name}: {e}\n{}", d.larder.log()));
        }
        d
    })
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("ERROR {} {}", d.code().code(), d.message()),
        None => format!("client error {e}"),
    }
}

/// A simple-protocol result as comparable text: column names, then one line per row with
/// every value debug-quoted (NULL as NULL), or the error.
async fn simple_text(client: &Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Err(e) => db_error(&e),
        Ok(msgs) => {
            let mut out = String::new();
            for m in msgs {
                match m {
                    SimpleQueryMessage::RowDescription(cols) => {
                        let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
                        out.push_str(&format!("columns {names:?}\n"));
                    }
                    SimpleQueryMessage::Row(r) => {
                        let vals: Vec<String> = (0..r.len())
                            .map(|i| match r.try_get(i) {
                                Ok(Some(s)) => format!("{s:?}"),
                                Ok(None) => "NULL".into(),
                                Err(e) => format!("<{e}>"),
                            })
                            .collect();
                        out.push_str(&format!("  {}\n", vals.join(" | ")));
                    }
                    SimpleQueryMessage::CommandComplete(n) => {
                        out.push_str(&format!("complete {n}\n"))
                    }
                    _ => {}
                }
            }
            out
        }
    }
}

/// A binary-format result of a prepared statement: column names and type OIDs, then the raw
/// bytes of each value in hex, or the error.
async fn binary_hex(client: &Client, sql: &str, id: i32) -> String {
    let stmt = match client.prepare(sql).await {
        Ok(s) => s,
        Err(e) => return db_error(&e),
    };
    let cols: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| format!("{}:{}", c.name(), c.type_().oid()))
        .collect();
    let mut out = format!("columns {cols:?}\n");
    match client.query(&stmt, &[&id]).await {
        Err(e) => out.push_str(&db_error(&e)),
        Ok(rows) => {
            for r in rows {
                for (i, c) in r.columns().iter().enumerate() {
                    let v = match r.try_get::<_, Option<Raw>>(i) {
                        Ok(Some(raw)) => raw.0.iter().map(|b| format!("{b:02x}")).collect(),
                        Ok(None) => "NULL".to_string(),
                        Err(e) => format!("<{e}>"),
                    };
                    out.push_str(&format!("  {}={v}\n", c.name()));
                }
            }
        }
    }
    out
}

fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Waits until Larder's replication offset reaches Postgres' current WAL position.
async fn wait_consistent(direct: &Client, larder: &Client) {
    let row = direct
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn");
    let target = parse_lsn(row.get::<_, &str>(0)).expect("lsn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msgs = larder
            .simple_query("SHOW LARDER STATUS")
            .await
            .expect("status");
        let offset = msgs.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get(0) == Some("Replication Offset") => {
                r.get(1).and_then(parse_lsn)
            }
            _ => None,
        });
        if offset.is_some_and(|o| o >= target) {
            return;
        }
        assert!(Instant::now() < deadline, "larder did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn explain_last(client: &Client) -> String {
    match client.simple_query("EXPLAIN LAST STATEMENT").await {
        Err(e) => db_error(&e),
        Ok(msgs) => msgs
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(format!(
                    "{} ({})",
                    r.get(0).unwrap_or(""),
                    r.get(1).unwrap_or("")
                )),
                _ => None,
            })
            .unwrap_or_default(),
    }
}

/// A readable first difference between two multi-line outputs.
fn first_difference(direct: &str, cached: &str) -> Option<String> {
    if direct == cached {
        return None;
    }
    let d: Vec<&str> = direct.lines().collect();
    let c: Vec<&str> = cached.lines().collect();
    let at = d
        .iter()
        .zip(c.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(d.len().min(c.len()));
    let show = |v: &[&str]| {
        v.get(at)
            .map(|s| s.chars().take(300).collect::<String>())
            .unwrap_or_else(|| "<end>".into())
    };
    Some(format!(
        "line {}: direct {:?}\n          larder {:?}",
        at + 1,
        show(&d),
        show(&c)
    ))
}

fn simple_sql(template: &str, id: i32) -> String {
    template.replace("$1", &id.to_string())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every type, text (simple protocol) and binary (prepared statement), byte-identical, and
/// every read through Larder answered by the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_in_text_and_binary() {
    let d = shared();
    let direct = connect(&d.direct_url()).await;
    let cached = connect(&d.larder_url()).await;
    let mut diffs = Vec::new();
    let mut not_cached = Vec::new();
    for id in ids() {
        for (label, template) in [("all", SELECT_ALL), ("tz", SELECT_TZ)] {
            let sql = simple_sql(template, id);
            let via = simple_text(&cached, &sql).await;
            let dest = explain_last(&cached).await;
            let dir = simple_text(&direct, &sql).await;
            assert!(dir.contains("complete 1"), "row {id} missing: {dir}");
            if !dest.starts_with("cache") {
                not_cached.push(format!("text {label} id={id}: {dest}"));
            }
            if let Some(diff) = first_difference(&dir, &via) {
                diffs.push(format!("text {label} id={id}: {diff}"));
            }
            let via = binary_hex(&cached, template, id).await;
            let dest = explain_last(&cached).await;
            let dir = binary_hex(&direct, template, id).await;
            if !dest.starts_with("cache") {
                not_cached.push(format!("binary {label} id={id}: {dest}"));
            }
            if let Some(diff) = first_difference(&dir, &via) {
                diffs.push(format!("binary {label} id={id}: {diff}"));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences between cached and direct values:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    assert!(
        not_cached.is_empty(),
        "reads not answered by the cache:\n{}",
        not_cached.join("\n")
    );
}

/// Expressions over the types (incl. overflowing ones on the extreme rows): same values or the
/// same error as Postgres, text and binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_over_every_type_match_postgres() {
    let d = shared();
    let direct = connect(&d.direct_url()).await;
    let cached = connect(&d.larder_url()).await;
    let mut diffs = Vec::new();
    for id in ids() {
        let sql = simple_sql(SELECT_EXPR, id);
        let via = simple_text(&cached, &sql).await;
        let dest = explain_last(&cached).await;
        let dir = simple_text(&direct, &sql).await;
        if let Some(diff) = first_difference(&dir, &via) {
            diffs.push(format!("text id={id} [{dest}]: {diff}"));
        }
        let via = binary_hex(&cached, SELECT_EXPR, id).await;
        let dest = explain_last(&cached).await;
        let dir = binary_hex(&direct, SELECT_EXPR, id).await;
        if let Some(diff) = first_difference(&dir, &via) {
            diffs.push(format!("binary id={id} [{dest}]: {diff}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "cached expressions differ from Postgres:\n{}",
        diffs.join("\n")
    );
}

/// `psql -At` prints the same bytes through both ports.
#[test]
fn psql_text_output_is_identical() {
    let d = shared();
    let mut script = String::new();
    for id in ids() {
        script.push_str(&format!("{};\n", simple_sql(SELECT_ALL, id)));
        script.push_str(&format!("{};\n", simple_sql(SELECT_TZ, id)));
    }
    let direct = psql(&d.direct_url(), &script, &[]).expect("psql direct");
    let cached = psql(&d.larder_url(), &script, &[]).expect("psql larder");
    assert!(direct.len() > 5000, "suspiciously short psql output");
    let (dt, ct) = (
        String::from_utf8_lossy(&direct),
        String::from_utf8_lossy(&cached),
    );
    if let Some(diff) = first_difference(&dt, &ct) {
        panic!("psql output differs through larder: {diff}");
    }
    // The same script with EXPLAIN LAST STATEMENT after each read: all from the cache.
    let explained: String = script
        .lines()
        .map(|l| format!("{l}\nEXPLAIN LAST STATEMENT;\n"))
        .collect();
    let out = psql(&d.larder_url(), &explained, &[]).expect("psql explain");
    let dests: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.starts_with("cache|") || l.starts_with("upstream|"))
        .map(str::to_string)
        .collect();
    assert_eq!(dests.len(), ids().len() * 2, "{dests:?}");
    assert!(dests.iter().all(|l| l.starts_with("cache|")), "{dests:#?}");
}

/// psycopg 3 (libpq extended protocol with Describe Portal): text and binary results and the
/// RowDescription produced by Larder (names, OIDs, sizes, typmods) are identical.
#[test]
fn psycopg_text_and_binary_results_are_identical() {
    let d = shared();
    let python = std::env::var_os("LARDER_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| require_binary("python3"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join("cache_types.py");
    let run = |url: &str, query: &str, explain: bool| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg(url).arg(query);
        for id in ids() {
            cmd.arg(id.to_string());
        }
        if explain {
            cmd.arg("--explain");
        }
        let out = cmd
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("PGTZ")
            .env_remove("PGOPTIONS")
            .output()
            .expect("running python");
        assert!(
            out.status.success(),
            "cache_types.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for template in [SELECT_ALL, SELECT_TZ] {
        let query = template.replace("$1", "%s");
        let direct = run(&d.direct_url(), &query, false);
        let cached = run(&d.larder_url(), &query, true);
        let dests: Vec<&str> = cached.lines().filter(|l| l.starts_with("DEST ")).collect();
        let data: String = cached
            .lines()
            .filter(|l| !l.starts_with("DEST "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(direct.len() > 2000, "suspiciously short output: {direct}");
        if let Some(diff) = first_difference(&direct, &data) {
            panic!("psycopg output differs through larder ({query}): {diff}");
        }
        assert_eq!(dests.len(), ids().len() * 4);
        let upstream: Vec<&&str> = dests
            .iter()
            .filter(|l| !l.starts_with("DEST cache"))
            .collect();
        assert!(
            upstream.is_empty(),
            "psycopg reads not answered by the cache: {upstream:#?}"
        );
    }
}

/// Runs the timestamptz cache in sessions with `setup` (a SET statement) through both ports,
/// text and binary; returns the differences.
async fn session_differences(setup: &str, templates: &[&str]) -> Vec<String> {
    let d = shared();
    let direct = connect(&d.direct_url()).await;
    let cached = connect(&d.larder_url()).await;
    let mut diffs = Vec::new();
    for c in [&direct, &cached] {
        if let Err(e) = c.batch_execute(setup).await {
            return vec![format!("{setup}: {}", db_error(&e))];
        }
    }
    for template in templates {
        for id in ids() {
            let sql = simple_sql(template, id);
            let via = simple_text(&cached, &sql).await;
            let dest = explain_last(&cached).await;
            let dir = simple_text(&direct, &sql).await;
            if let Some(diff) = first_difference(&dir, &via) {
                diffs.push(format!("{setup} text id={id} [{dest}]: {diff}"));
            }
            let via = binary_hex(&cached, template, id).await;
            let dir = binary_hex(&direct, template, id).await;
            if let Some(diff) = first_difference(&dir, &via) {
                diffs.push(format!("{setup} binary id={id}: {diff}"));
            }
        }
    }
    diffs
}

/// Named zones (Larder relays those upstream), fixed offsets in every spelling (POSIX signs
/// are west-positive, ISO and numeric-hours ones east-positive), and odd minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timezone_sessions_match_direct() {
    let mut diffs = Vec::new();
    for setup in [
        "SET TimeZone = 'America/New_York'",
        "SET TimeZone = 'Asia/Kolkata'",
        "SET TimeZone = 'Europe/London'",
        "SET TimeZone = '+05:30'",
        "SET TimeZone = '-03'",
        "SET TimeZone = 'UTC+3'",
        "SET TimeZone = 'Etc/GMT-14'",
        "SET TimeZone = '<+0545>-05:45'",
        "SET TIME ZONE INTERVAL '+05:30' HOUR TO MINUTE",
        "SET TIME ZONE 5.5",
        "SET TIME ZONE -8",
        "SET TimeZone = 'GMT'",
        "SET TimeZone = 'UTC'",
        "SET TimeZone = 'Etc/UTC'",
    ] {
        diffs.extend(session_differences(setup, &[SELECT_TZ]).await);
    }
    assert!(
        diffs.is_empty(),
        "timestamptz output differs in sessions with a TimeZone:\n{}",
        diffs.join("\n")
    );
}

/// DateStyle changes how date/timestamp values are printed (and it is reported to clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datestyle_sessions_match_direct() {
    let mut diffs = Vec::new();
    for setup in [
        "SET DateStyle = 'German'",
        "SET DateStyle = 'SQL, DMY'",
        "SET DateStyle = 'Postgres, MDY'",
        "SET DateStyle = 'ISO, DMY'",
    ] {
        diffs.extend(session_differences(setup, &[SELECT_TZ]).await);
    }
    assert!(
        diffs.is_empty(),
        "date output differs in sessions with another DateStyle:\n{}",
        diffs.join("\n")
    );
}

/// extra_float_digits <= 0 switches Postgres from shortest round-trip output to %g-style output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_float_digits_sessions_match_direct() {
    let mut diffs = Vec::new();
    for setup in [
        "SET extra_float_digits = 0",
        "SET extra_float_digits = -3",
        "SET extra_float_digits = 3",
    ] {
        diffs.extend(session_differences(setup, &[SELECT_ALL]).await);
    }
    assert!(
        diffs.is_empty(),
        "float output differs in sessions with extra_float_digits:\n{}",
        diffs.join("\n")
    );
}

/// bytea_output = 'escape' prints bytea in the escape format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytea_output_escape_sessions_match_direct() {
    let diffs = session_differences("SET bytea_output = 'escape'", &[SELECT_ALL]).await;
    assert!(
        diffs.is_empty(),
        "bytea output differs with bytea_output = escape:\n{}",
        diffs.join("\n")
    );
}

/// With standard_conforming_strings off, a backslash in a literal is an escape: the literal
/// `'\\'` in the simple protocol means one backslash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_conforming_strings_off_matches_direct() {
    let d = shared();
    let mut report = Vec::new();
    for conn_url in [d.direct_url(), d.larder_url()] {
        let c = connect(&conn_url).await;
        c.batch_execute("SET standard_conforming_strings = off")
            .await
            .unwrap();
        // c_text of row 10 is a single backslash.
        let q = "SELECT * FROM public.t WHERE id = 10 AND c_text = '\\\\'";
        let mut out = simple_text(&c, q).await;
        out.push_str(&simple_text(&c, "SELECT 'a\\\\b' AS lit").await);
        report.push(out);
    }
    assert!(
        report[0].contains("complete 1"),
        "direct found no row: {}",
        report[0]
    );
    if let Some(diff) = first_difference(&report[0], &report[1]) {
        panic!("standard_conforming_strings = off: {diff}");
    }
}

/// client_encoding LATIN1: the server converts text to LATIN1; so must a cached answer. Checked
/// with psql (tokio-postgres insists on UTF8).
#[test]
fn client_encoding_latin1_matches_direct() {
    let d = shared();
    // Row 6 holds non-Latin-1 text (日本語: conversion error) and row 2/4 Latin-1-only text.
    let mut outputs = Vec::new();
    for url in [d.direct_url(), d.larder_url()] {
        let mut out = Vec::new();
        for id in [2, 4, 6, 12] {
            let sql = format!(
                "SET client_encoding = 'LATIN1';\nSELECT c_vc, c_ch, a_text FROM public.t WHERE id = {id};\n"
            );
            match psql(&url, &sql, &[]) {
                Ok(bytes) => out.extend(bytes),
                Err(e) => out.extend(
                    e.lines()
                        .find(|l| l.contains("ERROR"))
                        .unwrap_or(&e)
                        .as_bytes(),
                ),
            }
            out.push(b'\n');
        }
        outputs.push(out);
    }
    assert!(
        outputs[0].windows(2).any(|w| w == [0xff, 0xff]),
        "direct output lacks LATIN1 ÿ: {:?}",
        String::from_utf8_lossy(&outputs[0])
    );
    assert!(
        outputs[0] == outputs[1],
        "client_encoding LATIN1 output differs:\ndirect {:?}\nlarder {:?}",
        String::from_utf8_lossy(&outputs[0]),
        String::from_utf8_lossy(&outputs[1])
    );
}

/// A fresh database with `setup` run in it and a Larder in front (not shared).
struct Own {
    pg: &'static PgServer,
    db: String,
    larder: LarderProcess,
}

impl Own {
    fn start(prefix: &str, setup: &str) -> Own {
        let pg = PgServer::shared();
        let db = pg.create_database(prefix).expect("create database");
        pg.psql(&db, setup).expect("setup");
        let url = pg.url(&db);
        let larder = LarderProcess::spawn(&["--upstream-db-url", &url, "--deployment", &db], &[])
            .unwrap_or_else(|e| panic!("starting larder: {e:#}"));
        Own { pg, db, larder }
    }

    fn larder_url(&self) -> String {
        self.larder
            .pg_url(self.pg.admin_user(), self.pg.admin_password(), &self.db)
    }

    /// Waits for snapshot + streaming; the status text on timeout.
    async fn online(&self, cached: &Client, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = simple_text(cached, "SHOW LARDER STATUS").await;
            if st.contains("\"Completed\"") && st.contains("\"Streaming\"") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(st);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Compares `SELECT * FROM public.<table> WHERE id = $1` for `ids` in text and binary.
async fn compare_by_id(direct: &Client, cached: &Client, table: &str, ids: &[i32]) -> Vec<String> {
    let q = format!("SELECT * FROM public.{table} WHERE id = $1");
    let mut diffs = Vec::new();
    for &id in ids {
        let sql = simple_sql(&q, id);
        let via = simple_text(cached, &sql).await;
        let dest = explain_last(cached).await;
        let dir = simple_text(direct, &sql).await;
        if let Some(diff) = first_difference(&dir, &via) {
            diffs.push(format!("{table} text id={id} [{dest}]: {diff}"));
        }
        let via = binary_hex(cached, &q, id).await;
        let dir = binary_hex(direct, &q, id).await;
        if let Some(diff) = first_difference(&dir, &via) {
            diffs.push(format!("{table} binary id={id}: {diff}"));
        }
    }
    diffs
}

const ODD_ARRAYS: &str = "CREATE TABLE arr (id int PRIMARY KEY, a int4[], t text[]);
     CREATE TABLE other (id int PRIMARY KEY, v int);
     INSERT INTO other VALUES (1, 1);
     INSERT INTO arr VALUES (1, '{1,2,3}', '{a}'), (4, '{}', '{}');";

/// Postgres lets any `int[]` value have other lower bounds or several dimensions. Larder cannot
/// represent those; a table holding one at snapshot time must not keep Larder (and every
/// other table) from coming online, and reads of it must stay correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_arrays_in_the_snapshot_do_not_stop_replication() {
    let d = Own::start(
        "cache_arrays_snap",
        &format!(
            "{ODD_ARRAYS}
             INSERT INTO arr VALUES (2, '[0:2]={{1,2,3}}', '[5:5]={{x}}'),
               (3, '{{{{1,2}},{{3,4}}}}', '{{{{a,b}},{{NULL,\"c d\"}}}}');"
        ),
    );
    let direct = connect(&d.pg.url(&d.db)).await;
    let cached = connect(&d.larder_url()).await;
    if let Err(st) = d.online(&cached, Duration::from_secs(20)).await {
        panic!("one table with an offset/multi-dimensional array kept Larder from coming online:\n{st}");
    }
    let _ = cached
        .simple_query("CREATE CACHE FROM SELECT * FROM public.other WHERE id = $1")
        .await
        .expect("cache on the other table");
    let _ = cached
        .simple_query("CREATE CACHE FROM SELECT * FROM public.arr WHERE id = $1")
        .await;
    direct
        .batch_execute("INSERT INTO other VALUES (2, 2)")
        .await
        .unwrap();
    wait_consistent(&direct, &cached).await;
    let mut diffs = compare_by_id(&direct, &cached, "arr", &[1, 2, 3, 4]).await;
    diffs.extend(compare_by_id(&direct, &cached, "other", &[1, 2]).await);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// The same values arriving through the change stream after the caches exist: the other table
/// must stay fresh, and no cache may serve the old value of the changed row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_arrays_in_the_change_stream_do_not_stop_replication() {
    let d = Own::start("cache_arrays_stream", ODD_ARRAYS);
    let direct = connect(&d.pg.url(&d.db)).await;
    let cached = connect(&d.larder_url()).await;
    d.online(&cached, Duration::from_secs(60))
        .await
        .unwrap_or_else(|st| panic!("not online: {st}"));
    for q in [
        "SELECT * FROM public.other WHERE id = $1",
        "SELECT * FROM public.arr WHERE id = $1",
    ] {
        cached
            .simple_query(&format!("CREATE CACHE FROM {q}"))
            .await
            .unwrap_or_else(|e| panic!("{q}: {}", db_error(&e)));
    }
    direct
        .batch_execute(
            "UPDATE arr SET a = '[0:1]={7,8}' WHERE id = 1; \
             INSERT INTO arr VALUES (3, '{{1,2},{3,4}}', '{{a},{b}}'); \
             INSERT INTO other VALUES (2, 2)",
        )
        .await
        .unwrap();
    // Bounded wait: a stalled stream shows up as a timeout with the status.
    let row = direct
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap();
    let target = parse_lsn(row.get::<_, &str>(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = simple_text(&cached, "SHOW LARDER STATUS").await;
        let offset = st
            .lines()
            .find(|l| l.contains("\"Replication Offset\""))
            .and_then(|l| l.rsplit('"').nth(1))
            .and_then(parse_lsn);
        if offset.is_some_and(|o| o >= target) {
            break;
        }
        if Instant::now() > deadline {
            // Meanwhile, does a cache keep answering for the table that stopped changing?
            let stale = compare_by_id(&direct, &cached, "other", &[2]).await;
            panic!(
                "replication stalled after an offset/multi-dimensional array arrived:\n{st}\n\
                 reads of another table meanwhile: {stale:?}\n{}",
                d.larder
                    .log()
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut diffs = compare_by_id(&direct, &cached, "arr", &[1, 3, 4]).await;
    diffs.extend(compare_by_id(&direct, &cached, "other", &[1, 2]).await);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Output settings given at connection start (startup `options`, which is how `PGOPTIONS`,
/// `ALTER ROLE ... SET` and `ALTER DATABASE ... SET` reach a session) never appear as a SET
/// statement: a cache must still print floats and bytea the way the session asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_settings_from_startup_options_match_direct() {
    let d = shared();
    let options = "?options=-c%20extra_float_digits%3D0%20-c%20bytea_output%3Descape";
    let direct = connect(&format!("{}{options}", d.direct_url())).await;
    let cached = connect(&format!("{}{options}", d.larder_url())).await;
    let mut diffs = Vec::new();
    for id in ids() {
        let sql = simple_sql(SELECT_ALL, id);
        let via = simple_text(&cached, &sql).await;
        let dest = explain_last(&cached).await;
        let dir = simple_text(&direct, &sql).await;
        if let Some(diff) = first_difference(&dir, &via) {
            diffs.push(format!("id={id} [{dest}]: {diff}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "startup options extra_float_digits=0 / bytea_output=escape ignored by the cache:\n{}",
        diffs.join("\n")
    );
}

/// The same settings as role defaults (`ALTER ROLE ... SET`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_settings_from_role_defaults_match_direct() {
    let d = shared();
    let role = format!("dt_role_{}", std::process::id());
    d.pg.psql(
        "postgres",
        &format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'pw{role}';
             ALTER ROLE {role} SET extra_float_digits = 0; ALTER ROLE {role} SET bytea_output = 'escape';"
        ),
    )
    .expect("create role");
    // Larder reads role and database defaults with its catalog poll (every second).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let direct = connect(&format!(
        "postgresql://{role}:pw{role}@127.0.0.1:{}/{}",
        d.pg.port(),
        d.db
    ))
    .await;
    let cached = connect(&d.larder.pg_url(&role, &format!("pw{role}"), &d.db)).await;
    let mut diffs = Vec::new();
    for id in ids() {
        let sql = simple_sql(SELECT_ALL, id);
        let via = simple_text(&cached, &sql).await;
        let dest = explain_last(&cached).await;
        let dir = simple_text(&direct, &sql).await;
        if let Some(diff) = first_difference(&dir, &via) {
            diffs.push(format!("id={id} [{dest}]: {diff}"));
        }
    }
    drop((direct, cached));
    assert!(
        diffs.is_empty(),
        "role defaults extra_float_digits=0 / bytea_output=escape ignored by the cache:\n{}",
        diffs.join("\n")
    );
}

/// Larder's own statements prepared by a libpq client (named Parse + Sync first, then Bind /
/// Execute) must be answered by Larder, not relayed upstream as syntax errors.
#[test]
fn larder_statements_can_be_prepared_by_libpq_clients() {
    let d = shared();
    let python = std::env::var_os("LARDER_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| require_binary("python3"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join("cache_types.py");
    let out = Command::new(python)
        .arg(script)
        .arg("--larder-statements")
        .arg(d.larder_url())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(
        text.lines().all(|l| l.starts_with("OK ")),
        "Larder statements failed when prepared:\n{text}"
    );
}
