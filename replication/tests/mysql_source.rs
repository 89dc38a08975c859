//! MySQL/MariaDB source against a real MariaDB (larder-testkit): discovery, snapshot and
//! binlog values of every type, batches per transaction, prerequisites, duplicate server id.
//!
//! Tests share one server, each with its own database and its own server id. Writes go
//! through the `mariadb` client; other tests' transactions show up as empty batches.

use anyhow::{Context, Result};
use larder_replication::mysql::{MySource, MySourceOptions};
use larder_replication::{Change, NewRow, OldRow, RelationInfo, ReplicationError, TableStatus};
use larder_sql::{Row, SqlType, Value};
use larder_testkit::MariaDbServer;

mod mysql_support;
use mysql_support::*;

const TYPES_TABLE: &str = "(
  id INT PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  d0 DECIMAL(10,0), d2 DECIMAL(10,2), d6 DECIMAL(20,6), f FLOAT, db DOUBLE,
  c CHAR(5), vc VARCHAR(20), tx TEXT, bn BINARY(4), vb VARBINARY(10), bl BLOB,
  dt DATE, dtm DATETIME, dtm6 DATETIME(6), ts TIMESTAMP NULL, ts3 TIMESTAMP(3) NULL,
  tm TIME, tm2 TIME(2), y YEAR, e ENUM('small','medium','large'), st SET('a','b','c'),
  bt BIT(10), j JSON
)";

const DAY: i64 = 86_400_000_000;
const SEC: i64 = 1_000_000;

