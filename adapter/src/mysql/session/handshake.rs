//! The connection phase: the upstream's handshake forwarded to the client (Larder's connection
//! id, adjusted capabilities), TLS on either leg, and the auth exchange relayed both ways.
//!
//! Sequence ids: once TLS is terminated on one leg only, the client's handshake response and
//! the upstream's differ in sequence id (an SSLRequest takes one). Every packet relayed during
//! this phase is renumbered by the per-leg offset.

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::debug;

use super::io::{PacketConn, Side};
use super::{Established, SessionError, Shared};
use crate::mysql::messages::flags::{capability as cap, error_code, header};
use crate::mysql::messages::{
    AuthMoreData, ErrPacket, HandshakeResponse41, InitialHandshake, Payload, SslRequest,
    SSL_REQUEST_LEN,
};
use crate::mysql::packet::{Logical, RawPacket};
use crate::pg::conn::Conn;

/// Bound on the handshake response (user, auth data, database, attributes).
const HANDSHAKE_RESPONSE_MAX_BYTES: usize = 1 << 20;

fn handshake_err(message: impl Into<String>) -> ErrPacket {
    ErrPacket::new(error_code::HANDSHAKE_ERROR, "08S01", message)
}

/// Runs the connection phase. Any ERR the client must see has been sent when this fails.
pub(super) async fn establish(
    shared: &Shared,
    tcp: TcpStream,
) -> Result<Established, SessionError> {
    let mut client = PacketConn::new(Conn::Plain(tcp), Side::Client);

    // 1. The upstream's handshake.
    let (up_tcp, up_addr) = match shared.connector.connect().await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("Larder: cannot reach the upstream database: {e}");
            let _ = client
                .send_err(0, &ErrPacket::new(error_code::UNKNOWN_ERROR, "HY000", &msg))
                .await;
            return Err(SessionError::Reported(msg));
        }
    };
    let mut upstream = PacketConn::new(Conn::Plain(up_tcp), Side::Upstream);
    let first = upstream.read_packet().await?;
    if first.payload().first() == Some(&header::ERR) {
        // The server refused us (too many connections, host blocked): the client hears it.
        client.send_packet(&first.with_seq(0)).await?;
        return Err(SessionError::Reported(
            "the upstream refused the connection".into(),
        ));
    }
    let server_hs = match InitialHandshake::decode(first.payload()) {
        Ok(h) if h.capabilities & cap::CLIENT_PROTOCOL_41 != 0 => h,
        Ok(_) | Err(_) => {
            let msg = "Larder: the upstream sent an unsupported handshake (MySQL 4.1+ needed)";
            let _ = client
                .send_err(0, &ErrPacket::new(error_code::UNKNOWN_ERROR, "HY000", msg))
                .await;
            return Err(SessionError::Reported(msg.into()));
        }
    };
    let upstream_offers_tls = server_hs.capabilities & cap::CLIENT_SSL != 0;
    if !upstream_offers_tls && shared.cfg.upstream.tls_required() {
        let msg = "Larder: the upstream does not offer TLS but ssl-mode requires it";
        let _ = client
            .send_err(0, &ErrPacket::new(error_code::UNKNOWN_ERROR, "HY000", msg))
            .await;
        return Err(SessionError::Reported(msg.into()));
    }
    let upstream_tls = upstream_offers_tls && shared.connector.tls_enabled();

    // 2. Forward it with Larder's connection id and the capabilities Larder relays.
    let larder_id = shared.ids.register(server_hs.connection_id);
    let mut to_client = server_hs.clone();
    to_client.connection_id = larder_id;
    let mut offered = server_hs.capabilities & !cap::UNSUPPORTED & !cap::CLIENT_SSL;
    if shared.cfg.tls.is_some() {
        offered |= cap::CLIENT_SSL;
    }
    to_client.capabilities = offered;
    let mariadb = server_hs.capabilities & cap::CLIENT_MYSQL == 0;
    let offered_ext = server_hs.mariadb_capabilities() & cap::MARIADB_SUPPORTED;
    if mariadb {
        to_client.set_mariadb_capabilities(offered_ext);
    }
    let mut payload = BytesMut::new();
    to_client.encode(&mut payload);
    let seq0 = first.seq();
    client.send_payload(seq0, &payload).await?;
    let ids_guard = IdGuard {
        shared,
        id: larder_id,
    };

    // 3. The client's response (after TLS if it asks).
    // Read exactly one packet: after an SSLRequest come the TLS handshake's bytes.
    let first_response = client
        .read_packet_exact(HANDSHAKE_RESPONSE_MAX_BYTES)
        .await?;
    let mut response = logical_of(&first_response)?;
    if SslRequest::matches(&response.payload) {
        let Some(tls) = shared.cfg.tls.clone() else {
            let _ = client
                .send_err(
                    response.next_seq(),
                    &handshake_err("Larder: TLS is not configured (no --tls-cert)"),
                )
                .await;
            return Err(SessionError::Reported("client asked for TLS".into()));
        };
        let Conn::Plain(tcp) = client.into_conn()? else {
            return Err(SessionError::Reported("TLS requested twice".into()));
        };
        let stream = tokio_rustls::TlsAcceptor::from(tls)
            .accept(tcp)
            .await
            .map_err(SessionError::ClientIo)?;
        client = PacketConn::new(
            Conn::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))),
            Side::Client,
        );
        response = logical_of(
            &client
                .read_packet_exact(HANDSHAKE_RESPONSE_MAX_BYTES)
                .await?,
        )?;
    }
    let client_seq = response.first_seq;
    let parsed = match HandshakeResponse41::decode(&response.payload) {
        Ok(r) if response.payload.len() > SSL_REQUEST_LEN => r,
        _ => {
            let _ = client
                .send_err(response.next_seq(), &handshake_err("Bad handshake"))
                .await;
            return Err(SessionError::Reported(
                "malformed handshake response".into(),
            ));
        }
    };
    debug!(user = %String::from_utf8_lossy(&parsed.username), larder_id,
        upstream_thread = server_hs.connection_id, %up_addr, "mysql client authenticating");

    // 4. Forward it upstream with the flags the upstream leg really has.
    let mut caps = parsed.capabilities & !cap::UNSUPPORTED & !cap::CLIENT_SSL;
    if upstream_tls {
        caps |= cap::CLIENT_SSL;
    }
    HandshakeResponse41::set_capabilities_of(&mut response.payload, caps);
    if mariadb {
        let ext = &mut response.payload[28..32];
        let client_ext = u32::from_le_bytes([ext[0], ext[1], ext[2], ext[3]]);
        ext.copy_from_slice(&(client_ext & offered_ext).to_le_bytes());
    }
    let mut up_seq = seq0.wrapping_add(1);
    if upstream_tls {
        upstream
            .send_payload(up_seq, &response.payload[..SSL_REQUEST_LEN])
            .await?;
        up_seq = up_seq.wrapping_add(1);
        let Conn::Plain(tcp) = upstream.into_conn()? else {
            return Err(SessionError::Reported("upstream TLS twice".into()));
        };
        let conn = match shared.connector.tls(tcp).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("Larder: TLS to the upstream database failed: {e}");
                let _ = client
                    .send_err(
                        response.next_seq(),
                        &ErrPacket::new(error_code::UNKNOWN_ERROR, "HY000", &msg),
                    )
                    .await;
                return Err(SessionError::Reported(msg));
            }
        };
        upstream = PacketConn::new(conn, Side::Upstream);
    }
    upstream.send_payload(up_seq, &response.payload).await?;
    // upstream seq = client seq + delta on every relayed packet from here on.
    let delta = up_seq.wrapping_sub(client_seq);

    // 5. The auth exchange, until OK or ERR.
    loop {
        let p = upstream.read_packet().await?;
        let first_byte = p.payload().first().copied();
        client
            .send_packet(&p.clone().with_seq(p.seq().wrapping_sub(delta)))
            .await?;
        match first_byte {
            Some(header::OK) => break,
            Some(header::ERR) => {
                return Err(SessionError::Reported(
                    "authentication failed upstream".into(),
                ))
            }
            Some(header::AUTH_MORE_DATA) if AuthMoreData::server_continues(p.payload()) => {}
            _ => {
                // Auth switch, more data, a challenge: the client speaks next.
                let c = client.read_packet().await?;
                upstream
                    .send_packet(&c.clone().with_seq(c.seq().wrapping_add(delta)))
                    .await?;
            }
        }
    }
    std::mem::forget(ids_guard);
    let negotiated = caps & server_hs.capabilities;
    let extended_metadata = mariadb && {
        let ext = &response.payload[28..32];
        u32::from_le_bytes([ext[0], ext[1], ext[2], ext[3]]) & cap::MARIADB_CLIENT_EXTENDED_METADATA
            != 0
    };
    Ok(Established {
        client,
        upstream,
        capabilities: negotiated,
        larder_id,
        upstream_thread_id: server_hs.connection_id,
        user: String::from_utf8_lossy(&parsed.username).into_owned(),
        database: parsed
            .database
            .as_ref()
            .filter(|d| !d.is_empty() && negotiated & cap::CLIENT_CONNECT_WITH_DB != 0)
            .map(|d| String::from_utf8_lossy(d).into_owned()),
        extended_metadata,
        charset: parsed.charset,
    })
}

