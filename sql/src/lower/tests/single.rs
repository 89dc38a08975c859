//! Single-table queries.

use super::*;
use crate::lower::util::visit_plan_expr;
use crate::normalize::normalize;
use crate::plan::{BinaryOp, Expr as P, Func, OrderKey, OutputColumn, TableRef, UnaryOp};
use crate::statement::Dialect;
use crate::value::{SqlType, Value};

#[test]
fn point_lookup_with_star() {
    let p = plan("SELECT * FROM users WHERE id = $1");
    assert_eq!(
        p.table(),
        TableRef {
            schema: "public".into(),
            name: "users".into()
        }
    );
    assert_eq!(p.materialized().len(), 11);
    assert_eq!(p.materialized()[0], P::Column(0));
    assert_eq!(p.materialized()[1], P::Column(1));
    assert_eq!(p.key, vec![0]);
    assert_eq!(p.key_params, vec![0]);
    assert_eq!(p.param_types, vec![SqlType::Int4]);
    assert_eq!(p.filter(), None);
    assert_eq!(p.residual, None);
    assert_eq!(names(&p)[..3], ["id", "name", "email"]);
    assert_eq!(p.output[3].ty, SqlType::Int2);
    assert_eq!((p.offset, p.limit), (0, None));
    assert!(p.order_by.is_empty());
}

#[test]
fn equality_in_list_and_placeholder_lower_identically() {
    let a = plan("SELECT name FROM users WHERE id = 7");
    assert_eq!(a, plan("SELECT name FROM users WHERE id IN (1, 2, 3)"));
    assert_eq!(a, plan("select NAME from USERS where 5 = id"));
    assert_eq!(a.key, vec![0]);
    assert_eq!(a.materialized(), vec![P::Column(0), P::Column(1)]);
    assert_eq!(
        a.output,
        vec![OutputColumn {
            column: 1,
            name: "name".into(),
            ty: SqlType::Text
        }]
    );
}

#[test]
fn filter_key_and_residual_split() {
    let p =
        plan("SELECT name FROM users WHERE active AND email IS NOT NULL AND id = 3 AND age > 18");
    assert_eq!(
        p.filter(),
        Some(P::Binary {
            op: BinaryOp::And,
            left: col(6),
            right: Box::new(P::IsNull {
                expr: col(2),
                negated: true
            }),
            ty: SqlType::Bool,
        })
    );
    assert_eq!(
        p.materialized(),
        vec![P::Column(0), P::Column(3), P::Column(1)]
    );
    assert_eq!(p.key, vec![0]);
    assert_eq!(p.key_params, vec![0]);
    assert_eq!(
        p.residual,
        Some(P::Binary {
            op: BinaryOp::Gt,
            left: col(1),
            right: param(1),
            ty: SqlType::Bool
        })
    );
    assert_eq!(p.param_types, vec![SqlType::Int4, SqlType::Int2]);
    assert_eq!(p.output[0].column, 2);
}

#[test]
fn compound_keys() {
    let p = plan("SELECT id FROM users WHERE org_id = 1 AND name = 'bob'");
    assert_eq!(p.key, vec![0, 1]);
    assert_eq!(p.key_params, vec![0, 1]);
    assert_eq!(
        p.materialized(),
        vec![P::Column(10), P::Column(1), P::Column(0)]
    );
    assert_eq!(p.param_types, vec![SqlType::Int8, SqlType::Text]);
}

#[test]
fn residual_equality_may_be_multi_valued() {
    let p = plan("SELECT id FROM users WHERE id = 1 AND id IN (2, 3)");
    assert_eq!(p.key, vec![0]);
    assert_eq!(
        p.residual,
        Some(P::InList {
            expr: col(0),
            list: vec![P::Param(1)],
            negated: false
        })
    );
    let p = plan("SELECT id FROM users WHERE age + 1 IN (3, 4)");
    assert!(p.key.is_empty());
    assert_eq!(
        p.residual,
        Some(P::InList {
            expr: Box::new(P::Binary {
                op: BinaryOp::Add,
                left: col(0),
                right: Box::new(P::Literal(Value::Int(1))),
                ty: SqlType::Int4
            }),
            list: vec![P::Param(0)],
            negated: false
        })
    );
    assert_eq!(p.materialized()[0], P::Column(3));
    assert_eq!(p.param_types, vec![SqlType::Int4]);
}

