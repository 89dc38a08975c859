//! Random plans over the test's tables: every node kind, nested, and plans that share a
//! prefix of an existing cache's nodes.

use larder_sql::plan::{
    AggFunc, Aggregate, BinaryOp, CachePlan, Expr, JoinKind, NodeOp, OrderKey, OutputColumn,
    PlanNode, TableRef,
};
use larder_sql::value::{SqlType, Value};
use rand::rngs::StdRng;
use rand::Rng;

use super::{keyed, table_types, TABLES};
use SqlType::{Int4, Numeric, Text};

pub struct PlanGen<'a> {
    pub rng: &'a mut StdRng,
    pub nodes: Vec<PlanNode>,
}

fn column(i: usize) -> Expr {
    Expr::Column(i)
}

fn lit(v: Value) -> Expr {
    Expr::Literal(v)
}

fn bin(op: BinaryOp, l: Expr, r: Expr, ty: SqlType) -> Expr {
    Expr::Binary {
        op,
        left: Box::new(l),
        right: Box::new(r),
        ty,
    }
}

fn same_family(a: &SqlType, b: &SqlType) -> bool {
    let int = |t: &SqlType| matches!(t, SqlType::Int2 | SqlType::Int4 | SqlType::Int8);
    a == b || (int(a) && int(b))
}

