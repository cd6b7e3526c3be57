//! The key service as the worker sees it: a client of the coordinator over the cluster connection.
//!
//! Storage calls [`KeyService`] from blocking threads (request threads and its own background
//! threads). [`RemoteKeyService`] sends the call as an envelope over the current connection (via
//! the [`Link`]) and blocks that thread until the coordinator answers, the connection drops, or
//! the timeout passes. The worker never holds a KEK; DEK bytes go straight into [`DataKey`] and the
//! buffers that carried them are zeroized.

use std::collections::HashMap;
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use parking_lot::Mutex;
use proto::vaultvec::cluster::v1 as cluster;
use storage::crypto::{DataKey, DekContext, KeyService, WrappedDek};
use storage::ids::TenantId;
use tokio::sync::mpsc::UnboundedSender;
use zeroize::Zeroize;

use cluster::envelope::Body;

use crate::server::now_ms;

/// The worker's side of the current connection, shared by the connection loop and the key service.
#[derive(Default)]
pub(crate) struct Link {
    conn: Mutex<Option<LinkConn>>,
}

struct LinkConn {
    /// Frames for the connection loop to send.
    outbound: UnboundedSender<cluster::Envelope>,
    /// The id of the last request the worker sent on this connection.
    last_id: u64,
    /// Whether the coordinator said (in its answer to the hello) that it answers
    /// `DecryptDataKeys`.
    key_batches: bool,
    /// Callers waiting for an answer, by request id.
    pending: HashMap<u64, SyncSender<Body>>,
}

impl Link {
    /// A new connection is up: worker requests go out through `outbound`, numbered from 1;
    /// `key_batches` if the coordinator answers `DecryptDataKeys`.
    pub(crate) fn attach(&self, outbound: UnboundedSender<cluster::Envelope>, key_batches: bool) {
        *self.conn.lock() = Some(LinkConn {
            outbound,
            last_id: 0,
            key_batches,
            pending: HashMap::new(),
        });
    }

    /// Whether the current connection's coordinator answers `DecryptDataKeys`.
    fn key_batches(&self) -> bool {
        self.conn.lock().as_ref().is_some_and(|c| c.key_batches)
    }

    /// The connection is gone: every waiting caller fails at once.
    pub(crate) fn detach(&self) {
        *self.conn.lock() = None;
    }

    /// Hands an answer to the caller waiting for `request_id`. Gives the body back when nobody
    /// takes it (nobody waits, or the caller gave up), with any DEK in it zeroed.
    pub(crate) fn deliver(&self, request_id: u64, body: Body) -> Option<Body> {
        let waiter = self
            .conn
            .lock()
            .as_mut()
            .and_then(|conn| conn.pending.remove(&request_id));
        let mut unclaimed = match waiter {
            // A full or closed channel means the caller gave up (timeout).
            Some(waiter) => match waiter.try_send(body) {
                Ok(()) => return None,
                Err(TrySendError::Full(body) | TrySendError::Disconnected(body)) => body,
            },
            None => body,
        };
        wipe_dek(&mut unclaimed);
        Some(unclaimed)
    }

