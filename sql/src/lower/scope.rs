//! The relations a SELECT can see and how column references resolve against them.
//!
//! A [`Scope`] describes one row: the columns of every relation in FROM laid side by side (the
//! output of the join tree), and the names each relation can be referred to by. Resolution
//! follows Postgres: a qualified `t.col` looks in the relation exposed as `t`; an unqualified
//! `col` must match exactly one column of all relations (`column reference "col" is
//! ambiguous` otherwise), except that a column merged by `JOIN ... USING` is one column.

use sqlparser::ast::Ident;

use super::unsupported;
use crate::error::Unsupported;
use crate::value::{SqlType, TableSchema};

/// How a relation in FROM may be named by a qualifier.
#[derive(Clone, Debug)]
pub(super) enum Qualifier {
    /// An alias (`users u`, `(SELECT ...) AS d`, a CTE name): only this name.
    Alias(String),
    /// An unaliased table: as written, by its bare name, or schema-qualified.
    Table {
        written: Vec<String>,
        schema: String,
        name: String,
    },
    /// An unaliased subquery: cannot be qualified.
    Anonymous,
}

/// One relation of a FROM clause.
#[derive(Clone, Debug)]
pub(super) struct ScopeRel {
    pub qualifier: Qualifier,
    /// Row indices of its columns, in the relation's order.
    pub columns: Vec<usize>,
}

/// A column merged by `JOIN ... USING`: unqualified references to `name` mean `column`, and
/// the columns in `hides` are no longer candidates for an unqualified `name`.
#[derive(Clone, Debug)]
pub(super) struct Merged {
    pub name: String,
    pub column: usize,
    pub hides: Vec<usize>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Scope {
    pub rels: Vec<ScopeRel>,
    /// Name and type of each row column.
    pub names: Vec<String>,
    pub types: Vec<SqlType>,
    /// Row columns `*` expands to, in Postgres' order.
    pub star: Vec<usize>,
    pub merged: Vec<Merged>,
    pub case_insensitive: bool,
}

impl Scope {
    /// The scope of one relation with the given columns.
    pub fn single(
        qualifier: Qualifier,
        names: Vec<String>,
        types: Vec<SqlType>,
        case_insensitive: bool,
    ) -> Scope {
        let columns: Vec<usize> = (0..names.len()).collect();
        Scope {
            rels: vec![ScopeRel {
                qualifier,
                columns: columns.clone(),
            }],
            names,
            types,
            star: columns,
            merged: Vec::new(),
            case_insensitive,
        }
    }

    pub fn table(
        table: &TableSchema,
        written: Vec<String>,
        alias: Option<String>,
        case_insensitive: bool,
    ) -> Scope {
        let qualifier = match alias {
            Some(a) => Qualifier::Alias(a),
            None => Qualifier::Table {
                written,
                schema: table.schema.clone(),
                name: table.name.clone(),
            },
        };
        Scope::single(
            qualifier,
            table.columns.iter().map(|c| c.name.clone()).collect(),
            table.columns.iter().map(|c| c.ty.clone()).collect(),
            case_insensitive,
        )
    }

    pub fn width(&self) -> usize {
        self.types.len()
    }

    /// `self` followed by `right` (the row of a join). Refuses a relation name used twice.
    pub fn concat(mut self, right: Scope) -> Result<Scope, Unsupported> {
        for r in &right.rels {
            if let Some(name) = exposed(&r.qualifier) {
                if self
                    .rels
                    .iter()
                    .any(|l| exposed(&l.qualifier).is_some_and(|n| self.eq(n, name)))
                {
                    return Err(unsupported(format!(
                        "table name \"{name}\" specified more than once"
                    )));
                }
            }
        }
        let off = self.width();
        self.rels.extend(right.rels.into_iter().map(|mut r| {
            r.columns.iter_mut().for_each(|c| *c += off);
            r
        }));
        self.star.extend(right.star.iter().map(|c| c + off));
        self.merged.extend(right.merged.into_iter().map(|mut m| {
            m.column += off;
            m.hides.iter_mut().for_each(|c| *c += off);
            m
        }));
        self.names.extend(right.names);
        self.types.extend(right.types);
        Ok(self)
    }

