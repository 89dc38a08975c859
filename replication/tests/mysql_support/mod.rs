//! Helpers shared by the MySQL source tests (`mysql_source.rs`, `mysql_stream.rs`).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use larder_replication::mysql::{MyChangeBatch, MySource, MySourceOptions, Position};
use larder_replication::{Change, OldRow, RelationInfo, SnapshotBatch, SnapshotSink};
use larder_sql::{Key, Row, Value};
use larder_testkit::MariaDbServer;

pub const WAIT: Duration = Duration::from_secs(60);

/// A server id per source, distinct across the tests of this process.
pub fn next_server_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[derive(Default)]
pub struct VecSink(pub Vec<SnapshotBatch>);

impl SnapshotSink for VecSink {
    async fn deliver(&mut self, batch: SnapshotBatch) -> Result<(), String> {
        self.0.push(batch);
        Ok(())
    }
}

pub struct Fixture {
    pub db: String,
    pub source: MySource,
}

impl Fixture {
    pub fn new(prefix: &str, setup: &str, options: MySourceOptions) -> Result<Fixture> {
        let server = MariaDbServer::shared();
        let db = server.create_database(prefix)?;
        if !setup.is_empty() {
            server.query(&db, setup)?;
        }
        let source = MySource::new(&server.url(&db), next_server_id())?.with_options(options);
        Ok(Fixture { db, source })
    }

    pub fn sql(&self, sql: &str) -> Result<String> {
        MariaDbServer::shared().query(&self.db, sql)
    }

    pub fn rel(&self, table: &str) -> u32 {
        larder_replication::mysql::relation_id(&self.db, table)
    }

    pub async fn snapshot(&self) -> Result<(Position, Vec<RelationInfo>, HashMap<u32, Vec<Row>>)> {
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
pub async fn batches_to_end(source: &MySource, from: &Position) -> Result<Vec<MyChangeBatch>> {
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
pub fn check_positions(from: &Position, batches: &[MyChangeBatch]) -> Result<()> {
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
pub fn data_changes(b: &MyChangeBatch) -> Vec<&Change> {
    b.changes
        .iter()
        .filter(|c| !matches!(c, Change::Relation(_)))
        .collect()
}

pub fn rel_info<'a>(rels: &'a [RelationInfo], name: &str) -> &'a RelationInfo {
    rels.iter()
        .find(|r| r.schema.name == name)
        .unwrap_or_else(|| panic!("table {name} not discovered"))
}

/// Applies batches to an in-memory copy keyed by primary key.
#[derive(Default, Debug, PartialEq)]
pub struct Model {
    pub keys: HashMap<u32, Vec<usize>>,
    pub tables: HashMap<u32, BTreeMap<Key, Row>>,
}

impl Model {
    pub fn key(&self, rel: u32, row: &Row) -> Key {
        Key::from_values(self.keys[&rel].iter().map(|&k| &row[k]))
    }

    pub fn load(rels: &[RelationInfo], rows: HashMap<u32, Vec<Row>>) -> Model {
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

    pub fn apply(&mut self, b: &MyChangeBatch) {
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
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn random_statement(rng: &mut Rng) -> String {
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

/// Collects inserted ids of `rel` from batches.
pub fn inserted_ids(batches: &[MyChangeBatch]) -> Vec<i64> {
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