#[test]
fn predicates_of_every_kind() {
    let p = plan(
        "SELECT id FROM users WHERE name LIKE 'a%' AND email ILIKE 'B%' AND age BETWEEN 1 AND 5 \
         AND org_id NOT IN (1, 2) AND (active OR score > 1.5) AND NOT (created_at < '2024-01-01')",
    );
    assert_eq!(
        p.param_types,
        vec![
            SqlType::Text,
            SqlType::Text,
            SqlType::Int2,
            SqlType::Int2,
            SqlType::Int8,
            SqlType::Int8,
            SqlType::Float8,
            SqlType::Timestamp
        ]
    );
    assert!(p.key.is_empty());
    assert_eq!(p.filter(), None);
    let residual = p.residual.clone().unwrap();
    let mut likes = Vec::new();
    visit_plan_expr(&residual, &mut |e| {
        if let P::Like {
            case_insensitive, ..
        } = e
        {
            likes.push(*case_insensitive);
        }
    });
    assert_eq!(likes, vec![false, true]);
    // Every base column the residual reads is materialized, and only those.
    assert_eq!(
        p.materialized(),
        vec![
            P::Column(1),
            P::Column(2),
            P::Column(3),
            P::Column(10),
            P::Column(6),
            P::Column(4),
            P::Column(7),
            P::Column(0)
        ]
    );
}

#[test]
fn expressions_in_select_list() {
    let p = plan(
        "SELECT id + 1, age * 2 AS dbl, score / 2, name || '!', coalesce(email, name), abs(age), \
         length(name), 1.50, 'x', true, id::int8, age + age, -age, NULL FROM users WHERE id = 1",
    );
    assert_eq!(
        names(&p),
        [
            "?column?", "dbl", "?column?", "?column?", "coalesce", "abs", "length", "?column?",
            "?column?", "bool", "id", "?column?", "?column?", "?column?"
        ]
    );
    let types: Vec<SqlType> = p.output.iter().map(|o| o.ty.clone()).collect();
    use SqlType as S;
    assert_eq!(
        types,
        [
            S::Int4,
            S::Int4,
            S::Float8,
            S::Text,
            S::Text,
            S::Int2,
            S::Int4,
            S::Numeric,
            S::Text,
            S::Bool,
            S::Int8,
            S::Int2,
            S::Int2,
            S::Text
        ]
    );
    let lit = |i: usize| p.materialized()[p.output[i].column].clone();
    assert_eq!(lit(7), P::Literal(Value::Numeric("1.50".into())));
    assert_eq!(lit(8), P::Literal(Value::Text("x".into())));
    assert_eq!(lit(10), P::Column(0));
    assert_eq!(
        lit(4),
        P::Func {
            func: Func::Coalesce,
            args: vec![P::Column(2), P::Column(1)]
        }
    );
    assert_eq!(
        lit(12),
        P::Unary {
            op: UnaryOp::Neg,
            expr: col(3)
        }
    );
}

#[test]
fn casts() {
    let p = plan("SELECT age::int8 AS a, id::float8 AS b, '2024-01-02'::date AS c, email::text AS d FROM users");
    assert_eq!(p.materialized()[p.output[0].column], P::Column(3));
    assert_eq!(p.output[0].ty, SqlType::Int8);
    assert_eq!(
        p.materialized()[p.output[1].column],
        P::Cast {
            expr: col(0),
            ty: SqlType::Float8
        }
    );
    assert_eq!(
        p.materialized()[p.output[2].column],
        P::Literal(Value::Date(8767))
    );
    assert_eq!(p.output[3].ty, SqlType::Text);
    assert_eq!(names(&plan("SELECT '1'::int4 FROM users")), ["int4"]);
    assert!(refuse("SELECT score::text FROM users").contains("extra_float_digits"));
    assert!(refuse("SELECT created_at::text FROM users").contains("DateStyle"));
    assert!(refuse("SELECT id::timestamptz FROM users").contains("cast from integer"));
    let p = plan("SELECT id FROM users WHERE id = $1::int8");
    assert_eq!(p.param_types, vec![SqlType::Int8]);
    assert!(p.key.is_empty());
    assert_eq!(
        p.residual,
        Some(P::InList {
            expr: col(0),
            list: vec![P::Param(0)],
            negated: false
        })
    );
    let p = plan("SELECT id FROM users WHERE created_at = '2024-01-01'::timestamp AND id = CAST($1 AS integer)");
    assert_eq!(p.key, vec![0, 1]);
    assert_eq!(p.param_types, vec![SqlType::Timestamp, SqlType::Int4]);
}

