//! Postgres source against a real server (larder-testkit). Every test uses its own database
//! and deployment name (so its own publication and slot) and can run in parallel.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use larder_replication::{
    Change, ChangeBatch, Lsn, NewRow, OldRow, OpenOutcome, PgSource, PgSourceOptions,
    ReplicationError, SnapshotBatch, TableStatus,
};
use larder_sql::{SqlType, Value};
use larder_testkit::PgServer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    db: String,
    source: Arc<PgSource>,
}

impl Fixture {
    /// New database with `setup` applied, a source for it, prerequisites checked and the
    /// publication created.
    async fn new(prefix: &str, setup: &str) -> Result<Fixture> {
        Fixture::with_options(prefix, setup, PgSourceOptions::default()).await
    }

    async fn with_options(prefix: &str, setup: &str, opts: PgSourceOptions) -> Result<Fixture> {
        let pg = PgServer::shared();
        let db = pg.create_database(prefix)?;
        if !setup.is_empty() {
            pg.psql(&db, setup)?;
        }
        let source = PgSource::new(&pg.url(&db), &db, &[])?.with_options(opts);
        source.check_prerequisites().await?;
        source.ensure_publication().await?;
        Ok(Fixture {
            db,
            source: Arc::new(source),
        })
    }

    fn psql(&self, sql: &str) -> Result<String> {
        PgServer::shared().psql(&self.db, sql)
    }

    fn slot_query(&self, column: &str) -> Result<String> {
        let out = self.psql(&format!(
            "SELECT {column} FROM pg_replication_slots WHERE slot_name = '{}'",
            self.source.slot_name()
        ))?;
        Ok(out.trim().to_string())
    }

    /// Waits until no session uses the slot (after a stream stopped).
    async fn wait_slot_inactive(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.slot_query("active")? == "t" {
            if tokio::time::Instant::now() > deadline {
                bail!("slot still active");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Frees the slot so parallel tests do not run out of them.
    async fn cleanup(self, stream: Option<Stream>) -> Result<()> {
        if let Some(s) = stream {
            s.stop().await?;
        }
        self.wait_slot_inactive().await?;
        self.source.drop_slot().await?;
        Ok(())
    }
}

/// A running change stream.
struct Stream {
    rx: mpsc::Receiver<ChangeBatch>,
    ack: watch::Sender<Lsn>,
    task: JoinHandle<Result<(), ReplicationError>>,
}

impl Stream {
    fn start(source: &Arc<PgSource>, from: OpenOutcome, applied: Lsn) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let (ack, ack_rx) = watch::channel(applied);
        let source = source.clone();
        let task = tokio::spawn(async move { source.stream(from, ack_rx, tx).await });
        Stream { rx, ack, task }
    }

    async fn next(&mut self) -> Result<ChangeBatch> {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(b)) => Ok(b),
            Ok(None) => bail!("stream ended: {:?}", (&mut self.task).await),
            Err(_) => bail!("no change batch within {WAIT:?}"),
        }
    }

    /// Next batch that has row changes (skips empty transactions).
    async fn next_nonempty(&mut self) -> Result<ChangeBatch> {
        loop {
            let b = self.next().await?;
            if !b.changes.is_empty() {
                return Ok(b);
            }
        }
    }

    /// Dropping the receiver makes the stream return `Ok`.
    async fn stop(self) -> Result<()> {
        drop(self.rx);
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("stream did not stop")??
            .context("stream failed")?;
        Ok(())
    }
}

