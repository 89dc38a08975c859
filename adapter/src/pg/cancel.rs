//! Query cancellation through the proxy.
//!
//! A client cancels a running query by opening a new connection and sending a CancelRequest with
//! the process id and secret it received in BackendKeyData. Clients talk to Larder, so Larder
//! hands each session its own random key and remembers which upstream session (address, real
//! pid and secret) it stands for; a CancelRequest arriving at Larder is forwarded to that
//! upstream server over a new connection. Keys are removed when their session ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::messages::{BackendKeyData, CancelRequest, Encode};
use super::upstream::{UpstreamAddr, UpstreamConnector};
use crate::AdapterError;

/// How long to wait for the upstream to acknowledge (close) a forwarded cancel.
const CANCEL_FORWARD_TIMEOUT_MS: u64 = 5_000;

/// Where a session's cancel requests must go.
#[derive(Clone)]
pub(crate) struct CancelTarget {
    pub addr: UpstreamAddr,
    pub tls: bool,
    pub upstream_pid: i32,
    pub upstream_secret: Bytes,
}

struct Entry {
    secret: [u8; 4],
    target: CancelTarget,
}

/// Larder-issued cancel keys of the live sessions.
pub(crate) struct CancelRegistry {
    entries: Mutex<HashMap<i32, Entry>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// Removes its key from the registry when the session ends.
pub(crate) struct CancelKeyGuard {
    registry: Arc<CancelRegistry>,
    pid: i32,
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.pid);
    }
}

impl CancelRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(CancelRegistry {
            entries: Mutex::new(HashMap::new()),
            provider: super::tls::provider(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a fresh random key for a session whose upstream key is `target`.
    pub fn register(
        self: &Arc<Self>,
        target: CancelTarget,
    ) -> Result<(BackendKeyData, CancelKeyGuard), AdapterError> {
        let mut entries = self.lock();
        for _ in 0..64 {
            let mut random = [0u8; 8];
            self.provider
                .secure_random
                .fill(&mut random)
                .map_err(|_| AdapterError::Tls("random generator failed".into()))?;
            let pid = (u32::from_be_bytes([random[0], random[1], random[2], random[3]])
                & 0x7fff_ffff) as i32;
            if pid == 0 || entries.contains_key(&pid) {
                continue;
            }
            let secret = [random[4], random[5], random[6], random[7]];
            entries.insert(pid, Entry { secret, target });
            let key = BackendKeyData {
                process_id: pid,
                secret_key: Bytes::copy_from_slice(&secret),
            };
            let guard = CancelKeyGuard {
                registry: self.clone(),
                pid,
            };
            return Ok((key, guard));
        }
        Err(AdapterError::Interceptor(
            "could not allocate a unique cancel key".into(),
        ))
    }

    /// The upstream target for a client's CancelRequest, if the key is valid.
    pub fn lookup(&self, req: &CancelRequest) -> Option<CancelTarget> {
        let entries = self.lock();
        let entry = entries.get(&req.process_id)?;
        // Constant-time comparison: the secret is the only thing protecting other sessions.
        let matches = req.secret_key.len() == entry.secret.len()
            && req
                .secret_key
                .iter()
                .zip(entry.secret.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        matches.then(|| entry.target.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Sends a CancelRequest for `target` to its upstream server and waits until the server closes
/// the connection (which it does after processing the request).
pub(crate) async fn forward_cancel(
    connector: &UpstreamConnector,
    target: CancelTarget,
) -> Result<(), AdapterError> {
    let mut up = connector.connect_addr(&target.addr, target.tls).await?;
    let mut buf = BytesMut::with_capacity(16 + target.upstream_secret.len());
    CancelRequest {
        process_id: target.upstream_pid,
        secret_key: target.upstream_secret.clone(),
    }
    .encode(&mut buf);
    up.conn.write_all(&buf).await?;
    up.conn.flush().await?;
    let mut sink = [0u8; 64];
    let wait = async {
        while up.conn.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(Duration::from_millis(CANCEL_FORWARD_TIMEOUT_MS), wait).await {
        Ok(r) => r.map_err(AdapterError::from),
        Err(_) => Err(AdapterError::Timeout(
            "waiting for upstream to process cancel",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CancelTarget {
        CancelTarget {
            addr: UpstreamAddr::Tcp("127.0.0.1:5432".parse().unwrap()),
            tls: false,
            upstream_pid: 77,
            upstream_secret: Bytes::from_static(&[1, 2, 3, 4]),
        }
    }

    #[test]
    fn keys_are_unique_checked_and_released() {
        let reg = CancelRegistry::new();
        let (k1, g1) = reg.register(target()).unwrap();
        let (k2, _g2) = reg.register(target()).unwrap();
        assert_ne!(k1.process_id, k2.process_id);
        assert!(k1.process_id > 0);
        let good = CancelRequest {
            process_id: k1.process_id,
            secret_key: k1.secret_key.clone(),
        };
        assert_eq!(reg.lookup(&good).unwrap().upstream_pid, 77);
        let mut bad_secret = k1.secret_key.to_vec();
        bad_secret[0] ^= 1;
        let bad = CancelRequest {
            process_id: k1.process_id,
            secret_key: Bytes::from(bad_secret),
        };
        assert!(reg.lookup(&bad).is_none());
        drop(g1);
        assert!(reg.lookup(&good).is_none());
        assert_eq!(reg.len(), 1);
    }
}