/// A handshake-phase packet as a logical payload (a response split over several packets is
/// refused: it would be over 16 MiB).
fn logical_of(p: &RawPacket) -> Result<Logical, SessionError> {
    if p.is_continued() {
        return Err(SessionError::ClientProtocol {
            err: crate::mysql::messages::MyProtocolError::TooLarge {
                len: p.payload().len(),
                max: HANDSHAKE_RESPONSE_MAX_BYTES,
            },
            next_seq: p.seq().wrapping_add(1),
        });
    }
    Ok(Logical {
        first_seq: p.seq(),
        packets: 1,
        payload: BytesMut::from(p.payload()),
    })
}

/// Releases the connection id if the connection phase fails.
struct IdGuard<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        self.shared.ids.release(self.id);
    }
}

/// MySQL 8's `caching_sha2_password` through the relay, on packets as its documentation
/// describes them: fast authentication (the server's 0x01 0x03 then OK, with no client packet
/// between) and full authentication over plain TCP (0x01 0x04; the client asks for the RSA
/// public key with 0x02, the server sends the PEM, the client the encrypted password). MySQL
/// 8 is not packaged here, so a scripted upstream plays the server's part.
#[cfg(test)]
mod caching_sha2 {
    use std::sync::Arc;

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::mysql::messages::flags::capability as cap;
    use crate::mysql::messages::{HandshakeResponse41, OkPacket};
    use crate::mysql::packet::write_packets;
    use crate::mysql::session::ConnectionIds;
    use crate::mysql::upstream::{MyUpstreamConfig, MyUpstreamConnector};
    use crate::mysql::MyProxyConfig;

