//! MySQL/MariaDB source against a real MariaDB (larder-testkit): snapshot values, binlog
//! batches, a differential run, resume, prerequisites and the duplicate server id.
//!
//! Most tests share one server, each with its own database and its own server id. Writes go
//! through the `mariadb` client (committed before the stream is opened), and the stream is
//! read to the end of the binlog (`stream_to_end`), so every run sees the same batches.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use larder_replication::mysql::{MyChangeBatch, MySource, MySourceOptions, Position};
use larder_replication::{
    Change, NewRow, OldRow, RelationInfo, ReplicationError, SnapshotBatch, SnapshotSink,
    TableStatus,
};
use larder_sql::{Key, Row, SqlType, Value};
use larder_testkit::MariaDbServer;

const WAIT: Duration = Duration::from_secs(60);

/// A server id per source, distinct across the tests of this process.
fn next_server_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[derive(Default)]
struct VecSink(Vec<SnapshotBatch>);

impl SnapshotSink for VecSink {
    async fn deliver(&mut self, batch: SnapshotBatch) -> Result<(), String> {
        self.0.push(batch);
        Ok(())
    }
}

struct Fixture {
    db: String,
    source: MySource,
}

impl Fixture {
    fn new(prefix: &str, setup: &str, options: MySourceOptions) -> Result<Fixture> {
        let server = MariaDbServer::shared();
        let db = server.create_database(prefix)?;
        if !setup.is_empty() {
            server.query(&db, setup)?;
        }
        let source = MySource::new(&server.url(&db), next_server_id())?.with_options(options);
        Ok(Fixture { db, source })
    }

    fn sql(&self, sql: &str) -> Result<String> {
        MariaDbServer::shared().query(&self.db, sql)
    }

    fn rel(&self, table: &str) -> u32 {
        larder_replication::mysql::relation_id(&self.db, table)
    }

    async fn snapshot(&self) -> Result<(Position, Vec<RelationInfo>, HashMap<u32, Vec<Row>>)> {
        let mut sink = VecSink::default();
        let snap = self.source.snapshot(&mut sink).await?;
        let mut rows: HashMap<u32, Vec<Row>> = HashMap::new();
        for b in sink.0 {
            rows.entry(b.rel).or_default().extend(b.rows);
        }
        let rels = snap.tables.into_iter().map(|t| t.relation).collect();
        Ok((snap.position, rels, rows))
    }
}

/// Every batch from `from` to the current end of the binlog.
async fn batches_to_end(source: &MySource, from: &Position) -> Result<Vec<MyChangeBatch>> {
    let mut stream = source.stream_to_end(from).await?;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, stream.next_batch()).await {
            Err(_) => bail!("no batch within {WAIT:?}"),
            Ok(r) => match r? {
                Some(b) => out.push(b),
                None => break,
            },
        }
    }
    check_positions(from, &out)?;
    Ok(out)
}

/// Positions strictly increase from `from`, except inside a transaction sent in parts.
fn check_positions(from: &Position, batches: &[MyChangeBatch]) -> Result<()> {
    let mut last = from.clone();
    for b in batches {
        if b.part.as_ref().is_some_and(|p| !p.last) {
            if b.position != last {
                bail!(
                    "a non-final part moved the position: {} -> {}",
                    last,
                    b.position
                );
            }
            continue;
        }
        if b.position <= last {
            bail!("position did not increase: {} then {}", last, b.position);
        }
        last = b.position.clone();
    }
    Ok(())
}

/// Changes without the `Relation` announcements.
fn data_changes(b: &MyChangeBatch) -> Vec<&Change> {
    b.changes
        .iter()
        .filter(|c| !matches!(c, Change::Relation(_)))
        .collect()
}

fn rel_info<'a>(rels: &'a [RelationInfo], name: &str) -> &'a RelationInfo {
    rels.iter()
        .find(|r| r.schema.name == name)
        .unwrap_or_else(|| panic!("table {name} not discovered"))
}

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

    // The same rows through the binlog: inserted, updated (key moved), deleted.
    f.sql(
        "INSERT INTO types_b SELECT * FROM types_a; \
         UPDATE types_b SET id = id + 10; DELETE FROM types_b",
    )?;
    let batches = batches_to_end(&f.source, &pos).await?;
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
    MariaDbServer::shared().query(&other_db, "INSERT INTO t VALUES (1)")?;
    f.sql(
        "TRUNCATE TABLE t;
         ALTER TABLE t ADD COLUMN w INT;
         INSERT INTO t VALUES (9, 'z', 7);",
    )?;
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
        empty >= 2,
        "the nokey and other-database transactions give empty batches"
    );
    assert_eq!(got, want, "batches: {batches:#?}");
    // The first change of t announces its relation; the ALTER announces the new shape.
    assert!(matches!(&batches[0].changes[0], Change::Relation(r) if r.oid == t));
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