/// Fresh open + snapshot of every table into memory; returns the started stream too.
async fn fresh_start(f: &Fixture) -> Result<(Vec<SnapshotBatch>, Lsn, Stream)> {
    let outcome = f.source.open(None).await?;
    let OpenOutcome::Fresh(fresh) = outcome else {
        bail!("expected a fresh slot, got {outcome:?}");
    };
    let tables = f.source.discover_tables().await?;
    let (mut tx, mut rx) = mpsc::channel(4);
    let collect = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(b) = rx.recv().await {
            v.push(b);
        }
        v
    });
    f.source.snapshot(&fresh, &tables, &mut tx).await?;
    drop(tx);
    let batches = collect.await?;
    let point = fresh.consistent_point;
    let stream = Stream::start(&f.source, OpenOutcome::Fresh(fresh), point);
    Ok((batches, point, stream))
}

fn rel_oid(f: &Fixture, table: &str) -> Result<u32> {
    Ok(f.psql(&format!("SELECT '{table}'::regclass::oid"))?
        .trim()
        .parse()?)
}

fn relation_of(batch: &ChangeBatch, oid: u32) -> Option<&larder_replication::RelationInfo> {
    batch.changes.iter().find_map(|c| match c {
        Change::Relation(r) if r.oid == oid => Some(r),
        _ => None,
    })
}

