//! The node graph under construction, shared by every SELECT of a query (subqueries, CTEs
//! and UNION branches add their nodes to the same graph).

use sqlparser::ast::Query;

use super::types::{join_type, type_name};
use super::{unsupported, Catalog};
use crate::error::Unsupported;
use crate::normalize::ParamSource;
use crate::plan::{Expr, JoinKind, NodeOp, NodeRef, PlanNode, TableRef};
use crate::value::{SqlType, TableSchema, Value};

/// The output of lowered nodes used as a relation: a node, and its columns' names and types.
#[derive(Clone, Debug)]
pub(super) struct Rel {
    pub node: NodeRef,
    pub names: Vec<String>,
    pub types: Vec<SqlType>,
}

/// A common table expression visible to the query being lowered.
pub(super) struct Cte {
    pub name: String,
    pub rel: Rel,
}

pub(super) struct Graph<'a> {
    pub catalog: &'a dyn Catalog,
    /// Where each slot's value comes from (for parameters planned as literals).
    pub sources: &'a [ParamSource],
    pub relations: Vec<TableRef>,
    /// The Base node of each relation.
    bases: Vec<NodeRef>,
    pub nodes: Vec<PlanNode>,
    pub param_types: Vec<Option<SqlType>>,
    pub fixed: Vec<(usize, Vec<Value>)>,
    /// Visible CTEs, innermost last.
    pub ctes: Vec<Cte>,
    pub case_insensitive: bool,
    /// The whole query, for checking which CTEs are referenced.
    pub query: &'a Query,
}

impl<'a> Graph<'a> {
    pub fn new(
        query: &'a Query,
        catalog: &'a dyn Catalog,
        sources: &'a [ParamSource],
        slots: usize,
    ) -> Self {
        Graph {
            catalog,
            sources,
            relations: Vec::new(),
            bases: Vec::new(),
            nodes: Vec::new(),
            param_types: vec![None; slots],
            fixed: Vec::new(),
            ctes: Vec::new(),
            case_insensitive: catalog.column_names_case_insensitive(),
            query,
        }
    }

    pub fn push(&mut self, op: NodeOp, types: Vec<SqlType>) -> NodeRef {
        self.nodes.push(PlanNode { op, types });
        self.nodes.len() - 1
    }

    pub fn types(&self, node: NodeRef) -> Vec<SqlType> {
        self.nodes[node].types.clone()
    }

    pub fn width(&self, node: NodeRef) -> usize {
        self.nodes[node].types.len()
    }

    /// The Base node of a table, one per relation.
    pub fn base(&mut self, table: &TableSchema) -> NodeRef {
        let r = TableRef {
            schema: table.schema.clone(),
            name: table.name.clone(),
        };
        if let Some(i) = self.relations.iter().position(|t| *t == r) {
            return self.bases[i];
        }
        self.relations.push(r);
        let node = self.push(
            NodeOp::Base {
                relation: self.relations.len() - 1,
            },
            table.columns.iter().map(|c| c.ty.clone()).collect(),
        );
        self.bases.push(node);
        node
    }

    pub fn filter(&mut self, input: NodeRef, predicate: Option<Expr>) -> NodeRef {
        match predicate {
            None => input,
            Some(predicate) => {
                let types = self.types(input);
                self.push(NodeOp::Filter { input, predicate }, types)
            }
        }
    }

    pub fn project(&mut self, input: NodeRef, exprs: Vec<Expr>, types: Vec<SqlType>) -> NodeRef {
        self.push(NodeOp::Project { input, exprs }, types)
    }

    /// Selects columns `cols` of `input` (no node when that is all of them, in order).
    pub fn select_columns(&mut self, input: NodeRef, cols: &[usize]) -> NodeRef {
        let types = self.types(input);
        if cols.len() == types.len() && cols.iter().enumerate().all(|(i, c)| i == *c) {
            return input;
        }
        let exprs = cols.iter().map(|&c| Expr::Column(c)).collect();
        let types = cols.iter().map(|&c| types[c].clone()).collect();
        self.project(input, exprs, types)
    }

    /// Casts the columns of `input` to `targets` (a Project only when some type differs).
    pub fn cast_to(&mut self, input: NodeRef, targets: &[SqlType]) -> NodeRef {
        let types = self.types(input);
        if types == targets {
            return input;
        }
        let exprs = types
            .iter()
            .zip(targets)
            .enumerate()
            .map(|(i, (from, to))| cast_column(i, from, to))
            .collect();
        self.project(input, exprs, targets.to_vec())
    }

