//! Frames from the coordinator: reading bursts, putting large ones back together from their
//! pieces, checking request ids, and handing each message to its handler (`tenants` for tenant
//! messages, the key-service link for answers). Large frames are decoded off the loop.

use super::*;

/// Just the request id of an envelope, for answering frames that fail to decode whole.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvelopeId {
    #[prost(uint64, tag = "1")]
    request_id: u64,
}

impl Worker {
    /// Whether `request_id` may start a request: not 0, and not seen before on this connection.
    /// Otherwise the refusal is sent here.
    async fn fresh_request_id(
        &mut self,
        s: &mut Session,
        request_id: u64,
    ) -> Result<bool, tungstenite::Error> {
        if request_id == 0 {
            let err = Error::InvalidArgument("request id 0 is reserved".into());
            s.ws.send(error_frame(0, &err)).await?;
            return Ok(false);
        }
        if !s.replay.admit(request_id) {
            tracing::warn!(request_id, "refusing a replayed request id");
            s.ws.send(error_frame(request_id, &Error::Replayed(request_id)))
                .await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Handles `first` and the frames already received behind it (at most [`MAX_BURST`]). False
    /// when the connection is gone.
    pub(super) async fn on_burst(
        &mut self,
        s: &mut Session,
        first: Message,
    ) -> Result<bool, tungstenite::Error> {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(message) = next.take() {
            handled += 1;
            // Polling without waiting: data already in the socket or tungstenite's buffer only.
            let ahead = if handled < MAX_BURST {
                s.ws.next().now_or_never()
            } else {
                None
            };
            if !self.on_message(s, message).await? {
                return Ok(false);
            }
            match ahead {
                None => {}
                Some(Some(Ok(message))) => next = Some(message),
                Some(Some(Err(err))) => {
                    tracing::warn!(error = %err, "reading from the coordinator failed");
                    return Ok(false);
                }
                Some(None) => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Handles one frame; false when the coordinator closed the connection.
    async fn on_message(
        &mut self,
        s: &mut Session,
        message: Message,
    ) -> Result<bool, tungstenite::Error> {
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Text(_) => {
                tracing::warn!("ignoring a text frame from the coordinator");
                return Ok(true);
            }
            Message::Close(_) => {
                tracing::info!("the coordinator closed the connection");
                return Ok(false);
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(true),
        };
        let bytes = match s.reassembly.offer(&bytes) {
            Piece::Frame => bytes,
            Piece::Pending => return Ok(true),
            Piece::Whole(frame) => frame.into(),
            Piece::TooLarge(request_id) => {
                let err = Error::InvalidArgument(format!(
                    "the request is larger than the {} MiB frame limit",
                    MAX_FRAME_BYTES >> 20
                ));
                s.ws.send(error_frame(request_id, &err)).await?;
                return Ok(true);
            }
        };
        if let Some(head) = large_request_head(&bytes) {
            let request_id = head.request_id;
            if self.fresh_request_id(s, request_id).await? {
                let (tenant, epoch) = (head.tenant_request.tenant, head.tenant_request.epoch);
                let op = tenants::OpSource::Frame(bytes);
                if let Some(err) =
                    self.admit(s, request_id, head.deadline_unix_ms, tenant, epoch, op)
                {
                    s.ws.send(error_frame(request_id, &err)).await?;
                }
            }
            return Ok(true);
        }
        let envelope = match cluster::Envelope::decode(bytes.as_ref()) {
            Ok(envelope) => envelope,
            Err(err) => {
                let request_id = EnvelopeId::decode(bytes.as_ref())
                    .map(|e| e.request_id)
                    .unwrap_or(0);
                tracing::warn!(request_id, bytes = bytes.len(), error = %err, "a frame from the coordinator does not decode");
                if request_id != 0 {
                    let err = Error::InvalidArgument(format!("the frame does not decode: {err}"));
                    s.ws.send(error_frame(request_id, &err)).await?;
                }
                return Ok(true);
            }
        };
        let request_id = envelope.request_id;
        let deadline_unix_ms = envelope.deadline_unix_ms;
        let Some(body) = envelope.body else {
            tracing::warn!(request_id, "an envelope without a body");
            if request_id != 0 {
                let err = Error::InvalidArgument("the envelope has no body".into());
                s.ws.send(error_frame(request_id, &err)).await?;
            }
            return Ok(true);
        };
        match body {
            Body::AssignTenant(_)
            | Body::ReleaseTenant(_)
            | Body::TenantRequest(_)
            | Body::TransferTenant(_) => {
                if !self.fresh_request_id(s, request_id).await? {
                    return Ok(true);
                }
                let refusal = match body {
                    Body::AssignTenant(assign) => self.assign(s, request_id, assign).await?,
                    Body::ReleaseTenant(release) => self.release(s, request_id, release),
                    Body::TransferTenant(transfer) => self.transfer(s, request_id, transfer),
                    Body::TenantRequest(req) => self.admit(
                        s,
                        request_id,
                        deadline_unix_ms,
                        req.tenant,
                        req.epoch,
                        tenants::OpSource::Decoded(req.op, req.write_token),
                    ),
                    _ => None,
                };
                if let Some(err) = refusal {
                    s.ws.send(error_frame(request_id, &err)).await?;
                }
            }
            Body::Ack(_)
            | Body::Error(_)
            | Body::TenantResponse(_)
            | Body::GenerateDataKeyResponse(_)
            | Body::DecryptDataKeyResponse(_)
            | Body::DecryptDataKeysResponse(_)
            | Body::RewrapDataKeyResponse(_)
            | Body::KekVersionResponse(_)
            | Body::TransferTenantResponse(_) => {
                let carries_key = matches!(
                    body,
                    Body::GenerateDataKeyResponse(_)
                        | Body::DecryptDataKeyResponse(_)
                        | Body::DecryptDataKeysResponse(_)
                );
                if let Some(unclaimed) = self.link.deliver(request_id, body) {
                    match unclaimed {
                        Body::Error(err) => {
                            tracing::warn!(request_id, code = err.code, message = %err.message, "the coordinator reported an error");
                        }
                        _ => tracing::debug!(
                            request_id,
                            "an answer nobody waits for (timed out or from before a reconnect)"
                        ),
                    }
                }
                if carries_key {
                    wipe(bytes);
                }
            }
            Body::Hello(_) | Body::Heartbeat(_) | Body::Chunk(_) => {
                tracing::warn!(
                    request_id,
                    "ignoring a hello, heartbeat or stray chunk sent by the coordinator"
                );
            }
            Body::GenerateDataKey(_)
            | Body::DecryptDataKey(_)
            | Body::DecryptDataKeys(_)
            | Body::RewrapDataKey(_)
            | Body::KekVersion(_) => {
                let err = Error::InvalidArgument(
                    "key-service calls go from the worker to the coordinator".into(),
                );
                s.ws.send(error_frame(request_id, &err)).await?;
            }
        }
        Ok(true)
    }
}

/// Frames above this many bytes that carry a tenant request are decoded on the request's own
/// thread, not the loop's: a request with a filter of a quarter of a million values, or a
/// thousand points, takes milliseconds to decode, during which every other tenant's frames would
/// wait (INV-24). Only the request id, deadline, tenant and epoch are read on the loop.
const LARGE_FRAME_BYTES: usize = 64 << 10;

/// The head of an envelope that carries a tenant request: its operation is skipped, not decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct RequestEnvelopeHead {
    #[prost(uint64, tag = "1")]
    request_id: u64,
    #[prost(uint64, tag = "2")]
    deadline_unix_ms: u64,
    #[prost(message, optional, tag = "14")]
    tenant_request: Option<TenantRequestHead>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TenantRequestHead {
    #[prost(string, tag = "1")]
    tenant: String,
    #[prost(uint64, tag = "2")]
    epoch: u64,
}

struct LargeRequestHead {
    request_id: u64,
    deadline_unix_ms: u64,
    tenant_request: TenantRequestHead,
}

/// The head of a large frame that carries a tenant request (see [`LARGE_FRAME_BYTES`]).
fn large_request_head(bytes: &[u8]) -> Option<LargeRequestHead> {
    if bytes.len() <= LARGE_FRAME_BYTES {
        return None;
    }
    let head = RequestEnvelopeHead::decode(bytes).ok()?;
    Some(LargeRequestHead {
        request_id: head.request_id,
        deadline_unix_ms: head.deadline_unix_ms,
        tenant_request: head.tenant_request?,
    })
}

/// The operation of a tenant request frame, decoded in full, and its write token (0: none).
pub(super) fn decode_request_op(bytes: &[u8]) -> Result<(cluster::tenant_request::Op, u64), Error> {
    match cluster::Envelope::decode(bytes) {
        Ok(cluster::Envelope {
            body: Some(Body::TenantRequest(req)),
            ..
        }) => req
            .op
            .map(|op| (op, req.write_token))
            .ok_or_else(|| Error::InvalidArgument("the request has no operation".into())),
        Ok(_) => Err(Error::InvalidArgument(
            "the frame is not a tenant request".into(),
        )),
        Err(err) => Err(Error::InvalidArgument(format!(
            "the frame does not decode: {err}"
        ))),
    }
}

/// Sends the next piece of a large answer, if one waits.
pub(super) async fn send_piece(s: &mut Session) -> Result<(), tungstenite::Error> {
    if let Some(piece) = s.bulk.next_piece() {
        s.ws.send(Message::binary(piece)).await?;
    }
    Ok(())
}

/// Zeroizes a received frame that carried a DEK, when this is its only reference.
fn wipe(bytes: tokio_tungstenite::tungstenite::Bytes) {
    if let Ok(mut owned) = bytes.try_into_mut() {
        owned.as_mut().zeroize();
    }
}
