//! Random DDL (issue #13, item 4): several client sessions send random schema changes, writes,
//! `CREATE CACHE`/`DROP CACHE` and cached reads through Larder at once; at every quiet point
//! the test checks that replication streams, that `SHOW LARDER TABLES` is the upstream's
//! catalog, and that every cached answer is the upstream's (never from a relation that no
//! longer exists).
//!
//! The DDL covers: columns added (with defaults and generated), dropped, renamed and retyped;
//! tables renamed, moved between schemas, dropped and created again (in one transaction or
//! several), created as copies or with foreign keys; TRUNCATE of one or several tables, with
//! CASCADE; DDL in a transaction that rolls back; REPLICA IDENTITY; schemas dropped with
//! CASCADE, created and renamed; partitioned tables created with their partitions, partitions
//! detached and tables attached; ownership changes and `DROP OWNED`.
//!
//! The suite runs a fixed budget of steps with a random seed; `LARDER_TEST_SEED=<n>` replays a
//! seed and `LARDER_DDL_STEPS=<n>` runs longer. A failure prints the seed and every step so far
//! in the order the sessions sent them (a script that reproduces it). Bugs it found have their
//! own deterministic, named regression tests below the generator.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;

use kit::Deployment;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Steps of the suite's run (all sessions together); `LARDER_DDL_STEPS` overrides it.
const DEFAULT_STEPS: usize = 600;
/// Client sessions sending steps at once.
const SESSIONS: usize = 3;
/// Steps per session between two quiet points (at most).
const ROUND_STEPS_MAX: usize = 5;
/// How long the catalog (`SHOW LARDER TABLES`) may take to show a change (generous: the
/// whole suite may be running on two cores).
const CATALOG_WAIT: Duration = Duration::from_secs(15);
/// How long Larder may take to apply everything committed upstream.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
/// One statement of a session may take this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The checks of one quiet point finish within this (or the test fails).
const QUIET_POINT_MAX: Duration = Duration::from_secs(90);
/// A round of steps finishes within this (or the test fails).
const ROUND_MAX: Duration = Duration::from_secs(120);
/// Cached queries checked at each quiet point (the most recent ones).
const CHECKED_QUERIES_MAX: usize = 24;

/// Schemas the generator uses (the others are renamed to and from these).
const SCHEMA_POOL: [&str; 4] = ["public", "sa", "sb", "sc"];
const TABLE_POOL: [&str; 5] = ["t1", "t2", "t3", "t4", "t5"];
const COLUMN_POOL: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const TYPE_POOL: [&str; 4] = ["int", "bigint", "numeric", "text"];

const SETUP: &str = "
DO $$ BEGIN CREATE ROLE larder_ddl_owner; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
CREATE SCHEMA sa; CREATE SCHEMA sb;
CREATE TABLE public.t1 (id int PRIMARY KEY, a int, b text);
CREATE TABLE public.t2 (id int PRIMARY KEY, a int, c numeric);
CREATE TABLE sa.t1 (id int PRIMARY KEY, b text, d bigint);
CREATE TABLE sb.t3 (id int PRIMARY KEY, a int);
INSERT INTO public.t1 SELECT g, g % 3, (g % 4)::text FROM generate_series(1, 8) g;
INSERT INTO public.t2 SELECT g, g % 2, g FROM generate_series(1, 6) g;
INSERT INTO sa.t1 SELECT g, (g % 2)::text, g * 10 FROM generate_series(1, 5) g;
INSERT INTO sb.t3 SELECT g, g % 3 FROM generate_series(1, 5) g;
";

// ------------------------------------------------------------------------------------------
// The upstream catalog as the generator sees it.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Table {
    /// (name, type as format_type says, generated)
    cols: Vec<(String, String, bool)>,
    /// `relreplident`: d, f, n or i.
    identity: char,
    has_pk: bool,
    /// A partitioned table (relkind p).
    partitioned: bool,
    /// The partitioned table this one is a partition of (qualified).
    partition_of: Option<String>,
}

impl Table {
    fn plain_cols(&self) -> Vec<&str> {
        self.cols
            .iter()
            .filter(|(n, _, g)| n != "id" && !g)
            .map(|(n, _, _)| n.as_str())
            .collect()
    }

    fn all_cols(&self) -> Vec<&str> {
        self.cols.iter().map(|(n, _, _)| n.as_str()).collect()
    }

    fn has_id(&self) -> bool {
        self.cols.iter().any(|(n, _, _)| n == "id")
    }
}

#[derive(Clone, Debug, Default)]
struct Catalog {
    tables: BTreeMap<(String, String), Table>,
    schemas: BTreeSet<String>,
}