impl PlanGen<'_> {
    pub fn push(&mut self, op: NodeOp, types: Vec<SqlType>) -> usize {
        self.nodes.push(PlanNode { op, types });
        self.nodes.len() - 1
    }

    pub fn types(&self, n: usize) -> Vec<SqlType> {
        self.nodes[n].types.clone()
    }

    pub fn pick_col(&mut self, n: usize) -> usize {
        let w = self.nodes[n].types.len();
        self.rng.gen_range(0..w)
    }

    pub fn base(&mut self) -> usize {
        let relation = self.rng.gen_range(0..TABLES);
        self.push(NodeOp::Base { relation }, table_types(relation))
    }

    pub fn sub(&mut self, depth: usize) -> usize {
        if depth == 0 {
            return self.base();
        }
        match self.rng.gen_range(0..12) {
            0 => self.base(),
            1 | 2 => {
                let input = self.sub(depth - 1);
                self.filter(input)
            }
            3 => {
                let input = self.sub(depth - 1);
                self.project(input)
            }
            4 | 5 => self.join(depth),
            6 => self.semijoin(depth),
            7 | 8 => {
                let input = self.sub(depth - 1);
                self.aggregate(input)
            }
            9 => {
                let input = self.sub(depth - 1);
                self.push(NodeOp::Distinct { input }, self.types(input))
            }
            10 => {
                let input = self.sub(depth - 1);
                self.topk(input)
            }
            _ => {
                let input = self.sub(depth - 1);
                let other = if self.rng.gen_bool(0.5) {
                    input
                } else {
                    self.filter(input)
                };
                self.push(
                    NodeOp::Union {
                        inputs: vec![input, other],
                    },
                    self.types(input),
                )
            }
        }
    }

    pub fn filter(&mut self, input: usize) -> usize {
        let c = self.pick_col(input);
        let ty = self.nodes[input].types[c].clone();
        let predicate = match (&ty, self.rng.gen_range(0..3)) {
            (_, 0) => Expr::IsNull {
                expr: Box::new(column(c)),
                negated: true,
            },
            (Text, _) => bin(
                BinaryOp::NotEq,
                column(c),
                lit(Value::Text("b".into())),
                SqlType::Bool,
            ),
            (Numeric, _) => bin(
                BinaryOp::Gt,
                column(c),
                lit(Value::Numeric("0.00".into())),
                SqlType::Bool,
            ),
            (SqlType::Int2 | Int4 | SqlType::Int8, _) => {
                bin(BinaryOp::LtEq, column(c), lit(Value::Int(1)), SqlType::Bool)
            }
            _ => Expr::IsNull {
                expr: Box::new(column(c)),
                negated: false,
            },
        };
        self.push(NodeOp::Filter { input, predicate }, self.types(input))
    }

    pub fn project(&mut self, input: usize) -> usize {
        let types = self.types(input);
        let mut exprs = Vec::new();
        let mut out = Vec::new();
        for _ in 0..self.rng.gen_range(1..=types.len().min(4)) {
            let c = self.rng.gen_range(0..types.len());
            let (e, t) = match (&types[c], self.rng.gen_range(0..3)) {
                (Int4, 0) => (
                    bin(BinaryOp::Add, column(c), lit(Value::Int(1)), Int4),
                    Int4,
                ),
                (Numeric, 0) => (
                    bin(
                        BinaryOp::Mul,
                        column(c),
                        lit(Value::Numeric("2.5".into())),
                        Numeric,
                    ),
                    Numeric,
                ),
                (Numeric, 1) => (
                    bin(BinaryOp::Add, column(c), lit(Value::Int(3)), Numeric),
                    Numeric,
                ),
                (t, _) => (column(c), t.clone()),
            };
            exprs.push(e);
            out.push(t);
        }
        self.push(NodeOp::Project { input, exprs }, out)
    }

    /// Up to two `on` pairs of comparable columns; `None` if there is none.
    pub fn on_pairs(
        &mut self,
        left: usize,
        right: usize,
        max: usize,
    ) -> Option<Vec<(usize, usize)>> {
        let (lt, rt) = (self.types(left), self.types(right));
        let mut candidates = Vec::new();
        for (i, a) in lt.iter().enumerate() {
            for (j, b) in rt.iter().enumerate() {
                if same_family(a, b) {
                    candidates.push((i, j));
                }
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let n = self.rng.gen_range(1..=max.min(candidates.len()));
        let mut on = Vec::new();
        for _ in 0..n {
            on.push(candidates[self.rng.gen_range(0..candidates.len())]);
        }
        Some(on)
    }

    pub fn two_inputs(&mut self, depth: usize) -> (usize, usize) {
        let left = self.sub(depth - 1);
        let right = match self.rng.gen_range(0..4) {
            0 => left, // self-join on one node
            1 => {
                // the same relation through a second Base node
                let relation = match self.nodes[left].op {
                    NodeOp::Base { relation } => relation,
                    _ => self.rng.gen_range(0..TABLES),
                };
                self.push(NodeOp::Base { relation }, table_types(relation))
            }
            _ => self.sub(depth - 1),
        };
        (left, right)
    }

    pub fn join(&mut self, depth: usize) -> usize {
        let (left, right) = self.two_inputs(depth);
        let Some(on) = self.on_pairs(left, right, 2) else {
            return left;
        };
        let kind = if self.rng.gen_bool(0.5) {
            JoinKind::Inner
        } else {
            JoinKind::Left
        };
        let types = [self.types(left), self.types(right)].concat();
        self.push(
            NodeOp::Join {
                left,
                right,
                kind,
                on,
            },
            types,
        )
    }

    pub fn semijoin(&mut self, depth: usize) -> usize {
        let (left, right) = self.two_inputs(depth);
        let anti = self.rng.gen_bool(0.6);
        let null_aware = anti && self.rng.gen_bool(0.5);
        let Some(on) = self.on_pairs(left, right, if null_aware { 1 } else { 2 }) else {
            return left;
        };
        self.push(
            NodeOp::SemiJoin {
                left,
                right,
                on,
                anti,
                null_aware,
            },
            self.types(left),
        )
    }

    pub fn aggregate(&mut self, input: usize) -> usize {
        let types = self.types(input);
        let group_by: Vec<usize> = (0..self.rng.gen_range(0..=2))
            .map(|_| self.rng.gen_range(0..types.len()))
            .collect();
        let mut out: Vec<SqlType> = group_by.iter().map(|&g| types[g].clone()).collect();
        let (aggregates, agg_types) = random_aggregates(self.rng, &types);
        out.extend(agg_types);
        self.push(
            NodeOp::Aggregate {
                input,
                group_by,
                aggregates,
            },
            out,
        )
    }

    pub fn topk(&mut self, input: usize) -> usize {
        let group_by = if self.rng.gen_bool(0.5) {
            vec![self.pick_col(input)]
        } else {
            vec![]
        };
        let order = (0..self.rng.gen_range(1..=2))
            .map(|_| OrderKey {
                column: self.pick_col(input),
                descending: self.rng.gen_bool(0.5),
                nulls_first: self.rng.gen_bool(0.5),
            })
            .collect();
        let limit = self.rng.gen_range(1..=3);
        self.push(
            NodeOp::TopK {
                input,
                group_by,
                order,
                limit,
            },
            self.types(input),
        )
    }
}

/// One to three aggregates over columns of `types`, with their result types.
pub fn random_aggregates(rng: &mut StdRng, types: &[SqlType]) -> (Vec<Aggregate>, Vec<SqlType>) {
    let mut aggregates = Vec::new();
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let c = rng.gen_range(0..types.len());
        let distinct = rng.gen_bool(0.3);
        let numeric_arg = matches!(types[c], SqlType::Int2 | Int4 | SqlType::Int8 | Numeric);
        let (func, arg, ty) = match rng.gen_range(0..6) {
            0 => (AggFunc::Count, None, SqlType::Int8),
            1 => (AggFunc::Count, Some(c), SqlType::Int8),
            2 if numeric_arg => {
                let ty = match types[c] {
                    SqlType::Int2 | Int4 => SqlType::Int8,
                    _ => Numeric,
                };
                (AggFunc::Sum, Some(c), ty)
            }
            3 if numeric_arg => (AggFunc::Avg, Some(c), Numeric),
            4 => (AggFunc::Min, Some(c), types[c].clone()),
            _ => (AggFunc::Max, Some(c), types[c].clone()),
        };
        aggregates.push(Aggregate {
            func,
            arg,
            distinct: distinct && arg.is_some(),
        });
        out.push(ty);
    }
    (aggregates, out)
}

