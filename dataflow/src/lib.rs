//! Larder's incremental dataflow: keeps cached query results fresh as base tables change.
//!
//! A [`Graph`] holds base tables at its roots and, below them, one operator node per node of
//! each cache's [`CachePlan`](larder_sql::plan::CachePlan) (base tables are shared; a table
//! read twice, as in a self-join, is one node feeding both inputs), ending in a reader.
//! Everything is driven by signed multisets (Z-sets): a delete removes exactly one copy, and
//! every operator turns input deltas into output deltas without re-running the query:
//!
//! - filter, project, union: stateless;
//! - join (INNER/LEFT, multi-column equi-join; NULL never matches): both sides' rows by key;
//! - semi/anti-join (EXISTS, IN, NOT EXISTS, null-aware NOT IN): left rows by key, right
//!   counts; left multiplicities are never multiplied;
//! - aggregate (COUNT/SUM/AVG/MIN/MAX, DISTINCT variants): per-group accumulators, exact
//!   integer and decimal sums, MIN/MAX multisets; emits only each group's net change;
//! - distinct (multiplicity counting) and TopK per group (keeps every row, refills).
//!
//! State is freed when rows go away. Caches share every operator they both compute (the same
//! operator over the same inputs), reference-counted. A cache is filled with
//! [`Graph::bootstrap_rows`] and [`Graph::bootstrap_shared`] while live changes are held for
//! it, then [`Graph::finish_bootstrap`] replays them.
//! The graph is deterministic and does no I/O: the server feeds it changes and table
//! snapshots, and decides when to [`Graph::publish`].
//!
//! Reads go through a [`ReaderHandle`], which never waits for the writer (left-right
//! concurrency). Anything the dataflow cannot compute exactly — an overflow, an unsupported
//! cast, a decimal beyond 38 digits — never produces a wrong row: the affected key (or the
//! whole reader, when the key is unknown) is *poisoned* and reads of it return
//! [`ReadError::Poisoned`], telling the server to ask upstream instead.

mod build;
mod cast;
mod empty_row;
mod error;
mod eval;
mod graph;
mod key_rows;
mod like;
mod ops;
mod order;
mod range;
mod reader;
mod stored;

pub use error::{EvalError, GraphError, ReadError};
pub use eval::{CompiledExpr, ExprContext};
pub use graph::{CacheId, CacheNodes, Change, Graph, GraphLimits, PartialKey, TableId};
pub use like::like_match;
pub use ops::{Batch, Operator, Record};
pub use order::{full_cmp, order_by_cmp, structural_cmp, structural_cmp_row};
pub use reader::{ReaderHandle, ReaderStats, RowSink, READ_KEY_COMBINATIONS_MAX};
pub use stored::{Lookup, NoStoredRows, StoredError, StoredIndex, StoredRows};
