//! Idempotency keys of upserts and deletes: a retried request applies once and gets the first
//! outcome back, across worker failover and coordinator restarts.
//!
//! A keyed write runs under the tenant's write lock (the replicas' lock: one keyed write of a
//! tenant at a time). Its row (`store::idempotency`) is written *pending* with a fresh write token
//! from the tenant's counter before anything is sent, and the token travels with the write to
//! every copy, which logs it in the same WAL frame as the write (`wal::Op::Token`): the write and
//! its token are durable together or not at all, and a copy's collection keeps the highest token
//! it applied (in its manifest too). When the answer is definite (the worker ran it: success or a
//! refusal), the outcome is recorded and every retry with the key gets it. When it is not (no
//! copy answered for sure: a timeout, a lost connection, a coordinator that stopped), the row stays
//! pending, and before the tenant's next keyed write (a retry or any other) it is *settled*: the
//! tenant's live copy is asked for the collection's applied token (`AppliedToken`, which the
//! worker answers only while no other request of the tenant runs, so an earlier attempt still
//! running has finished, and frames arrive in order, so none still on its way is that attempt).
//! Tokens of a tenant's keyed writes increase and the next keyed write waits for the settling,
//! so "applied token ≥ the row's token" means the attempt ran: its outcome is recorded as a
//! success (`upserted` counts the request's points; `deleted` the distinct ids requested, since
//! how many existed then is not kept). Otherwise it never ran and never will, the row is dropped,
//! and a retry applies it as new.
//!
//! A key reused with a different request (another digest) is refused with `invalid_argument`.

use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;
use sha2::{Digest, Sha256};

use super::error::{ApiError, Code};
use super::{Op, Reply, Service, off_runtime};
use crate::config::Tier;
use crate::store::{IdemOutcome, IdemRow, IdemState};

/// How often settling asks a busy worker again (up to the request timeout).
const SETTLE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The idempotency key of a write, if it carries one.
pub(crate) fn key_of(op: &Op) -> Option<&str> {
    let key = match op {
        Op::Upsert(r) => &r.idempotency_key,
        Op::Delete(r) => &r.idempotency_key,
        _ => return None,
    };
    (!key.is_empty()).then_some(key.as_str())
}

/// The collection written and how many items the write carries (points, or distinct ids).
fn target(op: &Op) -> (String, u64) {
    match op {
        Op::Upsert(r) => (r.collection.clone(), r.points.len() as u64),
        Op::Delete(r) => {
            let mut ids: Vec<Vec<u8>> = r.ids.iter().map(|id| id.encode_to_vec()).collect();
            ids.sort_unstable();
            ids.dedup();
            (r.collection.clone(), ids.len() as u64)
        }
        _ => (String::new(), 0),
    }
}

/// SHA-256 of the request as it would be sent (key included, so the same request under another
/// key is another request).
fn digest(op: &Op) -> [u8; 32] {
    let mut encoded = Vec::with_capacity(op.encoded_len());
    op.encode(&mut encoded);
    Sha256::digest(&encoded).into()
}

fn outcome_of(result: &Result<Reply, ApiError>) -> IdemOutcome {
    match result {
        Ok(reply) => IdemOutcome::Reply(
            cluster::TenantResponse {
                result: Some(reply.clone()),
            }
            .encode_to_vec(),
        ),
        Err(err) => IdemOutcome::Error(err.code.as_str().to_owned(), err.message.clone()),
    }
}

fn replay(outcome: IdemOutcome) -> Result<Reply, ApiError> {
    match outcome {
        IdemOutcome::Reply(bytes) => cluster::TenantResponse::decode(bytes.as_slice())
            .ok()
            .and_then(|r| r.result)
            .ok_or_else(|| ApiError::internal("a remembered outcome does not decode")),
        IdemOutcome::Error(code, message) => Err(ApiError::new(
            Code::parse(&code).unwrap_or(Code::Internal),
            message,
        )),
    }
}

