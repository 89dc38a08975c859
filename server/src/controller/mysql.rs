//! Larder's statements on a MySQL/MariaDB upstream: what differs from Postgres is how a
//! query's names are read (the session's current database, no `search_path`), how the
//! upstream describes a result, who may manage caches, and which plans compute exactly what
//! MySQL computes.
//!
//! The SELECT privilege `CREATE CACHE` needs is checked by the MySQL session itself, which
//! prepares the query upstream as its own user before it hands the statement over (see
//! `larder_adapter::mysql`); so is the right to manage caches (`StatementContext::mysql`).
//!
//! MySQL's evaluation differs from the Postgres semantics the dataflow implements in places
//! that change results: text compares by collation (`_ci`, PAD SPACE), `/` and `SUM` give
//! DECIMAL, ascending order puts NULLs first (FLOAT and DOUBLE print as MySQL prints them:
//! `larder_adapter`'s `mysql::messages::float`).
//! [`mysql_refusal`] keeps caches to plans where the two agree exactly, and says which
//! construct it refused. The one text comparison kept is a reader key's equality, which
//! [`Controller::attach_key_collations`] makes the column collation's. TIMESTAMP values (kept in UTC) print and compare in the session's
//! time zone: the session serves those caches only while its zone is UTC.

use larder_replication::mysql::MySource;
use larder_sql::identity::qualify_quoted;
use larder_sql::plan::{AggFunc, BinaryOp, CachePlan, Expr, NodeOp, UnaryOp};
use larder_sql::SqlType;

use crate::tables::TableEntry;

use super::*;

/// How long `CREATE CACHE` waits for replication to reach the upstream's binlog position.
const CATCH_UP_MAX_MS: u64 = 10_000;

impl Controller {
    pub(super) fn my_source(&self) -> Result<&Arc<MySource>, ControllerError> {
        self.mysql
            .as_ref()
            .ok_or_else(|| ControllerError::Unavailable("replication is not running".into()))
    }

