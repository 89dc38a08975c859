//! Keyed shapes over a random input, as lowering plans them for a WHERE equality `k = $1`
//! on a column the query does not output:
//!
//! - `SELECT DISTINCT o... WHERE k = $1`: a Distinct over (k, o...);
//! - `SELECT g..., aggs WHERE k = $1 GROUP BY g... [HAVING]`: grouped by (g..., k);
//! - `SELECT f(aggs) WHERE k = $1 [HAVING]`: grouped by k, with the empty-key row, HAVING in
//!   the residual, sometimes ORDER BY/LIMIT/OFFSET.
//!
//! Each is checked per key value (every value present, one absent, NULL) against the SQL
//! query itself: the input filtered by `k = value`, then the unkeyed DISTINCT or aggregate.

use larder_dataflow::{ReadError, ReaderHandle};
use larder_sql::plan::{
    BinaryOp, CachePlan, EmptyKeyRow, Expr, Func, NodeOp, OrderKey, OutputColumn, PlanNode,
};
use larder_sql::value::{sql_eq, Row, SqlType, Value};
use rand::rngs::StdRng;
use rand::Rng;

use super::{evaluate, random_aggregates, relations, sorted};

/// The SQL query of a keyed plan, for one key value at a time.
pub struct Reference {
    nodes: Vec<PlanNode>,
    /// The node that is `WHERE k = <value>`; the nodes before it are the input.
    filter: usize,
    key: usize,
    key_ty: SqlType,
}

fn node(op: NodeOp, types: Vec<SqlType>) -> PlanNode {
    PlanNode { op, types }
}

fn nodes_plan(nodes: Vec<PlanNode>) -> CachePlan {
    CachePlan {
        relations: relations(),
        nodes,
        key: vec![],
        key_params: vec![],
        residual: None,
        order_by: vec![],
        offset: 0,
        limit: None,
        output: vec![],
        param_types: vec![],
        fixed_params: vec![],
        single_value_params: vec![],
        empty_key_row: None,
        range: None,
        key_collations: vec![],
    }
}

struct Builder<'r> {
    rng: &'r mut StdRng,
    /// The keyed plan's nodes, and the reference's (both start with the input).
    keyed: Vec<PlanNode>,
    reference: Vec<PlanNode>,
    input: usize,
    filter: usize,
    key: usize,
    types: Vec<SqlType>,
}

/// The keyed plan and its reference, over the random input `nodes`.
pub fn shape(rng: &mut StdRng, nodes: Vec<PlanNode>) -> (CachePlan, Reference) {
    let input = nodes.len() - 1;
    let types = nodes[input].types.clone();
    let key = rng.gen_range(0..types.len());
    let mut reference = nodes.clone();
    reference.push(node(
        NodeOp::Filter {
            input,
            predicate: Expr::Literal(Value::Bool(true)),
        },
        types.clone(),
    ));
    let mut b = Builder {
        rng,
        keyed: nodes,
        reference,
        input,
        filter: input + 1,
        key,
        types: types.clone(),
    };
    let mut plan = match b.rng.gen_range(0..3) {
        0 => b.distinct(),
        1 if types.len() > 1 => b.grouped(),
        _ => b.global(),
    };
    plan.nodes = b.keyed;
    plan.key = vec![0];
    plan.key_params = vec![0];
    plan.param_types = vec![types[key].clone()];
    plan.single_value_params = vec![0];
    let reader_types = plan.reader_types().to_vec();
    plan.output = (1..reader_types.len())
        .map(|i| OutputColumn {
            column: i,
            name: format!("o{i}"),
            ty: reader_types[i].clone(),
        })
        .collect();
    let reference = Reference {
        nodes: b.reference,
        filter: b.filter,
        key,
        key_ty: types[key].clone(),
    };
    (plan, reference)
}