impl Catalog {
    async fn load(direct: &Client) -> Catalog {
        let mut cat = Catalog::default();
        for r in kit::text_rows(
            direct,
            "SELECT nspname::text FROM pg_namespace \
             WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'larder', 'pg_toast') \
               AND nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast%'",
        )
        .await
        {
            cat.schemas.insert(cell(&r, 0));
        }
        let rows = kit::text_rows(
            direct,
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)::text, \
               coalesce((SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod) \
                   || ':' || (a.attgenerated <> '')::text, ',' ORDER BY a.attnum) \
                 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                   AND NOT a.attisdropped), ''), c.relkind::text, \
               (SELECT pn.nspname || '.' || pc.relname FROM pg_inherits i \
                  JOIN pg_class pc ON pc.oid = i.inhparent \
                  JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE i.inhrelid = c.oid) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'larder') \
               AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast%'",
        )
        .await;
        for r in rows {
            let cols = cell(&r, 4)
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|s| {
                    let mut it = s.split(':');
                    Some((
                        it.next()?.to_string(),
                        it.next()?.to_string(),
                        it.next()? == "true",
                    ))
                })
                .collect();
            cat.tables.insert(
                (cell(&r, 0), cell(&r, 1)),
                Table {
                    cols,
                    identity: cell(&r, 2).chars().next().unwrap_or('d'),
                    has_pk: cell(&r, 3) == "true",
                    partitioned: cell(&r, 5) == "p",
                    partition_of: r.get(6).cloned().flatten(),
                },
            );
        }
        cat
    }

    /// The status `SHOW LARDER TABLES` should give the table.
    fn expected_status(t: &Table) -> &'static str {
        if t.partitioned {
            // Its partitions are replicated, each as a table of its own.
            "Not Replicated"
        } else if t.identity == 'n' || (!t.has_pk && t.identity != 'f') {
            "Not Replicated"
        } else if !t.has_pk {
            // Keyless tables are copied only in a fresh snapshot; either is right.
            "Online|Not Replicated"
        } else {
            "Online"
        }
    }
}

fn cell(r: &[Option<String>], i: usize) -> String {
    r.get(i).cloned().flatten().unwrap_or_default()
}

fn qualified(schema: &str, name: &str, rng: &mut StdRng) -> String {
    if schema == "public" && rng.gen_bool(0.4) {
        name.to_string()
    } else {
        format!("{schema}.{name}")
    }
}

// ------------------------------------------------------------------------------------------
// Steps.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Kind {
    Ddl,
    Write,
    CreateCache(String),
    DropCache,
    Read,
}

#[derive(Clone, Debug)]
struct Step {
    sql: String,
    kind: Kind,
}

impl Step {
    fn new(kind: Kind, sql: impl Into<String>) -> Step {
        Step {
            sql: sql.into(),
            kind,
        }
    }
}

struct Gen<'a> {
    rng: &'a mut StdRng,
    cat: &'a Catalog,
    /// Queries caches were asked for (most recent last).
    queries: &'a [String],
    cache_no: &'a mut u32,
}