/// Applies batches to an in-memory copy keyed by primary key.
#[derive(Default, Debug, PartialEq)]
struct Model {
    keys: HashMap<u32, Vec<usize>>,
    tables: HashMap<u32, BTreeMap<Key, Row>>,
}

impl Model {
    fn key(&self, rel: u32, row: &Row) -> Key {
        Key::from_values(self.keys[&rel].iter().map(|&k| &row[k]))
    }

    fn load(rels: &[RelationInfo], rows: HashMap<u32, Vec<Row>>) -> Model {
        let mut m = Model::default();
        for r in rels.iter().filter(|r| r.status.is_replicated()) {
            m.keys.insert(r.oid, r.schema.key.clone());
            m.tables.insert(r.oid, BTreeMap::new());
        }
        for (rel, rows) in rows {
            for row in rows {
                let k = m.key(rel, &row);
                assert!(m.tables.get_mut(&rel).unwrap().insert(k, row).is_none());
            }
        }
        m
    }

    fn apply(&mut self, b: &MyChangeBatch) {
        for c in &b.changes {
            match c {
                Change::Insert { rel, row } => {
                    let k = self.key(*rel, row);
                    let old = self.tables.get_mut(rel).unwrap().insert(k, row.clone());
                    assert!(old.is_none(), "insert of an existing row {row:?}");
                }
                Change::Update { rel, old, new } => {
                    let Some(OldRow::Full(old)) = old else {
                        panic!("update without old row")
                    };
                    let (ko, kn) = (self.key(*rel, old), self.key(*rel, &new.row));
                    let t = self.tables.get_mut(rel).unwrap();
                    assert_eq!(t.remove(&ko).as_ref(), Some(old), "update of a missing row");
                    t.insert(kn, new.row.clone());
                }
                Change::Delete { rel, old } => {
                    let k = self.key(*rel, old.row());
                    let t = self.tables.get_mut(rel).unwrap();
                    assert_eq!(
                        t.remove(&k).as_ref(),
                        Some(old.row()),
                        "delete of a missing row"
                    );
                }
                Change::Truncate { rels } => {
                    for r in rels {
                        self.tables.get_mut(r).unwrap().clear();
                    }
                }
                Change::Relation(_) => {}
                Change::SchemaChanged { .. } => panic!("no DDL expected"),
            }
        }
    }
}

