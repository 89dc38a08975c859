//! The composition root: configuration, storage, the controller that turns `CREATE CACHE`
//! into dataflow, the replication applier, and the wiring of replication, dataflow and adapter
//! into one process.
//!
//! A tour of a write: the upstream commits; `replication` streams the transaction as one
//! `ChangeBatch`; [`replicator::apply_batch`] writes its rows and position in one RocksDB batch
//! ([`storage`]), pushes the same changes through the dataflow graph and publishes the readers.
//!
//! A tour of a read: the adapter's router normalizes a SELECT into a query id, asks
//! [`backend::Backend`] for that cache, and reads the cache's reader (no lock shared with the
//! writer); when anything is off, the statement goes upstream instead.

pub mod backend;
pub mod catalog_watch;
pub mod config;
pub mod controller;
pub mod core;
pub mod memory;
pub mod ops;
pub mod partial;
pub mod privileges;
pub mod proxied;
pub mod relations;
pub mod replicator;
pub mod run;
pub mod run_mysql;
pub mod storage;
pub mod tables;

pub use config::Config;
