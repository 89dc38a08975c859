//! Differential correctness of caches built from *random* queries of the supported grammar
//! against Postgres itself, under random writes (issue #6, item 8).
//!
//! Why: `pg_dataflow_differential` runs a fixed list of shapes; the dataflow's operators are
//! composed by the lowering in ways a fixed list does not reach (a LEFT join over a derived
//! aggregate under a TopK, a semi-join below a GROUP BY, a UNION of a self-join and a DISTINCT,
//! ...). Here both the schema and the queries are drawn from the seed:
//!
//! - a schema of 3-4 tables with random columns (int4, int8, numeric(10,2), text, bool,
//!   timestamp), an integer primary key, and foreign-key-like int columns whose values dangle
//!   now and then; data with NULLs, duplicates and skew, in a database with the `C` collation
//!   (text orders bytewise);
//! - queries of 1-3 tables joined by INNER/LEFT JOIN (ON, USING, or commas) on equalities of
//!   int columns (now and then of text columns; self-joins included), WHERE conjunctions of
//!   comparisons with literals (=, <>, <, >=, BETWEEN, IN lists, IS NULL, LIKE/ILIKE, a few
//!   ORs and NOTs), GROUP BY with aggregates (count, count DISTINCT, sum, avg, min, max) and
//!   HAVING, DISTINCT, ORDER BY .. LIMIT/OFFSET (total or partial orders), UNION [ALL] of two
//!   or three branches (some a TopK of their own), IN/NOT IN/EXISTS/NOT EXISTS subqueries
//!   (correlated by an equality or not), derived tables and CTEs (aggregates joined back, or
//!   filters, some a TopK), and often an equality `col = <literal>` that acts as the cache's
//!   key.
//!
//! Every query must be valid for Postgres (else the generator has a bug: the test fails); a
//! query with no rows is regenerated (twice at most), so that most comparisons are not of
//! empty results. Each is made a cache with `CREATE CACHE FROM`; a refusal must be a clear one
//! (SQLSTATE 0A000 or 55000), never an internal error nor any other code. Then, in rounds,
//! random inserts, updates (of join, group and key columns too, and of many rows at once) and
//! deletes, some cancelling out within a transaction, are sent through Larder; after Larder
//! caught up, every cached query is read through Larder and directly, and the results
//! compared: as lists when ORDER BY gives a total order, as multisets otherwise; with a
//! partial order the sort keys must come in Postgres' order, and with a LIMIT every row must
//! be one of Postgres' unlimited answer. Each round reads every query
//!
//! - as it was cached, with the simple protocol and with the extended protocol (the same
//!   text, prepared: Larder normalizes both to the cache);
//! - when it has a key equality, with another key value: as a literal, and bound to `$1`;
//! - with another value for one of its other literals (normalized to the same cache too).
//!
//! Every read through Larder must be answered from the cache (`EXPLAIN LAST STATEMENT`),
//! except for the reasons `allowed_miss` lists and explains.
//!
//! The seed is printed at the start and in every failure; `LARDER_TEST_SEED=<seed>` replays it.
//! `LARDER_RANDOM_QUERIES=<n>` and `LARDER_RANDOM_ROUNDS=<n>` run longer than the default
//! budget (60 queries, 4 rounds of writes). A failure writes a replay script (schema, data,
//! the failing CREATE CACHE statements, the writes round by round) to the temp directory;
//! `LARDER_RANDOM_VERBOSE=1` prints every generated query.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "common/kit.rs"]
mod kit;

use kit::{Conn, Deployment, Outcome};

/// Literals stand in a query's text as `SLOT_OPEN <n> SLOT_CLOSE` until it is written out,
/// so that a read can change one of them.
const SLOT_OPEN: char = '\u{2}';
const SLOT_CLOSE: char = '\u{3}';

/// How long one read may take before the test gives up on Larder.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

// ---- schema ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    Int4,
    Int8,
    Num,
    Text,
    Bool,
    Ts,
}

impl Ty {
    fn sql(self) -> &'static str {
        match self {
            Ty::Int4 => "int4",
            Ty::Int8 => "int8",
            Ty::Num => "numeric(10,2)",
            Ty::Text => "text",
            Ty::Bool => "bool",
            Ty::Ts => "timestamp",
        }
    }

    fn is_int(self) -> bool {
        matches!(self, Ty::Int4 | Ty::Int8)
    }

    fn is_number(self) -> bool {
        matches!(self, Ty::Int4 | Ty::Int8 | Ty::Num)
    }

    /// Types a UNION can put in one column (int4 and int8 unify to int8).
    fn family(self) -> u8 {
        match self {
            Ty::Int4 | Ty::Int8 => 0,
            Ty::Num => 1,
            Ty::Text => 2,
            Ty::Bool => 3,
            Ty::Ts => 4,
        }
    }

    /// min()/max() exist for it (Postgres has no min(bool)).
    fn has_min(self) -> bool {
        self != Ty::Bool
    }
}

/// Where a column's values come from (literals in predicates are drawn from the same place,
/// so that they find rows).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dom {
    /// The primary key of table `i`.
    Key(usize),
    /// Refers to table `i`'s keys, skewed toward low ids, a few dangling.
    Ref(usize),
    /// A small int range with many duplicates.
    Small,
    /// int8 values, some beyond the int4 range.
    Wide,
    /// By type: numeric, text, bool, timestamp values.
    Plain,
    /// A count(*) of a derived table.
    Count,
    /// Another aggregate of a derived table.
    Agg,
}

#[derive(Clone, Debug)]
struct Column {
    name: String,
    ty: Ty,
    dom: Dom,
    null_pct: u32,
}

#[derive(Clone, Debug)]
struct Table {
    name: String,
    cols: Vec<Column>,
    rows: i64,
}

struct Schema {
    tables: Vec<Table>,
}

const NAMES: [&str; 4] = ["ta", "tb", "tc", "td"];
const TEXTS: [&str; 14] = [
    "", "a", "A", "ab", "abc", "b", "ba", "x y", "o'neil", "ünï", "z%", "_u", "a_c", "Zz",
];

/// A literal of the type drawn from the domain (never NULL).
fn literal(rng: &mut StdRng, s: &Schema, ty: Ty, dom: Dom) -> String {
    match (ty, dom) {
        (_, Dom::Key(t)) => rng.gen_range(1..=s.tables[t].rows + 2).to_string(),
        (_, Dom::Ref(t)) => {
            let n = s.tables[t].rows + 3;
            (1 + (rng.gen_range(0.0f64..1.0).powi(2) * n as f64) as i64).to_string()
        }
        (_, Dom::Count) => rng.gen_range(0..6).to_string(),
        (Ty::Int8, Dom::Wide) => [-3_000_000_000i64, -1, 0, 1, 7, 2_147_483_648, 5_000_000_000]
            [rng.gen_range(0..7)]
        .to_string(),
        (Ty::Int4 | Ty::Int8, Dom::Agg) => rng.gen_range(-5..40).to_string(),
        (Ty::Int4 | Ty::Int8, _) => {
            // Skewed toward the low end.
            (-2 + (rng.gen_range(0.0f64..1.0).powi(2) * 10.0) as i64).to_string()
        }
        (Ty::Num, _) => {
            let whole = if dom == Dom::Agg {
                rng.gen_range(-5..80)
            } else {
                rng.gen_range(-5..25)
            };
            format!(
                "{whole}.{}",
                ["00", "25", "50", "99", "05"][rng.gen_range(0..5)]
            )
        }
        (Ty::Text, _) => kit::quote(TEXTS[rng.gen_range(0..TEXTS.len())]),
        (Ty::Bool, _) => rng.gen_bool(0.5).to_string(),
        (Ty::Ts, _) => format!(
            "'2026-01-0{} {}:00:00'",
            rng.gen_range(1..=4),
            ["00", "06", "12"][rng.gen_range(0..3)]
        ),
    }
}