fn expected_types_rows() -> Vec<Row> {
    use Value::*;
    let n = |s: &str| Numeric(s.into());
    let t = |s: &str| Text(s.into());
    vec![
        vec![
            Int(1),
            Int(-5),
            Int(200),
            Int(-300),
            Int(60000),
            Int(-8_000_000),
            Int(16_000_000),
            Int(-2_000_000_000),
            Int(4_000_000_000),
            Int(-9_000_000_000_000_000_000),
            n("18446744073709551615"),
            n("42"),
            n("3.14"),
            n("-0.000001"),
            Float(1.5),
            Float(2.25),
            t("ab"),
            t("hello"),
            t("text ü"),
            Bytes(vec![1, 2, 0, 0]),
            Bytes(vec![0, 255]),
            Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
            Date(8825),
            Timestamp(8825 * DAY + (13 * 3600 + 14 * 60 + 15) * SEC),
            Timestamp(-876_544),
            TimestampTz(7305 * DAY),
            TimestampTz((2_147_483_647 - 946_684_800) * SEC + 999_000),
            Time((12 * 3600 + 34 * 60 + 56) * SEC),
            Time(86_399_990_000),
            Int(2024),
            t("medium"),
            t("a,c"),
            Bytes(vec![0x02, 0xaa]),
            Json(r#"{"k": [1, 2]}"#.into()),
        ],
        vec![
            Int(2),
            Int(-128),
            Int(255),
            Int(-32768),
            Int(65535),
            Int(-8_388_608),
            Int(16_777_215),
            Int(-2_147_483_648),
            Int(4_294_967_295),
            Int(i64::MIN),
            n("0"),
            n("-9999999999"),
            n("-99999999.99"),
            n("0.000000"),
            Float(-0.25),
            Float(1e300),
            t(""),
            t("quote's \\ back"),
            t(""),
            Bytes(vec![0, 0, 0, 0]),
            Bytes(vec![]),
            Bytes(vec![]),
            Date(-10957),
            Timestamp(36584 * DAY),
            Timestamp(1),
            TimestampTz((1 - 946_684_800) * SEC),
            Null,
            Unrepresentable("-01:30:00".into()),
            Unrepresentable("838:59:59.00".into()),
            Int(0),
            t("small"),
            t(""),
            Bytes(vec![0, 0]),
            Json("[]".into()),
        ],
        std::iter::once(Int(3))
            .chain(std::iter::repeat_n(Null, 33))
            .collect(),
    ]
}

const TYPES_ROWS: &str = r#"
INSERT INTO types_a VALUES
 (1, -5, 200, -300, 60000, -8000000, 16000000, -2000000000, 4000000000, -9000000000000000000,
  18446744073709551615, 42, 3.14, -0.000001, 1.5, 2.25, 'ab', 'hello', 'text ü', X'0102',
  X'00ff', X'deadbeef', '2024-02-29', '2024-02-29 13:14:15', '1999-12-31 23:59:59.123456',
  '2020-01-01 00:00:00', '2038-01-19 03:14:07.999', '12:34:56', '23:59:59.99', 2024, 'medium',
  'a,c', b'1010101010', '{"k": [1, 2]}'),
 (2, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
  -9223372036854775808, 0, -9999999999, -99999999.99, 0, -0.25, 1e300, '', 'quote''s \\ back',
  '', X'', X'', X'', '1970-01-01', '2100-03-01 00:00:00', '2000-01-01 00:00:00.000001',
  '1970-01-01 00:00:01', NULL, '-01:30:00', '838:59:59', 0, 'small', '', b'0', '[]'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL);
"#;

fn assert_rows_eq(rel: &RelationInfo, got: &[Row], want: &[Row]) {
    assert_eq!(got.len(), want.len(), "row count of {}", rel.schema.name);
    for (g, w) in got.iter().zip(want) {
        for (i, col) in rel.schema.columns.iter().enumerate() {
            assert_eq!(g[i], w[i], "row id {:?}, column {}", w[0], col.name);
        }
    }
}

/// Checks every value against what the server itself computes from the column in a plain
/// `SELECT` (numbers, hex, day and microsecond offsets from 2000-01-01, the text of values
/// kept as `Unrepresentable`), so the expectations do not rest on the decoder's own parsing.
fn compare_with_select(f: &Fixture, rel: &RelationInfo, rows: &[Row]) -> Result<()> {
    let epoch = "'2000-01-01 00:00:00'";
    let mut exprs = Vec::new();
    for c in &rel.schema.columns {
        let q = format!("`{}`", c.name);
        exprs.push(match c.ty {
            SqlType::Text | SqlType::Json => format!("HEX({q})"),
            // (BIT's own HEX() is numeric: its bytes are what the binary cast gives.)
            SqlType::Bytea => format!("HEX(CAST({q} AS BINARY))"),
            SqlType::Date => format!("DATEDIFF({q}, {epoch})"),
            SqlType::Timestamp | SqlType::TimestampTz => {
                format!("TIMESTAMPDIFF(MICROSECOND, {epoch}, {q})")
            }
            SqlType::Time => format!("CAST(ROUND(TIME_TO_SEC({q}) * 1000000) AS SIGNED)"),
            _ => q.clone(),
        });
        exprs.push(format!("CAST({q} AS CHAR)"));
    }
    let out = f.sql(&format!(
        "SELECT {} FROM `{}` ORDER BY 1",
        exprs.join(", "),
        rel.schema.name
    ))?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), rows.len(), "rows of {}", rel.schema.name);
    for (line, row) in lines.iter().zip(rows) {
        let fields: Vec<&str> = line.split('\t').collect();
        for (i, c) in rel.schema.columns.iter().enumerate() {
            let (computed, text) = (fields[2 * i], fields[2 * i + 1]);
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
            let ok = match &row[i] {
                Value::Null => computed == "NULL",
                Value::Int(n) => computed.parse::<i64>().ok() == Some(*n),
                Value::Numeric(n) => computed == n,
                Value::Float(x) if c.ty == SqlType::Float4 => {
                    computed.parse::<f32>().ok().map(f64::from) == Some(*x)
                }
                Value::Float(x) => computed.parse::<f64>().ok() == Some(*x),
                Value::Text(t) | Value::Json(t) => computed == hex(t.as_bytes()),
                Value::Bytes(b) => computed == hex(b),
                Value::Date(d) => computed.parse::<i64>().ok() == Some(*d as i64),
                Value::Timestamp(t) | Value::TimestampTz(t) | Value::Time(t) => {
                    computed.parse::<i64>().ok() == Some(*t)
                }
                Value::Unrepresentable(u) => text == u,
                other => panic!("unexpected value {other:?}"),
            };
            assert!(
                ok,
                "{}.{}: decoded {:?}, the server says {computed} ({text})",
                rel.schema.name, c.name, row[i]
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_binlog_decode_every_type_alike() -> Result<()> {
    let setup = format!(
        "CREATE TABLE types_a {TYPES_TABLE}; CREATE TABLE types_b {TYPES_TABLE}; {TYPES_ROWS}"
    );
    let f = Fixture::new("mytypes", &setup, MySourceOptions::default())?;
    let (pos, rels, rows) = f.snapshot().await?;
    let a = rel_info(&rels, "types_a");
    assert_eq!(a.status, TableStatus::Replicated, "{a:?}");
    let ty = |name: &str| &a.schema.columns[a.schema.column_index(name).unwrap()].ty;
    assert_eq!(ty("biu"), &SqlType::Numeric);
    assert_eq!(ty("iu"), &SqlType::Int8);
    assert_eq!(ty("ts"), &SqlType::TimestampTz);
    assert_eq!(ty("dtm"), &SqlType::Timestamp);
    assert_eq!(ty("j"), &SqlType::Json);
    assert_eq!(ty("e"), &SqlType::Text);
    assert_eq!(ty("bt"), &SqlType::Bytea);
    let mut snap_rows = rows.get(&a.oid).cloned().unwrap_or_default();
    snap_rows.sort_by_key(|r| match r[0] {
        Value::Int(i) => i,
        _ => 0,
    });
    assert_rows_eq(a, &snap_rows, &expected_types_rows());
    compare_with_select(&f, a, &snap_rows)?;

    // The same rows through the binlog: inserted, updated (key moved), deleted.
    f.sql(
        "INSERT INTO types_b SELECT * FROM types_a; \
         UPDATE types_b SET id = id + 10; DELETE FROM types_b",
    )?;
    // Other tests' transactions on the shared server arrive as batches without changes.
    let batches: Vec<_> = batches_to_end(&f.source, &pos)
        .await?
        .into_iter()
        .filter(|b| !data_changes(b).is_empty())
        .collect();
    assert_eq!(batches.len(), 3, "{batches:#?}");
    let b_rel = f.rel("types_b");
    let inserted: Vec<Row> = data_changes(&batches[0])
        .into_iter()
        .map(|c| match c {
            Change::Insert { rel, row } if *rel == b_rel => row.clone(),
            other => panic!("expected an insert into types_b, got {other:?}"),
        })
        .collect();
    assert_rows_eq(a, &inserted, &expected_types_rows());
    let mut moved = expected_types_rows();
    for r in &mut moved {
        if let Value::Int(i) = r[0] {
            r[0] = Value::Int(i + 10);
        }
    }
    let (olds, news): (Vec<Row>, Vec<Row>) = data_changes(&batches[1])
        .into_iter()
        .map(|c| match c {
            Change::Update {
                old: Some(OldRow::Full(old)),
                new:
                    NewRow {
                        row,
                        unchanged_toast,
                    },
                ..
            } => {
                assert!(unchanged_toast.is_empty());
                (old.clone(), row.clone())
            }
            other => panic!("expected a full update, got {other:?}"),
        })
        .unzip();
    assert_rows_eq(a, &olds, &expected_types_rows());
    assert_rows_eq(a, &news, &moved);
    let deleted: Vec<Row> = data_changes(&batches[2])
        .into_iter()
        .map(|c| match c {
            Change::Delete {
                old: OldRow::Full(old),
                ..
            } => old.clone(),
            other => panic!("expected a delete, got {other:?}"),
        })
        .collect();
    assert_rows_eq(a, &deleted, &moved);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_marks_tables_it_cannot_replicate() -> Result<()> {
    let f = Fixture::new(
        "mydisc",
        "CREATE TABLE ok (a INT, b VARCHAR(3), PRIMARY KEY (b, a)); \
         CREATE TABLE nokey (a INT); \
         CREATE TABLE geo (id INT PRIMARY KEY, g GEOMETRY); \
         CREATE TABLE lat (id INT PRIMARY KEY, s VARCHAR(3) CHARACTER SET latin1); \
         CREATE VIEW v AS SELECT * FROM ok;",
        MySourceOptions::default(),
    )?;
    let rels = f.source.discover_tables().await?;
    let names: Vec<&str> = rels.iter().map(|r| r.schema.name.as_str()).collect();
    assert_eq!(names, vec!["geo", "lat", "nokey", "ok"]);
    let ok = rel_info(&rels, "ok");
    assert!(ok.status.is_replicated());
    assert_eq!(ok.schema.key, vec![1, 0]);
    assert_eq!(ok.oid, f.rel("ok"));
    let reason = |name: &str| match &rel_info(&rels, name).status {
        TableStatus::NotReplicated { reason } => reason.clone(),
        TableStatus::Replicated => panic!("{name} should not be replicated"),
    };
    assert!(
        reason("nokey").contains("primary key"),
        "{}",
        reason("nokey")
    );
    assert!(reason("geo").contains("geometry"), "{}", reason("geo"));
    assert!(reason("lat").contains("latin1"), "{}", reason("lat"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_batches_follow_transactions() -> Result<()> {
    let f = Fixture::new(
        "mystream",
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); CREATE TABLE nokey (a INT); \
         CREATE TABLE other_side (id INT PRIMARY KEY);",
        MySourceOptions::default(),
    )?;
    let other_db = MariaDbServer::shared().create_database("myother")?;
    MariaDbServer::shared().query(&other_db, "CREATE TABLE t (id INT PRIMARY KEY)")?;
    let (pos, _, _) = f.snapshot().await?;
    // Opened before the writes, as a server does: the catalog it reads matches the stream
    // until the ALTER, which it reads again.
    let mut stream = f.source.stream(&pos).await?;
    let t = f.rel("t");
    f.sql(
        "INSERT INTO t VALUES (1, 'a');
         INSERT INTO t VALUES (2, 'b'), (3, 'c');
         BEGIN; UPDATE t SET v = 'A' WHERE id = 1; DELETE FROM t WHERE id = 2;
           INSERT INTO t VALUES (4, 'd'); COMMIT;
         BEGIN; INSERT INTO t VALUES (5, 'e'); ROLLBACK;
         UPDATE t SET v = CONCAT(v, '!');
         INSERT INTO nokey VALUES (1);",
    )?;
    // Another database's table of the same name: its rows and its DDL are not ours, whether
    // run there or from our database with a qualified name.
    MariaDbServer::shared().query(
        &other_db,
        "INSERT INTO t VALUES (1); ALTER TABLE t ADD COLUMN z INT",
    )?;
    f.sql(&format!(
        "ALTER TABLE `{other_db}`.t ADD COLUMN z2 INT;
         TRUNCATE TABLE t;
         ALTER TABLE t ADD COLUMN w INT;
         CREATE TABLE n (id INT PRIMARY KEY);
         INSERT INTO n VALUES (5);
         INSERT INTO t VALUES (9, 'z', 7);"
    ))?;
    let mut batches = Vec::new();
    // Other tests' transactions (other databases) arrive as empty batches too, so read
    // until the last expected change (the insert of id 9) arrived.
    loop {
        let b = tokio::time::timeout(WAIT, stream.next_batch())
            .await
            .context("timed out")??
            .context("ended")?;
        batches.push(b);
        if batches.last().is_some_and(|b| {
            b.changes
                .iter()
                .any(|c| matches!(c, Change::Insert { row, .. } if row[0] == Value::Int(9)))
        }) {
            break;
        }
    }
    stream.close().await;
    check_positions(&pos, &batches)?;
    let s = |x: &str| Value::Text(x.into());
    let i = Value::Int;
    let want: Vec<Vec<Change>> = vec![
        vec![Change::Insert {
            rel: t,
            row: vec![i(1), s("a")],
        }],
        vec![
            Change::Insert {
                rel: t,
                row: vec![i(2), s("b")],
            },
            Change::Insert {
                rel: t,
                row: vec![i(3), s("c")],
            },
        ],
        vec![
            Change::Update {
                rel: t,
                old: Some(OldRow::Full(vec![i(1), s("a")])),
                new: NewRow {
                    row: vec![i(1), s("A")],
                    unchanged_toast: vec![],
                },
            },
            Change::Delete {
                rel: t,
                old: OldRow::Full(vec![i(2), s("b")]),
            },
            Change::Insert {
                rel: t,
                row: vec![i(4), s("d")],
            },
        ],
        ["A", "c", "d"]
            .iter()
            .zip([1, 3, 4])
            .map(|(v, id)| Change::Update {
                rel: t,
                old: Some(OldRow::Full(vec![i(id), s(v)])),
                new: NewRow {
                    row: vec![i(id), s(&format!("{v}!"))],
                    unchanged_toast: vec![],
                },
            })
            .collect(),
        // (nokey, not replicated, and the other database: empty batches, skipped here)
        vec![Change::Truncate { rels: vec![t] }],
        vec![Change::SchemaChanged { rel: t }],
        // (CREATE TABLE n: only its Relation, checked below)
        vec![Change::Insert {
            rel: f.rel("n"),
            row: vec![i(5)],
        }],
        vec![Change::Insert {
            rel: t,
            row: vec![i(9), s("z"), i(7)],
        }],
    ];
    let got: Vec<Vec<Change>> = batches
        .iter()
        .map(|b| data_changes(b).into_iter().cloned().collect::<Vec<_>>())
        .filter(|c| !c.is_empty())
        .collect();
    let empty = batches.iter().filter(|b| b.changes.is_empty()).count();
    assert!(
        empty >= 4,
        "the nokey and other-database transactions give empty batches"
    );
    assert_eq!(got, want, "batches: {batches:#?}");
    // The first change of t announces its relation; the ALTER announces the new shape.
    let first = batches.iter().find(|b| !b.changes.is_empty()).unwrap();
    assert!(matches!(&first.changes[0], Change::Relation(r) if r.oid == t));
    // CREATE TABLE n announces n in a batch of its own, before n's first row.
    let created = batches
        .iter()
        .position(|b| matches!(b.changes.as_slice(), [Change::Relation(r)] if r.schema.name == "n"))
        .context("no batch announcing n")?;
    assert!(batches[created + 1..].iter().any(|b| data_changes(b)
        .iter()
        .any(|c| matches!(c, Change::Insert { rel, .. } if *rel == f.rel("n")))));
    let altered = batches
        .iter()
        .flat_map(|b| b.changes.iter())
        .skip_while(|c| !matches!(c, Change::SchemaChanged { .. }))
        .find_map(|c| match c {
            Change::Relation(r) => Some(r),
            _ => None,
        })
        .context("the ALTER's batch has no Relation")?;
    assert_eq!(altered.schema.columns.len(), 3);
    assert!(batches.iter().all(|b| b.part.is_none()));
    assert!(batches.iter().all(|b| b.position.gtid.is_some()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_server_id_is_reported() -> Result<()> {
    let f = Fixture::new(
        "mydup",
        "CREATE TABLE x (id INT PRIMARY KEY)",
        MySourceOptions::default(),
    )?;
    let pos = f.source.current_position().await?;
    let mut first = f.source.stream(&pos).await?;
    let twin = MySource::new(&MariaDbServer::shared().url(&f.db), f.source.server_id())?;
    let mut second = twin.stream(&pos).await?;
    // Batches of other tests' transactions may come first; then the error.
    let err = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = first.next_batch().await {
                return e;
            }
        }
    })
    .await
    .context("the first stream was not ended")?;
    assert!(
        matches!(err, ReplicationError::DuplicateServerId { .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains("--replication-server-id"), "{err}");
    println!("duplicate server id reported as: {err}");
    // The second stream still works.
    f.sql("INSERT INTO x VALUES (1)")?;
    // Other tests' transactions (other databases) arrive as empty batches first.
    loop {
        let b = tokio::time::timeout(WAIT, second.next_batch())
            .await
            .context("timed out")??
            .context("ended")?;
        if !b.changes.is_empty() {
            assert_eq!(inserted_ids(&[b]), vec![1]);
            break;
        }
    }
    second.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prerequisites_name_the_setting_or_privilege() -> Result<()> {
    let server = MariaDbServer::start_with_args(&["--binlog-format=STATEMENT"])?;
    let db = server.create_database("myprereq")?;
    let source = MySource::new(&server.url(&db), 77)?;
    let err = source.check_prerequisites().await.expect_err("STATEMENT");
    assert!(
        matches!(&err, ReplicationError::MySqlSetting { setting: "binlog_format", current, .. } if current == "STATEMENT"),
        "{err}"
    );
    assert!(err.to_string().contains("binlog_format"), "{err}");
    server.query(
        "",
        "SET GLOBAL binlog_format = 'ROW'; SET GLOBAL binlog_row_image = 'MINIMAL'",
    )?;
    let err = source.check_prerequisites().await.expect_err("MINIMAL");
    assert!(err.to_string().contains("binlog_row_image"), "{err}");
    server.query("", "SET GLOBAL binlog_row_image = 'FULL'")?;
    source.check_prerequisites().await?;

    server.query(
        "",
        &format!(
            "CREATE USER 'weak'@'127.0.0.1' IDENTIFIED BY 'pw'; \
             GRANT SELECT ON `{db}`.* TO 'weak'@'127.0.0.1';"
        ),
    )?;
    let weak = MySource::new(
        &format!("mysql://weak:pw@127.0.0.1:{}/{db}", server.port()),
        78,
    )?;
    let err = weak
        .check_prerequisites()
        .await
        .expect_err("no BINLOG MONITOR");
    assert!(err.to_string().contains("BINLOG MONITOR"), "{err}");
    server.query("", "GRANT BINLOG MONITOR ON *.* TO 'weak'@'127.0.0.1'")?;
    let err = weak
        .check_prerequisites()
        .await
        .expect_err("no REPLICATION SLAVE");
    assert!(err.to_string().contains("REPLICATION SLAVE"), "{err}");
    server.query("", "GRANT REPLICATION SLAVE ON *.* TO 'weak'@'127.0.0.1'")?;
    weak.check_prerequisites().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_off_is_named() -> Result<()> {
    let server = MariaDbServer::start_with_args(&["--skip-log-bin"])?;
    let db = server.create_database("mylogbin")?;
    let source = MySource::new(&server.url(&db), 79)?;
    let err = source.check_prerequisites().await.expect_err("binlog off");
    assert!(
        matches!(
            &err,
            ReplicationError::MySqlSetting {
                setting: "log_bin",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("log_bin = ON"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_after_snapshot_meets_later_ddl_in_order() -> Result<()> {
    let f = Fixture::new(
        "myddl",
        "CREATE TABLE g (id INT PRIMARY KEY, v INT)",
        MySourceOptions::default(),
    )?;
    let mut sink = VecSink::default();
    let snap = f.source.snapshot(&mut sink).await?;
    // Rows in the old shape, then the ALTER, all before the stream opens.
    f.sql("INSERT INTO g VALUES (1, 10); ALTER TABLE g ADD COLUMN w INT; INSERT INTO g VALUES (2, 20, 3)")?;
    let mut stream = f.source.stream_after(&snap).await?;
    let g = f.rel("g");
    let mut changes = Vec::new();
    while !changes
        .iter()
        .any(|c| matches!(c, Change::Insert { row, .. } if row[0] == Value::Int(2)))
    {
        let b = tokio::time::timeout(WAIT, stream.next_batch())
            .await
            .context("timed out")??
            .context("ended")?;
        changes.extend(data_changes(&b).into_iter().cloned());
    }
    stream.close().await;
    let i = Value::Int;
    assert_eq!(
        changes,
        vec![
            Change::Insert {
                rel: g,
                row: vec![i(1), i(10)]
            },
            Change::SchemaChanged { rel: g },
            Change::Insert {
                rel: g,
                row: vec![i(2), i(20), i(3)]
            },
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_event_names_type_and_position() -> Result<()> {
    let f = Fixture::new(
        "myundec",
        "CREATE TABLE u (id INT PRIMARY KEY)",
        MySourceOptions::default(),
    )?;
    let (pos, _, _) = f.snapshot().await?;
    f.sql("INSERT INTO u VALUES (1); ALTER TABLE u ADD COLUMN w INT")?;
    // Opened from the stored position with today's catalog (two columns), the older
    // one-column row image cannot be decoded: an error, not a panic or a stall.
    let mut stream = f.source.stream_to_end(&pos).await?;
    let err = loop {
        match tokio::time::timeout(WAIT, stream.next_batch())
            .await
            .context("timed out")?
        {
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    let text = err.to_string();
    assert!(
        matches!(err, ReplicationError::BinlogEvent { .. }),
        "{text}"
    );
    assert!(
        text.contains("WRITE_ROWS") && text.contains("binlog."),
        "{text}"
    );
    assert!(text.contains("copy the table again"), "{text}");
    // The failed stream says so instead of hanging.
    let again = stream
        .next_batch()
        .await
        .expect_err("a failed stream stays failed");
    assert!(again.to_string().contains("open it again"), "{again}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_logged_row_changes_are_refused() -> Result<()> {
    let f = Fixture::new(
        "mystmt",
        "CREATE TABLE s (id INT PRIMARY KEY)",
        MySourceOptions::default(),
    )?;
    let (pos, _, _) = f.snapshot().await?;
    f.sql("SET SESSION binlog_format = 'STATEMENT'; INSERT INTO s VALUES (1)")?;
    let mut stream = f.source.stream_to_end(&pos).await?;
    let err = loop {
        match tokio::time::timeout(WAIT, stream.next_batch())
            .await
            .context("timed out")?
        {
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("binlog_format = ROW"), "{err}");
    assert!(err.to_string().contains("QUERY"), "{err}");
    Ok(())
}

/// One table copied again while the others are not: its rows as of a position, after which
/// the stream carries exactly the later changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_table_is_copied_again_as_of_a_position() -> Result<()> {
    let f = Fixture::new(
        "mycopy1",
        "CREATE TABLE a (id INT PRIMARY KEY, v INT); CREATE TABLE b (id INT PRIMARY KEY);
         INSERT INTO a VALUES (1, 10), (2, 20); INSERT INTO b VALUES (7)",
        MySourceOptions::default(),
    )?;
    let a = f.rel("a");
    let mut sink = VecSink::default();
    let (rel, position) = f
        .source
        .copy_table_now(a, &mut sink)
        .await?
        .context("table a is there")?;
    assert_eq!(rel.schema.name, "a");
    let rows: Vec<Row> = sink.0.iter().flat_map(|b| b.rows.clone()).collect();
    assert_eq!(
        rows,
        vec![
            vec![Value::Int(1), Value::Int(10)],
            vec![Value::Int(2), Value::Int(20)]
        ]
    );
    assert!(sink.0.iter().all(|b| b.rel == a), "only table a is copied");
    f.sql("INSERT INTO a VALUES (3, 30)")?;
    let mut stream = f.source.stream(&position).await?;
    let b = tokio::time::timeout(WAIT, async {
        loop {
            let b = stream.next_batch().await?.context("ended")?;
            if !data_changes(&b).is_empty() {
                return anyhow::Ok(b);
            }
        }
    })
    .await
    .context("timed out")??;
    stream.close().await;
    assert_eq!(
        data_changes(&b),
        vec![&Change::Insert {
            rel: a,
            row: vec![Value::Int(3), Value::Int(30)]
        }]
    );
    assert!(f.source.copy_table_now(12345, &mut sink).await?.is_none());
    Ok(())
}
