//! Postgres semantics of expression evaluation (expected values checked against Postgres
//! documentation and behaviour: three-valued logic, integer widths, LIKE escapes).

use larder_dataflow::{CompiledExpr, EvalError, ExprContext};
use larder_sql::plan::{BinaryOp, Expr, Func, UnaryOp};
use larder_sql::value::{SqlType, Value};

fn col(i: usize) -> Expr {
    Expr::Column(i)
}

fn lit(v: Value) -> Expr {
    Expr::Literal(v)
}

fn int(i: i64) -> Expr {
    lit(Value::Int(i))
}

fn text(s: &str) -> Expr {
    lit(Value::Text(s.into()))
}

fn null() -> Expr {
    lit(Value::Null)
}

fn bin(op: BinaryOp, l: Expr, r: Expr, ty: SqlType) -> Expr {
    Expr::Binary {
        op,
        left: Box::new(l),
        right: Box::new(r),
        ty,
    }
}

fn eval_with(expr: &Expr, types: &[SqlType], row: &[Value]) -> Result<Value, EvalError> {
    let ctx = ExprContext {
        columns: types,
        params: Some(&[]),
    };
    let compiled = CompiledExpr::compile(expr, &ctx).expect("compiles");
    compiled.eval(row, &[]).map(|v| v.into_owned())
}

fn eval(expr: &Expr) -> Result<Value, EvalError> {
    eval_with(expr, &[], &[])
}

fn b(v: bool) -> Result<Value, EvalError> {
    Ok(Value::Bool(v))
}

#[test]
fn three_valued_logic() {
    let t = || lit(Value::Bool(true));
    let f = || lit(Value::Bool(false));
    let and = |l, r| bin(BinaryOp::And, l, r, SqlType::Bool);
    let or = |l, r| bin(BinaryOp::Or, l, r, SqlType::Bool);
    assert_eq!(eval(&and(null(), f())), b(false));
    assert_eq!(eval(&and(null(), t())), Ok(Value::Null));
    assert_eq!(eval(&or(null(), t())), b(true));
    assert_eq!(eval(&or(null(), f())), Ok(Value::Null));
    let not_null = Expr::Unary {
        op: UnaryOp::Not,
        expr: Box::new(null()),
    };
    assert_eq!(eval(&not_null), Ok(Value::Null));
    // An error on one side is forgiven only when the other side decides.
    let div0 = bin(BinaryOp::Div, int(1), int(0), SqlType::Int4);
    let err_cmp = bin(BinaryOp::Eq, div0, int(1), SqlType::Bool);
    assert_eq!(eval(&and(err_cmp.clone(), f())), b(false));
    assert_eq!(eval(&or(t(), err_cmp.clone())), b(true));
    assert_eq!(eval(&and(err_cmp, t())), Err(EvalError::DivisionByZero));
}

#[test]
fn comparisons_with_null_and_mixed_numbers() {
    assert_eq!(
        eval(&bin(BinaryOp::Eq, int(1), null(), SqlType::Bool)),
        Ok(Value::Null)
    );
    assert_eq!(
        eval(&bin(
            BinaryOp::Lt,
            int(1),
            lit(Value::Float(1.5)),
            SqlType::Bool
        )),
        b(true)
    );
    assert_eq!(
        eval(&bin(
            BinaryOp::Eq,
            int(2),
            lit(Value::Numeric("2.00".into())),
            SqlType::Bool
        )),
        b(true)
    );
    assert!(matches!(
        eval(&bin(BinaryOp::Eq, int(2), text("2"), SqlType::Bool)),
        Err(EvalError::TypeMismatch(_))
    ));
    // char(n) compares without its padding.
    assert_eq!(
        eval_with(
            &bin(BinaryOp::Eq, col(0), text("ab"), SqlType::Bool),
            &[SqlType::Bpchar],
            &[Value::Text("ab  ".into())]
        ),
        b(true)
    );
}