impl Schema {
    fn random(rng: &mut StdRng) -> Schema {
        let n = rng.gen_range(3..=4);
        let rows: Vec<i64> = (0..n).map(|_| rng.gen_range(15..=45)).collect();
        let mut tables = Vec::new();
        for (t, &rows) in rows.iter().enumerate() {
            let key_ty = if rng.gen_bool(0.75) {
                Ty::Int4
            } else {
                Ty::Int8
            };
            let mut cols = vec![Column {
                name: "id".into(),
                ty: key_ty,
                dom: Dom::Key(t),
                null_pct: 0,
            }];
            // Foreign-key-like columns (possibly to this very table).
            for _ in 0..rng.gen_range(1..=2) {
                let target = rng.gen_range(0..n);
                let name = format!("{}_id", NAMES[target]);
                if cols.iter().any(|c| c.name == name) {
                    continue;
                }
                cols.push(Column {
                    name,
                    ty: if rng.gen_bool(0.8) {
                        Ty::Int4
                    } else {
                        Ty::Int8
                    },
                    dom: Dom::Ref(target),
                    null_pct: rng.gen_range(0..15),
                });
            }
            for _ in 0..rng.gen_range(2..=5) {
                let k = cols.len();
                let (prefix, ty, dom) = match rng.gen_range(0..12) {
                    0..=2 => ("i", Ty::Int4, Dom::Small),
                    3 => ("g", Ty::Int8, Dom::Wide),
                    4 => ("g", Ty::Int8, Dom::Small),
                    5..=6 => ("d", Ty::Num, Dom::Plain),
                    7..=8 => ("s", Ty::Text, Dom::Plain),
                    9 => ("f", Ty::Bool, Dom::Plain),
                    _ => ("ts", Ty::Ts, Dom::Plain),
                };
                cols.push(Column {
                    name: format!("{prefix}{k}"),
                    ty,
                    dom,
                    null_pct: [0, 5, 10, 25][rng.gen_range(0..4)],
                });
            }
            tables.push(Table {
                name: NAMES[t].into(),
                cols,
                rows,
            });
        }
        Schema { tables }
    }

    fn ddl(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let cols: Vec<String> = t
                .cols
                .iter()
                .map(|c| {
                    let pk = if matches!(c.dom, Dom::Key(_)) {
                        " PRIMARY KEY"
                    } else {
                        ""
                    };
                    format!("{} {}{pk}", c.name, c.ty.sql())
                })
                .collect();
            out += &format!("CREATE TABLE {} ({});\n", t.name, cols.join(", "));
        }
        out
    }

    /// One row `(id, ...)` of table `t`.
    fn row(&self, rng: &mut StdRng, t: usize, id: i64) -> String {
        let vals: Vec<String> = self.tables[t]
            .cols
            .iter()
            .map(|c| {
                if matches!(c.dom, Dom::Key(_)) {
                    id.to_string()
                } else if rng.gen_range(0..100) < c.null_pct {
                    "NULL".into()
                } else {
                    literal(rng, self, c.ty, c.dom)
                }
            })
            .collect();
        format!("({})", vals.join(", "))
    }

    fn data(&self, rng: &mut StdRng) -> String {
        let mut out = String::new();
        for (t, table) in self.tables.iter().enumerate() {
            let rows: Vec<String> = (1..=table.rows).map(|id| self.row(rng, t, id)).collect();
            out += &format!("INSERT INTO {} VALUES {};\n", table.name, rows.join(", "));
        }
        out
    }
}

// ---- writes ------------------------------------------------------------------------------

struct Writer {
    /// Per table, the next id never used.
    next_id: Vec<i64>,
}

impl Writer {
    fn new(s: &Schema) -> Writer {
        Writer {
            next_id: s.tables.iter().map(|t| t.rows + 1).collect(),
        }
    }

    fn write(&mut self, rng: &mut StdRng, s: &Schema) -> String {
        let t = rng.gen_range(0..s.tables.len());
        let table = &s.tables[t];
        let name = &table.name;
        let id = rng.gen_range(1..self.next_id[t]);
        let non_key: Vec<&Column> = table
            .cols
            .iter()
            .filter(|c| !matches!(c.dom, Dom::Key(_)))
            .collect();
        let value = |rng: &mut StdRng, c: &Column| {
            if rng.gen_range(0..100) < 10 {
                "NULL".to_string()
            } else {
                literal(rng, s, c.ty, c.dom)
            }
        };
        let cond = |rng: &mut StdRng, c: &Column| {
            if c.ty == Ty::Bool {
                c.name.clone()
            } else {
                format!("{} = {}", c.name, literal(rng, s, c.ty, c.dom))
            }
        };
        match rng.gen_range(0..100) {
            0..=31 => {
                let n = if rng.gen_bool(0.2) { 3 } else { 1 };
                let rows: Vec<String> = (0..n)
                    .map(|_| {
                        let id = self.next_id[t];
                        self.next_id[t] += 1;
                        s.row(rng, t, id)
                    })
                    .collect();
                format!("INSERT INTO {name} VALUES {}", rows.join(", "))
            }
            32..=63 => {
                let mut cols: Vec<&Column> = vec![non_key[rng.gen_range(0..non_key.len())]];
                if rng.gen_bool(0.2) {
                    let c = non_key[rng.gen_range(0..non_key.len())];
                    if c.name != cols[0].name {
                        cols.push(c);
                    }
                }
                let sets: Vec<String> = cols
                    .iter()
                    .map(|c| format!("{} = {}", c.name, value(rng, c)))
                    .collect();
                format!("UPDATE {name} SET {} WHERE id = {id}", sets.join(", "))
            }
            64..=71 => {
                let c = non_key[rng.gen_range(0..non_key.len())];
                let w = non_key[rng.gen_range(0..non_key.len())];
                format!(
                    "UPDATE {name} SET {} = {} WHERE {}",
                    c.name,
                    value(rng, c),
                    cond(rng, w)
                )
            }
            72..=74 => {
                let fresh = self.next_id[t];
                self.next_id[t] += 1;
                format!("UPDATE {name} SET id = {fresh} WHERE id = {id}")
            }
            75..=77 => {
                // Many rows change at once, by an expression.
                let ints: Vec<&&Column> = non_key
                    .iter()
                    .filter(|c| c.ty.is_int() && c.dom != Dom::Wide)
                    .collect();
                if ints.is_empty() {
                    return format!("DELETE FROM {name} WHERE id = {id}");
                }
                let c = ints[rng.gen_range(0..ints.len())];
                let w = non_key[rng.gen_range(0..non_key.len())];
                let by = if rng.gen_bool(0.5) { "+ 1" } else { "- 1" };
                format!(
                    "UPDATE {name} SET {0} = {0} {by} WHERE {1}",
                    c.name,
                    cond(rng, w)
                )
            }
            78..=81 => {
                // Changes that cancel out, or nearly, within one transaction.
                match rng.gen_range(0..3) {
                    0 => {
                        let fresh = self.next_id[t];
                        self.next_id[t] += 1;
                        format!(
                            "INSERT INTO {name} VALUES {}; DELETE FROM {name} WHERE id = {fresh}",
                            s.row(rng, t, fresh)
                        )
                    }
                    1 => {
                        let c = non_key[rng.gen_range(0..non_key.len())];
                        format!(
                            "UPDATE {name} SET {0} = {1} WHERE id = {id}; \
                             UPDATE {name} SET {0} = {2} WHERE id = {id}",
                            c.name,
                            value(rng, c),
                            value(rng, c)
                        )
                    }
                    _ => format!(
                        "DELETE FROM {name} WHERE id = {id}; INSERT INTO {name} VALUES {}",
                        s.row(rng, t, id)
                    ),
                }
            }
            82..=96 => format!("DELETE FROM {name} WHERE id = {id}"),
            _ => {
                let w = non_key[rng.gen_range(0..non_key.len())];
                format!("DELETE FROM {name} WHERE {}", cond(rng, w))
            }
        }
    }
}

// ---- queries -----------------------------------------------------------------------------

/// A column in scope: its expression (`a1.i3`), type and domain.
#[derive(Clone, Debug)]
struct SCol {
    expr: String,
    ty: Ty,
    dom: Dom,
}

struct Core {
    distinct: bool,
    items: Vec<(String, Ty)>,
    from: String,
    wheres: Vec<String>,
    group_by: Vec<String>,
    having: Vec<String>,
}

