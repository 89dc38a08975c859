//! Errors of the SQL front end.
//!
//! Two kinds of failure are kept apart on purpose: [`SqlError`] means the text or the values are
//! wrong (a syntax error, a malformed Larder statement, a parameter that cannot be converted),
//! while [`Unsupported`] means the query is fine but Larder cannot cache it; its `reason` names
//! the construct so users see *why* (`joins are not supported yet`), never a cryptic failure.

use thiserror::Error;

/// The text of a statement or the values bound to it are invalid.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SqlError {
    #[error("syntax error: {0}")]
    Parse(String),
    #[error("expected exactly one statement, found {0}")]
    StatementCount(usize),
    #[error("expected a SELECT statement")]
    NotSelect,
    #[error("query text is too long ({len_bytes} bytes, at most {max_bytes})")]
    TooLong { len_bytes: usize, max_bytes: usize },
    /// An expression chains more operators than Larder walks safely (a deep tree would
    /// overflow the stack); see [`crate::statement::OPERATOR_DEPTH_MAX`].
    #[error("expression chains up to {depth} operators, at most {max}")]
    TooDeep { depth: usize, max: usize },
    /// A Larder statement (`CREATE CACHE`, `SHOW CACHES`, ...) is malformed.
    #[error("invalid statement: {0}")]
    Statement(String),
    #[error("no value bound for parameter ${0}")]
    MissingParam(usize),
    #[error("query has {params} parameter slots but {types} parameter types")]
    ParamCount { params: usize, types: usize },
    #[error("invalid input for type {ty}: {message}")]
    Convert { ty: String, message: String },
}

/// The query is valid but cannot be cached; `reason` names the construct.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct Unsupported {
    pub reason: String,
}

impl Unsupported {
    pub fn new(reason: impl Into<String>) -> Self {
        Unsupported {
            reason: reason.into(),
        }
    }
}