/// A random plan; sometimes one of the keyed shapes of `keyed` over a random input, with
/// what to check it against.
pub fn random_plan(rng: &mut StdRng) -> (CachePlan, Option<keyed::Reference>) {
    let depth = rng.gen_range(1..=3);
    let keyed_shape = rng.gen_bool(0.3);
    let mut gen = PlanGen {
        rng,
        nodes: Vec::new(),
    };
    gen.sub(depth);
    let nodes = gen.nodes;
    if keyed_shape {
        let (plan, reference) = keyed::shape(rng, nodes);
        return (plan, Some(reference));
    }
    (full_reader(rng, nodes), None)
}

/// A plan that shares a prefix of `base`'s nodes with it: cut after a random node, with
/// sometimes one more node on top, read in full or by a random key. The graph shares the
/// common nodes, so the new cache starts from their present output.
pub fn derived_plan(rng: &mut StdRng, base: &CachePlan) -> CachePlan {
    let cut = rng.gen_range(0..base.nodes.len());
    let mut gen = PlanGen {
        rng,
        nodes: base.nodes[..=cut].to_vec(),
    };
    match gen.rng.gen_range(0..6) {
        0 => {
            gen.filter(cut);
        }
        1 => {
            gen.project(cut);
        }
        2 => {
            gen.aggregate(cut);
        }
        3 => {
            gen.topk(cut);
        }
        4 => {
            gen.push(NodeOp::Distinct { input: cut }, gen.types(cut));
        }
        _ => {}
    }
    let nodes = gen.nodes;
    full_reader(rng, nodes)
}

/// `nodes` read in full or by one random key column, outputting every column.
pub fn full_reader(rng: &mut StdRng, nodes: Vec<PlanNode>) -> CachePlan {
    let types = nodes.last().expect("one node").types.clone();
    let (key, key_params, param_types) = if rng.gen_bool(0.5) {
        let k = rng.gen_range(0..types.len());
        (vec![k], vec![0], vec![types[k].clone()])
    } else {
        (vec![], vec![], vec![])
    };
    CachePlan {
        relations: relations(),
        output: types
            .iter()
            .enumerate()
            .map(|(i, ty)| OutputColumn {
                column: i,
                name: format!("o{i}"),
                ty: ty.clone(),
            })
            .collect(),
        nodes,
        key,
        key_params,
        residual: None,
        order_by: vec![],
        offset: 0,
        limit: None,
        param_types,
        fixed_params: vec![],
        single_value_params: vec![],
        empty_key_row: None,
        range: None,
        key_collations: vec![],
    }
}

pub fn relations() -> Vec<TableRef> {
    (0..TABLES)
        .map(|t| TableRef {
            schema: "public".into(),
            name: format!("t{t}"),
        })
        .collect()
}