impl Builder<'_> {
    fn push_keyed(&mut self, op: NodeOp, types: Vec<SqlType>) -> usize {
        self.keyed.push(node(op, types));
        self.keyed.len() - 1
    }

    fn push_reference(&mut self, op: NodeOp, types: Vec<SqlType>) -> usize {
        self.reference.push(node(op, types));
        self.reference.len() - 1
    }

    fn picks(&mut self, from: &[usize], max: usize) -> Vec<usize> {
        (0..self.rng.gen_range(1..=max))
            .map(|_| from[self.rng.gen_range(0..from.len())])
            .collect()
    }

    /// `SELECT DISTINCT o...`: Project (k, o...) -> Distinct.
    fn distinct(&mut self) -> CachePlan {
        let all: Vec<usize> = (0..self.types.len()).collect();
        let outputs = self.picks(&all, 3);
        let out_types: Vec<SqlType> = outputs.iter().map(|&c| self.types[c].clone()).collect();
        let mut exprs = vec![Expr::Column(self.key)];
        exprs.extend(outputs.iter().map(|&c| Expr::Column(c)));
        let types = [vec![self.types[self.key].clone()], out_types.clone()].concat();
        let p = self.push_keyed(
            NodeOp::Project {
                input: self.input,
                exprs,
            },
            types.clone(),
        );
        self.push_keyed(NodeOp::Distinct { input: p }, types);
        let exprs = outputs.iter().map(|&c| Expr::Column(c)).collect();
        let p = self.push_reference(
            NodeOp::Project {
                input: self.filter,
                exprs,
            },
            out_types.clone(),
        );
        self.push_reference(NodeOp::Distinct { input: p }, out_types);
        nodes_plan(vec![])
    }

    /// `SELECT g..., aggs GROUP BY g... [HAVING agg IS NOT NULL]`.
    fn grouped(&mut self) -> CachePlan {
        let others: Vec<usize> = (0..self.types.len()).filter(|&c| c != self.key).collect();
        let groups = self.picks(&others, 2);
        let (aggregates, agg_types) = random_aggregates(self.rng, &self.types);
        let group_types: Vec<SqlType> = groups.iter().map(|&g| self.types[g].clone()).collect();
        let having = self
            .rng
            .gen_bool(0.3)
            .then(|| self.rng.gen_range(0..aggregates.len()));
        let not_null = |c: usize| Expr::IsNull {
            expr: Box::new(Expr::Column(c)),
            negated: true,
        };
        let n = groups.len();
        // Keyed: grouped by (g..., k); the reader row is (k, g..., aggs).
        let key_ty = self.types[self.key].clone();
        let agg_out = [group_types.clone(), vec![key_ty.clone()], agg_types.clone()].concat();
        let mut a = self.push_keyed(
            NodeOp::Aggregate {
                input: self.input,
                group_by: [groups.clone(), vec![self.key]].concat(),
                aggregates: aggregates.clone(),
            },
            agg_out.clone(),
        );
        if let Some(j) = having {
            let predicate = not_null(n + 1 + j);
            a = self.push_keyed(
                NodeOp::Filter {
                    input: a,
                    predicate,
                },
                agg_out,
            );
        }
        let mut exprs = vec![Expr::Column(n)];
        exprs.extend((0..n).map(Expr::Column));
        exprs.extend((0..aggregates.len()).map(|j| Expr::Column(n + 1 + j)));
        let reader = [vec![key_ty], group_types.clone(), agg_types.clone()].concat();
        self.push_keyed(NodeOp::Project { input: a, exprs }, reader);
        // Reference: grouped by g... after the filter.
        let ref_out = [group_types, agg_types].concat();
        let a = self.push_reference(
            NodeOp::Aggregate {
                input: self.filter,
                group_by: groups,
                aggregates,
            },
            ref_out.clone(),
        );
        if let Some(j) = having {
            let predicate = not_null(n + j);
            self.push_reference(
                NodeOp::Filter {
                    input: a,
                    predicate,
                },
                ref_out,
            );
        }
        nodes_plan(vec![])
    }

    /// A select-list expression over aggregate column `c` of type `ty`.
    fn select_expr(&mut self, c: usize, ty: &SqlType) -> Expr {
        let fallback = match ty {
            SqlType::Int8 | SqlType::Int4 => Some(Value::Int(-1)),
            SqlType::Numeric => Some(Value::Numeric("0.00".into())),
            SqlType::Text => Some(Value::Text("none".into())),
            _ => None,
        };
        match (self.rng.gen_range(0..3), ty, fallback) {
            (0, SqlType::Int8, _) => Expr::Binary {
                op: BinaryOp::Add,
                left: Box::new(Expr::Column(c)),
                right: Box::new(Expr::Literal(Value::Int(1))),
                ty: SqlType::Int8,
            },
            (1, _, Some(v)) => Expr::Func {
                func: Func::Coalesce,
                args: vec![Expr::Column(c), Expr::Literal(v)],
            },
            _ => Expr::Column(c),
        }
    }

    /// `SELECT f(aggs)` with no GROUP BY: grouped by k, with the empty-key row.
    fn global(&mut self) -> CachePlan {
        let (aggregates, agg_types) = random_aggregates(self.rng, &self.types);
        let key_ty = self.types[self.key].clone();
        let mut exprs = Vec::new();
        for (j, ty) in agg_types.iter().enumerate() {
            exprs.push(self.select_expr(j, ty));
        }
        let shift = |e: &Expr| shift_columns(e, 1);
        let a = self.push_keyed(
            NodeOp::Aggregate {
                input: self.input,
                group_by: vec![self.key],
                aggregates: aggregates.clone(),
            },
            [vec![key_ty.clone()], agg_types.clone()].concat(),
        );
        let mut keyed_exprs = vec![Expr::Column(0)];
        keyed_exprs.extend(exprs.iter().map(shift));
        self.push_keyed(
            NodeOp::Project {
                input: a,
                exprs: keyed_exprs,
            },
            [vec![key_ty], agg_types.clone()].concat(),
        );
        let r = self.push_reference(
            NodeOp::Aggregate {
                input: self.filter,
                group_by: vec![],
                aggregates,
            },
            agg_types.clone(),
        );
        let r = self.push_reference(NodeOp::Project { input: r, exprs }, agg_types.clone());
        let mut plan = nodes_plan(vec![]);
        plan.empty_key_row = Some(EmptyKeyRow { aggregate: a });
        if self.rng.gen_bool(0.4) {
            // HAVING: per read in the keyed plan, a Filter in the SQL query.
            let c = self.rng.gen_range(0..agg_types.len());
            let negated = self.rng.gen_bool(0.5);
            let having = |c: usize| Expr::IsNull {
                expr: Box::new(Expr::Column(c)),
                negated,
            };
            plan.residual = Some(having(c + 1));
            self.push_reference(
                NodeOp::Filter {
                    input: r,
                    predicate: having(c),
                },
                agg_types,
            );
        }
        if self.rng.gen_bool(0.3) {
            plan.order_by = vec![OrderKey {
                column: 1,
                descending: self.rng.gen_bool(0.5),
                nulls_first: self.rng.gen_bool(0.5),
            }];
            plan.limit = Some(self.rng.gen_range(0..=1));
            plan.offset = self.rng.gen_range(0..=1);
        }
        plan
    }
}

