//! CASE, NULLIF, GREATEST/LEAST and the string, date/time and numeric functions: plan shape
//! and result types (values are checked against Postgres in dataflow/tests/pg_functions.rs).

use super::*;
use crate::plan::{BinaryOp, Func};
use crate::value::Value;

fn out_types(p: &CachePlan) -> Vec<SqlType> {
    p.output.iter().map(|o| o.ty.clone()).collect()
}

#[test]
fn case_lowers_to_func_case_with_else_and_common_type() {
    let p = plan("SELECT CASE WHEN age > 1 THEN 1 WHEN age < 0 THEN balance END FROM users");
    assert_eq!(out_types(&p), [SqlType::Numeric]);
    assert_eq!(names(&p), ["case"]);
    match &p.materialized()[0] {
        P::Func {
            func: Func::Case,
            args,
        } => {
            assert_eq!(args.len(), 5);
            assert_eq!(
                args[1],
                P::Cast {
                    expr: Box::new(P::Literal(Value::Int(1))),
                    ty: SqlType::Numeric
                }
            );
            assert_eq!(args[4], P::Literal(Value::Null));
        }
        other => panic!("{other:?}"),
    }
    // Simple CASE compares the subject with each WHEN value.
    let p = plan("SELECT CASE age WHEN 1 THEN 'a' ELSE 'b' END FROM users");
    match &p.materialized()[0] {
        P::Func { args, .. } => assert!(matches!(
            &args[0],
            P::Binary {
                op: BinaryOp::Eq,
                ..
            }
        )),
        other => panic!("{other:?}"),
    }
    assert_eq!(out_types(&p), [SqlType::Text]);
    // ELSE decides first: varchar then text stays varchar.
    let p = plan("SELECT CASE WHEN active THEN name ELSE email END FROM users");
    assert_eq!(out_types(&p), [SqlType::Varchar]);
    assert!(
        refuse("SELECT CASE WHEN active THEN name ELSE age END FROM users")
            .contains("CASE of smallint and text")
    );
    assert!(refuse("SELECT CASE WHEN age THEN 1 END FROM users").contains("boolean"));
}

#[test]
fn result_types_follow_postgres() {
    use SqlType as S;
    let cases: &[(&str, SqlType)] = &[
        ("nullif(age, 5)", S::Int2),
        ("nullif(id, balance)", S::Numeric),
        ("nullif(email, 'x')", S::Text),
        ("greatest(age, id)", S::Int4),
        ("least(score, balance)", S::Float8),
        ("lower(email)", S::Text),
        ("strpos(name, 'a')", S::Int4),
        ("octet_length(name)", S::Int4),
        ("starts_with(name, 'a')", S::Bool),
        ("concat(name, id, balance, active)", S::Text),
        ("date_trunc('week', created_at)", S::Timestamp),
        ("extract(epoch FROM created_at)", S::Numeric),
        ("date_part('year', created_at)", S::Float8),
        ("created_at::date + 1", S::Date),
        ("created_at::date - created_at::date", S::Int4),
        ("round(balance, 2)", S::Numeric),
        ("round(age)", S::Float8),
        ("ceil(balance)", S::Numeric),
        ("floor(score)", S::Float8),
        ("mod(age, age)", S::Int2),
        ("mod(age, 3)", S::Int4),
        ("mod(org_id, balance)", S::Numeric),
        ("@ balance", S::Numeric),
        ("balance::int8", S::Int8),
        ("name::numeric", S::Numeric),
        ("name::date", S::Date),
    ];
    for (e, ty) in cases {
        let p = plan(&format!("SELECT {e} FROM users"));
        assert_eq!(&out_types(&p)[0], ty, "{e}");
    }
}

#[test]
fn refusals_say_why() {
    let cases = [
        ("upper(code)", "upper() on character values"),
        ("date_trunc(name, created_at)", "literal unit"),
        ("date_trunc('julian', created_at)", "unit \"julian\""),
        ("date_part('timezone', created_at)", "unit \"timezone\""),
        ("date_trunc('day', '2020-01-01')", "untyped literal"),
        ("substr(name, org_id)", "bigint where integer is expected"),
        ("created_at + 1", "no interval type"),
        ("created_at::date + org_id", "no interval type"),
        ("to_char(balance, '999')", "locale"),
        ("greatest(data, data)", "json"),
        ("nullif(name, age)", "comparison between text and smallint"),
        ("concat(created_at)", "concat() of timestamp"),
    ];
    for (e, reason) in cases {
        let why = refuse(&format!("SELECT {e} FROM users"));
        assert!(why.contains(reason), "{e}: {why}");
    }
}
