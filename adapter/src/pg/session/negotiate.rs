//! The first packets of a connection: TLS, GSSENC refusal, cancel requests and the startup
//! message, before the relay takes over; and the SCRAM channel-binding adjustments the
//! authentication pass-through needs.

use super::*;

/// What the first packets of a connection asked for.
pub(super) enum Negotiated {
    Startup { conn: Conn, startup: StartupMessage },
    Cancel(CancelRequest),
}

/// Handles one accepted connection from start to end. Never panics on client input.
/// `client` is `Conn::Plain` (TCP) or `Conn::Unix`.
pub(crate) async fn handle_connection(
    shared: Arc<Shared>,
    client: Conn,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
    handshake_permit: OwnedSemaphorePermit,
) {
    if let Conn::Plain(tcp) = &client {
        let _ = tcp.set_nodelay(true);
    }
    let mut gauge = shared.cfg.metrics.connection();
    let deadline = Instant::now() + Duration::from_millis(shared.cfg.startup_timeout_ms);
    let negotiated = match timeout_at(deadline, negotiate(&shared, client)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "startup negotiation failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "startup negotiation timed out");
            return;
        }
    };
    drop(handshake_permit);
    match negotiated {
        Negotiated::Cancel(req) => handle_cancel(&shared, &req, peer).await,
        Negotiated::Startup { conn, startup } => {
            if *shutdown.borrow() {
                reject(conn, "57P03", "the database system is shutting down").await;
                return;
            }
            let Ok(permit) = shared.sessions.clone().try_acquire_owned() else {
                warn!(%peer, max_connections = shared.cfg.max_connections, "too many clients");
                shared.cfg.metrics.refused.inc();
                reject(conn, "53300", "sorry, too many clients already").await;
                return;
            };
            gauge.set(crate::metrics::ConnectionState::Session);
            run_session(&shared, conn, startup, peer, deadline, shutdown).await;
            drop(permit);
        }
    }
}

/// Sends a FATAL error to a client that will not get a session, then closes.
pub(super) async fn reject(mut conn: Conn, code: &str, message: &str) {
    let mut buf = BytesMut::new();
    ErrorResponse::fatal(code, message).encode(&mut buf);
    let send = async {
        conn.write_all(&buf).await?;
        conn.flush().await?;
        conn.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_millis(CLOSE_FLUSH_TIMEOUT_MS), send).await;
}

pub(super) async fn handle_cancel(shared: &Shared, req: &CancelRequest, peer: Peer) {
    match shared.cancels.lookup(req) {
        Some(target) => match forward_cancel(&shared.connector, target).await {
            Ok(()) => debug!(%peer, "cancel request forwarded"),
            Err(e) => warn!(%peer, error = %e, "could not forward cancel request"),
        },
        None => debug!(%peer, "cancel request with unknown key ignored"),
    }
}

/// Reads one startup-phase packet with exact reads, so nothing that follows an SSLRequest is
/// consumed before the TLS handshake.
pub(super) async fn read_startup_packet(conn: &mut Conn) -> Result<StartupPacket, AdapterError> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).await?;
    let total = StartupPacket::peek_len(&len)?.ok_or(ProtocolError::Truncated("packet length"))?;
    // Grows as bytes arrive: a declared length costs nothing until it is sent.
    let want = total - 4;
    let mut body = Vec::with_capacity(want.min(READ_SPARE_MIN_BYTES));
    (&mut *conn)
        .take(want as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() < want {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(StartupPacket::decode_body(&body)?)
}

pub(super) async fn accept_tls(
    tls: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
) -> Result<Conn, AdapterError> {
    let stream = tokio_rustls::TlsAcceptor::from(tls.clone())
        .accept(tcp)
        .await
        .map_err(|e| AdapterError::Tls(format!("client TLS handshake: {e}")))?;
    Ok(Conn::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))))
}