    fn payload<M: Payload>(m: &M) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        b.to_vec()
    }

    /// MySQL 8.0's HandshakeV10: CLIENT_MYSQL set (not MariaDB), caching_sha2_password.
    fn mysql8_handshake() -> Vec<u8> {
        payload(&InitialHandshake {
            server_version: b"8.0.36".to_vec(),
            connection_id: 42,
            auth_data_1: *b"\x1a\x2b\x3c\x4d\x5e\x6f\x70\x01",
            capabilities: cap::CLIENT_MYSQL
                | cap::CLIENT_PROTOCOL_41
                | cap::CLIENT_SECURE_CONNECTION
                | cap::CLIENT_PLUGIN_AUTH
                | cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
                | cap::CLIENT_DEPRECATE_EOF
                | cap::CLIENT_TRANSACTIONS
                | cap::CLIENT_CONNECT_WITH_DB,
            charset: 255,
            status: 2,
            auth_data_len: 21,
            reserved: [0; 10],
            auth_data_2: b"\x11\x22\x33\x44\x55\x66\x77\x08\x09\x0a\x0b\x0c\x00".to_vec(),
            auth_plugin: Some(b"caching_sha2_password".to_vec()),
        })
    }

    fn client_response() -> Vec<u8> {
        payload(&HandshakeResponse41 {
            capabilities: cap::CLIENT_PROTOCOL_41
                | cap::CLIENT_SECURE_CONNECTION
                | cap::CLIENT_PLUGIN_AUTH
                | cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
                | cap::CLIENT_CONNECT_WITH_DB,
            max_packet_size: 1 << 24,
            charset: 255,
            reserved: [0; 23],
            username: b"app".to_vec(),
            // SHA256 scramble: 32 bytes.
            auth_response: (0u8..32).collect(),
            database: Some(b"shop".to_vec()),
            auth_plugin: Some(b"caching_sha2_password".to_vec()),
            attributes: None,
        })
    }

    async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).await.unwrap();
        let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await.unwrap();
        (h[3], p)
    }

    async fn send(s: &mut TcpStream, seq: u8, p: &[u8]) {
        let mut b = BytesMut::new();
        write_packets(&mut b, seq, p);
        s.write_all(&b).await.unwrap();
    }

    /// Runs the connection phase with `server` playing the upstream after the handshake
    /// response, and `client` playing the client after sending it; returns what each saw.
    async fn transcript(full: bool) {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("mysql://app:pw@{}/shop", upstream.local_addr().unwrap());
        let cfg = MyProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            MyUpstreamConfig::from_url(&url).unwrap(),
        );
        let shared = Shared {
            connector: MyUpstreamConnector::new(cfg.upstream.clone()).unwrap(),
            sessions: Arc::new(tokio::sync::Semaphore::new(4)),
            ids: ConnectionIds::default(),
            cfg: Arc::new(cfg),
            views: Default::default(),
        };
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            send(&mut s, 0, &mysql8_handshake()).await;
            let (seq, response) = read_packet(&mut s).await;
            assert_eq!((seq, response), (1, client_response()));
            let ok = payload(&OkPacket::new(2));
            if !full {
                send(&mut s, 2, &[0x01, 0x03]).await;
                send(&mut s, 3, &ok).await;
                return;
            }
            send(&mut s, 2, &[0x01, 0x04]).await;
            assert_eq!(read_packet(&mut s).await, (3, vec![0x02]));
            let mut key = vec![0x01];
            key.extend_from_slice(
                b"-----BEGIN PUBLIC KEY-----\nMIIBIjAN...\n-----END PUBLIC KEY-----\n",
            );
            send(&mut s, 4, &key).await;
            assert_eq!(read_packet(&mut s).await, (5, vec![0xab; 256]));
            send(&mut s, 6, &ok).await;
        });
        let relay = tokio::spawn(async move {
            let shared = shared;
            establish(&shared, accepted).await.map(|e| e.user)
        });
        let (seq, hs) = read_packet(&mut client).await;
        assert_eq!(seq, 0);
        let hs = InitialHandshake::decode(&hs).unwrap();
        assert_ne!(hs.connection_id, 42, "Larder's own connection id");
        assert_eq!(
            hs.auth_plugin.as_deref(),
            Some(&b"caching_sha2_password"[..])
        );
        assert_eq!(
            hs.auth_data_1, *b"\x1a\x2b\x3c\x4d\x5e\x6f\x70\x01",
            "the server's salt"
        );
        send(&mut client, 1, &client_response()).await;
        if full {
            assert_eq!(read_packet(&mut client).await, (2, vec![0x01, 0x04]));
            send(&mut client, 3, &[0x02]).await;
            let (seq, key) = read_packet(&mut client).await;
            assert_eq!(seq, 4);
            assert!(key.starts_with(b"\x01-----BEGIN PUBLIC KEY-----"));
            send(&mut client, 5, &[0xab; 256]).await;
            assert_eq!(read_packet(&mut client).await.0, 6);
        } else {
            assert_eq!(read_packet(&mut client).await, (2, vec![0x01, 0x03]));
            let (seq, ok) = read_packet(&mut client).await;
            assert_eq!((seq, ok[0]), (3, 0x00));
        }
        server.await.unwrap();
        assert_eq!(relay.await.unwrap().unwrap(), "app");
    }

    #[tokio::test]
    async fn fast_authentication_is_relayed() {
        transcript(false).await;
    }

    #[tokio::test]
    async fn full_authentication_with_the_rsa_key_is_relayed() {
        transcript(true).await;
    }
}