#[test]
fn order_by_limit_offset() {
    let p = plan(
        "SELECT id, name AS n FROM users WHERE org_id = $1 ORDER BY n DESC, 1, age NULLS FIRST, score + 1 DESC NULLS LAST LIMIT 10 OFFSET 5",
    );
    // materialized: org_id (key), id, name, age, score + 1
    assert_eq!(
        p.materialized()[..4],
        [P::Column(10), P::Column(0), P::Column(1), P::Column(3)]
    );
    assert_eq!(
        p.order_by,
        vec![
            OrderKey {
                column: 2,
                descending: true,
                nulls_first: true
            },
            OrderKey {
                column: 1,
                descending: false,
                nulls_first: false
            },
            OrderKey {
                column: 3,
                descending: false,
                nulls_first: true
            },
            OrderKey {
                column: 4,
                descending: true,
                nulls_first: false
            },
        ]
    );
    assert_eq!((p.offset, p.limit), (5, Some(10)));
    let p = plan("SELECT id FROM users ORDER BY name LIMIT ALL");
    assert_eq!(p.limit, None);
    let m = normalize("SELECT id FROM users LIMIT 5, 10", Dialect::MySql).unwrap();
    let p = lower(&m.query, &catalog(), &m.params).unwrap();
    assert_eq!((p.offset, p.limit), (5, Some(10)));
}

#[test]
fn schema_qualified_and_aliased_tables() {
    let p = plan("SELECT p.title FROM blog.posts AS p WHERE p.author_id = 9");
    assert_eq!(
        p.table(),
        TableRef {
            schema: "blog".into(),
            name: "posts".into()
        }
    );
    assert_eq!(p.param_types, vec![SqlType::Int4]);
    assert_eq!(names(&p), ["title"]);
    let p = plan("SELECT blog.posts.id, posts.title, posts.* FROM blog.posts WHERE posts.id = 1");
    assert_eq!(names(&p), ["id", "title", "id", "title", "author_id"]);
    assert_eq!(
        p.materialized(),
        vec![P::Column(0), P::Column(1), P::Column(2)]
    );
    assert!(refuse("SELECT posts.title FROM blog.posts p")
        .contains("missing FROM-clause entry for table \"posts\""));
}

#[test]
fn mysql_case_insensitive_columns() {
    let mut cat = catalog();
    cat.case_insensitive = true;
    let n = normalize("SELECT `Name` FROM Users WHERE ID = ?", Dialect::MySql).unwrap();
    let p = lower(&n.query, &cat, &n.params).unwrap();
    assert_eq!(p.key, vec![0]);
    assert_eq!(p.output[0].name, "Name");
    assert_eq!(p.materialized(), vec![P::Column(0), P::Column(1)]);
}

