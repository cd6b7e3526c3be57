//! One worker connection: the TLS handshake (when the listener has TLS on), the upgrade with its
//! token check, the hello, the reader loop that matches answers to waiting requests and serves the
//! worker's key-service calls.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use proto::chunk::{Piece, Reassembly};

use super::{Delivery, Hub, MAX_FRAME_BYTES, MAX_RECEIVE_BYTES, WorkerConn, now_ms};

/// Bytes of answers arriving in pieces held per connection, all answers together.
const MAX_REASSEMBLY_BYTES: usize = 2 * MAX_FRAME_BYTES;

/// Request ids remembered per connection for replay detection.
const REPLAY_WINDOW: usize = 4096;
/// How long the TLS handshake and the upgrade request may take together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn refuse(status: u16, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason.to_owned()));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::UNAUTHORIZED);
    response
}

/// Remembers the request ids a peer has used, to refuse replays.
#[derive(Default)]
pub(super) struct ReplayGuard {
    seen: BTreeSet<u64>,
}

impl ReplayGuard {
    /// True if `id` is fresh (and records it).
    pub(super) fn admit(&mut self, id: u64) -> bool {
        if self.seen.len() >= REPLAY_WINDOW
            && let Some(&lowest) = self.seen.first()
        {
            if id <= lowest {
                return false;
            }
            self.seen.pop_first();
        }
        self.seen.insert(id)
    }
}

/// The request id of an envelope, without decoding its body.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvelopeId {
    #[prost(uint64, tag = "1")]
    request_id: u64,
}

impl WorkerConn {
    /// A frame above [`MAX_FRAME_BYTES`] fails the request it answers (if its id can be read and
    /// someone waits for it) with a clear error; the connection and its other requests go on.
    fn fail_oversize(&self, frame: &[u8]) {
        let request_id = EnvelopeId::decode(frame).map_or(0, |e| e.request_id);
        self.fail_too_large(request_id, Some(frame.len()));
    }

    /// Fails request `request_id`, whose answer (of `bytes`, if known) is over the frame limit.
    fn fail_too_large(&self, request_id: u64, bytes: Option<usize>) {
        tracing::warn!(worker = %self.id, request_id, bytes, "the worker sent a frame over the limit; failing its request");
        let Some(waiter) = self.pending.lock().remove(&request_id) else {
            return;
        };
        let size = bytes.map_or_else(|| "more bytes".to_owned(), |b| format!("{b} bytes"));
        let _ = waiter.send(Delivery::Body(error_body(
            cluster::ErrorCode::InvalidArgument,
            format!(
                "the answer is too large: {size}, over the {} MiB limit of one answer; ask for less (fewer ids, a smaller limit or top_k, no vectors or payloads)",
                MAX_FRAME_BYTES >> 20
            ),
        )));
    }
}

/// The key of an address's refusal budget: IPv4 addresses alone, IPv6 by /64 (one host usually
/// holds a whole /64, so per-address buckets would not bound it).
fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// What became of a connection's hello.
enum Registration {
    /// The connection is its worker's, and the hello is acknowledged.
    Admitted,
    /// The worker is connected already; the hello was answered with an error.
    Duplicate,
    /// The worker could not be recorded or the ack not sent.
    Failed,
}

fn error_body(code: cluster::ErrorCode, message: impl Into<String>) -> cluster::envelope::Body {
    cluster::envelope::Body::Error(cluster::Error {
        code: code as i32,
        message: message.into(),
    })
}