    /// The query as the MySQL session means it: replication first catches up with the
    /// upstream (the session's own writes and DDL included), then unqualified names are read
    /// in the session's current database.
    pub(super) async fn for_mysql_session(
        &self,
        text: &str,
        ctx: &StatementContext,
    ) -> Result<(String, Normalized), ControllerError> {
        let source = self.my_source()?;
        let target = source
            .current_progress()
            .await
            .map_err(|e| ControllerError::Unavailable(e.to_string()))?;
        let deadline = std::time::Instant::now() + Duration::from_millis(CATCH_UP_MAX_MS);
        while self.core.status.applied_lsn.load(Ordering::SeqCst) < target {
            if std::time::Instant::now() >= deadline {
                return Err(ControllerError::Unavailable(format!(
                    "replication has not caught up with the upstream within {CATCH_UP_MAX_MS} ms; try again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let database = ctx
            .mysql
            .as_ref()
            .and_then(|m| m.database.clone())
            .unwrap_or_else(|| source.database().to_string());
        mysql_normalized(text, &database)
    }

    /// The result columns as the upstream describes them (its type codes), checked against
    /// the plan's types.
    pub(super) async fn describe_mysql(
        &self,
        text: &str,
        plan: &CachePlan,
    ) -> Result<Vec<ResultColumn>, ControllerError> {
        let source = self.my_source()?;
        let described = source.describe(text).await.map_err(|e| match e {
            larder_replication::ReplicationError::Rejected(m) => {
                ControllerError::Unsupported(format!("the upstream rejects the query: {m}"))
            }
            other => ControllerError::Unavailable(other.to_string()),
        })?;
        if described.len() != plan.output.len() {
            return Err(ControllerError::Internal(format!(
                "upstream describes {} result columns, the plan has {}",
                described.len(),
                plan.output.len()
            )));
        }
        described
            .into_iter()
            .zip(&plan.output)
            .map(|(d, out)| {
                if !my_type_matches(d.type_code, &out.ty) {
                    return Err(ControllerError::Unsupported(format!(
                        "result column {} is {} upstream (MySQL type {}), which Larder computes differently",
                        d.name,
                        larder_sql::pgtypes::type_name(&out.ty),
                        d.type_code
                    )));
                }
                Ok(ResultColumn {
                    name: d.name,
                    table_oid: 0,
                    column_id: 0,
                    type_oid: u32::from(d.type_code),
                    type_len: 0,
                    typmod: i32::from(d.decimals),
                    ty: out.ty.clone(),
                })
            })
            .collect()
    }

    /// Managing caches for everyone needs a MySQL user with global SUPER or ALL PRIVILEGES
    /// (the session checked its own grants).
    /// Gives each text key column of `plan` its column's collation, so the reader keys text
    /// as the upstream compares it (`'abc'` finds `'ABC '` under `utf8mb4_general_ci`). A
    /// column whose collation Larder cannot compare exactly keeps none, and
    /// [`mysql_refusal`] then refuses the plan, naming the collation.
    pub(super) async fn attach_key_collations(
        &self,
        plan: &mut CachePlan,
        tables: &[TableEntry],
    ) -> Result<Option<String>, ControllerError> {
        let source = self.my_source()?;
        let reader = plan.nodes.len().saturating_sub(1);
        let types = plan.reader_types().to_vec();
        let mut collations = Vec::with_capacity(plan.key.len());
        let mut refused = None;
        for &k in &plan.key {
            let origin = plan.column_origin(reader, k);
            let column = origin
                .filter(|_| types.get(k).is_some_and(is_text))
                .and_then(|(relation, column)| {
                    let r = plan.relations.get(relation)?;
                    let t = tables
                        .iter()
                        .find(|t| t.schema.schema == r.schema && t.schema.name == r.name)?;
                    Some((r.clone(), t.schema.columns.get(column)?.name.clone()))
                });
            let Some((table, column)) = column else {
                collations.push(None);
                continue;
            };
            let unavailable = |e: larder_replication::ReplicationError| {
                ControllerError::Unavailable(e.to_string())
            };
            let by_column = source
                .column_collations(&table.schema, &table.name)
                .await
                .map_err(unavailable)?;
            let Some(name) = by_column.get(&column) else {
                collations.push(None);
                continue;
            };
            match source.collation(name).await {
                Ok(c) => collations.push(Some(c)),
                Err(larder_replication::ReplicationError::Collation(e)) => {
                    refused.get_or_insert(format!("column {column}: {e}"));
                    collations.push(None);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        plan.key_collations = if collations.iter().any(Option::is_some) {
            collations
        } else {
            Vec::new()
        };
        Ok(refused)
    }

    pub(super) fn require_mysql_admin(
        &self,
        ctx: &StatementContext,
        what: &str,
    ) -> Result<(), ControllerError> {
        if ctx.mysql.as_ref().is_some_and(|m| m.admin) {
            return Ok(());
        }
        Err(ControllerError::Forbidden(format!(
            "{what} requires a user with the global SUPER privilege or ALL PRIVILEGES ON *.*; user {} has neither",
            ctx.session_user
        )))
    }
}

/// `text` parsed as MySQL, its unqualified names read in `database`, normalized, with the id
/// every MySQL session that means the same query computes.
pub(crate) fn mysql_normalized(
    text: &str,
    database: &str,
) -> Result<(String, Normalized), ControllerError> {
    let mut query =
        parse_select(text, Dialect::MySql).map_err(|e| ControllerError::Invalid(e.to_string()))?;
    qualify_quoted(&mut query, &|_| Some(database.to_string()), '`');
    let qualified = query.to_string();
    let mut normalized = normalize_query(query);
    normalized.query_id = larder_sql::mysql::query_id(&normalized.query, database);
    larder_sql::mysql::order_nulls_as_mysql(&mut normalized.query);
    Ok((qualified, normalized))
}

/// Whether MySQL's type code `code` carries values of Larder's `ty` the way the MySQL
/// encoder writes them.
fn my_type_matches(code: u8, ty: &SqlType) -> bool {
    use SqlType::*;
    match code {
        1 | 2 | 3 | 8 | 9 | 13 => matches!(ty, Int2 | Int4 | Int8 | Numeric),
        // DECIMAL (a SUM of integers too: its digits are the integer's).
        0 | 246 => matches!(ty, Numeric | Int2 | Int4 | Int8),
        4 => matches!(ty, Float4),
        5 => matches!(ty, Float8),
        7 => matches!(ty, TimestampTz),
        10 => matches!(ty, Date),
        11 => matches!(ty, Time),
        12 => matches!(ty, Timestamp),
        245 => matches!(ty, Json | Text),
        15 | 247 | 248 | 249 | 250 | 251 | 252 | 253 | 254 => {
            matches!(ty, Text | Varchar | Bpchar | Bytea | Json)
        }
        16 => matches!(ty, Bytea),
        _ => false,
    }
}

fn is_text(t: &SqlType) -> bool {
    matches!(
        t,
        SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name | SqlType::Json
    )
}

/// Why the plan would not compute what MySQL computes, naming the construct; `None` when it
/// does. `json_as_stored`: JSON values print as stored (MariaDB, where JSON is text).
pub(crate) fn mysql_refusal(plan: &CachePlan, json_as_stored: bool) -> Option<String> {
    let text_cmp =
        || Some("comparing, grouping or ordering text needs MySQL's collation rules".to_string());
    let types = |n: usize| &plan.nodes[n].types;
    for node in &plan.nodes {
        match &node.op {
            NodeOp::Base { .. } | NodeOp::Union { .. } => {}
            NodeOp::Filter { input, predicate } => {
                if let Some(r) = predicate_refusal(predicate, types(*input)) {
                    return Some(r);
                }
            }
            NodeOp::Project { exprs, .. } => {
                if exprs.iter().any(|e| !matches!(e, Expr::Column(_))) {
                    return Some(
                        "computed result columns follow MySQL's own typing rules".to_string(),
                    );
                }
            }
            NodeOp::Join {
                left, right, on, ..
            }
            | NodeOp::SemiJoin {
                left, right, on, ..
            } => {
                if on
                    .iter()
                    .any(|(l, r)| is_text(&types(*left)[*l]) || is_text(&types(*right)[*r]))
                {
                    return text_cmp();
                }
            }
            NodeOp::Aggregate {
                input,
                group_by,
                aggregates,
            } => {
                if group_by.iter().any(|c| is_text(&types(*input)[*c])) {
                    return text_cmp();
                }
                for a in aggregates {
                    let ty = a.arg.map(|c| &types(*input)[c]);
                    match a.func {
                        AggFunc::Count if !a.distinct => {}
                        // DISTINCT compares values: exact for numbers and dates, not for text
                        // (collations) nor floats (MySQL's -0 and 0).
                        AggFunc::Count => {
                            if ty.is_some_and(|t| is_text(t) || is_float(t)) {
                                return text_cmp();
                            }
                        }
                        // Floats order by value in both.
                        AggFunc::Min | AggFunc::Max => {
                            if ty.is_some_and(is_text) {
                                return text_cmp();
                            }
                        }
                        // MySQL sums integers and decimals exactly into a DECIMAL of the
                        // input's scale, as Postgres' integer and numeric sums do.
                        AggFunc::Sum if ty.is_some_and(is_exact_number) => {}
                        _ => {
                            return Some(
                                "AVG, and SUM of anything but integers and decimals, follow MySQL's own rules"
                                    .to_string(),
                            )
                        }
                    }
                }
            }
            NodeOp::Distinct { input } => {
                if types(*input).iter().any(is_text) {
                    return text_cmp();
                }
            }
            NodeOp::TopK {
                input,
                group_by,
                order,
                ..
            } => {
                let t = types(*input);
                if group_by.iter().any(|c| is_text(&t[*c]))
                    || order.iter().any(|k| is_text(&t[k.column]))
                {
                    return text_cmp();
                }
            }
        }
    }
    let reader = plan.reader_types();
    let collated = |i: usize| plan.key_collations.get(i).is_some_and(Option::is_some);
    if plan
        .key
        .iter()
        .enumerate()
        .any(|(i, c)| is_text(&reader[*c]) && !collated(i))
        || plan.order_by.iter().any(|k| is_text(&reader[k.column]))
        || plan
            .range
            .as_ref()
            .is_some_and(|r| is_text(&reader[r.column]))
    {
        return text_cmp();
    }
    if let Some(r) = plan
        .residual
        .as_ref()
        .and_then(|e| predicate_refusal(e, reader))
    {
        return Some(r);
    }
    for out in &plan.output {
        match out.ty {
            SqlType::Bool => return Some("boolean results are integers in MySQL".into()),
            SqlType::Json if !json_as_stored => {
                return Some("MySQL prints JSON in its own normalized form".into())
            }
            _ => {}
        }
    }
    None
}

fn is_exact_number(t: &SqlType) -> bool {
    matches!(
        t,
        SqlType::Int2 | SqlType::Int4 | SqlType::Int8 | SqlType::Numeric
    )
}

fn is_float(t: &SqlType) -> bool {
    matches!(t, SqlType::Float4 | SqlType::Float8)
}

/// Predicates both engines agree on: AND, OR, NOT, comparisons, IN, BETWEEN and IS NULL over
/// columns, literals and parameters that are not text.
fn predicate_refusal(e: &Expr, cols: &[SqlType]) -> Option<String> {
    let texty = |e: &Expr| match e {
        Expr::Column(i) => cols.get(*i).is_some_and(is_text),
        Expr::Literal(v) => matches!(v, larder_sql::Value::Text(_)),
        _ => false,
    };
    let leaf = |e: &Expr| matches!(e, Expr::Column(_) | Expr::Literal(_) | Expr::Param(_));
    let text_cmp =
        || Some("comparing, grouping or ordering text needs MySQL's collation rules".to_string());
    match e {
        Expr::Column(_) | Expr::Literal(_) | Expr::Param(_) => None,
        Expr::Unary {
            op: UnaryOp::Not,
            expr,
        } => predicate_refusal(expr, cols),
        Expr::Binary {
            op: BinaryOp::And | BinaryOp::Or,
            left,
            right,
            ..
        } => predicate_refusal(left, cols).or_else(|| predicate_refusal(right, cols)),
        Expr::Binary {
            op:
                BinaryOp::Eq
                | BinaryOp::NotEq
                | BinaryOp::Lt
                | BinaryOp::LtEq
                | BinaryOp::Gt
                | BinaryOp::GtEq,
            left,
            right,
            ..
        } if leaf(left) && leaf(right) => (texty(left) || texty(right)).then(text_cmp).flatten(),
        Expr::IsNull { expr, .. } if leaf(expr) => None,
        Expr::InList { expr, list, .. } if leaf(expr) && list.iter().all(leaf) => (texty(expr)
            || list.iter().any(texty))
        .then(text_cmp)
        .flatten(),
        Expr::Between {
            expr, low, high, ..
        } if leaf(expr) && leaf(low) && leaf(high) => (texty(expr) || texty(low) || texty(high))
            .then(text_cmp)
            .flatten(),
        _ => Some("this expression follows MySQL's own evaluation rules".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_sql::lower::{lower, Catalog};
    use larder_sql::{Column, TableSchema};

    struct Shop;
    impl Catalog for Shop {
        fn table(&self, _schema: Option<&str>, name: &str) -> Option<TableSchema> {
            let col = |n: &str, ty: SqlType| Column {
                name: n.into(),
                ty,
                type_oid: 0,
                typmod: -1,
            };
            (name == "items").then(|| TableSchema {
                schema: "shop".into(),
                name: "items".into(),
                columns: vec![
                    col("id", SqlType::Int4),
                    col("name", SqlType::Text),
                    col("price", SqlType::Numeric),
                    col("w", SqlType::Float8),
                ],
                key: vec![0],
            })
        }
    }

    fn refusal(sql: &str) -> Option<String> {
        let (_, n) = mysql_normalized(sql, "shop").unwrap();
        let plan = lower(&n.query, &Shop, &n.params).unwrap();
        mysql_refusal(&plan, true)
    }

    #[test]
    fn plans_that_mysql_computes_alike_are_kept() {
        for sql in [
            "SELECT id, name, price FROM items WHERE id = ?",
            "SELECT id, name FROM items WHERE price BETWEEN 1 AND 2 ORDER BY id LIMIT 5",
            "SELECT count(*) FROM items WHERE id IN (1, 2, 3)",
            "SELECT max(price) FROM items WHERE name IS NULL",
            "SELECT sum(price), sum(id), count(DISTINCT id) FROM items WHERE name IS NULL",
            "SELECT w FROM items WHERE id = 1",
            "SELECT max(w), min(w) FROM items WHERE id = 1",
        ] {
            assert_eq!(refusal(sql), None, "{sql}");
        }
    }

    #[test]
    fn a_text_key_is_kept_once_it_has_its_collation() {
        let (_, n) = mysql_normalized("SELECT id FROM items WHERE name = ?", "shop").unwrap();
        let mut plan = lower(&n.query, &Shop, &n.params).unwrap();
        assert!(mysql_refusal(&plan, true).is_some());
        let bin = larder_sql::collation::Collation::code_point("utf8mb4_bin").unwrap();
        plan.key_collations = vec![Some(std::sync::Arc::new(bin))];
        assert_eq!(mysql_refusal(&plan, true), None);
        // Ordering text stays refused.
        let (_, n) =
            mysql_normalized("SELECT id FROM items WHERE name = ? ORDER BY name", "shop").unwrap();
        let mut plan = lower(&n.query, &Shop, &n.params).unwrap();
        let bin = larder_sql::collation::Collation::code_point("utf8mb4_bin").unwrap();
        plan.key_collations = vec![Some(std::sync::Arc::new(bin))];
        assert!(mysql_refusal(&plan, true).is_some());
    }

    #[test]
    fn plans_that_mysql_computes_otherwise_are_refused() {
        for sql in [
            "SELECT id FROM items WHERE name = 'abc'",
            "SELECT id FROM items ORDER BY name",
            "SELECT id + 1 FROM items",
            "SELECT avg(price) FROM items",
            "SELECT count(DISTINCT name) FROM items",
            "SELECT DISTINCT name FROM items",
            "SELECT id FROM items WHERE id / 2 = 1",
        ] {
            assert!(refusal(sql).is_some(), "{sql}");
        }
    }

    #[test]
    fn ids_ignore_quoting_and_follow_the_database() {
        let (q, a) = mysql_normalized("SELECT id FROM items WHERE id = 1", "shop").unwrap();
        assert!(q.contains("`shop`.items"), "{q}");
        let (_, b) = mysql_normalized("select `id` from `shop`.`items` where id = 9", "x").unwrap();
        assert_eq!(a.query_id, b.query_id);
    }
}