pub(super) async fn negotiate(shared: &Shared, client: Conn) -> Result<Negotiated, AdapterError> {
    // Like Postgres, no TLS over Unix sockets: an SSLRequest there is answered `N`.
    let tcp = match client {
        Conn::Plain(tcp) => tcp,
        other => return negotiate_startup(shared, other).await,
    };
    let conn = match &shared.cfg.tls {
        Some(tls) => {
            let mut first = [0u8; 1];
            let n = tcp.peek(&mut first).await?;
            if n == 1 && first[0] == TLS_HANDSHAKE_RECORD {
                accept_tls(tls, tcp).await?
            } else {
                Conn::Plain(tcp)
            }
        }
        None => Conn::Plain(tcp),
    };
    negotiate_startup(shared, conn).await
}

pub(super) async fn negotiate_startup(
    shared: &Shared,
    mut conn: Conn,
) -> Result<Negotiated, AdapterError> {
    for _ in 0..NEGOTIATION_PACKETS_MAX {
        let packet = match read_startup_packet(&mut conn).await {
            Ok(p) => p,
            Err(AdapterError::Protocol(e)) => {
                let code = match e {
                    ProtocolError::UnsupportedProtocol { .. } => "0A000",
                    _ => "08P01",
                };
                let mut buf = BytesMut::new();
                ErrorResponse::fatal(code, format!("invalid startup packet: {e}")).encode(&mut buf);
                let _ = conn.write_all(&buf).await;
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        match packet {
            StartupPacket::Ssl => {
                conn = match (conn, &shared.cfg.tls) {
                    (Conn::Plain(mut tcp), Some(tls)) => {
                        tcp.write_all(b"S").await?;
                        accept_tls(tls, tcp).await?
                    }
                    (Conn::Plain(mut tcp), None) => {
                        tcp.write_all(b"N").await?;
                        Conn::Plain(tcp)
                    }
                    (Conn::Unix(mut unix), _) => {
                        unix.write_all(b"N").await?;
                        Conn::Unix(unix)
                    }
                    (Conn::Tls(_), _) => {
                        return Err(ProtocolError::Invalid("SSLRequest inside TLS").into())
                    }
                };
            }
            StartupPacket::GssEnc => conn.write_all(b"N").await?,
            StartupPacket::Cancel(req) => return Ok(Negotiated::Cancel(req)),
            StartupPacket::Startup(startup) => return Ok(Negotiated::Startup { conn, startup }),
        }
    }
    Err(ProtocolError::Invalid("too many negotiation packets").into())
}

/// A client on TLS that supports SCRAM channel binding but was not offered it (Larder strips
/// `-PLUS`) says so with the GS2 flag `y`; a TLS upstream then rejects the login as a possible
/// downgrade attack ("SCRAM channel binding negotiation error"). Passing authentication through
/// cannot fix that (the flag is covered by the client proof), so explain it in the log.
pub(super) fn warn_on_channel_binding_downgrade(batch: &ClientBatch<'_>, peer: Peer) {
    for msg in batch
        .iter()
        .filter(|m| m.frame.tag == frontend_tag::PASSWORD)
    {
        if let Ok(init) = SaslInitialResponse::decode(&msg.frame) {
            if init.data.as_deref().is_some_and(|d| d.starts_with(b"y,")) {
                warn!(%peer, "client over TLS announced SCRAM channel binding; the TLS upstream \
                    will reject it (channel binding cannot pass through a proxy): set \
                    channel_binding=disable on the client, or connect to Larder without TLS, \
                    or use sslmode=disable upstream");
            }
        }
    }
}

/// Removes `SCRAM-SHA-256-PLUS` (channel binding) from an AuthenticationSASL message: the
/// client's TLS channel ends at Larder, so binding to it can never verify upstream.
pub(super) fn strip_channel_binding(body: &[u8]) -> Result<Option<BytesMut>, ProtocolError> {
    if body.len() < 4 || body[..4] != Authentication::CODE_SASL.to_be_bytes() {
        return Ok(None);
    }
    let Authentication::Sasl { mechanisms } = Authentication::decode_body(body)? else {
        return Ok(None);
    };
    let kept: Vec<String> = mechanisms
        .iter()
        .filter(|m| !m.ends_with("-PLUS"))
        .cloned()
        .collect();
    if kept.len() == mechanisms.len() || kept.is_empty() {
        return Ok(None);
    }
    let mut out = BytesMut::new();
    Authentication::Sasl { mechanisms: kept }.encode(&mut out);
    Ok(Some(out))
}