impl Core {
    fn sql(&self) -> String {
        let items: Vec<&str> = self.items.iter().map(|(e, _)| e.as_str()).collect();
        let mut out = format!(
            "SELECT {}{} FROM {}",
            if self.distinct { "DISTINCT " } else { "" },
            items.join(", "),
            self.from
        );
        if !self.wheres.is_empty() {
            out += &format!(" WHERE {}", self.wheres.join(" AND "));
        }
        if !self.group_by.is_empty() {
            out += &format!(" GROUP BY {}", self.group_by.join(", "));
        }
        if !self.having.is_empty() {
            out += &format!(" HAVING {}", self.having.join(" AND "));
        }
        out
    }
}

/// How results are compared.
#[derive(Clone, Debug)]
enum Order {
    /// No ORDER BY: as multisets.
    None,
    /// ORDER BY every output column: as lists.
    Total,
    /// ORDER BY some output columns (0-based): the keys must come in Postgres' order.
    Partial(Vec<usize>),
}

/// A literal of a generated query: where its values come from, and its value.
#[derive(Clone, Debug)]
struct Lit {
    ty: Ty,
    dom: Dom,
    value: String,
}

struct Case {
    n: usize,
    /// The query as generated (its literals written out).
    sql: String,
    /// The text with slots for its literals.
    template: String,
    /// The same without its LIMIT/OFFSET (to check rows of a partial order with a limit).
    unlimited: String,
    lits: Vec<Lit>,
    /// The slot of the key equality's literal, if the query has one.
    key: Option<usize>,
    order: Order,
    limited: bool,
    features: BTreeSet<&'static str>,
}

impl Case {
    /// `text` with its literals written out, slot `over.0` as `over.1`.
    fn render(&self, text: &str, over: Option<(usize, &str)>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(SLOT_OPEN) {
            out += &rest[..i];
            let j = rest[i..].find(SLOT_CLOSE).expect("slot end") + i;
            let slot: usize = rest[i + 1..j].parse().expect("slot number");
            match over {
                Some((o, v)) if o == slot => out += v,
                _ => out += &self.lits[slot].value,
            }
            rest = &rest[j + 1..];
        }
        out + rest
    }
}

struct Gen<'a> {
    rng: StdRng,
    s: &'a Schema,
    aliases: usize,
    ctes: Vec<String>,
    feats: BTreeSet<&'static str>,
    /// The literals of the query being generated.
    lits: Vec<Lit>,
    /// The slot of its key equality's literal.
    key: Option<usize>,
}

impl<'a> Gen<'a> {
    fn pct(&mut self, p: u32) -> bool {
        self.rng.gen_range(0..100) < p
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.rng.gen_range(0..v.len())].clone()
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    /// A literal for comparisons with `c`, as a slot.
    fn lit(&mut self, c: &SCol) -> String {
        let v = self.lit_value(c);
        self.slot(c, v)
    }

    fn lit_value(&mut self, c: &SCol) -> String {
        literal(&mut self.rng, self.s, c.ty, c.dom)
    }

    fn slot(&mut self, c: &SCol, value: String) -> String {
        self.lits.push(Lit {
            ty: c.ty,
            dom: c.dom,
            value,
        });
        format!("{SLOT_OPEN}{}{SLOT_CLOSE}", self.lits.len() - 1)
    }

    fn table_cols(&self, t: usize, alias: &str) -> Vec<SCol> {
        self.s.tables[t]
            .cols
            .iter()
            .map(|c| SCol {
                expr: format!("{alias}.{}", c.name),
                ty: c.ty,
                dom: c.dom,
            })
            .collect()
    }

    /// A pair of int columns to equate, one from each side, preferring reference -> key.
    fn int_pair(&mut self, left: &[SCol], right: &[SCol]) -> Option<(SCol, SCol)> {
        let mut pairs = Vec::new();
        for l in left.iter().filter(|c| c.ty.is_int()) {
            for r in right.iter().filter(|c| c.ty.is_int()) {
                let w = match (l.dom, r.dom) {
                    (Dom::Count, _) | (_, Dom::Count) | (Dom::Agg, _) | (_, Dom::Agg) => 0,
                    (Dom::Ref(a), Dom::Key(b)) | (Dom::Key(b), Dom::Ref(a)) if a == b => 14,
                    (Dom::Ref(a), Dom::Ref(b)) if a == b => 3,
                    (Dom::Key(a), Dom::Key(b)) if a == b => 3,
                    (Dom::Small, Dom::Small) => 1,
                    _ => 1,
                };
                if w > 0 {
                    pairs.push((w, l.clone(), r.clone()));
                }
            }
        }
        let total: u32 = pairs.iter().map(|p| p.0).sum();
        if total == 0 {
            return None;
        }
        let mut x = self.rng.gen_range(0..total);
        for (w, l, r) in pairs {
            if x < w {
                return Some((l, r));
            }
            x -= w;
        }
        None
    }

    /// A predicate on `c` with literals.
    fn pred(&mut self, c: &SCol) -> String {
        let e = c.expr.clone();
        match c.ty {
            Ty::Bool => {
                let k = self.rng.gen_range(0..6);
                match k {
                    0 => e,
                    1 => format!("NOT {e}"),
                    2 => format!("{e} = true"),
                    3 => format!("{e} = false"),
                    4 => format!("{e} IS NULL"),
                    _ => format!("{e} IS NOT NULL"),
                }
            }
            ty => {
                let k = self.rng.gen_range(0..if ty == Ty::Text { 14 } else { 11 });
                match k {
                    0 | 1 => format!("{e} = {}", self.lit(c)),
                    2 => format!("{e} <> {}", self.lit(c)),
                    3 => format!("{e} < {}", self.lit(c)),
                    4 => format!("{e} >= {}", self.lit(c)),
                    5 => format!("{e} > {}", self.lit(c)),
                    6 => {
                        self.feats.insert("IN list");
                        let n = self.rng.gen_range(1..=3);
                        let list: Vec<String> = (0..n).map(|_| self.lit(c)).collect();
                        let not = if self.pct(25) { "NOT " } else { "" };
                        format!("{e} {not}IN ({})", list.join(", "))
                    }
                    7 => {
                        self.feats.insert("BETWEEN");
                        let (mut a, mut b) = (self.lit_value(c), self.lit_value(c));
                        // Mostly low to high (else BETWEEN is always false); text compares
                        // in the C collation, like bytes.
                        let numeric = |x: &str| x.trim_matches('\'').parse::<f64>().ok();
                        let swap = match (numeric(&a), numeric(&b)) {
                            (Some(x), Some(y)) => x > y,
                            _ => a > b,
                        };
                        if swap && self.pct(85) {
                            std::mem::swap(&mut a, &mut b);
                        }
                        let (a, b) = (self.slot(c, a), self.slot(c, b));
                        format!("{e} BETWEEN {a} AND {b}")
                    }
                    8 => {
                        self.feats.insert("IS NULL");
                        format!("{e} IS NULL")
                    }
                    9 => format!("{e} IS NOT NULL"),
                    10 => format!("{e} <= {}", self.lit(c)),
                    _ => {
                        self.feats.insert("LIKE");
                        let pat =
                            self.pick(&["a%", "%b", "%a%", "_", "a_%", "%'%", "ü%", "", "A%"]);
                        let op = self.pick(&["LIKE", "LIKE", "NOT LIKE", "ILIKE"]);
                        format!("{e} {op} {}", kit::quote(pat))
                    }
                }
            }
        }
    }

