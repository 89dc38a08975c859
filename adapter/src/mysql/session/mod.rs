//! One client session: the connection phase ([`handshake`]), then the command phase
//! ([`command`]), with errors reported to the client as MySQL ERR packets.

mod command;
mod effect;
mod handshake;
mod io;
mod kill;
mod local;
mod response;
mod route;
mod serve;
mod shallow;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

pub(crate) use kill::ConnectionIds;

use super::messages::flags::error_code;
use super::messages::{ErrPacket, MyProtocolError};
use super::upstream::MyUpstreamConnector;
use super::MyProxyConfig;
use crate::metrics::ConnectionState;
use io::PacketConn;

/// What every session of one relay shares.
pub(crate) struct Shared {
    pub(crate) cfg: Arc<MyProxyConfig>,
    pub(crate) connector: MyUpstreamConnector,
    pub(crate) sessions: Arc<Semaphore>,
    pub(crate) ids: ConnectionIds,
    /// What the upstream said about queries, shared by the sessions of one user.
    pub(crate) views: Arc<route::SharedViews>,
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("client i/o: {0}")]
    ClientIo(std::io::Error),
    #[error("client protocol violation: {err}")]
    ClientProtocol {
        err: MyProtocolError,
        /// The sequence id an ERR to the client must carry.
        next_seq: u8,
    },
    #[error("upstream i/o: {0}")]
    UpstreamIo(std::io::Error),
    #[error("upstream protocol violation: {0}")]
    UpstreamProtocol(MyProtocolError),
    /// Ended after telling the client (an ERR was sent, or the upstream's was relayed).
    #[error("{0}")]
    Reported(String),
}

/// An authenticated session: both legs and what was negotiated.
pub(crate) struct Established {
    pub(crate) client: PacketConn,
    pub(crate) upstream: PacketConn,
    /// The capability flags both the client and the upstream use.
    pub(crate) capabilities: u32,
    pub(crate) larder_id: u32,
    pub(crate) upstream_thread_id: u32,
    /// Who logged in, and the database the session started in.
    pub(crate) user: String,
    pub(crate) database: Option<String>,
    /// Whether MariaDB's extended metadata is in column definitions.
    pub(crate) extended_metadata: bool,
    /// The character set (collation id) the client asked for in its handshake.
    pub(crate) charset: u8,
}

/// Serves one accepted connection until it ends.
pub(crate) async fn handle_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    _handshake_permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let mut gauge = shared.cfg.metrics.connection();
    let Ok(_session) = shared.sessions.clone().try_acquire_owned() else {
        shared.cfg.metrics.refused.inc();
        warn!(%peer, max_connections = shared.cfg.max_connections, "too many connections");
        let mut client = PacketConn::new(crate::pg::conn::Conn::Plain(tcp), io::Side::Client);
        let err = ErrPacket::new(
            error_code::TOO_MANY_CONNECTIONS,
            "08004",
            "Too many connections",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), client.send_err(0, &err)).await;
        client.shutdown().await;
        return;
    };
    let startup = Duration::from_millis(shared.cfg.startup_timeout_ms);
    let mut est = match tokio::time::timeout(startup, handshake::establish(&shared, tcp)).await {
        Ok(Ok(est)) => est,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "mysql session ended during the connection phase");
            return;
        }
        Err(_) => {
            // The client (or upstream) was too slow; the socket is dropped with the future.
            warn!(%peer, "mysql connection phase timed out");
            return;
        }
    };
    gauge.set(ConnectionState::Session);
    debug!(%peer, larder_id = est.larder_id, upstream_thread = est.upstream_thread_id,
        "mysql session authenticated");
    let result = command::run(&shared, &mut est, shutdown).await;
    shared.ids.release(est.larder_id);
    match result {
        Ok(()) => {}
        Err(SessionError::ClientIo(e)) => debug!(%peer, error = %e, "mysql client went away"),
        Err(e) => {
            let (seq, err) = client_error_for(&e, est.client.next_seq);
            if let Some(err) = err {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), est.client.send_err(seq, &err))
                        .await;
            }
            match e {
                SessionError::UpstreamIo(_) | SessionError::UpstreamProtocol(_) => {
                    warn!(%peer, error = %e, "mysql session ended: upstream")
                }
                _ => info!(%peer, error = %e, "mysql session ended"),
            }
        }
    }
    est.client.shutdown().await;
    est.upstream.shutdown().await;
}

/// The ERR (and its sequence id) that tells the client why its session ends.
fn client_error_for(e: &SessionError, next_seq: u8) -> (u8, Option<ErrPacket>) {
    match e {
        SessionError::ClientIo(_) | SessionError::Reported(_) => (next_seq, None),
        SessionError::ClientProtocol { err, next_seq } => {
            let packet = match err {
                MyProtocolError::TooLarge { len, max } => ErrPacket::new(
                    error_code::NET_PACKET_TOO_LARGE,
                    "08S01",
                    format!(
                        "Larder: got a packet bigger than max_packet_bytes ({len} > {max} bytes)"
                    ),
                ),
                MyProtocolError::OutOfOrder { .. } => ErrPacket::new(
                    error_code::NET_PACKETS_OUT_OF_ORDER,
                    "08S01",
                    "Larder: got packets out of order",
                ),
                other => ErrPacket::new(
                    error_code::UNKNOWN_ERROR,
                    "08S01",
                    format!("Larder: malformed packet: {other}"),
                ),
            };
            (*next_seq, Some(packet))
        }
        SessionError::UpstreamIo(_) | SessionError::UpstreamProtocol(_) => (
            next_seq,
            Some(ErrPacket::new(
                error_code::SERVER_LOST,
                "08S01",
                format!("Larder: lost connection to the upstream database ({e})"),
            )),
        ),
    }
}