#[test]
fn integer_arithmetic_checks_width() {
    let add4 = bin(BinaryOp::Add, int(i32::MAX as i64), int(1), SqlType::Int4);
    assert_eq!(eval(&add4), Err(EvalError::OutOfRange("integer")));
    let add8 = bin(BinaryOp::Add, int(i32::MAX as i64), int(1), SqlType::Int8);
    assert_eq!(eval(&add8), Ok(Value::Int(i32::MAX as i64 + 1)));
    let mul2 = bin(BinaryOp::Mul, int(200), int(200), SqlType::Int2);
    assert_eq!(eval(&mul2), Err(EvalError::OutOfRange("smallint")));
    let mul8 = bin(BinaryOp::Mul, int(i64::MAX), int(2), SqlType::Int8);
    assert_eq!(eval(&mul8), Err(EvalError::OutOfRange("bigint")));
    assert_eq!(
        eval(&bin(BinaryOp::Div, int(-7), int(2), SqlType::Int4)),
        Ok(Value::Int(-3))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Mod, int(-7), int(2), SqlType::Int4)),
        Ok(Value::Int(-1))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Mod, int(7), int(-2), SqlType::Int4)),
        Ok(Value::Int(1))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Div, int(1), int(0), SqlType::Int4)),
        Err(EvalError::DivisionByZero)
    );
    assert_eq!(
        eval(&bin(BinaryOp::Mod, int(1), int(0), SqlType::Int4)),
        Err(EvalError::DivisionByZero)
    );
    // i32::MIN / -1 overflows int4; i64::MIN % -1 is 0.
    assert_eq!(
        eval(&bin(
            BinaryOp::Div,
            int(i32::MIN as i64),
            int(-1),
            SqlType::Int4
        )),
        Err(EvalError::OutOfRange("integer"))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Mod, int(i64::MIN), int(-1), SqlType::Int8)),
        Ok(Value::Int(0))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Add, int(1), null(), SqlType::Int4)),
        Ok(Value::Null)
    );
    // Unary minus and abs overflow at the operand's width.
    let neg = Expr::Unary {
        op: UnaryOp::Neg,
        expr: Box::new(col(0)),
    };
    assert_eq!(
        eval_with(&neg, &[SqlType::Int2], &[Value::Int(-32768)]),
        Err(EvalError::OutOfRange("smallint"))
    );
    assert_eq!(
        eval_with(&neg, &[SqlType::Int4], &[Value::Int(-32768)]),
        Ok(Value::Int(32768))
    );
    let abs = Expr::Func {
        func: Func::Abs,
        args: vec![col(0)],
    };
    assert_eq!(
        eval_with(&abs, &[SqlType::Int4], &[Value::Int(i32::MIN as i64)]),
        Err(EvalError::OutOfRange("integer"))
    );
    assert_eq!(
        eval_with(&abs, &[SqlType::Float8], &[Value::Float(-2.5)]),
        Ok(Value::Float(2.5))
    );
}

#[test]
fn float_arithmetic() {
    let f = |x: f64| lit(Value::Float(x));
    assert_eq!(
        eval(&bin(BinaryOp::Mul, f(1.5), int(2), SqlType::Float8)),
        Ok(Value::Float(3.0))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Mul, f(1e300), f(1e300), SqlType::Float8)),
        Err(EvalError::OutOfRange("double precision"))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Mul, f(1e-300), f(1e-300), SqlType::Float8)),
        Err(EvalError::OutOfRange("double precision"))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Div, f(1.0), f(0.0), SqlType::Float8)),
        Err(EvalError::DivisionByZero)
    );
    assert_eq!(
        eval(&bin(BinaryOp::Mul, f(1e30), f(1e30), SqlType::Float4)),
        Err(EvalError::OutOfRange("real"))
    );
}

fn num(s: &str) -> Expr {
    lit(Value::Numeric(s.into()))
}

fn numeric_op(op: BinaryOp, l: Expr, r: Expr) -> Result<Value, EvalError> {
    eval(&bin(op, l, r, SqlType::Numeric))
}

#[test]
fn numeric_arithmetic_uses_postgres_scales() {
    // Expected values printed by Postgres 15 (`select 1.5 + 1`, ...).
    let n = |s: &str| Ok(Value::Numeric(s.into()));
    assert_eq!(numeric_op(BinaryOp::Add, num("1.5"), int(1)), n("2.5"));
    assert_eq!(numeric_op(BinaryOp::Sub, int(1), num("0.25")), n("0.75"));
    assert_eq!(
        numeric_op(BinaryOp::Mul, num("1.10"), num("3.0")),
        n("3.300")
    );
    assert_eq!(
        numeric_op(BinaryOp::Div, int(1), num("3")),
        n("0.33333333333333333333")
    );
    assert_eq!(
        numeric_op(BinaryOp::Div, num("10"), int(4)),
        n("2.5000000000000000")
    );
    assert_eq!(numeric_op(BinaryOp::Mod, num("7.5"), int(2)), n("1.5"));
    assert_eq!(
        numeric_op(BinaryOp::Div, num("1.5"), num("0.0")),
        Err(EvalError::DivisionByZero)
    );
    assert_eq!(
        numeric_op(BinaryOp::Add, num("1"), lit(Value::Null)),
        Ok(Value::Null)
    );
    assert!(matches!(
        numeric_op(BinaryOp::Add, num("NaN"), int(1)),
        Err(EvalError::Unsupported(_))
    ));
    assert!(matches!(
        numeric_op(
            BinaryOp::Mul,
            num("99999999999999999999999"),
            num("99999999999999999999999")
        ),
        Err(EvalError::Unsupported(_))
    ));
    let neg = Expr::Unary {
        op: larder_sql::plan::UnaryOp::Neg,
        expr: Box::new(num("1.50")),
    };
    assert_eq!(eval(&neg), n("-1.50"));
    let abs = Expr::Func {
        func: larder_sql::plan::Func::Abs,
        args: vec![num("-0.50")],
    };
    assert_eq!(eval(&abs), n("0.50"));
}