    /// A derived table (or CTE) joined back: returns the FROM item and its columns.
    fn derived(&mut self) -> (String, Vec<SCol>) {
        let t = self.rng.gen_range(0..self.s.tables.len());
        let q = self.alias("q");
        let cols = self.table_cols(t, &q);
        let alias = self.alias("d");
        let mut out_cols = Vec::new();
        let body = if self.pct(70) {
            self.feats.insert("derived aggregate");
            let ints: Vec<SCol> = cols
                .iter()
                .filter(|c| c.ty.is_int() && !matches!(c.dom, Dom::Key(_)))
                .cloned()
                .collect();
            let g = if ints.is_empty() {
                cols[0].clone()
            } else {
                self.pick(&ints)
            };
            let mut items = vec![format!("{} AS g", g.expr), "count(*) AS n".to_string()];
            out_cols.push(SCol {
                expr: format!("{alias}.g"),
                ty: g.ty,
                dom: g.dom,
            });
            out_cols.push(SCol {
                expr: format!("{alias}.n"),
                ty: Ty::Int8,
                dom: Dom::Count,
            });
            let nums: Vec<SCol> = cols
                .iter()
                .filter(|c| c.ty.is_number() && c.dom != Dom::Wide)
                .cloned()
                .collect();
            if !nums.is_empty() && self.pct(60) {
                let x = self.pick(&nums);
                let (f, ty) = if self.pct(50) {
                    ("sum", sum_type(x.ty))
                } else {
                    ("max", x.ty)
                };
                items.push(format!("{f}({}) AS m", x.expr));
                out_cols.push(SCol {
                    expr: format!("{alias}.m"),
                    ty,
                    dom: if f == "max" { x.dom } else { Dom::Agg },
                });
            }
            let mut body = format!(
                "SELECT {} FROM {} {q}",
                items.join(", "),
                self.s.tables[t].name
            );
            if self.pct(40) {
                let c = self.pick(&cols);
                body += &format!(" WHERE {}", self.pred(&c));
            }
            body += &format!(" GROUP BY {}", g.expr);
            if self.pct(20) {
                body += " HAVING count(*) > 1";
            }
            body
        } else {
            self.feats.insert("derived filter");
            let n = self.rng.gen_range(2..=3).min(cols.len());
            let mut picked = vec![cols[0].clone()];
            for _ in 1..n {
                let c = self.pick(&cols[1..]);
                if !picked.iter().any(|p| p.expr == c.expr) {
                    picked.push(c);
                }
            }
            let items: Vec<String> = picked
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{} AS c{i}", c.expr))
                .collect();
            for (i, c) in picked.iter().enumerate() {
                out_cols.push(SCol {
                    expr: format!("{alias}.c{i}"),
                    ty: c.ty,
                    dom: c.dom,
                });
            }
            let c = self.pick(&cols);
            let w = self.pred(&c);
            let mut body = format!(
                "SELECT {} FROM {} {q} WHERE {w}",
                items.join(", "),
                self.s.tables[t].name
            );
            if self.pct(20) {
                // The first rows by the key: which rows is certain.
                self.feats.insert("TopK in a derived table");
                let dir = self.pick(&["", " DESC"]);
                body += &format!(" ORDER BY 1{dir} LIMIT {}", self.rng.gen_range(1..=10));
            }
            body
        };
        if self.pct(50) {
            self.feats.insert("CTE");
            let name = self.alias("w");
            self.ctes.push(format!("{name} AS ({body})"));
            (format!("{name} {alias}"), out_cols)
        } else {
            self.feats.insert("derived table");
            (format!("({body}) {alias}"), out_cols)
        }
    }

    /// The FROM clause, the columns in scope, and the join conditions that go to WHERE
    /// (tables listed with commas).
    fn from(&mut self) -> (String, Vec<SCol>, Vec<String>) {
        let n = self.pick(&[1, 1, 1, 2, 2, 2, 2, 3, 3]);
        let comma = n > 1 && self.pct(10);
        if comma {
            self.feats.insert("comma join");
        }
        let mut conds = Vec::new();
        let t = self.rng.gen_range(0..self.s.tables.len());
        let a = self.alias("a");
        let mut used = vec![t];
        let mut from = format!("{} {a}", self.s.tables[t].name);
        let mut scope = self.table_cols(t, &a);
        for i in 1..n {
            let ctes = self.ctes.len();
            let derived = self.pct(15);
            let (item, cols) = if derived {
                self.derived()
            } else {
                let t = self.rng.gen_range(0..self.s.tables.len());
                if used.contains(&t) {
                    self.feats.insert("self-join");
                }
                used.push(t);
                let a = self.alias("a");
                (
                    format!("{} {a}", self.s.tables[t].name),
                    self.table_cols(t, &a),
                )
            };
            let texts = |v: &[SCol]| -> Vec<SCol> {
                v.iter().filter(|c| c.ty == Ty::Text).cloned().collect()
            };
            let (lt, rt) = (texts(&scope), texts(&cols));
            let pair = if !lt.is_empty() && !rt.is_empty() && self.pct(6) {
                self.feats.insert("text join");
                Some((self.pick(&lt), self.pick(&rt)))
            } else {
                self.int_pair(&scope, &cols)
            };
            let Some((l, r)) = pair else {
                self.ctes.truncate(ctes);
                continue;
            };
            let mut on = vec![format!("{} = {}", r.expr, l.expr)];
            if self.pct(12) {
                if let Some((l2, r2)) = self.int_pair(&scope, &cols) {
                    if l2.expr != l.expr || r2.expr != r.expr {
                        on.push(format!("{} = {}", l2.expr, r2.expr));
                    }
                }
            }
            if comma {
                from += &format!(", {item}");
                conds.extend(on);
                scope.extend(cols);
                continue;
            }
            let kind = if self.pct(40) {
                self.feats.insert("LEFT JOIN");
                "LEFT JOIN"
            } else {
                self.feats.insert("JOIN");
                "JOIN"
            };
            let name = |c: &SCol| c.expr.split('.').nth(1).unwrap_or("").to_string();
            // USING needs the name once on the left: only right after the first table.
            if i == 1 && !derived && on.len() == 1 && name(&l) == name(&r) && self.pct(50) {
                self.feats.insert("USING");
                from += &format!(" {kind} {item} USING ({})", name(&l));
            } else {
                from += &format!(" {kind} {item} ON {}", on.join(" AND "));
            }
            scope.extend(cols);
        }
        (from, scope, conds)
    }

    /// A semi- or anti-join condition on the scope.
    fn subquery(&mut self, scope: &[SCol]) -> Option<String> {
        let t = self.rng.gen_range(0..self.s.tables.len());
        let q = self.alias("q");
        let inner = self.table_cols(t, &q);
        let tname = self.s.tables[t].name.clone();
        let filter = |g: &mut Gen| -> String {
            if g.pct(50) {
                let c = g.pick(&inner);
                format!(" AND {}", g.pred(&c))
            } else {
                String::new()
            }
        };
        let kind = self.rng.gen_range(0..6);
        match kind {
            0 | 1 => {
                let (o, i) = self.int_pair(scope, &inner)?;
                let not = if kind == 1 {
                    self.feats.insert("NOT EXISTS");
                    "NOT "
                } else {
                    self.feats.insert("EXISTS");
                    ""
                };
                let f = filter(self);
                Some(format!(
                    "{not}EXISTS (SELECT 1 FROM {tname} {q} WHERE {} = {}{f})",
                    i.expr, o.expr
                ))
            }
            2 | 3 => {
                // Uncorrelated IN / NOT IN, on ints or on text.
                let texts_out: Vec<SCol> =
                    scope.iter().filter(|c| c.ty == Ty::Text).cloned().collect();
                let texts_in: Vec<SCol> =
                    inner.iter().filter(|c| c.ty == Ty::Text).cloned().collect();
                let (o, i) = if !texts_out.is_empty() && !texts_in.is_empty() && self.pct(25) {
                    (self.pick(&texts_out), self.pick(&texts_in))
                } else {
                    self.int_pair(scope, &inner)?
                };
                let not = if kind == 3 {
                    self.feats.insert("NOT IN subquery");
                    "NOT "
                } else {
                    self.feats.insert("IN subquery");
                    ""
                };
                let w = if self.pct(60) {
                    let c = self.pick(&inner);
                    format!(" WHERE {}", self.pred(&c))
                } else {
                    String::new()
                };
                Some(format!(
                    "{} {not}IN (SELECT {} FROM {tname} {q}{w})",
                    o.expr, i.expr
                ))
            }
            _ => {
                // Correlated IN.
                self.feats.insert("correlated IN");
                let (o, i) = self.int_pair(scope, &inner)?;
                let (o2, i2) = self.int_pair(scope, &inner)?;
                let f = filter(self);
                Some(format!(
                    "{} IN (SELECT {} FROM {tname} {q} WHERE {} = {}{f})",
                    o.expr, i.expr, i2.expr, o2.expr
                ))
            }
        }
    }