#[test]
fn refusals_name_the_construct() {
    let cases = [
        (
            "SELECT * FROM users u JOIN blog.posts p ON p.title = u.id",
            "comparison between text and integer is not supported",
        ),
        (
            "SELECT * FROM users, blog.posts",
            "(a cross join) is not supported",
        ),
        (
            "SELECT * FROM users WHERE id = (SELECT author_id FROM blog.posts)",
            "scalar subqueries are not supported",
        ),
        (
            "SELECT x.nope FROM (SELECT * FROM users) AS x",
            "column x.nope does not exist",
        ),
        (
            "WITH RECURSIVE x AS (SELECT 1) SELECT * FROM users",
            "recursive common table expressions (WITH RECURSIVE) are not supported",
        ),
        (
            "SELECT name FROM users GROUP BY age",
            "column \"users.name\" must appear in the GROUP BY clause or be used in an aggregate function",
        ),
        (
            "SELECT string_agg(name, ',') FROM users",
            "aggregate function string_agg() is not supported",
        ),
        (
            "SELECT id FROM users HAVING id > 1",
            "column \"users.id\" must appear in the GROUP BY clause or be used in an aggregate function",
        ),
        (
            "SELECT DISTINCT ON (age) name FROM users",
            "DISTINCT ON is not supported",
        ),
        (
            "SELECT row_number() OVER () FROM users",
            "window functions are not supported yet (row_number() OVER ...)",
        ),
        (
            "SELECT id FROM users INTERSECT SELECT id FROM users",
            "INTERSECT is not supported yet",
        ),
        (
            "SELECT * FROM users WHERE id = 1 FOR UPDATE",
            "row locking clauses (FOR UPDATE/FOR SHARE) cannot be served from a cache",
        ),
        (
            "SELECT * FROM users WHERE created_at > now()",
            "function now() is not deterministic",
        ),
        (
            "SELECT * FROM users WHERE created_at > CURRENT_TIMESTAMP",
            "function current_timestamp() is not deterministic",
        ),
        (
            "SELECT random() FROM users",
            "function random() is not deterministic",
        ),
        (
            "SELECT initcap(name) FROM users",
            "function initcap() depends on the database's locale",
        ),
        (
            "SELECT nope FROM users",
            "unknown column nope in table users",
        ),
        (
            "SELECT * FROM nope",
            "table nope is not known to Larder (missing or not replicated)",
        ),
        (
            "SELECT id + $1 FROM users",
            "parameters in the SELECT list are not supported",
        ),
        (
            "SELECT id FROM users LIMIT $1",
            "LIMIT with a parameter is not supported yet",
        ),
        (
            "SELECT id FROM users OFFSET $1",
            "OFFSET with a parameter is not supported yet",
        ),
        (
            "SELECT balance + score FROM users",
            "arithmetic mixing numeric and floating-point values is not supported",
        ),
        (
            "SELECT id FROM users WHERE code = 'x'",
            "comparisons on char(n) values are not supported yet (padding semantics)",
        ),
        (
            "SELECT id FROM users WHERE data = '{}'",
            "comparisons on json values are not supported",
        ),
        (
            "SELECT CASE WHEN active THEN 1 ELSE name END FROM users",
            "CASE of text and integer is not supported",
        ),
        ("SELECT 1", "a SELECT without FROM has nothing to cache"),
        (
            "SELECT id FROM users WHERE $1 IS NULL",
            "could not determine the type of parameter $1",
        ),
        (
            "SELECT id FROM users WHERE name = id",
            "comparison between text and integer is not supported",
        ),
        (
            "SELECT id FROM users ORDER BY 3",
            "ORDER BY position 3 is not in the select list",
        ),
        (
            "SELECT id FROM users ORDER BY data",
            "ORDER BY on a jsonb value is not supported",
        ),
        (
            "SELECT id FROM users WHERE id = ANY($1)",
            "ANY/ALL comparisons are not supported yet",
        ),
        (
            "SELECT score % 2 FROM users",
            "% on floating-point values is not supported",
        ),
        (
            "SELECT id FROM users WHERE age",
            "WHERE condition of type smallint is not boolean",
        ),
    ];
    for (sql, reason) in cases {
        let got = refuse(sql);
        assert!(got.contains(reason), "{sql}: {got}");
    }
}

#[test]
fn normalize_lower_resolve_end_to_end() {
    use crate::normalize::resolve_params;
    let n = normalize(
        "SELECT name FROM users WHERE id IN (1, 2, 2) AND created_at > '2024-01-01 10:00' AND name LIKE $1",
        Dialect::Postgres,
    )
    .unwrap();
    let p = lower(&n.query, &catalog(), &n.params).unwrap();
    assert_eq!(p.key_params, vec![0]);
    let bound = |i: usize| (i == 1).then(|| Value::Text("a%".into()));
    let values = resolve_params(&n.params, &bound, &p.param_types).unwrap();
    assert_eq!(
        values,
        vec![
            vec![Value::Int(1), Value::Int(2)],
            vec![Value::Timestamp(757_418_400_000_000)],
            vec![Value::Text("a%".into())],
        ]
    );
}

#[test]
fn untyped_parameter_positions_are_refused() {
    assert_eq!(
        refuse("SELECT id FROM users WHERE id = 1 ORDER BY $2"),
        "parameters in ORDER BY are not supported"
    );
}