#[test]
fn concat_length_coalesce() {
    assert_eq!(
        eval(&bin(
            BinaryOp::Concat,
            text("ab"),
            text("cd"),
            SqlType::Text
        )),
        Ok(Value::Text("abcd".into()))
    );
    assert_eq!(
        eval(&bin(BinaryOp::Concat, text("ab"), null(), SqlType::Text)),
        Ok(Value::Null)
    );
    assert_eq!(
        eval(&bin(BinaryOp::Concat, text("n"), int(5), SqlType::Text)),
        Ok(Value::Text("n5".into()))
    );
    assert!(eval(&bin(
        BinaryOp::Concat,
        text("n"),
        lit(Value::Float(0.1)),
        SqlType::Text
    ))
    .is_err());
    let len = |e| Expr::Func {
        func: Func::Length,
        args: vec![e],
    };
    assert_eq!(eval(&len(text("héllo"))), Ok(Value::Int(5)));
    assert_eq!(eval(&len(null())), Ok(Value::Null));
    assert_eq!(
        eval_with(
            &len(col(0)),
            &[SqlType::Bpchar],
            &[Value::Text("ab   ".into())]
        ),
        Ok(Value::Int(2))
    );
    let coalesce = Expr::Func {
        func: Func::Coalesce,
        args: vec![
            null(),
            int(3),
            bin(BinaryOp::Div, int(1), int(0), SqlType::Int4),
        ],
    };
    // Lazy: the failing third argument is never evaluated.
    assert_eq!(eval(&coalesce), Ok(Value::Int(3)));
}

fn like(s: Expr, p: &str, ci: bool) -> Expr {
    Expr::Like {
        expr: Box::new(s),
        pattern: Box::new(text(p)),
        negated: false,
        case_insensitive: ci,
    }
}

#[test]
fn like_and_ilike() {
    assert_eq!(eval(&like(text("Hello"), "H%o", false)), b(true));
    assert_eq!(eval(&like(text("Hello"), "h%o", false)), b(false));
    assert_eq!(eval(&like(text("Hello"), "h%O", true)), b(true));
    assert_eq!(eval(&like(text("a%b"), "a\\%b", false)), b(true));
    assert_eq!(eval(&like(text("axb"), "a\\%b", false)), b(false));
    assert_eq!(eval(&like(null(), "%", false)), Ok(Value::Null));
    assert!(matches!(
        eval(&like(text("Été"), "été", true)),
        Err(EvalError::Unsupported(_))
    ));
    assert!(matches!(
        eval(&like(text("x"), "x\\", false)),
        Err(EvalError::InvalidInput(_))
    ));
    let not_like = Expr::Like {
        expr: Box::new(text("abc")),
        pattern: Box::new(text("a_c")),
        negated: true,
        case_insensitive: false,
    };
    assert_eq!(eval(&not_like), b(false));
}

#[test]
fn between_and_in() {
    let between = |x: Expr, lo: Expr, hi: Expr, negated| Expr::Between {
        expr: Box::new(x),
        low: Box::new(lo),
        high: Box::new(hi),
        negated,
    };
    assert_eq!(eval(&between(int(2), int(1), int(3), false)), b(true));
    assert_eq!(eval(&between(int(3), int(1), int(3), false)), b(true));
    assert_eq!(eval(&between(int(4), int(1), int(3), true)), b(true));
    assert_eq!(eval(&between(int(4), null(), int(3), false)), b(false));
    assert_eq!(
        eval(&between(int(2), null(), int(3), false)),
        Ok(Value::Null)
    );
    let in_list = |x: Expr, list: Vec<Expr>, negated| Expr::InList {
        expr: Box::new(x),
        list,
        negated,
    };
    assert_eq!(eval(&in_list(int(1), vec![int(1), null()], false)), b(true));
    assert_eq!(
        eval(&in_list(int(2), vec![int(1), null()], false)),
        Ok(Value::Null)
    );
    assert_eq!(
        eval(&in_list(int(2), vec![int(1), null()], true)),
        Ok(Value::Null)
    );
    assert_eq!(eval(&in_list(int(2), vec![int(1), int(3)], true)), b(true));
    assert_eq!(eval(&in_list(null(), vec![int(1)], false)), Ok(Value::Null));
}