impl Hub {
    /// A frame over [`crate::api::LARGE_MESSAGE_BYTES`] that answers a pending request (an
    /// answer of megabytes: thousands of records, payloads) is handed to its waiter undecoded:
    /// the waiter reserves the memory its decoded form takes from the large-message budget and
    /// decodes it on the large-message pool, at background priority ([`Hub::decode_large`]).
    /// Decoding it on the connection's task would hold up every other tenant's answers behind it
    /// (INV-24). Anything else is given back to be decoded here.
    pub(super) fn hand_off_large_answer(
        &self,
        conn: &WorkerConn,
        bytes: tokio_tungstenite::tungstenite::Bytes,
    ) -> Option<tokio_tungstenite::tungstenite::Bytes> {
        if bytes.len() <= crate::api::LARGE_MESSAGE_BYTES {
            return Some(bytes);
        }
        if self.heavy.is_none() {
            return Some(bytes);
        }
        let request_id = EnvelopeId::decode(bytes.as_ref()).map_or(0, |e| e.request_id);
        let Some(waiter) = conn.pending.lock().remove(&request_id) else {
            return Some(bytes);
        };
        // The waiter decodes it, once it holds the memory that takes.
        let _ = waiter.send(Delivery::Frame(bytes));
        None
    }

    fn check_upgrade(&self, request: &Request) -> Result<String, (u16, &'static str)> {
        if request.uri().path() != "/v1/cluster" {
            return Err((404, "not found"));
        }
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let worker = header("x-vaultvec-worker").to_owned();
        let presented = header("authorization")
            .strip_prefix("Bearer ")
            .unwrap_or("")
            .as_bytes();
        // Compare against a token even for unknown ids, so timing says nothing about which ids exist.
        let dummy = [0u8; 32];
        let ok = match self.credentials.get(&worker) {
            Some(token) => token.matches(presented),
            None => {
                let _ = crate::auth::tokens_match(presented, &dummy);
                false
            }
        };
        if !ok {
            return Err((401, "invalid worker credentials"));
        }
        // A live connection keeps its id: a second one (a stolen token, or a worker started twice)
        // must not take its tenants. The hello checks again, atomically (see `register`).
        if self.workers.read().contains_key(&worker) {
            return Err((409, "this worker is already connected"));
        }
        Ok(worker)
    }

    /// Audits a connection refused before it was admitted (`stage`: where it failed).
    fn audit_denied(&self, peer: SocketAddr, stage: &str) {
        self.audit_denied_with(peer, serde_json::json!({ "stage": stage }));
    }

    /// Audits a refused connection if its address is within the refusal budget (spending one),
    /// with the count of refusals left unaudited since the last row; otherwise only counts it.
    fn audit_denied_with(&self, peer: SocketAddr, details: serde_json::Value) {
        let within = self.spend_refusal(peer);
        self.audit_spent_refusal(peer, details, within);
    }

    /// Spends one refusal of `peer`'s budget; false if it had none left.
    fn spend_refusal(&self, peer: SocketAddr) -> bool {
        let (rate, burst) = self.refusal_budget;
        self.refusals
            .take(
                &budget_key(peer.ip()),
                rate,
                burst,
                std::time::Instant::now(),
            )
            .is_ok()
    }

    /// Audits a refusal whose budget was spent already (`within`: there was one to spend), or
    /// only counts it.
    fn audit_spent_refusal(&self, peer: SocketAddr, mut details: serde_json::Value, within: bool) {
        if !within {
            self.refusals_not_audited.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let earlier = self.refusals_not_audited.swap(0, Ordering::SeqCst);
        if earlier > 0 {
            details["unaudited_refusals_before"] = earlier.into();
        }
        if let Err(err) = self.store.audit(
            "platform",
            crate::audit::Draft {
                time_ms: now_ms(),
                actor: format!("peer:{peer}"),
                action: "worker.connect".into(),
                resource: "cluster".into(),
                outcome: "denied".into(),
                details,
            },
        ) {
            tracing::error!(error = %err, "audit write failed");
        }
    }

    /// Admits `conn` as its worker's connection and acknowledges the hello, or, if that worker
    /// is connected already, answers the hello with an error and returns false. The live
    /// connection keeps the id: refusing (instead of replacing) means a second connection can
    /// neither take the tenants of a worker that is up nor strand the waiters of its connection.
    /// The sink stays locked from the insertion until the ack is written, so no request reaches
    /// the worker before the answer to its hello.
    async fn register(
        &self,
        conn: &Arc<WorkerConn>,
        hello_id: u64,
        hello: &cluster::Hello,
    ) -> Registration {
        let mut sink = conn.sink.lock().await;
        let is_new = match self.workers.write().entry(conn.id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(conn.clone());
                true
            }
        };
        if !is_new {
            let refusal = error_body(
                cluster::ErrorCode::AlreadyExists,
                format!(
                    "worker {} is already connected; a second connection is refused while the first is live",
                    conn.id
                ),
            );
            let _ = sink.send(reply(hello_id, refusal)).await;
            return Registration::Duplicate;
        }
        let recorded = self.store.record_worker(
            &conn.id,
            &hello.version,
            hello.memory_budget_bytes,
            now_ms(),
        );
        let acked = match recorded {
            Ok(()) => sink
                .send(reply(
                    hello_id,
                    cluster::envelope::Body::Ack(cluster::Ack { key_batches: true }),
                ))
                .await
                .is_ok(),
            Err(err) => {
                tracing::error!(worker = %conn.id, error = %err, "recording the worker failed");
                false
            }
        };
        if acked {
            Registration::Admitted
        } else {
            self.unregister(conn);
            Registration::Failed
        }
    }