    fn wheres(&mut self, scope: &[SCol], allow_sub: bool) -> Vec<String> {
        let mut out = Vec::new();
        if self.pct(35) {
            // An equality that can act as the cache's key.
            let ints: Vec<SCol> = scope
                .iter()
                .filter(|c| c.ty.is_int() && c.dom != Dom::Count)
                .cloned()
                .collect();
            if !ints.is_empty() {
                self.feats.insert("key equality");
                let c = self.pick(&ints);
                let lit = self.lit(&c);
                if allow_sub && self.key.is_none() {
                    // The top level's key: read with other values too.
                    self.key = Some(self.lits.len() - 1);
                }
                out.push(format!("{} = {lit}", c.expr));
            }
        }
        let n = self.pick(&[0, 0, 1, 1, 1, 1, 2, 2, 3]);
        for _ in 0..n {
            let c = self.pick(scope);
            let p = self.pred(&c);
            if self.pct(8) {
                self.feats.insert("OR");
                let c2 = self.pick(scope);
                let p2 = self.pred(&c2);
                out.push(format!("({p} OR {p2})"));
            } else if self.pct(3) {
                self.feats.insert("NOT (...)");
                out.push(format!("NOT ({p})"));
            } else {
                out.push(p);
            }
        }
        if allow_sub && self.pct(22) {
            if let Some(sq) = self.subquery(scope) {
                out.push(sq);
            }
        }
        out
    }

    /// A select-list item over the scope: mostly a column, sometimes an expression.
    fn item(&mut self, scope: &[SCol]) -> (String, Ty) {
        let c = self.pick(scope);
        if self.pct(88) {
            return (c.expr, c.ty);
        }
        self.feats.insert("expression");
        match c.ty {
            Ty::Int4 | Ty::Int8 if c.dom != Dom::Wide => {
                let ints: Vec<SCol> = scope
                    .iter()
                    .filter(|c| c.ty.is_int() && c.dom != Dom::Wide)
                    .cloned()
                    .collect();
                let d = self.pick(&ints);
                match self.rng.gen_range(0..3) {
                    0 => (format!("{} + 1", c.expr), c.ty),
                    1 => (
                        format!("{} + {}", c.expr, d.expr),
                        if c.ty == Ty::Int8 || d.ty == Ty::Int8 {
                            Ty::Int8
                        } else {
                            Ty::Int4
                        },
                    ),
                    _ => (format!("abs({})", c.expr), c.ty),
                }
            }
            Ty::Text => {
                if self.pct(50) {
                    (format!("coalesce({}, 'none')", c.expr), Ty::Text)
                } else {
                    (format!("length({})", c.expr), Ty::Int4)
                }
            }
            _ => (c.expr, c.ty),
        }
    }

    /// An aggregate over the scope, with its output type and a column to compare it with.
    fn aggregate(&mut self, scope: &[SCol]) -> (String, Ty, SCol) {
        let c = self.pick(scope);
        let count = SCol {
            expr: String::new(),
            ty: Ty::Int8,
            dom: Dom::Count,
        };
        let agg_of = |ty: Ty| SCol {
            expr: String::new(),
            ty,
            dom: Dom::Agg,
        };
        match self.rng.gen_range(0..7) {
            0 => ("count(*)".into(), Ty::Int8, count),
            1 => (format!("count({})", c.expr), Ty::Int8, count),
            2 => {
                self.feats.insert("count(DISTINCT)");
                (format!("count(DISTINCT {})", c.expr), Ty::Int8, count)
            }
            3 | 4 if c.ty.is_number() => {
                let distinct = if self.pct(15) {
                    self.feats.insert("sum/avg(DISTINCT)");
                    "DISTINCT "
                } else {
                    ""
                };
                if self.pct(55) {
                    self.feats.insert("sum");
                    let ty = sum_type(c.ty);
                    (format!("sum({distinct}{})", c.expr), ty, agg_of(ty))
                } else {
                    self.feats.insert("avg");
                    (
                        format!("avg({distinct}{})", c.expr),
                        Ty::Num,
                        agg_of(Ty::Num),
                    )
                }
            }
            _ if c.ty.has_min() => {
                self.feats.insert("min/max");
                let f = if self.pct(50) { "min" } else { "max" };
                let dom = if c.dom == Dom::Wide { Dom::Wide } else { c.dom };
                (
                    format!("{f}({})", c.expr),
                    c.ty,
                    SCol {
                        expr: String::new(),
                        ty: c.ty,
                        dom,
                    },
                )
            }
            _ => ("count(*)".into(), Ty::Int8, count),
        }
    }

    fn spj_items(&mut self, scope: &[SCol]) -> Vec<(String, Ty)> {
        let n = self.pick(&[1, 2, 2, 3, 3, 4]);
        (0..n).map(|_| self.item(scope)).collect()
    }

    /// A SELECT without ORDER BY; `grouped` makes it an aggregate.
    fn core(&mut self, grouped: bool, distinct: bool, allow_sub: bool) -> Core {
        let (from, scope, mut wheres) = self.from();
        wheres.extend(self.wheres(&scope, allow_sub));
        if !grouped {
            return Core {
                distinct,
                items: self.spj_items(&scope),
                from,
                wheres,
                group_by: vec![],
                having: vec![],
            };
        }
        let ng = self.pick(&[0, 1, 1, 1, 2, 2]);
        let mut groups: Vec<SCol> = Vec::new();
        for _ in 0..ng {
            let c = self.pick(&scope);
            if !groups.iter().any(|g| g.expr == c.expr) {
                groups.push(c);
            }
        }
        self.feats.insert(if groups.is_empty() {
            "global aggregate"
        } else {
            "GROUP BY"
        });
        let mut items: Vec<(String, Ty)> = Vec::new();
        for g in &groups {
            // Now and then a grouped column is not output.
            if groups.len() == 1 || self.pct(80) {
                items.push((g.expr.clone(), g.ty));
            }
        }
        if groups.len() > items.len() {
            self.feats.insert("group column not output");
        }
        for _ in 0..self.pick(&[1, 1, 2, 2, 3]) {
            let (e, ty, _) = self.aggregate(&scope);
            items.push((e, ty));
        }
        // Shuffle the select list.
        for i in (1..items.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            items.swap(i, j);
        }
        let mut having = Vec::new();
        if !groups.is_empty() && self.pct(8) {
            self.feats.insert("HAVING on a group column");
            let g = self.pick(&groups);
            having.push(self.pred(&g));
        } else if self.pct(30) {
            self.feats.insert("HAVING");
            let (e, _, like) = self.aggregate(&scope);
            let cond = if like.dom == Dom::Count {
                let op = self.pick(&[">", ">=", "=", "<", "<>"]);
                format!("{e} {op} {}", self.rng.gen_range(1..4))
            } else if self.pct(20) {
                format!("{e} IS NOT NULL")
            } else {
                let op = self.pick(&[">", ">=", "<", "<>"]);
                format!("{e} {op} {}", self.lit(&like))
            };
            having.push(cond);
        }
        Core {
            distinct,
            items,
            from,
            wheres,
            group_by: groups.into_iter().map(|g| g.expr).collect(),
            having,
        }
    }

    /// A second UNION branch whose columns match `types` by family, or None.
    fn union_branch(&mut self, types: &[Ty]) -> Option<Core> {
        for _ in 0..20 {
            let ctes = self.ctes.len();
            let (from, scope, conds) = self.from();
            let mut items = Vec::new();
            for ty in types {
                let fits: Vec<SCol> = scope
                    .iter()
                    .filter(|c| c.ty.family() == ty.family())
                    .cloned()
                    .collect();
                if fits.is_empty() {
                    break;
                }
                let c = self.pick(&fits);
                items.push((c.expr, c.ty));
            }
            if items.len() != types.len() {
                // Drop what this attempt defined: an unused CTE is a shape of its own.
                self.ctes.truncate(ctes);
            } else {
                let mut wheres = conds;
                wheres.extend(self.wheres(&scope, false));
                return Some(Core {
                    distinct: false,
                    items,
                    from,
                    wheres,
                    group_by: vec![],
                    having: vec![],
                });
            }
        }
        None
    }