/// `e` with every column index increased by `by`.
fn shift_columns(e: &Expr, by: usize) -> Expr {
    match e {
        Expr::Column(c) => Expr::Column(c + by),
        Expr::Binary {
            op,
            left,
            right,
            ty,
        } => Expr::Binary {
            op: *op,
            left: Box::new(shift_columns(left, by)),
            right: Box::new(shift_columns(right, by)),
            ty: ty.clone(),
        },
        Expr::Func { func, args } => Expr::Func {
            func: *func,
            args: args.iter().map(|a| shift_columns(a, by)).collect(),
        },
        other => other.clone(),
    }
}

impl Reference {
    /// The SQL query's rows for `key = value`, after OFFSET/LIMIT.
    fn expected(&self, value: &Value, tables: &[Vec<Row>], plan: &CachePlan) -> Vec<Row> {
        let mut nodes = self.nodes.clone();
        let predicate = match value {
            Value::Null => Expr::Literal(Value::Bool(false)),
            v => Expr::Binary {
                op: BinaryOp::Eq,
                left: Box::new(Expr::Column(self.key)),
                right: Box::new(Expr::Literal(v.clone())),
                ty: SqlType::Bool,
            },
        };
        if let NodeOp::Filter { predicate: p, .. } = &mut nodes[self.filter].op {
            *p = predicate;
        }
        let rows = evaluate(&nodes_plan(nodes), tables);
        assert!(
            plan.limit.is_none() || rows.len() <= 1,
            "only ordered when one row"
        );
        rows.into_iter()
            .skip(plan.offset)
            .take(plan.limit.unwrap_or(usize::MAX))
            .collect()
    }

    /// Reads every key value (present ones, an absent one, NULL) and compares.
    pub fn check(&self, plan: &CachePlan, handle: &ReaderHandle, tables: &[Vec<Row>], ctx: &str) {
        let stats = handle.stats().expect("cache is live");
        assert!(
            !stats.poisoned_all && stats.poisoned_keys == 0,
            "{ctx}: unexpected poison {stats:?}"
        );
        let absent = match self.key_ty {
            SqlType::Text => Value::Text("zz".into()),
            SqlType::Numeric => Value::Numeric("77.00".into()),
            _ => Value::Int(99),
        };
        let mut values = vec![Value::Null, absent];
        let input = evaluate(&nodes_plan(self.nodes[..self.filter].to_vec()), tables);
        for row in input {
            let v = &row[self.key];
            if !v.is_null() && !values.iter().any(|x| sql_eq(x, v) == Some(true)) {
                values.push(v.clone());
            }
        }
        for v in &values {
            let got = handle
                .read(&[vec![v.clone()]])
                .unwrap_or_else(|e| panic!("{ctx}: read {v:?}: {e}"));
            let expected = self.expected(v, tables, plan);
            assert_eq!(
                sorted(got),
                sorted(expected),
                "{ctx}: key {v:?} differs\nplan {plan:#?}"
            );
        }
        assert_eq!(
            handle.read(&[vec![Value::Int(0), Value::Int(1)]]),
            Err(ReadError::NotOneValue { slot: 0 }),
            "{ctx}: several values in a single-value slot"
        );
    }
}
