//! The key service (the KMS role): workers ask for data keys over their authenticated connection.
//! Tenant KEKs never leave the coordinator; a worker gets a DEK only for a tenant assigned to it.

use std::sync::Arc;

use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use storage::crypto::WrappedDek;
use storage::crypto::{DekContext, KeyService};
use storage::ids::TenantId;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use zeroize::Zeroizing;

use super::{Hub, WorkerConn, now_ms};

/// How long a key request waits for its worker to be assigned the tenant's current epoch (see
/// [`Hub::placed_here`]).
/// Most keys one `DecryptDataKeys` call may ask for.
const MAX_KEYS_PER_CALL: usize = 1024;

const ASSIGNMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
use crate::audit::Draft;

type Body = cluster::envelope::Body;

fn error(code: cluster::ErrorCode, message: impl Into<String>) -> Body {
    Body::Error(cluster::Error {
        code: code as i32,
        message: message.into(),
    })
}

impl Hub {
    /// Records a refused worker message in the tenant's chain (or the platform's if the tenant is
    /// unknown).
    pub(crate) fn audit_refusal(&self, worker: &str, tenant: &str, reason: &str) {
        let chain = match self.store.tenant(tenant) {
            Ok(Some(t)) if !t.deleted => tenant,
            _ => "platform",
        };
        let draft = Draft {
            time_ms: now_ms(),
            actor: format!("worker:{worker}"),
            action: "cluster.refused".into(),
            resource: tenant.to_owned(),
            outcome: "denied".into(),
            details: serde_json::json!({ "reason": reason }),
        };
        if let Err(err) = self.store.audit(chain, draft) {
            tracing::error!(error = %err, "audit write failed");
        }
    }

