//! Larder's incremental dataflow: keeps cached query results fresh as base tables change.
//!
//! A [`Graph`] holds base tables and, below them, one chain of [`Operator`]s per cache
//! (filter → project/materialize → reader), built from a [`CachePlan`](larder_sql::plan::CachePlan).
//! Changes are signed multisets (Z-sets), so tables without a key may hold duplicate rows and
//! a delete removes exactly one copy. The graph is deterministic and does no I/O: the server
//! feeds it changes and base-table scans, and decides when to [`Graph::publish`].
//!
//! Reads go through a [`ReaderHandle`], which never waits for the writer (left-right
//! concurrency). Anything the dataflow cannot compute exactly — an overflow, an unsupported
//! cast — never produces a wrong row: the affected key is *poisoned* and reads of it return
//! [`ReadError::Poisoned`], telling the server to ask upstream instead.

mod build;
mod cast;
mod error;
mod eval;
mod graph;
mod like;
mod ops;
mod order;
mod reader;

pub use error::{EvalError, GraphError, ReadError};
pub use eval::{CompiledExpr, ExprContext};
pub use graph::{CacheId, Change, Graph, GraphLimits, TableId};
pub use like::like_match;
pub use ops::{Batch, Operator, Record};
pub use order::{full_cmp, order_by_cmp, structural_cmp, structural_cmp_row};
pub use reader::{ReaderHandle, ReaderStats, READ_KEY_COMBINATIONS_MAX};