    fn case(&mut self, n: usize) -> Case {
        self.ctes.clear();
        self.feats.clear();
        self.lits.clear();
        self.key = None;
        let shape = self.rng.gen_range(0..100);
        let (body, items, union) = if shape < 14 {
            // UNION [ALL] of two branches of matching types.
            let grouped = self.pct(20);
            let first = self.core(grouped, false, false);
            let types: Vec<Ty> = first.items.iter().map(|i| i.1).collect();
            let mut body = self.union_part(&first);
            let mut branches = 1;
            for _ in 0..if self.pct(25) { 2 } else { 1 } {
                let Some(next) = self.union_branch(&types) else {
                    break;
                };
                branches += 1;
                let all = self.pct(50);
                self.feats.insert(if all { "UNION ALL" } else { "UNION" });
                let op = if all { "UNION ALL" } else { "UNION" };
                body = format!("{body} {op} {}", self.union_part(&next));
            }
            if branches == 1 {
                (first.sql(), first.items, false)
            } else {
                if branches > 2 {
                    self.feats.insert("UNION of 3 branches");
                }
                (body, first.items, true)
            }
        } else {
            let grouped = shape < 50;
            let distinct = if grouped { self.pct(5) } else { self.pct(30) };
            if distinct {
                self.feats.insert("DISTINCT");
            }
            let core = self.core(grouped, distinct, true);
            (core.sql(), core.items, false)
        };
        let mut order = Order::None;
        let mut tail = String::new();
        let mut limited = false;
        if self.pct(35) {
            let mut positions: Vec<usize> = (0..items.len()).collect();
            for i in (1..positions.len()).rev() {
                let j = self.rng.gen_range(0..=i);
                positions.swap(i, j);
            }
            let total = positions.len() == 1 || self.pct(70);
            if !total {
                positions.truncate(self.rng.gen_range(1..positions.len()));
                self.feats.insert("ORDER BY (partial)");
                order = Order::Partial(positions.clone());
            } else {
                self.feats.insert("ORDER BY (total)");
                order = Order::Total;
            }
            let keys: Vec<String> = positions
                .iter()
                .map(|&p| {
                    let key = if union || self.pct(60) {
                        (p + 1).to_string()
                    } else {
                        items[p].0.clone()
                    };
                    let dir = self.pick(&["", " DESC", " ASC"]);
                    let nulls = if self.pct(25) {
                        self.pick(&[" NULLS FIRST", " NULLS LAST"])
                    } else {
                        ""
                    };
                    format!("{key}{dir}{nulls}")
                })
                .collect();
            tail = format!(" ORDER BY {}", keys.join(", "));
            if self.pct(75) {
                limited = true;
                self.feats.insert("LIMIT");
                let unlimited_tail = tail.clone();
                tail += &format!(" LIMIT {}", self.rng.gen_range(1..=8));
                if self.pct(25) {
                    self.feats.insert("OFFSET");
                    tail += &format!(" OFFSET {}", self.rng.gen_range(1..=4));
                }
                let with = self.with_clause();
                return self.finish(
                    n,
                    format!("{with}{body}{tail}"),
                    format!("{with}{body}{unlimited_tail}"),
                    order,
                    limited,
                );
            }
        }
        let with = self.with_clause();
        self.finish(
            n,
            format!("{with}{body}{tail}"),
            format!("{with}{body}{tail}"),
            order,
            limited,
        )
    }

    fn finish(
        &mut self,
        n: usize,
        template: String,
        unlimited: String,
        order: Order,
        limited: bool,
    ) -> Case {
        let mut case = Case {
            n,
            sql: String::new(),
            template,
            unlimited,
            lits: self.lits.clone(),
            key: self.key,
            order,
            limited,
            features: self.feats.clone(),
        };
        case.sql = case.render(&case.template, None);
        case
    }

    /// A UNION branch: the core, or now and then its first rows in parentheses (ordered by
    /// every column, so that which rows is certain).
    fn union_part(&mut self, core: &Core) -> String {
        if !self.pct(12) {
            return core.sql();
        }
        self.feats.insert("TopK in a UNION branch");
        let keys: Vec<String> = (1..=core.items.len())
            .map(|p| {
                let dir = self.pick(&["", " DESC"]);
                format!("{p}{dir}")
            })
            .collect();
        format!(
            "({} ORDER BY {} LIMIT {})",
            core.sql(),
            keys.join(", "),
            self.rng.gen_range(1..=6)
        )
    }

    fn with_clause(&mut self) -> String {
        if self.pct(3) {
            self.feats.insert("unused CTE");
            let t = self.rng.gen_range(0..self.s.tables.len());
            let q = self.alias("q");
            let cols = self.table_cols(t, &q);
            let c = self.pick(&cols);
            let w = if self.pct(50) {
                format!(" WHERE {}", self.pred(&c))
            } else {
                String::new()
            };
            let name = self.alias("w");
            self.ctes.push(format!(
                "{name} AS (SELECT {} FROM {} {q}{w})",
                c.expr, self.s.tables[t].name
            ));
        }
        if self.ctes.is_empty() {
            String::new()
        } else {
            format!("WITH {} ", self.ctes.join(", "))
        }
    }
}

fn sum_type(ty: Ty) -> Ty {
    match ty {
        Ty::Int4 => Ty::Int8,
        _ => Ty::Num,
    }
}

// ---- comparison --------------------------------------------------------------------------

fn sorted(rows: &[Vec<kit::Cell>]) -> Vec<Vec<kit::Cell>> {
    let mut r = rows.to_vec();
    r.sort();
    r
}

fn sorted_outcome(o: Outcome) -> Outcome {
    match o {
        Outcome::Rows { columns, rows } => Outcome::Rows {
            columns,
            rows: sorted(&rows),
        },
        e => e,
    }
}

/// The rows only one side holds (as multisets), for failure messages.
fn difference(via: &Outcome, want: &Outcome) -> String {
    let (Outcome::Rows { rows: got, .. }, Outcome::Rows { rows: exp, .. }) = (via, want) else {
        return String::new();
    };
    let count = |rows: &[Vec<kit::Cell>]| {
        let mut m: BTreeMap<Vec<kit::Cell>, i64> = BTreeMap::new();
        for r in rows {
            *m.entry(r.clone()).or_default() += 1;
        }
        m
    };
    let (g, e) = (count(got), count(exp));
    let only = |a: &BTreeMap<Vec<kit::Cell>, i64>, b: &BTreeMap<Vec<kit::Cell>, i64>| {
        let rows: Vec<Vec<kit::Cell>> = a
            .iter()
            .flat_map(|(r, n)| {
                let extra = n - b.get(r).copied().unwrap_or(0);
                std::iter::repeat_n(r.clone(), extra.max(0) as usize)
            })
            .collect();
        rows
    };
    let (extra, missing) = (only(&g, &e), only(&e, &g));
    if extra.is_empty() && missing.is_empty() {
        return "same rows as multisets\n".into();
    }
    format!(
        "rows only Larder returned:\n{}  rows only Postgres returned:\n{}",
        kit::show_rows(&extra, 10),
        kit::show_rows(&missing, 10)
    )
}

fn keys(rows: &[Vec<kit::Cell>], cols: &[usize]) -> Vec<Vec<kit::Cell>> {
    rows.iter()
        .map(|r| cols.iter().map(|&c| r.get(c).cloned().flatten()).collect())
        .collect()
}