    /// Whether `tenant` is placed on `conn`'s worker now, under the epoch the connection holds:
    /// only for a live tenant that is not paused, whose primary copy or a live replica (a stale
    /// one serves nothing and catches up with ciphertext only) is on this worker, assigned on
    /// this connection under the current epoch. Pausing and deleting move the epoch on as
    /// well, but a paused tenant is refused by name, so no ordering of requests can unlock its
    /// keys.
    ///
    /// A change of the tenant's other copies (a replica added, caught up, promoted or removed)
    /// moves the epoch on while this worker stays placed, and the coordinator assigns it again
    /// under the new epoch with its next request there: a key request that comes in between
    /// waits for that assignment (up to [`ASSIGNMENT_WAIT`]) instead of failing the load or
    /// seal that asked.
    async fn placed_here(&self, conn: &WorkerConn, tenant: &str) -> bool {
        let deadline = tokio::time::Instant::now() + ASSIGNMENT_WAIT;
        loop {
            let changed = conn.assignments_notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let is_active = matches!(
                self.store.tenant(tenant),
                Ok(Some(t)) if !t.deleted && t.tier != crate::config::PAUSED_TIER
            );
            let Ok(Some(placement)) = self.store.placement(tenant) else {
                return false;
            };
            let holds_copy = placement.worker == conn.id
                || self.store.replicas(tenant).is_ok_and(|replicas| {
                    replicas
                        .iter()
                        .any(|r| r.worker == conn.id && r.state == crate::store::CopyState::Live)
                });
            if !is_active || !holds_copy {
                return false;
            }
            match conn.assigned_epoch(tenant) {
                Some(epoch) if epoch == placement.epoch => return true,
                // Assigned under an earlier epoch of this placement, or not recorded on this
                // connection yet (a refusal of an older request may have forgotten it while the
                // acknowledgement of the current one was on its way): the current one is.
                held if held.is_none_or(|epoch| epoch < placement.epoch) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    }

    pub(super) async fn key_service(self: &Arc<Self>, conn: &Arc<WorkerConn>, body: Body) -> Body {
        let file = |collection: &str, file_id: u64| vec![format!("{collection}/{file_id}")];
        let batch = matches!(body, Body::DecryptDataKeys(_));
        let (tenant, action, resources) = match &body {
            Body::GenerateDataKey(r) => (
                r.tenant.clone(),
                "kms.generate_data_key",
                file(&r.collection, r.file_id),
            ),
            Body::DecryptDataKey(r) => (
                r.tenant.clone(),
                "kms.decrypt_data_key",
                file(&r.collection, r.file_id),
            ),
            Body::DecryptDataKeys(r) => {
                if r.keys.is_empty() || r.keys.len() > MAX_KEYS_PER_CALL {
                    return error(
                        cluster::ErrorCode::InvalidArgument,
                        format!("a call asks for 1 to {MAX_KEYS_PER_CALL} keys"),
                    );
                }
                if r.keys.iter().any(|k| k.tenant != r.tenant) {
                    return error(
                        cluster::ErrorCode::InvalidArgument,
                        "every key of a call is of the call's tenant",
                    );
                }
                (
                    r.tenant.clone(),
                    "kms.decrypt_data_key",
                    r.keys
                        .iter()
                        .map(|k| format!("{}/{}", k.collection, k.file_id))
                        .collect(),
                )
            }
            Body::RewrapDataKey(r) => (
                r.tenant.clone(),
                "kms.rewrap_data_key",
                file(&r.collection, r.file_id),
            ),
            Body::KekVersion(r) => (r.tenant.clone(), "kms.kek_version", Vec::new()),
            _ => {
                return error(
                    cluster::ErrorCode::InvalidArgument,
                    "not a key-service call",
                );
            }
        };
        // While the coordinator releases a tenant from this connection (pause, deletion, move),
        // the worker may seal its segments at close, which needs keys, although the change has
        // already fenced the epoch. Only under the epoch this connection holds, and only until
        // the worker answers the release: a request that raced the change cannot assign the
        // tenant again there (the release's newer epoch makes the worker refuse the older one).
        // Checked first: a release follows a change that fenced the epoch, so the placement
        // check below would wait for an assignment that never comes.
        let releasing = conn.is_releasing(&tenant) && conn.assigned_epoch(&tenant).is_some();
        let placed_here = releasing || self.placed_here(conn, &tenant).await;
        if !placed_here {
            self.audit_refusal(
                &conn.id,
                &tenant,
                &format!("{action} for a tenant not assigned to this worker"),
            );
            return error(
                cluster::ErrorCode::NotAssigned,
                "tenant is not assigned to this worker",
            );
        }
        let Ok(tenant_id) = TenantId::parse(&tenant) else {
            return error(cluster::ErrorCode::InvalidArgument, "invalid tenant id");
        };
        let keys = self.keys.clone();
        let answer = tokio::task::spawn_blocking(move || answer(&keys, &tenant_id, body)).await;
        let (reply, outcome) = match answer {
            Ok(Ok(reply)) => (reply, "ok"),
            Ok(Err(err)) => {
                tracing::warn!(tenant = %tenant, action, error = %err, "key service refused");
                (
                    error(cluster::ErrorCode::DataLoss, err.to_string()),
                    "error",
                )
            }
            Err(_) => (
                error(cluster::ErrorCode::Internal, "key service failed"),
                "error",
            ),
        };
        if action != "kms.kek_version" {
            // One row per key answered (or refused), all in one transaction; a batch's rows say
            // how many keys it asked for.
            let time_ms = now_ms();
            let details = if batch {
                serde_json::json!({ "batch": resources.len() })
            } else {
                serde_json::json!({})
            };
            let drafts = resources
                .into_iter()
                .map(|resource| Draft {
                    time_ms,
                    actor: format!("worker:{}", conn.id),
                    action: action.into(),
                    resource,
                    outcome: outcome.into(),
                    details: details.clone(),
                })
                .collect();
            if let Err(err) = self.store.audit_many(&tenant, drafts) {
                // An answer that cannot be recorded is not given.
                tracing::error!(error = %err, "audit write failed; withholding the key");
                let mut withheld = reply;
                wipe_dek(&mut withheld);
                return error(cluster::ErrorCode::Unavailable, "audit write failed");
            }
        }
        reply
    }
}

fn answer(
    keys: &storage::crypto::LocalKeyService,
    tenant: &TenantId,
    body: Body,
) -> storage::Result<Body> {
    Ok(match body {
        Body::GenerateDataKey(r) => {
            let ctx = DekContext {
                collection: &r.collection,
                file_id: r.file_id,
            };
            let (dek, wrapped) = keys.generate_data_key(tenant, ctx)?;
            Body::GenerateDataKeyResponse(cluster::GenerateDataKeyResponse {
                data_key: std::mem::take(&mut *dek.to_wire()),
                kek_version: wrapped.kek_version,
                wrapped_data_key: wrapped.bytes.to_vec(),
            })
        }
        Body::DecryptDataKey(r) => {
            let ctx = DekContext {
                collection: &r.collection,
                file_id: r.file_id,
            };
            let wrapped = WrappedDek::from_wire(r.kek_version, &r.wrapped_data_key)?;
            let dek = keys.decrypt_data_key(tenant, ctx, &wrapped)?;
            Body::DecryptDataKeyResponse(cluster::DecryptDataKeyResponse {
                data_key: std::mem::take(&mut *dek.to_wire()),
            })
        }
        Body::DecryptDataKeys(r) => {
            let mut data_keys = Vec::with_capacity(r.keys.len());
            for k in &r.keys {
                let ctx = DekContext {
                    collection: &k.collection,
                    file_id: k.file_id,
                };
                let wrapped = WrappedDek::from_wire(k.kek_version, &k.wrapped_data_key)?;
                match keys.decrypt_data_key(tenant, ctx, &wrapped) {
                    Ok(dek) => data_keys.push(std::mem::take(&mut *dek.to_wire())),
                    Err(err) => {
                        // None is given: the ones unwrapped so far are wiped.
                        for dek in &mut data_keys {
                            zeroize::Zeroize::zeroize(dek);
                        }
                        return Err(err);
                    }
                }
            }
            Body::DecryptDataKeysResponse(cluster::DecryptDataKeysResponse { data_keys })
        }
        Body::RewrapDataKey(r) => {
            let ctx = DekContext {
                collection: &r.collection,
                file_id: r.file_id,
            };
            let wrapped = WrappedDek::from_wire(r.kek_version, &r.wrapped_data_key)?;
            let rewrapped = keys.rewrap_data_key(tenant, ctx, &wrapped)?;
            Body::RewrapDataKeyResponse(cluster::RewrapDataKeyResponse {
                kek_version: rewrapped.kek_version,
                wrapped_data_key: rewrapped.bytes.to_vec(),
            })
        }
        Body::KekVersion(_) => Body::KekVersionResponse(cluster::KekVersionResponse {
            kek_version: keys.current_kek_version(tenant)?,
        }),
        _ => {
            return Err(storage::Error::InvalidArgument {
                reason: "not a key-service call".into(),
            });
        }
    })
}

/// The frame answering a key-service call: the answer [`encode_wiping`], in a buffer that
/// zeroizes itself when the socket drops the message (tungstenite drops it once it has copied
/// the frame into its own write buffer, which we cannot reach; see ARCHITECTURE, key handling).
pub(super) fn key_reply(request_id: u64, body: Body) -> Message {
    let mut envelope = cluster::Envelope {
        request_id,
        deadline_unix_ms: 0,
        body: Some(body),
    };
    Message::Binary(Bytes::from_owner(encode_wiping(&mut envelope)))
}

/// Encodes an envelope into a buffer that zeroizes itself on drop, allocated once at its exact
/// size so no reallocation leaves a copy behind, then zeroes the DEK the envelope carried.
fn encode_wiping(envelope: &mut cluster::Envelope) -> Zeroizing<Vec<u8>> {
    let mut frame = Zeroizing::new(Vec::with_capacity(envelope.encoded_len()));
    // A Vec grows as needed, so encoding into it cannot fail; it does not grow here.
    let _ = envelope.encode(&mut *frame);
    if let Some(body) = envelope.body.as_mut() {
        wipe_dek(body);
    }
    frame
}

/// Zeroes the DEK of a key answer in place.
fn wipe_dek(body: &mut Body) {
    use zeroize::Zeroize;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(envelope: &cluster::Envelope) -> Option<&[u8]> {
        match envelope.body.as_ref()? {
            Body::GenerateDataKeyResponse(r) => Some(&r.data_key),
            Body::DecryptDataKeyResponse(r) => Some(&r.data_key),
            _ => None,
        }
    }

    /// Once a key answer is encoded for the socket, the DEK is left only in the frame, whose
    /// buffer was sized once (no reallocation left a copy) and zeroizes itself on drop.
    #[test]
    fn a_key_answer_keeps_its_dek_only_in_the_frame() {
        let dek = vec![0xA5u8; 32];
        let answers = [
            Body::GenerateDataKeyResponse(cluster::GenerateDataKeyResponse {
                data_key: dek.clone(),
                kek_version: 3,
                wrapped_data_key: vec![1; 60],
            }),
            Body::DecryptDataKeyResponse(cluster::DecryptDataKeyResponse {
                data_key: dek.clone(),
            }),
        ];
        for body in answers {
            let mut envelope = cluster::Envelope {
                request_id: 7,
                deadline_unix_ms: 0,
                body: Some(body),
            };
            let frame = encode_wiping(&mut envelope);
            let sent = cluster::Envelope::decode(frame.as_slice()).unwrap();
            assert_eq!(key_of(&sent), Some(&dek[..]), "the frame carries the key");
            assert_eq!(
                key_of(&envelope),
                Some(&[0u8; 32][..]),
                "the encoded answer no longer holds the key"
            );
            assert_eq!(
                frame.capacity(),
                frame.len(),
                "one allocation, exactly sized"
            );
        }
        // The socket's message holds the same bytes.
        let body = Body::DecryptDataKeyResponse(cluster::DecryptDataKeyResponse {
            data_key: dek.clone(),
        });
        let Message::Binary(bytes) = key_reply(9, body) else {
            panic!("a key answer is a binary frame");
        };
        let sent = cluster::Envelope::decode(bytes.as_ref()).unwrap();
        assert_eq!((sent.request_id, key_of(&sent)), (9, Some(&dek[..])));
    }
}