/// Row changes only (no Relation entries).
fn rows_of(batch: &ChangeBatch) -> Vec<&Change> {
    batch
        .changes
        .iter()
        .filter(|c| !matches!(c, Change::Relation(_)))
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prerequisites_pass_and_publication_is_idempotent() -> Result<()> {
    let f = Fixture::new("repl_prereq", "CREATE TABLE t (id int primary key)").await?;
    assert_eq!(
        f.psql(&format!(
            "SELECT puballtables FROM pg_publication WHERE pubname = '{}'",
            f.source.publication_name()
        ))?
        .trim(),
        "t"
    );
    f.source.ensure_publication().await?;
    f.source.check_prerequisites().await?;
    assert!(f.source.slot_name().starts_with("larder_repl_prereq"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_prefer_falls_back_to_plain_connections() -> Result<()> {
    let pg = PgServer::shared();
    let db = pg.create_database("repl_ssl")?;
    pg.psql(&db, "CREATE TABLE t (id int PRIMARY KEY)")?;
    let url = format!("{}?sslmode=prefer", pg.url(&db));
    let source = PgSource::new(&url, &db, &[])?;
    source.check_prerequisites().await?;
    source.ensure_publication().await?;
    let outcome = source.open(None).await?;
    assert!(matches!(outcome, OpenOutcome::Fresh(_)));
    drop(outcome);
    let f = Fixture {
        db,
        source: Arc::new(source),
    };
    f.wait_slot_inactive().await?;
    f.cleanup(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_retryable() -> Result<()> {
    let port = larder_testkit::free_port();
    let source = PgSource::new(
        &format!("postgresql://u:p@127.0.0.1:{port}/db?sslmode=disable"),
        "x",
        &[],
    )?;
    let err = source.check_prerequisites().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let bad = PgSource::new("postgresql://u:p@127.0.0.1:1/db", "x", &["a.b.c".into()]);
    assert!(matches!(bad, Err(ReplicationError::InvalidConfig(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_filter_marks_other_tables_filtered_out() -> Result<()> {
    let pg = PgServer::shared();
    let db = pg.create_database("repl_filter")?;
    pg.psql(
        &db,
        "CREATE SCHEMA app; CREATE TABLE app.keep_me (id int PRIMARY KEY);
         CREATE TABLE public.keep_too (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY);",
    )?;
    let source = PgSource::new(&pg.url(&db), &db, &["app.*".into(), "keep_too".into()])?;
    source.ensure_publication().await?;
    let tables = source.discover_tables().await?;
    let status: Vec<(String, bool)> = tables
        .iter()
        .map(|t| {
            (
                format!("{}.{}", t.relation.schema.schema, t.relation.schema.name),
                t.relation.status.is_replicated(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("app.keep_me".to_string(), true),
            ("public.keep_too".to_string(), true),
            ("public.other".to_string(), false)
        ]
    );
    let other = tables
        .iter()
        .find(|t| t.relation.schema.name == "other")
        .context("other")?;
    assert_eq!(
        other.relation.status,
        TableStatus::NotReplicated {
            reason: "filtered out by the table filter".into()
        }
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_without_replication_is_reported() -> Result<()> {
    let pg = PgServer::shared();
    let db = pg.create_database("repl_norole")?;
    let role = format!("norepl_{db}");
    pg.psql(
        &db,
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'pw' NOREPLICATION NOSUPERUSER"),
    )?;
    let url = format!("postgresql://{role}:pw@127.0.0.1:{}/{db}", pg.port());
    let source = PgSource::new(&url, &db, &["t".to_string()])?;
    let err = source.check_prerequisites().await.unwrap_err();
    assert!(
        matches!(&err, ReplicationError::MissingReplicationPrivilege { role: r } if *r == role),
        "{err}"
    );
    assert!(err.to_string().contains("WITH REPLICATION"), "{err}");
    assert!(!err.is_retryable());
    // Not a superuser and the filter names a table it does not own: a distinct error.
    pg.psql(&db, "CREATE TABLE t (id int primary key)")?;
    let err = source.ensure_publication().await.unwrap_err();
    assert!(
        matches!(err, ReplicationError::PublicationNotCreatable { .. }),
        "{err}"
    );
    Ok(())
}

const ALL_TYPES: &str = "
CREATE TABLE every_type (
    id int PRIMARY KEY, b bool, i2 int2, i8 int8, f4 float4, f8 float8, n numeric(6,3),
    t text, vc varchar(10), c char(5), nm name, by bytea, d date, tm time, ts timestamp,
    tz timestamptz, u uuid, j json, jb jsonb, ai int4[], at text[]
);
INSERT INTO every_type VALUES (
    1, true, -7, 9000000000, 1.5, -2.25, 12.34, E'tab\\there\\nnew \\\\ back', 'vchar', 'ab',
    'nm', '\\xdead', '2000-01-02', '00:00:01.5', '2000-01-01 00:00:01',
    '2000-01-01 01:00:00+01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": 1}',
    '{\"b\": 2, \"a\": 1}', '{1,NULL,3}', '{\"x y\",z}'
);
INSERT INTO every_type (id) VALUES (2);
CREATE TABLE many (id int PRIMARY KEY, v text);
INSERT INTO many SELECT g, 'row ' || g FROM generate_series(1, 2500) g;
ANALYZE many;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_open_snapshots_every_supported_type() -> Result<()> {
    let opts = PgSourceOptions {
        snapshot_batch_rows_max: 1000,
        ..PgSourceOptions::default()
    };
    let f = Fixture::with_options("repl_snap", ALL_TYPES, opts).await?;
    let tables = f.source.discover_tables().await?;
    let every = tables
        .iter()
        .find(|t| t.relation.schema.name == "every_type")
        .context("every_type not discovered")?;
    assert_eq!(every.relation.status, TableStatus::Replicated);
    assert_eq!(every.relation.schema.key, vec![0]);
    let tys: Vec<&SqlType> = every
        .relation
        .schema
        .columns
        .iter()
        .map(|c| &c.ty)
        .collect();
    assert_eq!(tys[1], &SqlType::Bool);
    assert_eq!(tys[19], &SqlType::Array(Box::new(SqlType::Int4)));
    assert_eq!(every.relation.schema.columns[8].typmod, 14); // varchar(10): 10 + 4

    let (batches, point, stream) = fresh_start(&f).await?;
    assert!(point > Lsn::ZERO);
    let every_oid = rel_oid(&f, "every_type")?;
    let many_oid = rel_oid(&f, "many")?;
    let every_batches: Vec<&SnapshotBatch> =
        batches.iter().filter(|b| b.rel == every_oid).collect();
    assert_eq!(every_batches.len(), 1);
    assert!(every_batches[0].table_done);
    let mut rows = every_batches[0].rows.clone();
    rows.sort_by_key(|r| match r[0] {
        Value::Int(i) => i,
        _ => i64::MAX,
    });
    assert_eq!(rows.len(), 2);
    let uuid = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    let expected = vec![
        Value::Int(1),
        Value::Bool(true),
        Value::Int(-7),
        Value::Int(9_000_000_000),
        Value::Float(1.5),
        Value::Float(-2.25),
        Value::Numeric("12.340".into()),
        text("tab\there\nnew \\ back"),
        text("vchar"),
        text("ab   "),
        text("nm"),
        Value::Bytes(vec![0xde, 0xad]),
        Value::Date(1),
        Value::Time(1_500_000),
        Value::Timestamp(1_000_000),
        Value::TimestampTz(0),
        Value::Uuid(uuid),
        Value::Json("{\"k\": 1}".into()),
        Value::Json("{\"a\": 1, \"b\": 2}".into()),
        Value::Array(vec![Value::Int(1), Value::Null, Value::Int(3)]),
        Value::Array(vec![text("x y"), text("z")]),
    ];
    assert_eq!(rows[0], expected);
    let mut nulls = vec![Value::Int(2)];
    nulls.resize(expected.len(), Value::Null);
    assert_eq!(rows[1], nulls);

    // 2,500 rows in batches of at most 1,000, progress counted, last batch marks the end.
    let many: Vec<&SnapshotBatch> = batches.iter().filter(|b| b.rel == many_oid).collect();
    assert_eq!(many.len(), 3);
    assert!(many.iter().all(|b| b.rows.len() <= 1000));
    assert_eq!(many.iter().map(|b| b.rows.len()).sum::<usize>(), 2500);
    assert_eq!(many[2].rows_done, 2500);
    assert!(many[2].table_done && !many[0].table_done);
    assert_eq!(many[0].rows_estimated, Some(2500));

    f.cleanup(Some(stream)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_inserts_updates_deletes_truncate_in_order() -> Result<()> {
    let f = Fixture::new("repl_dml", "CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    let (snap, point, mut s) = fresh_start(&f).await?;
    let oid = rel_oid(&f, "t")?;
    assert!(snap
        .iter()
        .any(|b| b.rel == oid && b.rows.is_empty() && b.table_done));

    f.psql("INSERT INTO t VALUES (1, 'a'), (2, 'b')")?;
    f.psql("UPDATE t SET v = 'a2' WHERE id = 1")?;
    f.psql("DELETE FROM t WHERE id = 2")?;
    f.psql("UPDATE t SET id = 10 WHERE id = 1")?;
    f.psql("TRUNCATE t")?;

    let b1 = s.next_nonempty().await?;
    let rel = relation_of(&b1, oid).context("first batch lacks the Relation")?;
    assert_eq!(rel.schema.name, "t");
    assert_eq!(rel.schema.key, vec![0]);
    assert_eq!(
        rows_of(&b1),
        vec![
            &Change::Insert {
                rel: oid,
                row: vec![Value::Int(1), text("a")]
            },
            &Change::Insert {
                rel: oid,
                row: vec![Value::Int(2), text("b")]
            },
        ]
    );
    let b2 = s.next_nonempty().await?;
    assert_eq!(
        rows_of(&b2),
        vec![&Change::Update {
            rel: oid,
            old: None,
            new: NewRow {
                row: vec![Value::Int(1), text("a2")],
                unchanged_toast: vec![]
            }
        }]
    );
    let b3 = s.next_nonempty().await?;
    assert_eq!(
        rows_of(&b3),
        vec![&Change::Delete {
            rel: oid,
            old: OldRow::Key(vec![Value::Int(2), Value::Null])
        }]
    );
    // Key change: the old key comes along, non-key columns Null.
    let b4 = s.next_nonempty().await?;
    assert_eq!(
        rows_of(&b4),
        vec![&Change::Update {
            rel: oid,
            old: Some(OldRow::Key(vec![Value::Int(1), Value::Null])),
            new: NewRow {
                row: vec![Value::Int(10), text("a2")],
                unchanged_toast: vec![]
            }
        }]
    );
    let b5 = s.next_nonempty().await?;
    assert_eq!(rows_of(&b5), vec![&Change::Truncate { rels: vec![oid] }]);

    let lsns = [
        point,
        b1.commit_lsn,
        b2.commit_lsn,
        b3.commit_lsn,
        b4.commit_lsn,
        b5.commit_lsn,
    ];
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");
    f.cleanup(Some(s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_columns_are_flagged() -> Result<()> {
    let f = Fixture::new(
        "repl_toast",
        "CREATE TABLE big (id int PRIMARY KEY, small int, doc text);
         ALTER TABLE big ALTER COLUMN doc SET STORAGE EXTERNAL;",
    )
    .await?;
    let (_, _, mut s) = fresh_start(&f).await?;
    let oid = rel_oid(&f, "big")?;
    f.psql("INSERT INTO big VALUES (1, 1, repeat('x', 100000))")?;
    f.psql("UPDATE big SET small = 2 WHERE id = 1")?;
    let b1 = s.next_nonempty().await?;
    match rows_of(&b1)[0] {
        Change::Insert { row, .. } => assert_eq!(row[2], Value::Text("x".repeat(100_000))),
        other => bail!("expected insert, got {other:?}"),
    }
    let b2 = s.next_nonempty().await?;
    assert_eq!(
        rows_of(&b2),
        vec![&Change::Update {
            rel: oid,
            old: None,
            new: NewRow {
                row: vec![Value::Int(1), Value::Int(2), Value::Null],
                unchanged_toast: vec![2]
            }
        }]
    );
    f.cleanup(Some(s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_gives_full_old_rows() -> Result<()> {
    let f = Fixture::new(
        "repl_full",
        "CREATE TABLE f (a int, b text);
         ALTER TABLE f REPLICA IDENTITY FULL;
         INSERT INTO f VALUES (1, 'one');",
    )
    .await?;
    let tables = f.source.discover_tables().await?;
    let t = &tables[0].relation;
    assert_eq!(t.status, TableStatus::Replicated);
    assert!(t.schema.key.is_empty(), "FULL without a key: whole row");
    let (snap, _, mut s) = fresh_start(&f).await?;
    assert_eq!(snap[0].rows, vec![vec![Value::Int(1), text("one")]]);
    let oid = rel_oid(&f, "f")?;
    f.psql("UPDATE f SET b = 'uno'")?;
    f.psql("DELETE FROM f")?;
    let b1 = s.next_nonempty().await?;
    let rel = relation_of(&b1, oid).context("no relation")?;
    assert_eq!(
        rel.replica_identity,
        larder_replication::ReplicaIdentity::Full
    );
    assert!(rel.schema.key.is_empty());
    assert_eq!(
        rows_of(&b1),
        vec![&Change::Update {
            rel: oid,
            old: Some(OldRow::Full(vec![Value::Int(1), text("one")])),
            new: NewRow {
                row: vec![Value::Int(1), text("uno")],
                unchanged_toast: vec![]
            }
        }]
    );
    let b2 = s.next_nonempty().await?;
    assert_eq!(
        rows_of(&b2),
        vec![&Change::Delete {
            rel: oid,
            old: OldRow::Full(vec![Value::Int(1), text("uno")])
        }]
    );
    f.cleanup(Some(s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_and_unsupported_tables_are_not_replicated() -> Result<()> {
    let f = Fixture::new(
        "repl_notrep",
        "CREATE TABLE keyless (a int, b text);
         CREATE TABLE geo (id int PRIMARY KEY, loc point);
         CREATE TABLE net (id int PRIMARY KEY, addr inet);
         CREATE TABLE ok (id int PRIMARY KEY);
         INSERT INTO keyless VALUES (1, 'x');",
    )
    .await?;
    let tables = f.source.discover_tables().await?;
    let status = |name: &str| {
        tables
            .iter()
            .find(|t| t.relation.schema.name == name)
            .map(|t| t.relation.status.clone())
    };
    let reason = |name: &str| match status(name) {
        Some(TableStatus::NotReplicated { reason }) => reason,
        other => panic!("{name}: expected NotReplicated, got {other:?}"),
    };
    assert!(
        reason("keyless").contains("no primary key"),
        "{}",
        reason("keyless")
    );
    assert!(reason("geo").contains("\"loc\"") && reason("geo").contains("point"));
    assert!(reason("net").contains("inet"), "{}", reason("net"));
    assert_eq!(status("ok"), Some(TableStatus::Replicated));

    // Not-replicated tables are not copied, and their changes are not forwarded, but their
    // Relation (with the reason) is.
    let (snap, _, mut s) = fresh_start(&f).await?;
    let keyless = rel_oid(&f, "keyless")?;
    let geo = rel_oid(&f, "geo")?;
    assert!(snap.iter().all(|b| b.rel != keyless && b.rel != geo));
    f.psql("INSERT INTO keyless VALUES (2, 'y')")?;
    f.psql("INSERT INTO geo VALUES (1, '(1,2)')")?;
    f.psql("INSERT INTO ok VALUES (1)")?;
    // Three transactions; gather them into one list of changes.
    let mut b = ChangeBatch {
        resume: None,
        commit_lsn: Lsn::ZERO,
        changes: Vec::new(),
        part: None,
    };
    let ok = rel_oid(&f, "ok")?;
    while !b.changes.iter().any(|c| matches!(c, Change::Insert { .. })) {
        let next = s.next_nonempty().await?;
        assert!(next.commit_lsn > b.commit_lsn);
        b.commit_lsn = next.commit_lsn;
        b.changes.extend(next.changes);
    }
    let geo_rel = relation_of(&b, geo).context("geo relation missing")?;
    match &geo_rel.status {
        TableStatus::NotReplicated { reason } => assert!(reason.contains("point"), "{reason}"),
        other => bail!("geo: {other:?}"),
    }
    assert!(matches!(
        relation_of(&b, keyless).map(|r| &r.status),
        Some(TableStatus::NotReplicated { .. })
    ));
    assert_eq!(
        rows_of(&b),
        vec![&Change::Insert {
            rel: ok,
            row: vec![Value::Int(1)]
        }]
    );
    f.cleanup(Some(s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tables_and_added_columns_arrive_as_relations() -> Result<()> {
    let f = Fixture::new("repl_ddl", "CREATE TABLE t (id int PRIMARY KEY)").await?;
    let (_, _, mut s) = fresh_start(&f).await?;
    f.psql("CREATE TABLE later (id int PRIMARY KEY, v text); INSERT INTO later VALUES (1, 'a')")?;
    let later = rel_oid(&f, "later")?;
    let b = s.next_nonempty().await?;
    let rel = relation_of(&b, later).context("no relation for the new table")?;
    assert_eq!(rel.schema.columns.len(), 2);
    assert_eq!(rel.status, TableStatus::Replicated);
    assert!(
        matches!(b.changes[0], Change::Relation(_)),
        "relation comes first"
    );
    assert_eq!(
        rows_of(&b),
        vec![&Change::Insert {
            rel: later,
            row: vec![Value::Int(1), text("a")]
        }]
    );

    f.psql("ALTER TABLE later ADD COLUMN n int8; INSERT INTO later VALUES (2, 'b', 42)")?;
    let b = s.next_nonempty().await?;
    let rel = relation_of(&b, later).context("no relation after ALTER")?;
    let names: Vec<&str> = rel.schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "v", "n"]);
    assert_eq!(rel.schema.columns[2].ty, SqlType::Int8);
    assert_eq!(
        rows_of(&b),
        vec![&Change::Insert {
            rel: later,
            row: vec![Value::Int(2), text("b"), Value::Int(42)]
        }]
    );
    f.cleanup(Some(s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_stored_position_skips_applied_transactions() -> Result<()> {
    let f = Fixture::new("repl_resume", "CREATE TABLE t (id int PRIMARY KEY)").await?;
    // A slot without a stored position is the caller's decision.
    let (_, _, mut s) = fresh_start(&f).await?;
    for i in 1..=3 {
        f.psql(&format!("INSERT INTO t VALUES ({i})"))?;
    }
    let b1 = s.next_nonempty().await?;
    let b2 = s.next_nonempty().await?;
    let b3 = s.next_nonempty().await?;
    // Acknowledge only the first; the "stored" position is the second.
    s.ack.send(b1.commit_lsn)?;
    let oid = rel_oid(&f, "t")?;
    s.stop().await?;
    f.wait_slot_inactive().await?;

    let err = f.source.open(None).await.unwrap_err();
    assert!(
        matches!(err, ReplicationError::SlotExistsWithoutPosition { .. }),
        "{err}"
    );

    let outcome = f.source.open(Some(b2.commit_lsn)).await?;
    assert!(matches!(outcome, OpenOutcome::Resume { start_lsn } if start_lsn == b2.commit_lsn));
    let mut s = Stream::start(&f.source, outcome, b2.commit_lsn);
    f.psql("INSERT INTO t VALUES (4)")?;
    let next = s.next_nonempty().await?;
    assert_eq!(
        next.commit_lsn, b3.commit_lsn,
        "transaction 3 comes first, 1 and 2 are skipped"
    );
    assert!(
        relation_of(&next, oid).is_some(),
        "relation re-sent in the new session"
    );
    assert_eq!(
        rows_of(&next),
        vec![&Change::Insert {
            rel: oid,
            row: vec![Value::Int(3)]
        }]
    );
    let next = s.next_nonempty().await?;
    assert!(next.commit_lsn > b3.commit_lsn);
    assert_eq!(
        rows_of(&next),
        vec![&Change::Insert {
            rel: oid,
            row: vec![Value::Int(4)]
        }]
    );
    s.stop().await?;
    f.wait_slot_inactive().await?;

    // The caller's recovery path: drop, then a fresh start.
    assert!(f.source.drop_slot().await?);
    assert!(!f.source.drop_slot().await?);
    let outcome = f.source.open(None).await?;
    assert!(matches!(outcome, OpenOutcome::Fresh(_)));
    drop(outcome);
    f.wait_slot_inactive().await?;
    f.cleanup(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_advances_confirmed_flush_lsn() -> Result<()> {
    let f = Fixture::new("repl_ack", "CREATE TABLE t (id int PRIMARY KEY)").await?;
    let (_, point, mut s) = fresh_start(&f).await?;
    f.psql("INSERT INTO t VALUES (1)")?;
    let b = s.next_nonempty().await?;
    let before: Lsn = f
        .slot_query("confirmed_flush_lsn")?
        .parse()
        .map_err(anyhow::Error::msg)?;
    assert!(before < b.commit_lsn);
    assert!(before >= point);
    s.ack.send(b.commit_lsn)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now: Lsn = f
            .slot_query("confirmed_flush_lsn")?
            .parse()
            .map_err(anyhow::Error::msg)?;
        if now >= b.commit_lsn {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "confirmed_flush_lsn stuck at {now}, expected {}",
                b.commit_lsn
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Going backwards is a fatal error, not silently ignored.
    s.ack.send(point)?;
    let res = tokio::time::timeout(WAIT, &mut s.task).await??;
    assert!(
        matches!(res, Err(ReplicationError::PositionRegressed { .. })),
        "{res:?}"
    );
    f.wait_slot_inactive().await?;
    f.cleanup(None).await
}