impl Service {
    /// Runs a write that carries an idempotency key (see the module docs).
    pub(super) async fn keyed_write(
        &self,
        tenant: &str,
        tier: &Tier,
        op: Op,
        large: bool,
        key: String,
    ) -> Result<Reply, ApiError> {
        let _turn = self.write_turn(tenant).await?;
        let (collection, items) = target(&op);
        let upserted = match &op {
            Op::Upsert(r) => r.points.len() as u64,
            _ => 0,
        };
        let (op, digest) = if large {
            self.heavy(move || {
                let digest = digest(&op);
                (op, digest)
            })
            .await?
        } else {
            let digest = digest(&op);
            (op, digest)
        };
        for row in off_runtime(|| self.store.idem_pending(tenant))? {
            self.settle(tenant, tier, &row).await?;
        }
        if let Some(row) = off_runtime(|| self.store.idem_get(tenant, &key))? {
            if row.digest != digest {
                return Err(ApiError::invalid(
                    "this idempotency_key was used with a different request in the last 24 hours",
                ));
            }
            if let IdemState::Done(outcome) = row.state {
                return replay(outcome);
            }
        }
        let token = off_runtime(|| {
            self.store.idem_begin(
                tenant,
                &key,
                &digest,
                &collection,
                items,
                matches!(op, Op::Delete(_)),
            )
        })?;
        match self.route_token(tenant, Some(tier), op, large, token).await {
            Ok(result) => {
                let outcome = outcome_of(&result);
                off_runtime(|| self.store.idem_finish(tenant, &key, token, &outcome))?;
                if result.is_ok() {
                    self.count_upserted(tenant, upserted);
                }
                result
            }
            Err(err) => Err(ApiError {
                message: format!(
                    "{}; whether the write ran is not known yet: retry with the same idempotency_key \
                     and it is applied once",
                    err.message
                ),
                ..err
            }),
        }
    }

    /// Finds out whether the pending attempt `row` ran, and records that (see the module docs).
    async fn settle(&self, tenant: &str, tier: &Tier, row: &IdemRow) -> Result<(), ApiError> {
        let ask = Op::AppliedToken(cluster::AppliedToken {
            collection: row.collection.clone(),
        });
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let applied = loop {
            let answer = self
                .route_token(tenant, Some(tier), ask.clone(), false, 0)
                .await;
            match answer {
                Ok(Ok(Reply::AppliedToken(token))) => break token,
                Ok(Ok(_)) => return Err(ApiError::internal("unexpected answer to AppliedToken")),
                // Busy: the tenant has requests running there; ask again shortly.
                Ok(Err(err)) | Err(err)
                    if err.code == Code::Unavailable && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(SETTLE_RETRY).await;
                }
                Ok(Err(err)) | Err(err) => {
                    return Err(ApiError {
                        message: format!(
                            "an earlier write of this tenant has an unknown outcome that could not be \
                             settled yet ({}); retry",
                            err.message
                        ),
                        ..err
                    });
                }
            }
        };
        if applied >= row.token {
            // It ran: its points are counted now (its own call ended without an answer).
            if !row.is_delete {
                self.count_upserted(tenant, row.items);
            }
            let reply = if row.is_delete {
                Reply::Delete(api::DeletePointsResponse { deleted: row.items })
            } else {
                Reply::Upsert(api::UpsertResponse {
                    upserted: row.items,
                })
            };
            let outcome = outcome_of(&Ok(reply));
            off_runtime(|| {
                self.store
                    .idem_finish(tenant, &row.key, row.token, &outcome)
            })?;
            tracing::info!(
                tenant,
                token = row.token,
                "a keyed write with an unknown outcome had run"
            );
        } else {
            off_runtime(|| self.store.idem_forget(tenant, &row.key, row.token))?;
            tracing::info!(
                tenant,
                token = row.token,
                "a keyed write with an unknown outcome had not run"
            );
        }
        Ok(())
    }
}