/// Whether Larder's answer `via` is Postgres' answer `want` for the case (`all` is Postgres'
/// answer without the LIMIT, in the same protocol, for a partial order with a limit).
fn same(case: &Case, via: &Outcome, want: &Outcome, all: Option<&Outcome>) -> Result<(), String> {
    let (
        Outcome::Rows {
            columns: c1,
            rows: got,
        },
        Outcome::Rows {
            columns: c2,
            rows: exp,
        },
    ) = (via, want)
    else {
        return if via == want {
            Ok(())
        } else {
            Err("one side is an error".into())
        };
    };
    // The extended protocol names columns only when there are rows.
    if c1 != c2 && !(got.is_empty() || exp.is_empty()) {
        return Err("column descriptions differ".into());
    }
    if got.len() != exp.len() {
        return Err(format!("{} rows instead of {}", got.len(), exp.len()));
    }
    match &case.order {
        Order::Total => (got == exp)
            .then_some(())
            .ok_or_else(|| "rows differ (ordered)".to_string()),
        Order::None => (sorted(got) == sorted(exp))
            .then_some(())
            .ok_or_else(|| "rows differ".to_string()),
        Order::Partial(cols) => {
            if keys(got, cols) != keys(exp, cols) {
                return Err(format!(
                    "the ORDER BY keys (columns {cols:?}) do not come in Postgres' order"
                ));
            }
            if !case.limited {
                return (sorted(got) == sorted(exp))
                    .then_some(())
                    .ok_or_else(|| "rows differ".to_string());
            }
            let Some(Outcome::Rows { rows: all, .. }) = all else {
                return Err("Postgres' unlimited answer is an error".into());
            };
            let mut pool: BTreeMap<&Vec<kit::Cell>, usize> = BTreeMap::new();
            for r in all {
                *pool.entry(r).or_default() += 1;
            }
            for r in got {
                match pool.get_mut(r) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => return Err("a row Postgres' unlimited answer does not hold".into()),
                }
            }
            Ok(())
        }
    }
}

/// One read of a cached query.
struct Read {
    extended: bool,
    sql: String,
    unlimited: String,
    /// The key value bound to `$1` (extended protocol, binary).
    param: Option<i64>,
    /// A literal differs from the one the cache was created with.
    varied: bool,
}

impl Read {
    fn proto(&self) -> &'static str {
        match (self.extended, self.param) {
            (false, _) => "simple",
            (true, None) => "extended",
            (true, Some(_)) => "extended $1",
        }
    }

    fn kind(&self) -> String {
        let varied = if self.varied { ", another literal" } else { "" };
        format!("{}{varied}", self.proto())
    }

    fn label(&self) -> String {
        let varied = if self.varied { ", another literal" } else { "" };
        match self.param {
            Some(v) => format!("{} = {v}{varied}", self.proto()),
            None => format!("{}{varied}", self.proto()),
        }
    }

    fn args(&self) -> Vec<kit::Arg> {
        self.param
            .iter()
            .map(|v| kit::Arg {
                value: kit::P::Int(*v),
                binary: true,
            })
            .collect()
    }
}

/// The reads of one round: the query as cached, with both protocols; when it has a key,
/// with another key value, as a literal and bound to `$1`; and with another value for one of
/// its other literals (a read Larder normalizes to the same cache).
fn reads(case: &Case, rng: &mut StdRng, s: &Schema) -> Vec<Read> {
    let read = |extended: bool, over: Option<(usize, &str)>, param: Option<i64>| Read {
        extended,
        sql: case.render(&case.template, over),
        unlimited: case.render(&case.unlimited, over),
        param,
        varied: over.is_some_and(|(slot, v)| v != case.lits[slot].value),
    };
    let mut out = vec![read(false, None, None), read(true, None, None)];
    let other = |rng: &mut StdRng, slot: usize| {
        let l = &case.lits[slot];
        literal(rng, s, l.ty, l.dom)
    };
    if let Some(key) = case.key {
        let v = other(rng, key);
        out.push(read(false, Some((key, &v)), None));
        let v = other(rng, key);
        let mut r = read(
            true,
            Some((key, "$1")),
            Some(v.parse().expect("an int key")),
        );
        r.varied = v != case.lits[key].value;
        out.push(r);
    }
    let others: Vec<usize> = (0..case.lits.len())
        .filter(|i| Some(*i) != case.key)
        .collect();
    if !others.is_empty() {
        let slot = others[rng.gen_range(0..others.len())];
        let v = other(rng, slot);
        if v != case.lits[slot].value {
            let extended = rng.gen_bool(0.5);
            out.push(read(extended, Some((slot, &v)), None));
        }
    }
    out
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("LARDER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

/// A refusal message with its identifiers and numbers blurred, to group refusals by reason.
fn reason_class(msg: &str) -> String {
    let mut out = String::new();
    let mut last_digit = false;
    for ch in msg.chars() {
        if ch.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
        } else {
            out.push(ch);
            last_digit = false;
        }
    }
    out.chars().take(140).collect()
}

/// Reads of a cached query that may go upstream, and why that is right: the name of the
/// reason, or None.
fn allowed_miss(case: &Case, read: &Read, reason: &str) -> Option<&'static str> {
    // Larder folds case for ILIKE in ASCII only (the data holds 'ünï'); rows it cannot
    // evaluate send the read upstream: at read time ("evaluation failed"), or, below an
    // operator that keeps state (an aggregate, a join), by poisoning the cache's entry.
    // The same limitation `pg_cache_differential` lists.
    if case.sql.contains("ILIKE")
        && (reason.contains("ILIKE on non-ASCII text depends on the locale")
            || reason.contains("the cache cannot compute this result exactly"))
    {
        return Some("ILIKE over non-ASCII text");
    }
    // Where the plan cannot make the key equality a key (below DISTINCT over an aggregate,
    // say), it evaluates the literal the cache was created with; a read with another value
    // goes upstream (`pg_dataflow_differential`'s `Fixed` parameters).
    if read.varied && reason.contains("the cache holds results for another value of parameter") {
        return Some("a literal fixed in the plan, read with another value");
    }
    None
}

struct Failure {
    case: usize,
    text: String,
}