/// A parameter inside an IN list stands for every value of its slot (a collapsed literal
/// list): `k = 2 AND k IN (2, 3)` plans `k IN ($2)` as a residual with slot 2 = [2, 3].
#[test]
fn a_parameter_in_an_in_list_is_all_of_its_values() {
    let expr = Expr::InList {
        expr: Box::new(col(0)),
        list: vec![Expr::Param(0)],
        negated: false,
    };
    let ctx = ExprContext {
        columns: &[SqlType::Int4],
        params: Some(&[SqlType::Int4]),
    };
    let compiled = CompiledExpr::compile(&expr, &ctx).expect("compiles");
    let params = vec![vec![Value::Int(2), Value::Int(3)]];
    let at = |k: i64| {
        compiled
            .eval(&[Value::Int(k)], &params)
            .map(|v| v.into_owned())
    };
    assert_eq!(at(3), b(true));
    assert_eq!(at(2), b(true));
    assert_eq!(at(4), b(false));
}

#[test]
fn casts() {
    let cast = |e: Expr, ty| Expr::Cast {
        expr: Box::new(e),
        ty,
    };
    assert_eq!(
        eval(&cast(int(70000), SqlType::Int2)),
        Err(EvalError::OutOfRange("smallint"))
    );
    assert_eq!(eval(&cast(int(3), SqlType::Float8)), Ok(Value::Float(3.0)));
    assert_eq!(
        eval(&cast(lit(Value::Float(2.5)), SqlType::Int8)),
        Ok(Value::Int(2))
    );
    assert_eq!(eval(&cast(text("42"), SqlType::Int4)), Ok(Value::Int(42)));
    assert!(eval(&cast(text("4x"), SqlType::Int4)).is_err());
    assert!(eval(&cast(lit(Value::Float(0.1)), SqlType::Text)).is_err());
    // ISO dates are read exactly; other spellings depend on DateStyle and are not evaluated.
    assert_eq!(
        eval(&cast(text("2000-01-02"), SqlType::Date)),
        Ok(Value::Date(1))
    );
    assert!(eval(&cast(text("01/02/2000"), SqlType::Date)).is_err());
    assert!(eval(&cast(text(" 2000-01-02"), SqlType::Date)).is_err());
}

#[test]
fn params_must_be_single_values() {
    let ctx = ExprContext {
        columns: &[SqlType::Int4],
        params: Some(&[SqlType::Int4]),
    };
    let e = CompiledExpr::compile(
        &bin(BinaryOp::Gt, col(0), Expr::Param(0), SqlType::Bool),
        &ctx,
    )
    .expect("compiles");
    let row = [Value::Int(5)];
    assert_eq!(
        e.eval_predicate(&row, &[vec![Value::Int(3)]]),
        Ok(Some(true))
    );
    assert_eq!(
        e.eval_predicate(&row, &[vec![Value::Int(3), Value::Int(4)]]),
        Err(EvalError::ParamNotSingle(0))
    );
    assert_eq!(e.eval_predicate(&row, &[]), Err(EvalError::ParamMissing(0)));
    // Parameters and out-of-range columns are rejected at compile time.
    let no_params = ExprContext {
        columns: &[SqlType::Int4],
        params: None,
    };
    assert!(CompiledExpr::compile(&Expr::Param(0), &no_params).is_err());
    assert!(CompiledExpr::compile(&col(1), &no_params).is_err());
}

#[test]
fn char_n_like_uses_padding_and_concat_of_bool() {
    // Verified against Postgres 15: `'ab'::char(4) LIKE 'ab'` is false, `|| true` is 'true'.
    let types = [SqlType::Bpchar];
    let row = [Value::Text("ab  ".into())];
    assert_eq!(
        eval_with(&like(col(0), "ab", false), &types, &row),
        b(false)
    );
    assert_eq!(
        eval_with(&like(col(0), "AB  ", true), &types, &row),
        b(true)
    );
    assert_eq!(
        eval(&bin(
            BinaryOp::Concat,
            text("a"),
            lit(Value::Bool(true)),
            SqlType::Text
        )),
        Ok(Value::Text("atrue".into()))
    );
    let padded_concat = bin(BinaryOp::Concat, col(0), text("x"), SqlType::Text);
    assert_eq!(
        eval_with(&padded_concat, &types, &row),
        Ok(Value::Text("abx".into()))
    );
}