/// A tiny deterministic generator (xorshift64*), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_statement(rng: &mut Rng) -> String {
    let id = rng.below(80);
    let k2 = ["a", "b", "Ab", "zz", "é", ""][rng.below(6) as usize];
    match rng.below(9) {
        0 | 1 => format!(
            "INSERT IGNORE INTO d1 VALUES ({id}, {}, REPEAT('x', {}))",
            rng.below(1000),
            rng.below(30)
        ),
        2 => format!(
            "INSERT IGNORE INTO d1 VALUES ({id}, NULL, NULL), ({}, 1, 'y')",
            (id + 1) % 80
        ),
        3 => format!(
            "UPDATE d1 SET a = COALESCE(a, 0) + 1 WHERE id BETWEEN {id} AND {}",
            id + rng.below(10)
        ),
        4 => format!("DELETE FROM d1 WHERE id = {id} OR id = {}", rng.below(80)),
        5 => format!("UPDATE IGNORE d1 SET id = id + 80 WHERE id = {id}"),
        6 => format!(
            "INSERT INTO d2 VALUES ({}, '{k2}', {}.{:02}) ON DUPLICATE KEY UPDATE n = n + 1",
            rng.below(10),
            rng.below(1000),
            rng.below(100)
        ),
        7 => format!("DELETE FROM d2 WHERE k1 = {}", rng.below(10)),
        _ => format!(
            "UPDATE IGNORE d2 SET k2 = CONCAT(k2, 'q') WHERE k1 = {} LIMIT 1",
            rng.below(10)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_random_writes_match_select() -> Result<()> {
    let seed = std::env::var("LARDER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("differential seed: {seed} (LARDER_TEST_SEED={seed} replays it)");
    let options = MySourceOptions {
        snapshot_batch_rows_max: 7,
        transaction_memory_max_bytes: 2_000,
        ..Default::default()
    };
    let f = Fixture::new(
        "mydiff",
        "CREATE TABLE d1 (id INT PRIMARY KEY, a INT, s VARCHAR(40));
         CREATE TABLE d2 (k1 INT, k2 VARCHAR(10), n DECIMAL(8,2), PRIMARY KEY (k1, k2));",
        options,
    )?;
    let mut rng = Rng(seed);
    let mut initial = String::new();
    for _ in 0..60 {
        initial.push_str(&random_statement(&mut rng));
        initial.push_str(";\n");
    }
    f.sql(&initial)?;
    let (pos, rels, rows) = f.snapshot().await?;
    let mut model = Model::load(&rels, rows);
    let mut script = String::new();
    for _ in 0..150 {
        match rng.below(4) {
            0 => {
                let n = 1 + rng.below(5);
                script.push_str("BEGIN;\n");
                for _ in 0..n {
                    script.push_str(&random_statement(&mut rng));
                    script.push_str(";\n");
                }
                script.push_str(if rng.below(4) == 0 {
                    "ROLLBACK;\n"
                } else {
                    "COMMIT;\n"
                });
            }
            _ => {
                script.push_str(&random_statement(&mut rng));
                script.push_str(";\n");
            }
        }
    }
    f.sql(&script)?;
    let batches = batches_to_end(&f.source, &pos).await?;
    for b in &batches {
        model.apply(b);
    }
    let (_, rels_after, rows_after) = f.snapshot().await?;
    let fresh = Model::load(&rels_after, rows_after);
    for (rel, table) in &fresh.tables {
        assert_eq!(
            model.tables.get(rel),
            Some(table),
            "table {rel} differs (seed {seed})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transactions_arrive_in_parts() -> Result<()> {
    let options = MySourceOptions {
        transaction_memory_max_bytes: 4_000,
        ..Default::default()
    };
    let f = Fixture::new(
        "myparts",
        "CREATE TABLE p (id INT PRIMARY KEY, s TEXT)",
        options,
    )?;
    let (pos, _, _) = f.snapshot().await?;
    f.sql(
        "BEGIN; INSERT INTO p SELECT seq, REPEAT('x', 100) FROM seq_1_to_400; COMMIT;
         INSERT INTO p VALUES (1000, 'after');",
    )?;
    let batches = batches_to_end(&f.source, &pos).await?;
    let parts: Vec<_> = batches.iter().filter_map(|b| b.part.clone()).collect();
    assert!(
        parts.len() >= 3,
        "expected several parts, got {}",
        parts.len()
    );
    assert!(parts[0].first && !parts[0].last);
    assert!(parts.last().unwrap().last);
    assert!(parts.iter().all(|p| p.txn == parts[0].txn));
    // Other tests' transactions may interleave as empty batches, never between parts.
    let first = batches.iter().position(|b| b.part.is_some()).unwrap();
    let in_parts = &batches[first..first + parts.len()];
    assert!(in_parts.iter().all(|b| b.part.is_some()));
    let inserts: usize = in_parts.iter().map(|b| data_changes(b).len()).sum();
    assert_eq!(inserts, 400);
    assert_eq!(inserted_ids(&batches[first + parts.len()..]), vec![1000]);
    Ok(())
}

/// Collects inserted ids of `rel` from batches.
fn inserted_ids(batches: &[MyChangeBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.changes.iter())
        .filter_map(|c| match c {
            Change::Insert { row, .. } => match row[0] {
                Value::Int(i) => Some(i),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_neither_loses_nor_repeats() -> Result<()> {
    let f = Fixture::new(
        "myresume",
        "CREATE TABLE r (id INT PRIMARY KEY)",
        MySourceOptions::default(),
    )?;
    let (pos, _, _) = f.snapshot().await?;
    let mut script = String::new();
    for i in 1..=10 {
        script.push_str(&format!("INSERT INTO r VALUES ({i});\n"));
        if i == 2 || i == 6 {
            // A new binlog file: positions and resumes cross files.
            script.push_str("FLUSH BINARY LOGS;\n");
        }
    }
    f.sql(&script)?;
    // Stop after the fourth batch.
    let mut stream = f.source.stream(&pos).await?;
    let mut first = Vec::new();
    for _ in 0..4 {
        let b = tokio::time::timeout(WAIT, stream.next_batch())
            .await
            .context("timed out")??
            .context("stream ended")?;
        first.push(b);
    }
    stream.close().await;
    let stop = first.last().unwrap().position.clone();
    let stored = Position::decode(&stop.encode())?;
    assert_eq!(stored, stop);
    assert!(stored.gtid.is_some(), "MariaDB positions carry the GTID");
    // Resume by GTID (the default on MariaDB) and by file + offset: same rest.
    let rest = batches_to_end(&f.source, &stored).await?;
    let by_file = MySource::new(&MariaDbServer::shared().url(&f.db), next_server_id())?
        .with_options(MySourceOptions {
            resume_by_gtid: false,
            ..Default::default()
        });
    let rest_by_file = batches_to_end(&by_file, &stored).await?;
    let files: std::collections::BTreeSet<&str> = first
        .iter()
        .chain(&rest)
        .map(|b| b.position.file.as_str())
        .collect();
    assert!(
        files.len() >= 3,
        "expected positions in three binlog files: {files:?}"
    );
    let mut all = inserted_ids(&first);
    all.extend(inserted_ids(&rest));
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
    assert_eq!(inserted_ids(&rest_by_file), inserted_ids(&rest));
    let positions = |v: &[MyChangeBatch]| v.iter().map(|b| b.position.clone()).collect::<Vec<_>>();
    // Other tests may have committed more meanwhile: the shorter list is a prefix.
    let (a, b) = (positions(&rest), positions(&rest_by_file));
    let n = a.len().min(b.len());
    assert_eq!(a[..n], b[..n]);
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