async fn timed<T>(seed: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(READ_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: {what} took longer than {READ_TIMEOUT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_queries_stay_equal_to_postgres_under_random_writes() {
    let started = Instant::now();
    let seed = seed();
    eprintln!("seed {seed} (replay with LARDER_TEST_SEED={seed})");
    let queries = env_usize("LARDER_RANDOM_QUERIES", 60);
    let rounds = env_usize("LARDER_RANDOM_ROUNDS", 4);
    let mut rng = StdRng::seed_from_u64(seed);
    let schema = Schema::random(&mut rng);
    let ddl = schema.ddl();
    let data = schema.data(&mut rng);
    let d = Deployment::start_with(
        "random_q",
        "TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
        &format!("{ddl}\n{data}"),
    );
    let mut larder = Conn::new(&d.larder_url()).await;
    let mut direct = Conn::new(&d.direct_url()).await;
    kit::wait_online(&larder.client).await;

    // Generate, check on Postgres, and make caches.
    let mut qgen = Gen {
        rng: StdRng::seed_from_u64(seed ^ 0x005e_ed0f_9e7e),
        s: &schema,
        aliases: 0,
        ctes: Vec::new(),
        feats: BTreeSet::new(),
        lits: Vec::new(),
        key: None,
    };
    let mut cases: Vec<Case> = Vec::new();
    let mut refused: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut features: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let mut all_cases: Vec<(usize, String)> = Vec::new();
    let mut regenerated = 0;
    for n in 0..queries {
        // A query with no rows compares little: try (twice) for one that has some now.
        let mut tries = 0;
        let case = loop {
            tries += 1;
            let case = qgen.case(n);
            match direct.simple(&case.sql).await {
                Outcome::Error(e) => panic!(
                    "seed {seed}: the generator made a query Postgres rejects ({e}):\n  {}\n\
                     schema:\n{ddl}",
                    case.sql
                ),
                Outcome::Rows { rows, .. } if rows.is_empty() && tries < 3 => {
                    regenerated += 1;
                    continue;
                }
                Outcome::Rows { .. } => break case,
            }
        };
        all_cases.push((n, case.sql.clone()));
        for f in &case.features {
            features.entry(f).or_default().0 += 1;
        }
        let create = format!("CREATE CACHE FROM {}", case.sql);
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match timed(seed, &create, larder.client.simple_query(&create)).await {
                Ok(_) => break Ok(()),
                Err(e) => {
                    let (code, msg) = match e.as_db_error() {
                        Some(d) => (d.code().code().to_string(), d.message().to_string()),
                        None => ("client".to_string(), e.to_string()),
                    };
                    if code == "55000" && attempt < 5 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    break Err((code, msg));
                }
            }
        };
        match outcome {
            Ok(()) => {
                for f in &case.features {
                    features.entry(f).or_default().1 += 1;
                }
                cases.push(case);
            }
            Err((code, msg)) if code == "0A000" || code == "55000" => {
                refused
                    .entry(format!("{code} {}", reason_class(&msg)))
                    .or_default()
                    .push(n);
            }
            Err((code, msg)) => failures.push(Failure {
                case: n,
                text: format!(
                    "CREATE CACHE failed with SQLSTATE {code} (not a clear refusal): {msg}\n  {create}"
                ),
            }),
        }
    }

    // Rounds of writes and reads.
    let writer = kit::connect(&d.larder_url()).await;
    let mut w = Writer::new(&schema);
    let mut log: Vec<String> = Vec::new();
    let mut compared = 0u64;
    let mut empty = 0u64;
    let mut allowed: BTreeMap<&'static str, usize> = BTreeMap::new();
    // Per kind of read: (reads, answered from the cache).
    let mut kinds: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut ever_rows: BTreeSet<usize> = BTreeSet::new();
    let mut misses: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut wrong: BTreeSet<usize> = BTreeSet::new();
    let mut writes = 0;
    for round in 0..=rounds {
        if round > 0 {
            let n = rng.gen_range(20..40);
            let batch: Vec<String> = (0..n).map(|_| w.write(&mut rng, &schema)).collect();
            writes += n;
            log.push(format!("-- round {round}"));
            let (alone, txn) = batch.split_at(n / 2);
            for stmt in alone {
                log.push(format!("{stmt};"));
                writer
                    .simple_query(stmt)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: write {stmt}: {e:?}"));
            }
            let txn = format!("BEGIN; {}; COMMIT", txn.join("; "));
            log.push(format!("{txn};"));
            writer
                .batch_execute(&txn)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: transaction {txn}: {e:?}"));
        }
        kit::wait_consistent(&direct.client, &larder.client).await;
        for case in &cases {
            for read in reads(case, &mut rng, &schema) {
                let label = read.label();
                let (via, want) = if read.extended {
                    let args = read.args();
                    let via =
                        timed(seed, &read.sql, larder.extended(&read.sql, &args, false)).await;
                    (via, direct.extended(&read.sql, &args, false).await)
                } else {
                    let via = timed(seed, &read.sql, larder.simple(&read.sql)).await;
                    (via, direct.simple(&read.sql).await)
                };
                let (dest, reason) = kit::explain_last(&larder.client).await;
                let kind = kinds.entry(read.kind()).or_default();
                kind.0 += 1;
                if dest == "cache" {
                    kind.1 += 1;
                } else {
                    if let Some(why) = allowed_miss(case, &read, &reason) {
                        *allowed.entry(why).or_default() += 1;
                        continue;
                    }
                    misses
                        .entry(format!(
                            "{}: {dest}: {}",
                            read.proto(),
                            reason_class(&reason)
                        ))
                        .or_default()
                        .push(case.n);
                }
                let all = if matches!(case.order, Order::Partial(_)) && case.limited {
                    Some(if read.extended {
                        direct.extended(&read.unlimited, &read.args(), false).await
                    } else {
                        direct.simple(&read.unlimited).await
                    })
                } else {
                    None
                };
                compared += 1;
                if let Outcome::Rows { rows, .. } = &want {
                    if rows.is_empty() {
                        empty += 1;
                    } else {
                        ever_rows.insert(case.n);
                    }
                }
                if let Err(why) = same(case, &via, &want, all.as_ref()) {
                    if wrong.insert(case.n) {
                        eprintln!(
                            "seed {seed}: query {} round {round} ({label}) differs: {why}",
                            case.n
                        );
                        let (via, want) = match case.order {
                            Order::Total => (via, want),
                            _ => (sorted_outcome(via), sorted_outcome(want)),
                        };
                        failures.push(Failure {
                            case: case.n,
                            text: format!(
                                "round {round}, read {label}: {why}\n  CREATE CACHE FROM {}\n  \
                                 read: {}\n  {}  larder: {}  direct: {}",
                                case.sql,
                                read.sql,
                                difference(&via, &want),
                                kit::show_outcome(&via).replace('\n', "\n    "),
                                kit::show_outcome(&want).replace('\n', "\n    ")
                            ),
                        });
                    }
                }
            }
        }
    }

    // Figures.
    let mut report = format!(
        "seed {seed}: {} tables, {queries} queries generated ({regenerated} more discarded for \
         having no rows), {} cached, {} refused, \
         {rounds} rounds, {writes} writes, {compared} comparisons ({empty} of empty results; \
         {} cached queries had rows at least once), {} wrong, in {:?}\n",
        schema.tables.len(),
        cases.len(),
        refused.values().map(Vec::len).sum::<usize>(),
        ever_rows.len(),
        wrong.len(),
        started.elapsed()
    );
    report += "refusals by reason (query numbers; the shortest one):\n";
    for (r, ns) in &refused {
        let example = ns
            .iter()
            .filter_map(|n| all_cases.iter().find(|c| c.0 == *n))
            .map(|c| c.1.as_str())
            .min_by_key(|sql| sql.len())
            .unwrap_or("");
        report += &format!("  {:3} x {r} {ns:?}\n        e.g. {example}\n", ns.len());
    }
    report += "features (generated / cached):\n";
    for (f, (g, c)) in &features {
        report += &format!("  {f}: {g} / {c}\n");
    }
    report += "reads (answered from the cache / in all):\n";
    for (k, (n, hits)) in &kinds {
        report += &format!("  {k}: {hits} / {n}\n");
    }
    if !allowed.is_empty() {
        report += "reads sent upstream for a listed reason (not failures):\n";
        for (r, n) in &allowed {
            report += &format!("  {n:4} x {r}\n");
        }
    }
    if !misses.is_empty() {
        report += "reads not answered from the cache (query numbers):\n";
        for (r, ns) in &misses {
            report += &format!("  {:3} x {r} {ns:?}\n", ns.len());
        }
    }
    eprintln!("{report}");
    if std::env::var_os("LARDER_RANDOM_VERBOSE").is_some() {
        for (n, sql) in &all_cases {
            eprintln!("  q{n}: {sql}");
        }
    }

    if !failures.is_empty() || !misses.is_empty() {
        let path = std::env::temp_dir().join(format!("larder-random-queries-{seed}.sql"));
        let mut script = format!(
            "-- pg_random_queries, seed {seed}: replay with LARDER_TEST_SEED={seed}\n\
             -- run in a database created WITH TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'\n\
             {ddl}{data}\n-- through Larder:\n"
        );
        let failing: BTreeSet<usize> = failures
            .iter()
            .map(|f| f.case)
            .chain(misses.values().flatten().copied())
            .collect();
        for (n, sql) in &all_cases {
            if failing.contains(n) {
                script += &format!("CREATE CACHE FROM {sql};\n");
            }
        }
        script += &format!("-- the writes, round by round\n{}\n", log.join("\n"));
        let _ = std::fs::write(&path, script);
        let list: Vec<String> = failures
            .iter()
            .map(|f| format!("query {}: {}", f.case, f.text))
            .collect();
        assert!(
            failures.is_empty(),
            "seed {seed}: {} failures (replay with LARDER_TEST_SEED={seed}; schema, data, \
             CREATE CACHE statements and writes in {}):\n{}\nschema:\n{ddl}",
            failures.len(),
            path.display(),
            list.join("\n\n")
        );
        let missed: BTreeSet<usize> = misses.values().flatten().copied().collect();
        let queries: Vec<String> = all_cases
            .iter()
            .filter(|(n, _)| missed.contains(n))
            .map(|(n, sql)| format!("  query {n}: {sql}"))
            .collect();
        assert!(
            misses.is_empty(),
            "seed {seed}: cached queries read from upstream instead of the cache \
             (replay with LARDER_TEST_SEED={seed}):\n{misses:?}\n{}",
            queries.join("\n")
        );
    }
    let st = kit::status(&larder.client).await;
    assert_eq!(
        st.get("Last Error").map(String::as_str).unwrap_or(""),
        "",
        "seed {seed}: larder status: {st:?}"
    );
}
