//! SQL front end: values and types shared by every crate, Larder's own statements,
//! normalization into a query id, the cacheability check, and lowering into a [`plan::CachePlan`].
//! No I/O lives here.

pub mod collation;
pub mod datetime_unit;
pub mod error;
pub mod fingerprint;
pub mod functions;
pub mod identity;
pub mod lower;
pub mod mysql;
pub mod normalize;
pub mod numeric;
pub mod pgtypes;
pub mod plan;
pub mod rowcodec;
pub mod search_path;
pub mod shallow;
pub mod statement;
pub mod value;

pub use value::{Column, Key, Row, SqlType, TableSchema, Value};
