//! The composition root: configuration, storage, the controller that turns `CREATE CACHE`
//! into dataflow, and the wiring of replication, dataflow and adapter into one process.

pub mod config;
pub mod run;

pub use config::Config;