    /// Appends a cast copy of each join column whose type differs from the common type;
    /// returns the (possibly new) node and the column to join on for each pair side.
    fn join_side(
        &mut self,
        node: NodeRef,
        cols: &[usize],
        common: &[SqlType],
    ) -> (NodeRef, Vec<usize>) {
        let types = self.types(node);
        let width = types.len();
        let mut exprs: Vec<Expr> = (0..width).map(Expr::Column).collect();
        let mut out_types = types.clone();
        let mut on = Vec::with_capacity(cols.len());
        for (&c, ty) in cols.iter().zip(common) {
            if matches!(cast_column(c, &types[c], ty), Expr::Column(_)) {
                on.push(c);
            } else {
                on.push(exprs.len());
                exprs.push(cast_column(c, &types[c], ty));
                out_types.push(ty.clone());
            }
        }
        if exprs.len() == width {
            return (node, on);
        }
        (self.project(node, exprs, out_types), on)
    }

    fn common_types(
        &self,
        left: NodeRef,
        right: NodeRef,
        pairs: &[(usize, usize)],
    ) -> Result<Vec<SqlType>, Unsupported> {
        let (lt, rt) = (&self.nodes[left].types, &self.nodes[right].types);
        pairs
            .iter()
            .map(|&(l, r)| join_type(&lt[l], &rt[r]))
            .collect()
    }

    /// An equi-join of `left` and `right` on `pairs`; join columns of different types are
    /// compared as their common type. Output: the left columns, then the right columns.
    pub fn equi_join(
        &mut self,
        left: NodeRef,
        right: NodeRef,
        kind: JoinKind,
        pairs: &[(usize, usize)],
    ) -> Result<NodeRef, Unsupported> {
        debug_assert!(!pairs.is_empty());
        let common = self.common_types(left, right, pairs)?;
        let (lw, rw) = (self.width(left), self.width(right));
        let lcols: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        let rcols: Vec<usize> = pairs.iter().map(|p| p.1).collect();
        let (l2, lon) = self.join_side(left, &lcols, &common);
        let (r2, ron) = self.join_side(right, &rcols, &common);
        let mut types = self.types(l2);
        types.extend(self.types(r2));
        let join = self.push(
            NodeOp::Join {
                left: l2,
                right: r2,
                kind,
                on: lon.into_iter().zip(ron).collect(),
            },
            types,
        );
        let l2w = self.width(l2);
        let keep: Vec<usize> = (0..lw).chain(l2w..l2w + rw).collect();
        Ok(self.select_columns(join, &keep))
    }

    /// A semi- or anti-join of `left` against `right` on `pairs`; output: the left columns.
    pub fn semi_join(
        &mut self,
        left: NodeRef,
        right: NodeRef,
        pairs: &[(usize, usize)],
        anti: bool,
        null_aware: bool,
    ) -> Result<NodeRef, Unsupported> {
        debug_assert!(!pairs.is_empty());
        let common = self.common_types(left, right, pairs)?;
        let lw = self.width(left);
        let lcols: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        let rcols: Vec<usize> = pairs.iter().map(|p| p.1).collect();
        let (l2, lon) = self.join_side(left, &lcols, &common);
        let (r2, ron) = self.join_side(right, &rcols, &common);
        let types = self.types(l2);
        let semi = self.push(
            NodeOp::SemiJoin {
                left: l2,
                right: r2,
                on: lon.into_iter().zip(ron).collect(),
                anti,
                null_aware,
            },
            types,
        );
        let keep: Vec<usize> = (0..lw).collect();
        Ok(self.select_columns(semi, &keep))
    }
}

/// `Column(i)` cast from `from` to `to`.
pub(super) fn cast_column(i: usize, from: &SqlType, to: &SqlType) -> Expr {
    if from == to {
        Expr::Column(i)
    } else {
        Expr::Cast {
            expr: Box::new(Expr::Column(i)),
            ty: to.clone(),
        }
    }
}

/// Refuses a type as a grouping, DISTINCT or join column.
pub(super) fn check_hashable(ty: &SqlType, what: &str) -> Result<(), Unsupported> {
    match ty {
        SqlType::Json | SqlType::Jsonb | SqlType::Array(_) | SqlType::Bpchar => Err(unsupported(
            format!("{what} on a {} value is not supported", type_name(ty)),
        )),
        _ => Ok(()),
    }
}
