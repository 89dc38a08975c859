//! larder-adapter: the client-facing wire protocols of Larder and the connections to the upstream
//! database.
//!
//! Today this is the transparent Postgres proxy ([`pg`]): every client session gets its own
//! upstream session and Larder relays the protocol at the message level. The session keeps a
//! message-level view of the client->upstream stream (see [`pg::Interceptor`]) so a later layer
//! can answer some statements locally from a cache while keeping responses in order.

pub mod cache;
pub mod error;
mod memo;
pub mod metrics;
pub mod mysql;
pub mod pg;
pub mod runtime;
pub mod shallow;

pub use error::{AdapterError, ErrorClass};
pub use pg::{
    load_tls_config, serve, serve_with, serve_with_unix, PgProxyConfig, Proxy, SslMode,
    UpstreamConfig,
};
