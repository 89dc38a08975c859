//! Error types of the dataflow layer.
//!
//! Three kinds of failure are kept apart on purpose: a bad plan or bad input to the graph
//! ([`GraphError`]) is the caller's bug; an expression that cannot be evaluated
//! ([`EvalError`]) is data-dependent and turns into *poison* inside the dataflow (never a wrong
//! row); a read that cannot be answered from the cache ([`ReadError`]) tells the server to send
//! the query upstream instead.

use larder_sql::value::Value;
use thiserror::Error;

/// Why an expression could not be evaluated on a row. Inside the dataflow this never
/// surfaces as an error: the affected reader key is poisoned instead.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EvalError {
    #[error("{0} out of range")]
    OutOfRange(&'static str),
    #[error("division by zero")]
    DivisionByZero,
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("parameter slot {0} must hold exactly one value here")]
    ParamNotSingle(usize),
    #[error("parameter slot {0} was not supplied")]
    ParamMissing(usize),
    #[error("column {0} is out of range for the row")]
    ColumnOutOfRange(usize),
}

/// A plan that the dataflow cannot build, or misuse of the graph API.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GraphError {
    #[error("cache {0} is not partial")]
    NotPartial(u64),
    #[error("table {0} is already registered")]
    TableExists(u64),
    #[error("table {0} is not registered")]
    UnknownTable(u64),
    #[error("table {schema}.{name} is not registered")]
    UnknownTableRef { schema: String, name: String },
    #[error("table {0} still has caches")]
    TableInUse(u64),
    #[error("cache {0} does not exist")]
    UnknownCache(u64),
    #[error("cache {0} is already bootstrapped")]
    AlreadyReady(u64),
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    #[error("row has {got} columns, table {table} has {want}")]
    RowArity { table: u64, got: usize, want: usize },
    #[error("reading stored rows: {0}")]
    Stored(String),
    #[error("too many caches (max {0})")]
    TooManyCaches(usize),
    /// Changes buffered while the cache was bootstrapping exceeded
    /// [`GraphLimits::bootstrap_buffer_max_bytes`](crate::GraphLimits); remove the cache
    /// (and retry later).
    #[error("cache {0} buffered too many changes while bootstrapping")]
    BootstrapOverflow(u64),
    #[error("table {table} is not read by cache {cache}")]
    NotCacheTable { cache: u64, table: u64 },
}

/// Why a read could not be answered from the cache. Every variant means "ask upstream".
#[derive(Clone, Debug, PartialEq, Error)]
pub enum ReadError {
    /// A row that could affect this read failed to evaluate (overflow, unsupported, ...),
    /// or the cache saw a delete it could not match.
    #[error("cache entry is poisoned")]
    Poisoned,
    /// The cache is still being filled from the base table.
    #[error("cache is not ready")]
    NotReady,
    /// The IN lists expand to more key combinations than allowed.
    #[error("too many key combinations ({combinations}, max {max})")]
    TooManyKeys { combinations: usize, max: usize },
    /// The residual predicate failed on a row, or the parameters are unusable.
    #[error("evaluation failed: {0}")]
    Eval(#[from] EvalError),
    /// The plan evaluated a literal at parameter slot `slot` (0-based) below the reader, and
    /// this read holds another value (or several) there.
    #[error("the cache holds results for another value of parameter ${}", slot + 1)]
    OtherParameter { slot: usize },
    /// The cache answers parameter slot `slot` (0-based) one value at a time, and this read
    /// holds several (an `IN` list) or none there.
    #[error("the cache answers one value at a time for parameter ${}", slot + 1)]
    NotOneValue { slot: usize },
    /// A parameter of a key column with a collation is not text, or holds a character whose
    /// weight Larder does not know: the upstream compares it.
    #[error("a parameter cannot be compared under its column's collation")]
    Uncollatable,
    /// The cache was removed from the graph.
    #[error("cache was removed")]
    Gone,
    /// The caller's row sink refused a row (say, a value it cannot encode).
    #[error("{0}")]
    Sink(String),
    /// A partial reader does not hold these keys yet (holes): the caller asks for them to be
    /// filled ([`crate::Graph::fill_keys`]) and answers this read otherwise.
    #[error("{} key(s) not in the cache yet", .0.len())]
    Holes(Vec<Vec<Value>>),
}