impl Gen<'_> {
    fn table(&mut self) -> Option<((String, String), Table)> {
        let all: Vec<_> = self.cat.tables.iter().filter(|(_, t)| t.has_id()).collect();
        all.choose(self.rng)
            .map(|(k, t)| ((*k).clone(), (*t).clone()))
    }

    fn value(&mut self) -> String {
        if self.rng.gen_bool(0.1) {
            "NULL".into()
        } else {
            format!("'{}'", self.rng.gen_range(0..6))
        }
    }

    fn key(&mut self) -> i32 {
        self.rng.gen_range(1..12)
    }

    fn ty(&mut self) -> &'static str {
        TYPE_POOL.choose(self.rng).copied().unwrap_or("int")
    }

    /// Column definitions of a new table (always keyed by `id`).
    fn new_columns(&mut self) -> String {
        let mut cols = vec!["id int PRIMARY KEY".to_string()];
        let n = self.rng.gen_range(1..4);
        let mut names: Vec<&str> = COLUMN_POOL.to_vec();
        names.shuffle(self.rng);
        for name in names.into_iter().take(n) {
            let ty = self.ty();
            cols.push(format!("{name} {ty}"));
        }
        cols.join(", ")
    }

    fn steps(&mut self) -> Vec<Step> {
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=32 => self.write().into_iter().collect(),
            33..=49 => self.read().into_iter().collect(),
            50..=59 => self.create_cache().into_iter().collect(),
            60..=62 => self.drop_cache().into_iter().collect(),
            _ => self.ddl(),
        }
    }

    fn write(&mut self) -> Option<Step> {
        let ((s, t), table) = self.table()?;
        let name = qualified(&s, &t, self.rng);
        let cols = table.plain_cols();
        let sql = match self.rng.gen_range(0..5) {
            0 | 1 => {
                let n = self.rng.gen_range(1..4);
                let mut rows = Vec::new();
                for _ in 0..n {
                    let mut vals = vec![format!("'{}'", self.key())];
                    for _ in &cols {
                        vals.push(self.value());
                    }
                    rows.push(format!("({})", vals.join(", ")));
                }
                let mut names = vec!["id"];
                names.extend(cols.iter().copied());
                let set = match cols.first() {
                    Some(c) if table.has_pk => {
                        format!(" ON CONFLICT (id) DO UPDATE SET {c} = EXCLUDED.{c}")
                    }
                    _ if table.has_pk => " ON CONFLICT (id) DO NOTHING".to_string(),
                    _ => String::new(),
                };
                format!(
                    "INSERT INTO {name} ({}) VALUES {}{set}",
                    names.join(", "),
                    rows.join(", ")
                )
            }
            2 | 3 => match cols.choose(self.rng) {
                Some(c) => {
                    let v = self.value();
                    let k = self.key();
                    if self.rng.gen_bool(0.3) {
                        format!("UPDATE {name} SET {c} = {v} WHERE id < '{k}'")
                    } else {
                        format!("UPDATE {name} SET {c} = {v} WHERE id = '{k}'")
                    }
                }
                None => format!(
                    "UPDATE {name} SET id = id + 100 WHERE id = '{}'",
                    self.key()
                ),
            },
            _ => format!("DELETE FROM {name} WHERE id = '{}'", self.key()),
        };
        Some(Step::new(Kind::Write, sql))
    }

    fn query(&mut self) -> Option<String> {
        let ((s, t), table) = self.table()?;
        let name = qualified(&s, &t, self.rng);
        let cols = table.plain_cols();
        let k = self.key();
        let sql = match self.rng.gen_range(0..9) {
            0 | 1 => {
                let mut pick: Vec<&str> = cols.clone();
                pick.shuffle(self.rng);
                pick.truncate(self.rng.gen_range(0..3));
                pick.insert(0, "id");
                format!("SELECT {} FROM {name} WHERE id = {k}", pick.join(", "))
            }
            2 => match cols.choose(self.rng) {
                Some(c) => format!(
                    "SELECT id, {c} FROM {name} WHERE {c} = '{}'",
                    self.rng.gen_range(0..6)
                ),
                None => format!("SELECT id FROM {name} WHERE id = {k}"),
            },
            3 => format!("SELECT * FROM {name} WHERE id = {k}"),
            4 => match cols.choose(self.rng) {
                Some(c) => format!("SELECT {c}, count(*) FROM {name} GROUP BY {c}"),
                None => format!("SELECT count(*) FROM {name}"),
            },
            5 => format!("SELECT count(*), max(id) FROM {name} WHERE id > {k}"),
            6 | 7 => {
                let ((s2, t2), table2) = self.table()?;
                let name2 = qualified(&s2, &t2, self.rng);
                let c2 = table2
                    .plain_cols()
                    .choose(self.rng)
                    .map(|c| format!("y.{c}"))
                    .unwrap_or_else(|| "y.id".into());
                let join = if self.rng.gen_bool(0.3) {
                    "LEFT JOIN"
                } else {
                    "JOIN"
                };
                if self.rng.gen_bool(0.5) {
                    format!(
                        "SELECT x.id, {c2} FROM {name} x {join} {name2} y ON y.id = x.id WHERE x.id = {k}"
                    )
                } else {
                    format!(
                        "SELECT count(*) FROM {name} x {join} {name2} y ON y.id = x.id WHERE x.id > {k}"
                    )
                }
            }
            _ => {
                let ((s2, t2), _) = self.table()?;
                let name2 = qualified(&s2, &t2, self.rng);
                if self.rng.gen_bool(0.5) {
                    format!(
                        "SELECT id FROM {name} WHERE id IN (SELECT id FROM {name2}) AND id > {k}"
                    )
                } else {
                    format!(
                        "SELECT id FROM {name} WHERE NOT EXISTS (SELECT 1 FROM {name2} z WHERE z.id = {name}.id)"
                    )
                }
            }
        };
        Some(sql)
    }

    fn read(&mut self) -> Option<Step> {
        let sql = if !self.queries.is_empty() && self.rng.gen_bool(0.7) {
            self.queries.choose(self.rng)?.clone()
        } else {
            self.query()?
        };
        Some(Step::new(Kind::Read, sql))
    }

    fn create_cache(&mut self) -> Option<Step> {
        let q = self.query()?;
        *self.cache_no += 1;
        let name = format!("c{}", self.cache_no);
        Some(Step::new(
            Kind::CreateCache(q.clone()),
            format!("CREATE CACHE {name} FROM {q}"),
        ))
    }

    fn drop_cache(&mut self) -> Option<Step> {
        let n = self.rng.gen_range(1..=(*self.cache_no).max(1));
        Some(Step::new(Kind::DropCache, format!("DROP CACHE c{n}")))
    }

    /// One DDL (sometimes as several steps: several transactions).
    fn ddl(&mut self) -> Vec<Step> {
        let d = |sql: String| vec![Step::new(Kind::Ddl, sql)];
        let Some(((s, t), table)) = self.table() else {
            let cols = self.new_columns();
            return d(format!("CREATE TABLE public.t1 ({cols})"));
        };
        let name = format!("{s}.{t}");
        let plain = table.plain_cols();
        let free_col = COLUMN_POOL
            .iter()
            .find(|c| !table.all_cols().contains(c))
            .copied();
        let free_table = |cat: &Catalog, schema: &str| {
            TABLE_POOL
                .iter()
                .find(|n| {
                    !cat.tables
                        .contains_key(&(schema.to_string(), n.to_string()))
                })
                .copied()
        };
        match self.rng.gen_range(0..21) {
            0 | 1 => {
                let Some(c) = free_col else { return vec![] };
                let ty = self.ty();
                let default = match self.rng.gen_range(0..4) {
                    0 => String::new(),
                    1 => format!(" DEFAULT '{}'", self.rng.gen_range(0..6)),
                    2 => format!(" DEFAULT (floor(random() * 5)::int)::{ty}"),
                    _ if ty != "text" => " GENERATED ALWAYS AS (id * 2) STORED".to_string(),
                    _ => " DEFAULT 'x'".to_string(),
                };
                d(format!("ALTER TABLE {name} ADD COLUMN {c} {ty}{default}"))
            }
            2 => match plain.choose(self.rng) {
                Some(c) => d(format!("ALTER TABLE {name} DROP COLUMN {c}")),
                None => vec![],
            },
            3 | 4 => match plain.choose(self.rng) {
                Some(c) => {
                    let ty = self.ty();
                    d(format!(
                        "ALTER TABLE {name} ALTER COLUMN {c} TYPE {ty} USING {c}::{ty}"
                    ))
                }
                None => vec![],
            },
            5 => match (plain.choose(self.rng), free_col) {
                (Some(c), Some(to)) => d(format!("ALTER TABLE {name} RENAME COLUMN {c} TO {to}")),
                _ => vec![],
            },
            6 => {
                if self.rng.gen_bool(0.5) {
                    match free_table(self.cat, &s) {
                        Some(to) => d(format!("ALTER TABLE {name} RENAME TO {to}")),
                        None => vec![],
                    }
                } else {
                    let other: Vec<&String> =
                        self.cat.schemas.iter().filter(|o| **o != s).collect();
                    match other.choose(self.rng) {
                        Some(o)
                            if free_table(self.cat, o) == Some(t.as_str())
                                || !self.cat.tables.contains_key(&((*o).clone(), t.clone())) =>
                        {
                            d(format!("ALTER TABLE {name} SET SCHEMA {o}"))
                        }
                        _ => vec![],
                    }
                }
            }
            7 | 8 => {
                // Dropped and created again under the same name, with other columns.
                let cols = self.new_columns();
                let fill = if self.rng.gen_bool(0.5) {
                    format!("; INSERT INTO {name} (id) SELECT g FROM generate_series(1, 4) g")
                } else {
                    String::new()
                };
                if self.rng.gen_bool(0.5) {
                    d(format!(
                        "DROP TABLE {name} CASCADE; CREATE TABLE {name} ({cols}){fill}"
                    ))
                } else {
                    vec![
                        Step::new(Kind::Ddl, format!("DROP TABLE {name} CASCADE")),
                        Step::new(Kind::Ddl, format!("CREATE TABLE {name} ({cols}){fill}")),
                    ]
                }
            }
            9 => {
                let schemas: Vec<&String> = self.cat.schemas.iter().collect();
                let Some(schema) = schemas.choose(self.rng).map(|s| s.to_string()) else {
                    return vec![];
                };
                let Some(n) = free_table(self.cat, &schema) else {
                    return vec![];
                };
                if self.rng.gen_bool(0.2) {
                    d(format!(
                        "CREATE TABLE {schema}.{n} AS SELECT * FROM {name}; \
                         ALTER TABLE {schema}.{n} ADD PRIMARY KEY (id)"
                    ))
                } else if self.rng.gen_bool(0.2) {
                    d(format!(
                        "CREATE TABLE {schema}.{n} (id int PRIMARY KEY, a int REFERENCES {name} (id) ON DELETE CASCADE)"
                    ))
                } else {
                    let cols = self.new_columns();
                    d(format!("CREATE TABLE {schema}.{n} ({cols})"))
                }
            }
            10 | 11 => {
                let mut names = vec![name.clone()];
                if self.rng.gen_bool(0.4) {
                    if let Some(((s2, t2), _)) = self.table() {
                        let other = format!("{s2}.{t2}");
                        if other != name {
                            names.push(other);
                        }
                    }
                }
                let cascade = if self.rng.gen_bool(0.4) {
                    " CASCADE"
                } else {
                    ""
                };
                d(format!("TRUNCATE {}{cascade}", names.join(", ")))
            }
            12 => {
                // DDL in a transaction that rolls back.
                let inner = match (plain.first(), self.rng.gen_range(0..3)) {
                    (Some(c), 0) => format!("ALTER TABLE {name} DROP COLUMN {c}"),
                    (_, 1) => format!("DROP TABLE {name} CASCADE"),
                    _ => format!("ALTER TABLE {name} ADD COLUMN zz int DEFAULT 7"),
                };
                d(format!(
                    "BEGIN; {inner}; INSERT INTO {name} (id) VALUES ('{}') ON CONFLICT DO NOTHING; ROLLBACK",
                    self.key()
                ))
            }
            13 => {
                let identity = ["FULL", "DEFAULT", "NOTHING", "DEFAULT"]
                    .choose(self.rng)
                    .copied()
                    .unwrap_or("DEFAULT");
                d(format!("ALTER TABLE {name} REPLICA IDENTITY {identity}"))
            }
            14 => {
                let schemas: Vec<&String> = self.cat.schemas.iter().collect();
                let Some(schema) = schemas.choose(self.rng).map(|s| s.to_string()) else {
                    return vec![];
                };
                let mut sql = format!("DROP SCHEMA {schema} CASCADE; CREATE SCHEMA {schema}");
                if self.rng.gen_bool(0.6) {
                    let cols = self.new_columns();
                    let n = TABLE_POOL.choose(self.rng).copied().unwrap_or("t1");
                    let _ = write!(sql, "; CREATE TABLE {schema}.{n} ({cols})");
                    if self.rng.gen_bool(0.5) {
                        let _ = write!(
                            sql,
                            "; INSERT INTO {schema}.{n} (id) SELECT g FROM generate_series(1, 3) g"
                        );
                    }
                }
                if self.rng.gen_bool(0.5) {
                    let (a, b) = sql.split_once("; CREATE SCHEMA").unwrap_or((&sql, ""));
                    vec![
                        Step::new(Kind::Ddl, a.to_string()),
                        Step::new(Kind::Ddl, format!("CREATE SCHEMA{b}")),
                    ]
                } else {
                    d(sql)
                }
            }
            17 => {
                // A partitioned table with two partitions, in one transaction or two.
                let schemas: Vec<String> = self.cat.schemas.iter().cloned().collect();
                let Some(s2) = schemas.choose(self.rng).cloned() else {
                    return vec![];
                };
                let free: Vec<&str> = TABLE_POOL
                    .iter()
                    .filter(|n| !self.cat.tables.contains_key(&(s2.clone(), n.to_string())))
                    .copied()
                    .collect();
                let [p, a, b, ..] = free.as_slice() else {
                    return vec![];
                };
                let parent = format!("{s2}.{p}");
                let create = format!(
                    "CREATE TABLE {parent} (id int, a int, b text, PRIMARY KEY (id)) PARTITION BY RANGE (id)"
                );
                let parts = format!(
                    "CREATE TABLE {s2}.{a} PARTITION OF {parent} FOR VALUES FROM (MINVALUE) TO (5); \
                     CREATE TABLE {s2}.{b} PARTITION OF {parent} FOR VALUES FROM (5) TO (MAXVALUE); \
                     INSERT INTO {parent} (id, a, b) SELECT g, g % 3, (g % 2)::text FROM generate_series(1, 8) g"
                );
                if self.rng.gen_bool(0.5) {
                    d(format!("{create}; {parts}"))
                } else {
                    vec![Step::new(Kind::Ddl, create), Step::new(Kind::Ddl, parts)]
                }
            }
            18 => {
                // Detach a partition, or attach a table to a partitioned one.
                let parts: Vec<(String, String)> = self
                    .cat
                    .tables
                    .iter()
                    .filter_map(|((ps, pt), t)| {
                        Some((format!("{ps}.{pt}"), t.partition_of.clone()?))
                    })
                    .collect();
                if self.rng.gen_bool(0.5) {
                    match parts.choose(self.rng) {
                        Some((part, parent)) => {
                            d(format!("ALTER TABLE {parent} DETACH PARTITION {part}"))
                        }
                        None => vec![],
                    }
                } else {
                    let parents: Vec<String> = self
                        .cat
                        .tables
                        .iter()
                        .filter(|(_, t)| t.partitioned)
                        .map(|((ps, pt), _)| format!("{ps}.{pt}"))
                        .collect();
                    let bound = [
                        "FOR VALUES FROM (MINVALUE) TO (5)",
                        "FOR VALUES FROM (5) TO (MAXVALUE)",
                        "DEFAULT",
                    ]
                    .choose(self.rng)
                    .copied()
                    .unwrap_or("DEFAULT");
                    match parents.choose(self.rng) {
                        Some(parent) if *parent != name => d(format!(
                            "ALTER TABLE {parent} ATTACH PARTITION {name} {bound}"
                        )),
                        _ => vec![],
                    }
                }
            }
            19 => d(format!("ALTER TABLE {name} OWNER TO larder_ddl_owner")),
            20 => d("DROP OWNED BY larder_ddl_owner CASCADE".to_string()),
            15 => {
                let from: Vec<&String> = self
                    .cat
                    .schemas
                    .iter()
                    .filter(|s| s.as_str() != "public")
                    .collect();
                let to: Vec<&&str> = SCHEMA_POOL
                    .iter()
                    .filter(|s| !self.cat.schemas.contains(**s))
                    .collect();
                match (from.choose(self.rng), to.choose(self.rng)) {
                    (Some(f), Some(t)) => d(format!("ALTER SCHEMA {f} RENAME TO {t}")),
                    _ => vec![],
                }
            }
            _ => {
                let missing: Vec<&&str> = SCHEMA_POOL
                    .iter()
                    .filter(|s| !self.cat.schemas.contains(**s))
                    .collect();
                match missing.choose(self.rng) {
                    Some(m) => {
                        let cols = self.new_columns();
                        d(format!("CREATE SCHEMA {m}; CREATE TABLE {m}.t1 ({cols})"))
                    }
                    None => vec![],
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Running steps and checking quiet points.
// ------------------------------------------------------------------------------------------

/// What a statement gave, in a comparable form: rows (sorted) or the SQLSTATE of its error.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Rows(Vec<Vec<Option<String>>>),
    Error(String),
}

async fn run_sql(c: &Client, sql: &str) -> Answer {
    match tokio::time::timeout(STEP_TIMEOUT, c.simple_query(sql)).await {
        Err(_) => Answer::Error("TIMEOUT".into()),
        Ok(Err(e)) => Answer::Error(match e.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.message()),
            None => format!("client: {e}"),
        }),
        Ok(Ok(msgs)) => {
            let mut rows: Vec<Vec<Option<String>>> = msgs
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect();
            rows.sort();
            Answer::Rows(rows)
        }
    }
}

fn short(a: &Answer) -> String {
    match a {
        Answer::Rows(r) if r.len() <= 3 => format!("ok {r:?}"),
        Answer::Rows(r) => format!("ok {} rows", r.len()),
        Answer::Error(e) => format!("ERROR {e}"),
    }
}

/// Every step sent so far, with when it started (to order the sessions' steps).
#[derive(Default)]
struct Log {
    started: Option<Instant>,
    lines: Vec<(Duration, String)>,
}

impl Log {
    fn push(&mut self, line: String) {
        let at = self.started.get_or_insert_with(Instant::now).elapsed();
        self.lines.push((at, line));
    }

    fn script(&self) -> String {
        let mut lines = self.lines.clone();
        lines.sort_by_key(|(at, _)| *at);
        let mut out = String::new();
        for (at, l) in lines {
            let _ = writeln!(out, "{:>7.3}s {l}", at.as_secs_f64());
        }
        out
    }
}

/// The test's view of one Larder deployment: the sessions, a checking session through Larder
/// and one straight to the upstream.
struct World {
    _d: Deployment,
    sessions: Vec<Arc<Client>>,
    checker: Client,
    direct: Client,
    log: Arc<Mutex<Log>>,
    /// Queries caches were asked for (bounded; most recent last).
    queries: Vec<String>,
    cache_no: u32,
    hits: u64,
    checks: u64,
}

impl World {
    async fn start(prefix: &str, setup: &str) -> World {
        let d = Deployment::start(prefix, setup);
        let checker = kit::connect(&d.larder_url()).await;
        kit::wait_online(&checker).await;
        let direct = kit::connect(&d.direct_url()).await;
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS {
            let c = kit::connect(&d.larder_url()).await;
            c.batch_execute("SET lock_timeout = '3s'; SET statement_timeout = '20s'")
                .await
                .expect("session settings");
            sessions.push(Arc::new(c));
        }
        World {
            _d: d,
            sessions,
            checker,
            direct,
            log: Arc::new(Mutex::new(Log::default())),
            queries: Vec::new(),
            cache_no: 0,
            hits: 0,
            checks: 0,
        }
    }

    /// Runs one session's steps on session `i`; returns the queries it cached.
    async fn run_steps(
        client: Arc<Client>,
        i: usize,
        steps: Vec<Step>,
        log: Arc<Mutex<Log>>,
    ) -> Vec<String> {
        let mut cached = Vec::new();
        for step in steps {
            let start = {
                let mut l = log.lock().expect("log");
                let at = l.started.get_or_insert_with(Instant::now).elapsed();
                at
            };
            let answer = run_sql(&client, &step.sql).await;
            if answer == Answer::Error("TIMEOUT".into()) {
                log.lock()
                    .expect("log")
                    .lines
                    .push((start, format!("s{i}: {}; -- TIMEOUT", step.sql)));
            }
            let mut line = format!("s{i}: {};  -- {}", step.sql, short(&answer));
            if let Answer::Error(_) = &answer {
                let _ = client.simple_query("ROLLBACK").await;
            }
            match (&step.kind, &answer) {
                (Kind::CreateCache(q), Answer::Rows(_)) => cached.push(q.clone()),
                (Kind::Read, Answer::Rows(_)) => {
                    let (dest, _) = explain(&client).await;
                    let _ = write!(line, " [{dest}]");
                }
                _ => {}
            }
            log.lock().expect("log").lines.push((start, line));
        }
        cached
    }

    /// Runs `steps` of each session at once.
    async fn round(&mut self, per_session: Vec<Vec<Step>>) {
        let mut handles = Vec::new();
        for (i, steps) in per_session.into_iter().enumerate() {
            let client = self.sessions[i % self.sessions.len()].clone();
            handles.push(tokio::spawn(World::run_steps(
                client,
                i,
                steps,
                self.log.clone(),
            )));
        }
        for h in handles {
            if let Ok(cached) = h.await {
                for q in cached {
                    self.remember(q);
                }
            }
        }
    }

    fn remember(&mut self, q: String) {
        self.queries.retain(|x| *x != q);
        self.queries.push(q);
        if self.queries.len() > CHECKED_QUERIES_MAX {
            self.queries.remove(0);
        }
    }

    /// Runs `sql` through Larder on session `i` as one step (the regression tests).
    async fn step(&mut self, i: usize, sql: &str) -> Answer {
        let answer = run_sql(&self.sessions[i], sql).await;
        self.log
            .lock()
            .expect("log")
            .push(format!("s{i}: {sql};  -- {}", short(&answer)));
        if let Answer::Error(_) = &answer {
            let _ = self.sessions[i].simple_query("ROLLBACK").await;
        } else if let Some(rest) = sql.strip_prefix("CREATE CACHE ") {
            let q = rest.split_once(" FROM ").map_or(rest, |(_, q)| q);
            self.remember(q.to_string());
        }
        answer
    }

    /// Runs `sql` directly upstream (no step of Larder's).
    #[allow(dead_code)]
    async fn direct(&mut self, sql: &str) {
        let a = run_sql(&self.direct, sql).await;
        self.log
            .lock()
            .expect("log")
            .push(format!("direct: {sql};  -- {}", short(&a)));
    }

    /// The quiet-point checks; `Err` says what is wrong.
    async fn check(&mut self) -> Result<(), String> {
        self.catch_up().await?;
        let st = kit::status(&self.checker).await;
        if st.get("Replication Status").map(String::as_str) != Some("Streaming") {
            return Err(format!("replication is not streaming: {st:?}"));
        }
        self.check_tables().await?;
        self.check_reads().await
    }

    async fn catch_up(&self) -> Result<(), String> {
        let target = kit::text_rows(&self.direct, "SELECT pg_current_wal_lsn()::text").await;
        let target = target
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| kit::parse_lsn(&s))
            .ok_or("no WAL position")?;
        let deadline = Instant::now() + CATCH_UP_WAIT;
        loop {
            let st = kit::status(&self.checker).await;
            if st
                .get("Replication Offset")
                .and_then(|s| kit::parse_lsn(s))
                .is_some_and(|o| o >= target)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Larder did not reach {target:X} within {CATCH_UP_WAIT:?}: {st:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn check_tables(&self) -> Result<(), String> {
        let deadline = Instant::now() + CATALOG_WAIT;
        loop {
            let cat = Catalog::load(&self.direct).await;
            let shown: BTreeMap<String, (String, String)> =
                kit::text_rows(&self.checker, "SHOW LARDER TABLES")
                    .await
                    .into_iter()
                    .map(|r| (cell(&r, 0), (cell(&r, 1), cell(&r, 2))))
                    .collect();
            let mut problems = Vec::new();
            for ((s, t), table) in &cat.tables {
                let key = format!("\"{s}\".\"{t}\"");
                let want = Catalog::expected_status(table);
                match shown.get(&key) {
                    None => problems.push(format!("{key} exists upstream but is not listed")),
                    Some((status, why)) if !want.split('|').any(|w| w == status) => {
                        problems.push(format!("{key} is {status} ({why}), expected {want}"))
                    }
                    Some(_) => {}
                }
            }
            for (key, (status, _)) in &shown {
                let exists = cat
                    .tables
                    .keys()
                    .any(|(s, t)| format!("\"{s}\".\"{t}\"") == *key);
                if !exists {
                    problems.push(format!(
                        "{key} is listed ({status}) but does not exist upstream"
                    ));
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "SHOW LARDER TABLES differs from the upstream catalog after {CATALOG_WAIT:?}:\n  {}",
                    problems.join("\n  ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn check_reads(&mut self) -> Result<(), String> {
        let mut queries = self.queries.clone();
        for r in kit::text_rows(&self.checker, "SHOW CACHES").await {
            let q = cell(&r, 2);
            if !queries.contains(&q) {
                queries.push(q);
            }
        }
        for q in queries {
            let direct = run_sql(&self.direct, &q).await;
            let through = run_sql(&self.checker, &q).await;
            let (dest, reason) = explain(&self.checker).await;
            self.checks += 1;
            if dest == "cache" {
                self.hits += 1;
                if let Answer::Error(e) = &direct {
                    return Err(format!(
                        "answered from a cache, but upstream the query fails ({e}): {q}\n  Larder: {}",
                        short(&through)
                    ));
                }
            }
            if direct != through {
                return Err(format!(
                    "answer through Larder ({dest}: {reason}) differs from the upstream's: {q}\n  upstream: {direct:?}\n  Larder:   {through:?}"
                ));
            }
        }
        Ok(())
    }

    /// Panics with the seed, the reason and every step so far.
    fn fail(&self, seed: Option<u64>, why: &str) -> ! {
        let script = self.log.lock().expect("log").script();
        let seed = seed
            .map(|s| format!("seed {s} (replay: LARDER_TEST_SEED={s})\n"))
            .unwrap_or_default();
        panic!("{seed}{why}\n\nsteps so far (in the order they were sent):\n{script}");
    }

    async fn check_or_fail(&mut self, seed: Option<u64>) {
        match tokio::time::timeout(QUIET_POINT_MAX, self.check()).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => self.fail(seed, &why),
            Err(_) => self.fail(
                seed,
                &format!("the quiet-point checks did not finish within {QUIET_POINT_MAX:?}"),
            ),
        }
    }
}

async fn explain(c: &Client) -> (String, String) {
    match run_sql(c, "EXPLAIN LAST STATEMENT").await {
        Answer::Rows(rows) => rows
            .first()
            .map(|r| (cell(r, 0), cell(r, 1)))
            .unwrap_or_default(),
        Answer::Error(e) => ("?".into(), e),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_ddl_from_several_sessions() {
    let seed = env_u64("LARDER_TEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let budget = env_u64("LARDER_DDL_STEPS").map_or(DEFAULT_STEPS, |n| n as usize);
    eprintln!("random DDL: seed {seed} (replay with LARDER_TEST_SEED={seed}), {budget} steps");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = World::start("random_ddl", SETUP).await;
    w.check_or_fail(Some(seed)).await;
    let started = Instant::now();
    let mut done = 0usize;
    let mut rounds = 0usize;
    while done < budget {
        let cat = Catalog::load(&w.direct).await;
        let mut per_session = Vec::new();
        for _ in 0..SESSIONS {
            let mut steps = Vec::new();
            let n = rng.gen_range(1..=ROUND_STEPS_MAX);
            let mut cache_no = w.cache_no;
            while steps.len() < n {
                let mut g = Gen {
                    rng: &mut rng,
                    cat: &cat,
                    queries: &w.queries,
                    cache_no: &mut cache_no,
                };
                steps.extend(g.steps());
            }
            w.cache_no = cache_no;
            done += steps.len();
            per_session.push(steps);
        }
        if tokio::time::timeout(ROUND_MAX, w.round(per_session))
            .await
            .is_err()
        {
            w.fail(
                Some(seed),
                &format!("a round of steps did not finish within {ROUND_MAX:?}"),
            );
        }
        rounds += 1;
        w.log
            .lock()
            .expect("log")
            .push(format!("-- quiet point {rounds}"));
        w.check_or_fail(Some(seed)).await;
    }
    eprintln!(
        "random DDL: seed {seed}: {done} steps in {rounds} rounds, {} cached reads checked ({} from caches) in {:.1}s",
        w.checks,
        w.hits,
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------------------------------
// Regression tests: each bug the generator found, reduced to a fixed sequence.
// ------------------------------------------------------------------------------------------

/// Runs `steps` (session index, SQL through Larder) one after another, checking the quiet-point
/// invariants after each group (a `None` session marks a quiet point).
async fn replay(prefix: &str, steps: &[(Option<usize>, &str)]) -> World {
    let mut w = World::start(prefix, SETUP).await;
    w.check_or_fail(None).await;
    for (session, sql) in steps {
        match session {
            Some(i) => {
                w.step(*i, sql).await;
            }
            None => {
                w.log
                    .lock()
                    .expect("log")
                    .push(format!("-- quiet point: {sql}"));
                w.check_or_fail(None).await;
            }
        }
    }
    w.check_or_fail(None).await;
    w
}

/// A table created empty is listed (and can be cached) before its first row arrives; so is a
/// table dropped and created again under its name in one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_tables_are_listed_before_their_first_row() {
    let mut w = replay(
        "rddl_created",
        &[
            (Some(0), "CREATE SCHEMA sc; CREATE TABLE sc.t1 (id int PRIMARY KEY, e numeric)"),
            (None, "empty table in a new schema"),
            (Some(0), "DROP TABLE public.t2 CASCADE; CREATE TABLE public.t2 (id int PRIMARY KEY, c bigint)"),
            (None, "dropped and created again in one transaction"),
            (Some(1), "DROP TABLE public.t1"),
            (Some(1), "CREATE TABLE public.t1 (id int PRIMARY KEY, f int)"),
        ],
    )
    .await;
    let created = w
        .step(
            0,
            "CREATE CACHE FROM SELECT id, f FROM public.t1 WHERE id = 1",
        )
        .await;
    assert!(matches!(created, Answer::Rows(_)), "{created:?}");
    w.step(0, "INSERT INTO public.t1 VALUES (1, 5)").await;
    w.check_or_fail(None).await;
}

/// `ALTER SCHEMA … RENAME` renames every table in it: Larder lists them under the new name at
/// once (the event trigger announces each), and a cache on the old name stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_schema_renames_its_tables() {
    let mut w = replay(
        "rddl_schema_rename",
        &[
            (
                Some(0),
                "CREATE CACHE FROM SELECT id, b FROM sa.t1 WHERE id = 2",
            ),
            (Some(1), "SELECT id, b FROM sa.t1 WHERE id = 2"),
            (Some(0), "ALTER SCHEMA sa RENAME TO sc"),
            (None, "schema renamed"),
            (Some(0), "DROP SCHEMA public CASCADE; CREATE SCHEMA public"),
            (None, "public reset"),
        ],
    )
    .await;
    w.check_or_fail(None).await;
}

/// A table created and altered in one transaction (the batch both introduces and copies it),
/// with a cache dropped meanwhile: replication goes on, the table is listed with its final
/// shape. The copy once ran on the shared runtime under the dataflow lock, and a `DROP CACHE`
/// blocked on that lock could starve it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_created_and_altered_in_one_transaction() {
    let mut w = replay(
        "rddl_create_alter",
        &[
            (
                Some(0),
                "CREATE CACHE c1 FROM SELECT id, a FROM public.t1 WHERE id = 1",
            ),
            (
                Some(1),
                "CREATE TABLE sb.t4 (id int PRIMARY KEY, a int); INSERT INTO sb.t4 VALUES (1, 1); \
                 ALTER TABLE sb.t4 ADD COLUMN b text DEFAULT 'x'",
            ),
            (Some(0), "DROP CACHE c1"),
            (None, "created and altered"),
            (
                Some(0),
                "CREATE CACHE FROM SELECT id, b FROM sb.t4 WHERE id = 1",
            ),
        ],
    )
    .await;
    w.step(1, "UPDATE sb.t4 SET b = 'y' WHERE id = 1").await;
    w.check_or_fail(None).await;
}

/// Partitions: each is replicated as a table of its own and the partitioned table is listed as
/// not replicated. Renaming or retyping a column of the partitioned table changes its
/// partitions too, which the DDL command does not list: the event trigger announces each
/// partition, so a cache on a partition stops answering with the old column at once (it once
/// answered until the partition's next change). Attaching and detaching keep the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_follow_their_partitioned_table() {
    let mut w = replay(
        "rddl_partitions",
        &[
            (
                Some(0),
                "CREATE TABLE sb.t1 (id int, a int, b text, PRIMARY KEY (id)) PARTITION BY RANGE (id); \
                 CREATE TABLE sb.t2 PARTITION OF sb.t1 FOR VALUES FROM (MINVALUE) TO (5); \
                 CREATE TABLE sb.t4 PARTITION OF sb.t1 FOR VALUES FROM (5) TO (MAXVALUE); \
                 INSERT INTO sb.t1 SELECT g, g % 3, (g % 2)::text FROM generate_series(1, 8) g",
            ),
            (None, "partitioned"),
            (
                Some(0),
                "CREATE CACHE FROM SELECT id, a FROM sb.t2 WHERE a = 2",
            ),
            (Some(1), "SELECT id, a FROM sb.t2 WHERE a = 2"),
            (Some(0), "ALTER TABLE sb.t1 RENAME COLUMN a TO d"),
            (None, "column renamed"),
            (Some(0), "ALTER TABLE sb.t1 ALTER COLUMN b TYPE bigint USING b::bigint"),
            (
                Some(1),
                "CREATE CACHE FROM SELECT id, b FROM sb.t4 WHERE id = 6",
            ),
            (None, "column retyped"),
            (Some(0), "ALTER TABLE sb.t1 DETACH PARTITION sb.t4"),
            (Some(1), "UPDATE sb.t4 SET b = 7 WHERE id = 6"),
            (None, "detached"),
            (
                Some(0),
                "ALTER TABLE sb.t1 ATTACH PARTITION sb.t4 FOR VALUES FROM (5) TO (MAXVALUE)",
            ),
            (Some(1), "UPDATE sb.t1 SET b = 8 WHERE id = 6"),
        ],
    )
    .await;
    w.check_or_fail(None).await;
}