    /// Removes `conn` from the connected workers if it is the one registered for its id.
    fn unregister(&self, conn: &Arc<WorkerConn>) {
        let mut workers = self.workers.write();
        if workers.get(&conn.id).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            workers.remove(&conn.id);
        }
    }

    /// True if `peer` has refusals left in its budget.
    fn within_refusal_budget(&self, peer: SocketAddr) -> bool {
        let (rate, burst) = self.refusal_budget;
        self.refusals
            .wait(
                &budget_key(peer.ip()),
                rate,
                burst,
                std::time::Instant::now(),
            )
            .is_zero()
    }

    pub(super) async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        // An address over its budget of refusals is closed before any handshake or audit write.
        if !self.within_refusal_budget(peer) {
            self.refusals_not_audited.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(%peer, "closing a connection from an address over its refusal budget");
            return;
        }
        let _ = stream.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let Some(acceptor) = self.tls.clone() else {
            return self.serve_stream(stream, peer, deadline).await;
        };
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.serve_stream(stream, peer, deadline).await,
            Ok(Err(err)) => {
                tracing::warn!(%peer, error = %err, "worker connection refused: TLS handshake failed");
                self.audit_denied(peer, "tls");
            }
            Err(_) => {
                tracing::warn!(%peer, "worker connection refused: no TLS handshake in time");
                self.audit_denied(peer, "tls");
            }
        }
    }

    /// The upgrade, the hello and the connection's life, over plain TCP or TLS.
    async fn serve_stream<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut admitted: Option<String> = None;
        let mut refused: Option<u16> = None;
        // Whether the refusal found budget left. It is spent when the refusal is decided, before
        // the answer goes out: a client that dials again once it has its 401 must find it spent.
        let mut within_budget = false;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_RECEIVE_BYTES))
            .max_frame_size(Some(MAX_RECEIVE_BYTES));
        // The callback's error type is tungstenite's; it is built only on refusal.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| match self.check_upgrade(request) {
            Ok(worker) => {
                admitted = Some(worker);
                Ok(response)
            }
            Err((status, reason)) => {
                refused = Some(status);
                within_budget = self.spend_refusal(peer);
                Err(refuse(status, reason))
            }
        };
        let upgrade =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
        let ws = match tokio::time::timeout_at(deadline, upgrade).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(err)) => {
                tracing::warn!(%peer, error = %err, "worker connection refused");
                let stage = if refused == Some(409) {
                    "duplicate"
                } else {
                    "upgrade"
                };
                if refused.is_some() {
                    let details = serde_json::json!({ "stage": stage });
                    self.audit_spent_refusal(peer, details, within_budget);
                } else {
                    self.audit_denied(peer, stage);
                }
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "worker connection refused: no upgrade request in time");
                self.audit_denied(peer, "upgrade");
                return;
            }
        };
        let Some(worker_id) = admitted else { return };
        let (sink, mut source) = ws.split();

        // The hello comes first.
        let hello = match tokio::time::timeout(self.health.down_after, source.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => cluster::Envelope::decode(bytes.as_ref()).ok(),
            _ => None,
        };
        let Some(cluster::Envelope {
            request_id: hello_id,
            body: Some(cluster::envelope::Body::Hello(hello)),
            ..
        }) = hello
        else {
            tracing::warn!(worker = %worker_id, "worker did not say hello first");
            return;
        };
        if hello.worker_id != worker_id {
            tracing::warn!(worker = %worker_id, claimed = %hello.worker_id, "hello names another worker");
            return;
        }
        let interval = Duration::from_millis(hello.heartbeat_interval_ms);
        let health = self.health.for_interval(interval);
        if health != self.health {
            tracing::warn!(
                worker = %worker_id,
                heartbeat_interval_ms = hello.heartbeat_interval_ms,
                suspect_after_ms = health.suspect_after.as_millis() as u64,
                down_after_ms = health.down_after.as_millis() as u64,
                "the worker's heartbeat interval is long for [health]; judging it by 2 and 4 of its intervals"
            );
        }
        let conn = Arc::new(WorkerConn::new(
            worker_id.clone(),
            Box::pin(sink),
            self.gate.clone(),
            self.max_in_flight,
            super::health::HelloFacts {
                version: hello.version.clone(),
                memory_budget_bytes: hello.memory_budget_bytes,
                max_in_flight: hello.max_in_flight,
            },
            health,
        ));
        match self.register(&conn, hello_id, &hello).await {
            Registration::Admitted => {}
            Registration::Failed => return,
            Registration::Duplicate => {
                tracing::warn!(worker = %worker_id, %peer, "refusing a second connection for a connected worker");
                self.audit_denied_with(
                    peer,
                    serde_json::json!({ "stage": "duplicate", "worker": worker_id }),
                );
                let close = async { conn.sink.lock().await.close().await };
                let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                return;
            }
        }
        self.changed.notify_waiters();
        let _ = self.hellos.send(worker_id.clone());
        tracing::info!(worker = %worker_id, %peer, version = %hello.version, "worker connected");

        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(
            self.clone()
                .reconcile(conn.clone(), hello.held_tenants.clone()),
        );
        let mut replay = ReplayGuard::default();
        let mut reassembly = Reassembly::new(MAX_FRAME_BYTES, MAX_REASSEMBLY_BYTES);
        loop {
            // Down once its heartbeats stop for `down_after` (answers do not count: they say
            // nothing about the next ones coming).
            let down_at = conn.pulse.last_at() + conn.pulse.config.down_after;
            let next = tokio::select! {
                next = tokio::time::timeout_at(down_at, source.next()) => next,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let message = match next {
                Err(_) => {
                    tracing::warn!(worker = %worker_id, "no heartbeat; disconnecting");
                    break;
                }
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(message))) => message,
            };
            let bytes = match message {
                Message::Binary(bytes) => bytes,
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Text(_) => {
                    tracing::warn!(worker = %worker_id, "ignoring a text frame");
                    continue;
                }
            };
            if bytes.len() > MAX_FRAME_BYTES {
                conn.fail_oversize(bytes.as_ref());
                continue;
            }
            // A large answer arrives in pieces, between which other answers can pass.
            let bytes = match reassembly.offer(&bytes) {
                Piece::Frame => bytes,
                Piece::Pending => continue,
                Piece::Whole(frame) => frame.into(),
                Piece::TooLarge(request_id) => {
                    conn.fail_too_large(request_id, None);
                    continue;
                }
            };
            let Some(bytes) = self.hand_off_large_answer(&conn, bytes) else {
                continue;
            };
            let Ok(env) = cluster::Envelope::decode(bytes.as_ref()) else {
                tracing::warn!(worker = %worker_id, "ignoring an undecodable frame");
                continue;
            };
            let Some(body) = env.body else { continue };
            use cluster::envelope::Body;
            match body {
                Body::Heartbeat(heartbeat) => {
                    conn.pulse.beat(heartbeat);
                    self.changed.notify_waiters();
                }
                Body::Ack(_)
                | Body::TenantResponse(_)
                | Body::Error(_)
                | Body::GenerateDataKeyResponse(_)
                | Body::DecryptDataKeyResponse(_)
                | Body::DecryptDataKeysResponse(_)
                | Body::RewrapDataKeyResponse(_)
                | Body::KekVersionResponse(_)
                | Body::TransferTenantResponse(_) => {
                    if let Some(waiter) = conn.pending.lock().remove(&env.request_id) {
                        let _ = waiter.send(Delivery::Body(body));
                    }
                }
                Body::GenerateDataKey(_)
                | Body::DecryptDataKey(_)
                | Body::DecryptDataKeys(_)
                | Body::RewrapDataKey(_)
                | Body::KekVersion(_) => {
                    let request_id = env.request_id;
                    if !replay.admit(request_id) {
                        self.audit_refusal(&worker_id, "", "replayed request id");
                        let _ = conn
                            .send_message(reply(
                                request_id,
                                error_body(cluster::ErrorCode::Replayed, "request id already used"),
                            ))
                            .await;
                        continue;
                    }
                    let hub = self.clone();
                    let conn = conn.clone();
                    tasks.spawn(async move {
                        let answer = hub.key_service(&conn, body).await;
                        let frame = super::keys::key_reply(request_id, answer);
                        let _ = conn.send_message(frame).await;
                    });
                }
                _ => {
                    let _ = conn
                        .send_message(reply(
                            env.request_id,
                            error_body(
                                cluster::ErrorCode::InvalidArgument,
                                "not a worker-to-coordinator message",
                            ),
                        ))
                        .await;
                }
            }
        }

        self.unregister(&conn);
        self.changed.notify_waiters();
        // Waiting requests learn at once that their answer will not come.
        conn.pending.lock().clear();
        tasks.shutdown().await;
        // Requests send on the socket themselves (no writer task, one hand-off less per request);
        // closing it here ends the connection for the worker too.
        let close = async { conn.sink.lock().await.close().await };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close).await;
        drop(conn);
        // Heartbeats are kept in memory; the store learns when the worker was last seen now.
        let store = self.store.clone();
        let id = worker_id.clone();
        let seen = tokio::task::spawn_blocking(move || store.worker_seen(&id, now_ms())).await;
        if let Ok(Err(err)) = seen {
            tracing::warn!(worker = %worker_id, error = %err, "recording when the worker was last seen failed");
        }
        tracing::info!(worker = %worker_id, "worker disconnected");
    }
}

fn reply(request_id: u64, body: cluster::envelope::Body) -> Message {
    Message::binary(
        cluster::Envelope {
            request_id,
            deadline_unix_ms: 0,
            body: Some(body),
        }
        .encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::{ReplayGuard, budget_key};
    use std::net::IpAddr;

    #[test]
    fn ipv6_addresses_share_a_refusal_budget_per_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            budget_key(ip("2001:db8:1:2:aaaa::1")),
            budget_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            budget_key(ip("2001:db8:1:2::1")),
            budget_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(budget_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_ne!(budget_key(ip("192.0.2.1")), budget_key(ip("192.0.2.2")));
    }

    #[test]
    fn replay_guard_refuses_repeats_and_ids_below_the_window() {
        let mut guard = ReplayGuard::default();
        assert!(guard.admit(1));
        assert!(!guard.admit(1));
        for id in 2..=super::REPLAY_WINDOW as u64 + 10 {
            assert!(guard.admit(id), "fresh id {id}");
        }
        assert!(!guard.admit(3), "an id below the window is a replay");
        assert!(!guard.admit(super::REPLAY_WINDOW as u64 + 10));
    }
}