    pub fn eq(&self, a: &str, b: &str) -> bool {
        if self.case_insensitive {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }

    /// Whether `qualifier` (the part before a column name) designates `rel`.
    fn matches(&self, rel: &ScopeRel, qualifier: &[Ident]) -> bool {
        let q: Vec<&str> = qualifier.iter().map(|i| i.value.as_str()).collect();
        let same = |names: &[&str]| {
            names.len() == q.len() && names.iter().zip(&q).all(|(a, b)| self.eq(a, b))
        };
        match &rel.qualifier {
            Qualifier::Alias(a) => same(&[a.as_str()]),
            Qualifier::Anonymous => false,
            Qualifier::Table {
                written,
                schema,
                name,
            } => {
                let written: Vec<&str> = written.iter().map(String::as_str).collect();
                let tail = written.last().map(|t| vec![*t]).unwrap_or_default();
                same(&written)
                    || same(&tail)
                    || same(&[schema.as_str(), name.as_str()])
                    || same(&[name.as_str()])
            }
        }
    }

    /// The relation a qualifier designates.
    pub fn rel(&self, qualifier: &[Ident]) -> Result<&ScopeRel, Unsupported> {
        self.rels
            .iter()
            .find(|r| self.matches(r, qualifier))
            .ok_or_else(|| {
                let q: Vec<&str> = qualifier.iter().map(|i| i.value.as_str()).collect();
                unsupported(format!(
                    "missing FROM-clause entry for table \"{}\"",
                    q.join(".")
                ))
            })
    }

    /// Display name of a relation (for messages).
    pub fn rel_name(rel: &ScopeRel) -> String {
        match &rel.qualifier {
            Qualifier::Alias(a) => a.clone(),
            Qualifier::Table { name, .. } => name.clone(),
            Qualifier::Anonymous => "subquery".into(),
        }
    }

    /// The relation a row column belongs to.
    pub fn rel_of(&self, col: usize) -> Option<&ScopeRel> {
        self.rels.iter().find(|r| r.columns.contains(&col))
    }

    /// Columns of `among` named `name` (exact match first, then case-insensitive if enabled).
    fn named<'s>(&self, among: impl Iterator<Item = &'s usize> + Clone, name: &str) -> Vec<usize> {
        let exact: Vec<usize> = among
            .clone()
            .copied()
            .filter(|&c| self.names[c] == name)
            .collect();
        if !exact.is_empty() || !self.case_insensitive {
            return exact;
        }
        among
            .copied()
            .filter(|&c| self.names[c].eq_ignore_ascii_case(name))
            .collect()
    }

    /// Resolves `col` or `qualifier.col` to a row column.
    pub fn column(&self, parts: &[Ident]) -> Result<usize, Unsupported> {
        self.try_column(parts)?.ok_or_else(|| self.unknown(parts))
    }

    /// Like [`Scope::column`], but `Ok(None)` when nothing by that name is visible (so an
    /// outer query may be tried).
    pub fn try_column(&self, parts: &[Ident]) -> Result<Option<usize>, Unsupported> {
        let Some((name, qualifier)) = parts.split_last() else {
            return Err(unsupported("empty column reference"));
        };
        let name = name.value.as_str();
        if !qualifier.is_empty() {
            let Some(rel) = self.rels.iter().find(|r| self.matches(r, qualifier)) else {
                return Ok(None);
            };
            return match self.named(rel.columns.iter(), name).as_slice() {
                [] => Ok(None),
                [c] => Ok(Some(*c)),
                _ => Err(unsupported(format!(
                    "column reference \"{name}\" is ambiguous"
                ))),
            };
        }
        let merged: Vec<&Merged> = self
            .merged
            .iter()
            .filter(|m| self.eq(&m.name, name))
            .collect();
        let hidden: Vec<usize> = merged.iter().flat_map(|m| m.hides.clone()).collect();
        let visible: Vec<usize> = self
            .rels
            .iter()
            .flat_map(|r| r.columns.iter().copied())
            .filter(|c| !hidden.contains(c))
            .collect();
        let mut found = self.named(visible.iter(), name);
        found.extend(merged.iter().map(|m| m.column));
        found.dedup();
        match found.as_slice() {
            [] => Ok(None),
            [c] => Ok(Some(*c)),
            _ => Err(unsupported(format!(
                "column reference \"{name}\" is ambiguous"
            ))),
        }
    }

    fn unknown(&self, parts: &[Ident]) -> Unsupported {
        let Some((name, qualifier)) = parts.split_last() else {
            return unsupported("empty column reference");
        };
        if !qualifier.is_empty() {
            if let Err(e) = self.rel(qualifier) {
                return e;
            }
            let q: Vec<&str> = qualifier.iter().map(|i| i.value.as_str()).collect();
            return unsupported(format!(
                "column {}.{} does not exist",
                q.join("."),
                name.value
            ));
        }
        match self.rels.as_slice() {
            [only] => unsupported(format!(
                "unknown column {} in table {}",
                name.value,
                Scope::rel_name(only)
            )),
            _ => unsupported(format!("column \"{}\" does not exist", name.value)),
        }
    }

    /// Postgres' name of a column in messages: `rel.col`.
    pub fn qualified_name(&self, col: usize) -> String {
        match self.rel_of(col) {
            Some(rel) if !matches!(rel.qualifier, Qualifier::Anonymous) => {
                format!("{}.{}", Scope::rel_name(rel), self.names[col])
            }
            _ => self.names[col].clone(),
        }
    }
}

/// The name a relation is exposed as, if any.
fn exposed(q: &Qualifier) -> Option<&str> {
    match q {
        Qualifier::Alias(a) => Some(a),
        Qualifier::Table { name, .. } => Some(name),
        Qualifier::Anonymous => None,
    }
}