    /// Sends `body` as a request and waits for the answer.
    fn call(&self, body: Body, timeout: Duration) -> storage::Result<Body> {
        let (tx, rx) = sync_channel(1);
        let request_id = {
            let mut guard = self.conn.lock();
            let conn = guard.as_mut().ok_or_else(|| {
                storage::Error::Key("no connection to the coordinator (the key service)".into())
            })?;
            conn.last_id += 1;
            let request_id = conn.last_id;
            let envelope = cluster::Envelope {
                request_id,
                deadline_unix_ms: now_ms().saturating_add(timeout.as_millis() as u64),
                body: Some(body),
            };
            if conn.outbound.send(envelope).is_err() {
                return Err(storage::Error::Key(
                    "the connection to the coordinator is closing".into(),
                ));
            }
            conn.pending.insert(request_id, tx);
            request_id
        };
        match rx.recv_timeout(timeout) {
            Ok(body) => Ok(body),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(conn) = self.conn.lock().as_mut() {
                    conn.pending.remove(&request_id);
                }
                Err(storage::Error::Key(format!(
                    "the key service did not answer within {} s",
                    timeout.as_secs()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => Err(storage::Error::Key(
                "the connection to the coordinator (the key service) was lost".into(),
            )),
        }
    }
}

/// [`KeyService`] over the cluster connection.
pub(crate) struct RemoteKeyService {
    link: std::sync::Arc<Link>,
    timeout: Duration,
}

impl RemoteKeyService {
    pub(crate) fn new(link: std::sync::Arc<Link>, timeout: Duration) -> RemoteKeyService {
        RemoteKeyService { link, timeout }
    }
}

/// The coordinator answered with an error or with the wrong kind of answer.
fn refused(body: Body) -> storage::Error {
    match body {
        Body::Error(err) => {
            let code = cluster::ErrorCode::try_from(err.code)
                .map(|c| c.as_str_name())
                .unwrap_or("ERROR_CODE_UNKNOWN");
            storage::Error::Key(format!("the key service refused: {code}: {}", err.message))
        }
        Body::GenerateDataKeyResponse(mut resp) => {
            resp.data_key.zeroize();
            storage::Error::Key("the key service sent an unexpected answer".into())
        }
        Body::DecryptDataKeyResponse(mut resp) => {
            resp.data_key.zeroize();
            storage::Error::Key("the key service sent an unexpected answer".into())
        }
        mut body @ Body::DecryptDataKeysResponse(_) => {
            wipe_dek(&mut body);
            storage::Error::Key("the key service sent an unexpected answer".into())
        }
        _ => storage::Error::Key("the key service sent an unexpected answer".into()),
    }
}

/// Zeroes the DEK of a key answer in place.
fn wipe_dek(body: &mut Body) {
    match body {
        Body::GenerateDataKeyResponse(r) => r.data_key.as_mut_slice().zeroize(),
        Body::DecryptDataKeyResponse(r) => r.data_key.as_mut_slice().zeroize(),
        Body::DecryptDataKeysResponse(r) => {
            for dek in &mut r.data_keys {
                dek.as_mut_slice().zeroize();
            }
        }
        _ => {}
    }
}

/// Most keys one `DecryptDataKeys` call asks for (the coordinator's bound).
const MAX_KEYS_PER_CALL: usize = 1024;

/// A DEK from the wire; the buffer is zeroized whatever happens.
fn data_key(mut bytes: Vec<u8>) -> storage::Result<DataKey> {
    let key = DataKey::from_wire(&bytes);
    bytes.zeroize();
    key
}

impl KeyService for RemoteKeyService {
    fn generate_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
    ) -> storage::Result<(DataKey, WrappedDek)> {
        let body = Body::GenerateDataKey(cluster::GenerateDataKeyRequest {
            tenant: tenant.as_str().to_owned(),
            collection: ctx.collection.to_owned(),
            file_id: ctx.file_id,
        });
        match self.link.call(body, self.timeout)? {
            Body::GenerateDataKeyResponse(resp) => {
                let cluster::GenerateDataKeyResponse {
                    data_key: dek,
                    kek_version,
                    wrapped_data_key,
                } = resp;
                let dek = data_key(dek)?;
                let wrapped = WrappedDek::from_wire(kek_version, &wrapped_data_key)?;
                Ok((dek, wrapped))
            }
            other => Err(refused(other)),
        }
    }

    fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> storage::Result<DataKey> {
        let body = Body::DecryptDataKey(cluster::DecryptDataKeyRequest {
            tenant: tenant.as_str().to_owned(),
            collection: ctx.collection.to_owned(),
            file_id: ctx.file_id,
            kek_version: wrapped.kek_version,
            wrapped_data_key: wrapped.bytes.to_vec(),
        });
        match self.link.call(body, self.timeout)? {
            Body::DecryptDataKeyResponse(resp) => data_key(resp.data_key),
            other => Err(refused(other)),
        }
    }

    fn decrypt_data_keys(
        &self,
        tenant: &TenantId,
        files: &[(DekContext<'_>, WrappedDek)],
    ) -> storage::Result<Vec<DataKey>> {
        if !self.link.key_batches() {
            // A coordinator from before the call would not answer it: one key at a time.
            return files
                .iter()
                .map(|(ctx, wrapped)| self.decrypt_data_key(tenant, *ctx, wrapped))
                .collect();
        }
        let mut deks = Vec::with_capacity(files.len());
        for chunk in files.chunks(MAX_KEYS_PER_CALL) {
            let keys = chunk
                .iter()
                .map(|(ctx, wrapped)| cluster::DecryptDataKeyRequest {
                    tenant: tenant.as_str().to_owned(),
                    collection: ctx.collection.to_owned(),
                    file_id: ctx.file_id,
                    kek_version: wrapped.kek_version,
                    wrapped_data_key: wrapped.bytes.to_vec(),
                })
                .collect();
            let body = Body::DecryptDataKeys(cluster::DecryptDataKeysRequest {
                tenant: tenant.as_str().to_owned(),
                keys,
            });
            match self.link.call(body, self.timeout)? {
                Body::DecryptDataKeysResponse(mut resp) => {
                    if resp.data_keys.len() != chunk.len() {
                        wipe_dek(&mut Body::DecryptDataKeysResponse(resp));
                        return Err(storage::Error::Key(
                            "the key service answered a different number of keys".into(),
                        ));
                    }
                    for bytes in resp.data_keys.drain(..) {
                        deks.push(data_key(bytes)?);
                    }
                }
                other => return Err(refused(other)),
            }
        }
        Ok(deks)
    }

    fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> storage::Result<WrappedDek> {
        let body = Body::RewrapDataKey(cluster::RewrapDataKeyRequest {
            tenant: tenant.as_str().to_owned(),
            collection: ctx.collection.to_owned(),
            file_id: ctx.file_id,
            kek_version: wrapped.kek_version,
            wrapped_data_key: wrapped.bytes.to_vec(),
        });
        match self.link.call(body, self.timeout)? {
            Body::RewrapDataKeyResponse(resp) => {
                WrappedDek::from_wire(resp.kek_version, &resp.wrapped_data_key)
            }
            other => Err(refused(other)),
        }
    }

    fn current_kek_version(&self, tenant: &TenantId) -> storage::Result<u32> {
        let body = Body::KekVersion(cluster::KekVersionRequest {
            tenant: tenant.as_str().to_owned(),
        });
        match self.link.call(body, self.timeout)? {
            Body::KekVersionResponse(resp) => Ok(resp.kek_version),
            other => Err(refused(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dek_answer() -> Body {
        Body::DecryptDataKeyResponse(cluster::DecryptDataKeyResponse {
            data_key: vec![0xA5; 32],
        })
    }

    fn dek_of(body: &Body) -> &[u8] {
        match body {
            Body::DecryptDataKeyResponse(r) => &r.data_key,
            Body::GenerateDataKeyResponse(r) => &r.data_key,
            other => panic!("not a key answer: {other:?}"),
        }
    }

    /// A key answer that nobody takes (its caller timed out, or it came from before a reconnect)
    /// is handed back with its DEK zeroed, never dropped or logged with it.
    #[test]
    fn an_unclaimed_key_answer_comes_back_wiped() {
        let link = Link::default();
        let (outbound, _frames) = tokio::sync::mpsc::unbounded_channel();
        link.attach(outbound, true);
        // Nobody waits for request 5.
        let back = link.deliver(5, dek_answer()).expect("handed back");
        assert_eq!(dek_of(&back), &[0u8; 32]);
        // The caller of request 6 gave up: its receiver is gone.
        let (tx, rx) = sync_channel(1);
        link.conn.lock().as_mut().unwrap().pending.insert(6, tx);
        drop(rx);
        let back = link.deliver(6, dek_answer()).expect("handed back");
        assert_eq!(dek_of(&back), &[0u8; 32]);
        let generated = Body::GenerateDataKeyResponse(cluster::GenerateDataKeyResponse {
            data_key: vec![0xA5; 32],
            kek_version: 1,
            wrapped_data_key: vec![1; 60],
        });
        let back = link.deliver(7, generated).expect("handed back");
        assert_eq!(dek_of(&back), &[0u8; 32]);
        // A waiting caller gets the key itself.
        let (tx, rx) = sync_channel(1);
        link.conn.lock().as_mut().unwrap().pending.insert(8, tx);
        assert!(link.deliver(8, dek_answer()).is_none());
        assert_eq!(dek_of(&rx.recv().unwrap()), &[0xA5; 32]);
    }
}
