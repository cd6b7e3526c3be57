//! The coordinator's side of the cluster channel: workers dial in over WebSocket, and requests are
//! routed to them multiplexed by request id.
//!
//! **Invariant:** a worker is admitted only with the token configured for its id (compared in
//! constant time). With TLS on (`[cluster_tls]`), every connection completes a TLS handshake
//! before its upgrade is read; the listener then speaks nothing else. The key service answers a worker only for tenants assigned to it on its current
//! connection and in the current placement; every answer and every refusal is audited.
//!
//! **Boundary:** the protocol is the one spelled out at the top of `cluster.proto`.

mod conn;
pub mod health;
mod keys;
mod reconcile;

pub use health::{HealthConfig, WorkerHealth, WorkerState};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use storage::crypto::LocalKeyService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::api::error::{ApiError, Code};
use crate::store::Store;

/// Largest frame either side may send (the protocol's limit; the worker refuses to send a larger
/// answer and fails that request instead).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Largest frame the coordinator reads from a worker: twice [`MAX_FRAME_BYTES`]. A frame between
/// the two (a worker that does not bound its answers) fails only the request it answers; only a
/// frame beyond this drops the connection, since the transport cannot skip it.
pub const MAX_RECEIVE_BYTES: usize = 2 * MAX_FRAME_BYTES;

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The sending half of a worker's WebSocket, over TLS or not.
pub(crate) type WsSink = std::pin::Pin<
    Box<dyn futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Send>,
>;

/// What a waiting request is handed.
pub(crate) enum Delivery {
    /// Its answer, decoded.
    Body(cluster::envelope::Body),
    /// A large answer's frame, for the waiter to decode once it holds the memory that takes
    /// ([`Hub::decode_large`]).
    Frame(tokio_tungstenite::tungstenite::Bytes),
}

/// One connected worker.
pub struct WorkerConn {
    /// The worker's id.
    pub id: String,
    sink: tokio::sync::Mutex<WsSink>,
    /// Senders of whole frames waiting for the socket: pieces of large frames let them go first.
    urgent: AtomicUsize,
    /// The hub's gate, which pieces of large requests pass before they are written.
    gate: storage::gate::IdleGate,
    pending: Mutex<HashMap<u64, oneshot::Sender<Delivery>>>,
    next_id: AtomicU64,
    permits: Arc<Semaphore>,
    /// Tenants this connection has acknowledged, with their epoch.
    assigned: Mutex<HashMap<String, u64>>,
    /// Notified whenever `assigned` changes.
    assignments_changed: tokio::sync::Notify,
    /// Tenants being released on this connection. Until the worker answers, it may still ask for
    /// keys to seal their segments at close, although a pause or deletion has already moved
    /// their epoch on (the key service allows that, for the epoch the connection holds).
    releasing: Mutex<HashSet<String>>,
    /// Its hello and latest heartbeat (the health tracker's view).
    pulse: health::Pulse,
}

impl WorkerConn {
    /// A connection of worker `id` writing to `sink`, admitting `max_in_flight` requests.
    pub(crate) fn new(
        id: String,
        sink: WsSink,
        gate: storage::gate::IdleGate,
        max_in_flight: usize,
        hello: health::HelloFacts,
        health: HealthConfig,
    ) -> WorkerConn {
        WorkerConn {
            id,
            sink: tokio::sync::Mutex::new(sink),
            urgent: AtomicUsize::new(0),
            gate,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            assigned: Mutex::new(HashMap::new()),
            assignments_changed: tokio::sync::Notify::new(),
            releasing: Mutex::new(HashSet::new()),
            pulse: health::Pulse::new(hello, health),
        }
    }

    /// The epoch under which `tenant` is assigned on this connection, if it is.
    pub fn assigned_epoch(&self, tenant: &str) -> Option<u64> {
        self.assigned.lock().get(tenant).copied()
    }

    /// Forgets an assignment (the worker refused it, or the tenant moved).
    pub fn forget_assignment(&self, tenant: &str) {
        self.assigned.lock().remove(tenant);
        self.assignments_changed.notify_waiters();
    }

    /// Forgets an assignment that a refusal of a request sent under `epoch` proves gone, unless
    /// the connection has since acknowledged a newer epoch (a request sent before an assignment
    /// at a new epoch can be refused after it: forgetting that newer assignment would leave the
    /// connection unassigned while the worker serves the tenant, and its key requests refused).
    pub fn forget_assignment_up_to(&self, tenant: &str, epoch: u64) {
        let mut assigned = self.assigned.lock();
        if assigned.get(tenant).is_some_and(|held| *held <= epoch) {
            assigned.remove(tenant);
            drop(assigned);
            self.assignments_changed.notify_waiters();
        }
    }

    /// Records that the worker acknowledged `tenant` under `epoch`. Acknowledgements of two
    /// assignments in flight may be recorded out of order: an older one never replaces a newer.
    fn record_assignment(&self, tenant: &str, epoch: u64) {
        {
            let mut assigned = self.assigned.lock();
            let held = assigned.entry(tenant.to_owned()).or_insert(epoch);
            *held = (*held).max(epoch);
        }
        self.assignments_changed.notify_waiters();
    }

    /// Resolves at the next change of this connection's assignments (enable it before reading
    /// the assignment it should see change).
    pub(crate) fn assignments_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.assignments_changed.notified()
    }

    /// Whether a release of `tenant` is in flight on this connection.
    pub fn is_releasing(&self, tenant: &str) -> bool {
        self.releasing.lock().contains(tenant)
    }

    /// Requests running on the worker now.
    pub fn in_flight(&self, max: usize) -> usize {
        max - self.permits.available_permits()
    }

    /// Sends a request; one over [`proto::chunk::CHUNK_BYTES`] goes in pieces, each written
    /// under its own turn at the socket, so other tenants' requests pass between them.
    async fn send(
        &self,
        env: cluster::Envelope,
        encoder: Option<&Arc<rayon::ThreadPool>>,
    ) -> Result<(), ApiError> {
        let request_id = env.request_id;
        let disconnected = |()| ApiError::new(Code::Unavailable, "the worker disconnected");
        // Encoding and cutting megabytes (a filter of a quarter of a million values) is CPU work:
        // a request known to be large is encoded (and dropped) on the background-priority
        // pool; one found large here, off the runtime thread's other tasks.
        let pieces = if let Some(pool) = encoder {
            crate::api::on_pool(pool, move || {
                proto::chunk::split(request_id, env.encode_to_vec())
            })
            .await
            .ok_or_else(|| ApiError::internal("encoding a large request failed"))?
        } else if env.encoded_len() > crate::api::LARGE_MESSAGE_BYTES {
            crate::api::off_runtime(|| proto::chunk::split(request_id, env.encode_to_vec()))
        } else {
            vec![env.encode_to_vec()]
        };
        if pieces.len() == 1 {
            let frame = pieces.into_iter().next().unwrap_or_default();
            return self
                .send_message(Message::binary(frame))
                .await
                .map_err(disconnected);
        }
        for piece in pieces {
            self.send_piece(piece).await.map_err(disconnected)?;
        }
        Ok(())
    }

    /// Writes one frame on the worker's socket from the calling task, before any piece of a
    /// large frame that waits.
    pub(crate) async fn send_message(&self, message: Message) -> Result<(), ()> {
        self.urgent.fetch_add(1, Ordering::SeqCst);
        let mut sink = self.sink.lock().await;
        self.urgent.fetch_sub(1, Ordering::SeqCst);
        sink.send(message).await.map_err(|_| ())
    }

    /// Writes one piece of a large frame, once no whole frame waits for the socket: a request
    /// of another tenant waits for at most the one piece being written, not for every piece
    /// queued ahead of it (the socket's lock is first come, first served).
    async fn send_piece(&self, piece: Vec<u8>) -> Result<(), ()> {
        self.gate.pass().await;
        loop {
            let mut sink = self.sink.lock().await;
            if self.urgent.load(Ordering::SeqCst) == 0 {
                return sink.send(Message::binary(piece)).await.map_err(|_| ());
            }
            drop(sink);
            tokio::task::yield_now().await;
        }
    }
}

/// Requests in flight per tenant (over all workers), bounded so that one tenant's slow requests
/// cannot take every slot of its worker.
struct TenantSlots {
    counts: Mutex<HashMap<String, usize>>,
    /// A tenant's bound unless its tier sets one.
    max: usize,
    /// The most any tier may set (the per-worker bound).
    max_cap: usize,
}

/// One tenant request in flight; gives its slot back when dropped.
struct TenantSlot<'a> {
    slots: &'a TenantSlots,
    tenant: String,
}

impl TenantSlots {
    /// A slot of `tenant`, which may hold `max` (0: the hub's bound).
    fn take(&self, tenant: &str, max: usize) -> Result<TenantSlot<'_>, ApiError> {
        let max = match max {
            0 => self.max,
            n => n.min(self.max_cap),
        };
        let mut counts = self.counts.lock();
        let count = counts.entry(tenant.to_owned()).or_insert(0);
        if *count >= max {
            return Err(ApiError {
                code: Code::ResourceExhausted,
                message: format!(
                    "too many requests in flight for this tenant (at most {max}); retry when some have finished",
                ),
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        *count += 1;
        Ok(TenantSlot {
            slots: self,
            tenant: tenant.to_owned(),
        })
    }
}

impl Drop for TenantSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock();
        if let Some(count) = counts.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// The connected workers and the key service they use.
pub struct Hub {
    workers: RwLock<HashMap<String, Arc<WorkerConn>>>,
    credentials: HashMap<String, crate::auth::BearerToken>,
    store: Arc<Store>,
    keys: Arc<LocalKeyService>,
    max_in_flight: usize,
    tenant_slots: TenantSlots,
    health: HealthConfig,
    /// Reconciliations finished since start (one per admitted hello).
    reconciliations: AtomicU64,
    /// Refused connections per client address (IPv6 by /64), like the API's failed-authentication
    /// budget: within it each refusal is audited; beyond it a connection is closed before its TLS
    /// handshake and only counted.
    refusals: crate::api::limit::Buckets<std::net::IpAddr>,
    refusal_budget: (f64, u32),
    /// Refusals not audited since the last `worker.connect` row (the next row carries the count).
    refusals_not_audited: AtomicU64,
    changed: Notify,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where large answers are decoded (`with_heavy`); without it, on the connection's task.
    heavy: Option<Arc<rayon::ThreadPool>>,
    /// What a large answer reserves before it is decoded (`with_budget`).
    budget: Option<crate::api::LargeMessages>,
    /// What the pieces of large requests pass before they are written (`with_gate`; without
    /// it, none is waited for).
    gate: storage::gate::IdleGate,
    /// Admitted hellos, by worker id ([`Hub::hellos`]).
    hellos: tokio::sync::broadcast::Sender<String>,
    /// Workers being drained ([`Hub::set_draining`]).
    draining: RwLock<HashSet<String>>,
}

impl Hub {
    /// A hub admitting the given workers (id, token).
    pub fn new(
        credentials: HashMap<String, crate::auth::BearerToken>,
        store: Arc<Store>,
        keys: Arc<LocalKeyService>,
        max_in_flight: usize,
        health: HealthConfig,
    ) -> Hub {
        Hub {
            workers: RwLock::new(HashMap::new()),
            credentials,
            store,
            keys,
            max_in_flight,
            tenant_slots: TenantSlots {
                counts: Mutex::new(HashMap::new()),
                max: max_in_flight,
                max_cap: max_in_flight,
            },
            health,
            reconciliations: AtomicU64::new(0),
            refusals: crate::api::limit::Buckets::new(100_000),
            refusal_budget: (10.0, 50),
            refusals_not_audited: AtomicU64::new(0),
            changed: Notify::new(),
            tls: None,
            heavy: None,
            budget: None,
            gate: storage::gate::IdleGate::open(),
            hellos: tokio::sync::broadcast::channel(64).0,
            draining: RwLock::new(HashSet::new()),
        }
    }

    /// Bounds the requests one tenant has in flight (at most the per-worker bound); a tenant over
    /// it is answered 429 at once while the others keep getting slots.
    pub fn with_max_in_flight_per_tenant(mut self, max: usize) -> Hub {
        self.tenant_slots.max = max.clamp(1, self.max_in_flight);
        self
    }

    /// Refused connections allowed per client address: `per_second` sustained, `burst` at once
    /// (the `[auth_failures]` budget).
    pub fn with_refusal_budget(mut self, per_second: f64, burst: u32) -> Hub {
        self.refusal_budget = (per_second, burst);
        self
    }

    /// Refused connections not yet counted in an audit row (over the budget).
    pub fn refusals_not_audited(&self) -> u64 {
        self.refusals_not_audited.load(Ordering::SeqCst)
    }

    /// Serves the cluster listener over TLS with this configuration (`wss://`).
    /// Decodes large answers on `pool` (the coordinator's large-message pool) instead of the
    /// connection's task.
    pub fn with_heavy(mut self, pool: Arc<rayon::ThreadPool>) -> Hub {
        self.heavy = Some(pool);
        self
    }

    /// Large requests' pieces are written to a worker only as `gate` lets them through: when a
    /// core is free (`storage::gate`).
    pub fn with_gate(mut self, gate: storage::gate::IdleGate) -> Hub {
        self.gate = gate;
        self
    }

    /// Large answers reserve their memory from `budget` before they are decoded, and wait for
    /// it as the frame they came in, not as the larger decoded answer.
    pub fn with_budget(mut self, budget: crate::api::LargeMessages) -> Hub {
        self.budget = Some(budget);
        self
    }

    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Hub {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// True if the cluster listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The connection of a worker, if it is connected.
    pub fn worker(&self, id: &str) -> Option<Arc<WorkerConn>> {
        self.workers.read().get(id).cloned()
    }

    /// Ids of the connected workers.
    pub fn connected(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.workers.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Marks a worker as draining (or not): the health tracker reports it `draining` while it is
    /// connected, and no new tenant is placed on it. The store keeps the flag; this is its copy.
    pub fn set_draining(&self, id: &str, draining: bool) {
        let changed = if draining {
            self.draining.write().insert(id.to_owned())
        } else {
            self.draining.write().remove(id)
        };
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Whether worker `id` is being drained.
    pub fn is_draining(&self, id: &str) -> bool {
        self.draining.read().contains(id)
    }

    /// The health of every connected worker, by id.
    pub fn health(&self) -> Vec<WorkerHealth> {
        let now = tokio::time::Instant::now();
        let draining = self.draining.read();
        let mut reports: Vec<WorkerHealth> = self
            .workers
            .read()
            .values()
            .map(|conn| {
                let mut report = conn.pulse.report(&conn.id, now);
                if draining.contains(&conn.id) {
                    report.state = WorkerState::Draining;
                }
                report
            })
            .collect();
        reports.sort_by(|a, b| a.id.cmp(&b.id));
        reports
    }

    /// When workers are suspect and down.
    pub fn health_config(&self) -> HealthConfig {
        self.health
    }

    /// Waits until at least `n` workers are connected (tests and startup use it; no sleeping).
    pub async fn wait_for_workers(&self, n: usize) {
        self.wait_until(|workers| workers.len() >= n).await;
    }

    /// Waits until `done` holds for the connected workers. The notification is armed before the
    /// check, so a change between the check and the wait is not missed.
    async fn wait_until(&self, done: impl Fn(&HashMap<String, Arc<WorkerConn>>) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.workers.read()) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until `n` reconciliations (one per admitted hello: erased tenants' files deleted,
    /// unplaced tenants unloaded) have finished since the coordinator started.
    pub async fn wait_for_reconciliations(&self, n: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.reconciliations.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }

    /// Heartbeats received on worker `id`'s current connection, if it is connected.
    pub fn heartbeats(&self, id: &str) -> Option<u64> {
        self.worker(id).map(|conn| conn.pulse.count())
    }

    /// Waits until worker `id`'s current connection has received at least `n` heartbeats.
    pub async fn wait_for_heartbeats(&self, id: &str, n: u64) {
        self.wait_until(|workers| workers.get(id).is_some_and(|c| c.pulse.count() >= n))
            .await;
    }

    /// Waits until the fleet changes: a worker connects or goes, sends a heartbeat, or is
    /// drained or undrained.
    pub async fn wait_for_change(&self) {
        self.changed.notified().await;
    }

    /// Waits until worker `id` is connected.
    pub async fn wait_for_worker(&self, id: &str) {
        self.wait_until(|workers| workers.contains_key(id)).await;
    }

    /// Waits until worker `id` is not connected (its connection closed or timed out).
    pub async fn wait_for_worker_gone(&self, id: &str) {
        self.wait_until(|workers| !workers.contains_key(id)).await;
    }

    /// In-flight bound per worker.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Sends a request to a worker and waits for its answer until `timeout`. A tenant with its
    /// share of requests in flight is answered 429, and a worker with `max_in_flight` requests
    /// running answers busy, both at once; nothing queues without bound.
    pub async fn request(
        &self,
        worker: &str,
        body: cluster::envelope::Body,
        timeout: Duration,
    ) -> Result<cluster::envelope::Body, ApiError> {
        let conn = self.connected_worker(worker)?;
        self.request_on(&conn, body, timeout, 0).await
    }

    /// As [`Hub::request`], for a tenant request whose tenant may hold `tenant_max` requests in
    /// flight (its tier's `max_in_flight`; 0: the hub's per-tenant bound).
    pub async fn tenant_request(
        &self,
        worker: &str,
        request: cluster::TenantRequest,
        timeout: Duration,
        tenant_max: usize,
        large: bool,
    ) -> Result<cluster::envelope::Body, ApiError> {
        let conn = self.connected_worker(worker)?;
        let body = cluster::envelope::Body::TenantRequest(request);
        let encoder = if large { self.heavy.as_ref() } else { None };
        self.request_with(&conn, body, timeout, tenant_max, encoder)
            .await
    }

    /// Decodes a large answer's `frame` on the large-message pool, once the memory it takes is
    /// reserved (waiting until `give_up`); the reservation goes on to the request's task
    /// (`api::collecting_answer`), which renders the answer under it.
    async fn decode_large(
        &self,
        worker: &str,
        frame: tokio_tungstenite::tungstenite::Bytes,
        give_up: tokio::time::Instant,
    ) -> Result<cluster::envelope::Body, ApiError> {
        let reservation = match &self.budget {
            Some(budget) => {
                let patience = give_up.saturating_duration_since(tokio::time::Instant::now());
                Some(
                    budget
                        .reserve_arrived(frame.len(), patience, "answer")
                        .await?,
                )
            }
            None => None,
        };
        let bytes = frame.len();
        let decode = move || match cluster::Envelope::decode(frame.as_ref()) {
            Ok(cluster::Envelope {
                body: Some(body), ..
            }) => Some(body),
            _ => None,
        };
        let body = match &self.heavy {
            Some(pool) => {
                let (tx, rx) = oneshot::channel();
                pool.spawn(move || {
                    let _ = tx.send(std::panic::catch_unwind(decode).ok().flatten());
                });
                rx.await.ok().flatten()
            }
            None => decode(),
        };
        let Some(body) = body else {
            tracing::warn!(worker = %worker, bytes, "the worker's answer does not decode");
            return Err(ApiError::internal("the worker's answer does not decode"));
        };
        if let Some(reservation) = reservation {
            crate::api::budget::keep_for_answer(reservation);
        }
        Ok(body)
    }

    fn connected_worker(&self, worker: &str) -> Result<Arc<WorkerConn>, ApiError> {
        self.worker(worker).ok_or_else(|| {
            ApiError::new(
                Code::Unavailable,
                "the worker holding this tenant is not connected; retry later",
            )
        })
    }

    /// As [`Hub::request`], on one given connection.
    async fn request_on(
        &self,
        conn: &Arc<WorkerConn>,
        body: cluster::envelope::Body,
        timeout: Duration,
        tenant_max: usize,
    ) -> Result<cluster::envelope::Body, ApiError> {
        self.request_with(conn, body, timeout, tenant_max, None)
            .await
    }

    /// [`Hub::request_on`]; with an `encoder`, the request is encoded, cut and dropped on that
    /// pool (a large one, known to be so without walking it).
    async fn request_with(
        &self,
        conn: &Arc<WorkerConn>,
        body: cluster::envelope::Body,
        timeout: Duration,
        tenant_max: usize,
        encoder: Option<&Arc<rayon::ThreadPool>>,
    ) -> Result<cluster::envelope::Body, ApiError> {
        let _slot = match &body {
            cluster::envelope::Body::TenantRequest(r) => {
                Some(self.tenant_slots.take(&r.tenant, tenant_max)?)
            }
            _ => None,
        };
        let _permit = conn
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::new(Code::Unavailable, "the worker is busy; retry later"))?;
        let request_id = conn.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().insert(request_id, tx);
        let deadline = now_ms() + timeout.as_millis() as u64;
        let give_up = tokio::time::Instant::now() + timeout;
        let sent = conn
            .send(
                cluster::Envelope {
                    request_id,
                    deadline_unix_ms: deadline,
                    body: Some(body),
                },
                encoder,
            )
            .await;
        if let Err(err) = sent {
            conn.pending.lock().remove(&request_id);
            return Err(err);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Delivery::Body(body))) => Ok(body),
            Ok(Ok(Delivery::Frame(frame))) => self.decode_large(&conn.id, frame, give_up).await,
            Ok(Err(_)) => Err(ApiError::new(
                Code::Unavailable,
                "the worker disconnected before answering; the outcome is unknown: upserts and deletes are safe to retry",
            )),
            Err(_) => {
                conn.pending.lock().remove(&request_id);
                Err(ApiError::new(
                    Code::DeadlineExceeded,
                    "the worker did not answer before the deadline",
                ))
            }
        }
    }

    /// Assigns a tenant to a worker's current connection and waits for the acknowledgement, which
    /// is recorded on that connection (not on whichever is current when the ack arrives).
    pub async fn assign(
        &self,
        worker: &str,
        tenant: &str,
        epoch: u64,
        quota: cluster::TenantQuota,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let body = cluster::envelope::Body::AssignTenant(cluster::AssignTenant {
            tenant: tenant.to_owned(),
            epoch,
            quota: Some(quota),
        });
        let conn = self.connected_worker(worker)?;
        match self.request_on(&conn, body, timeout, 0).await? {
            cluster::envelope::Body::Ack(_) => {
                conn.record_assignment(tenant, epoch);
                Ok(())
            }
            cluster::envelope::Body::Error(err) => Err(ApiError::new(
                Code::Unavailable,
                format!("the worker refused the tenant: {}", err.message),
            )),
            _ => Err(ApiError::internal("unexpected answer to an assignment")),
        }
    }

    /// As [`Hub::release`], failing unless the worker acknowledged the release (a move must not
    /// copy files a worker may still write).
    pub async fn release_checked(
        &self,
        worker: &str,
        tenant: &str,
        epoch: u64,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let conn = self.connected_worker(worker)?;
        let body = cluster::envelope::Body::ReleaseTenant(cluster::ReleaseTenant {
            tenant: tenant.to_owned(),
            epoch,
        });
        conn.releasing.lock().insert(tenant.to_owned());
        let answer = self.request_on(&conn, body, timeout, 0).await;
        conn.forget_assignment(tenant);
        conn.releasing.lock().remove(tenant);
        match answer? {
            cluster::envelope::Body::Ack(_) => Ok(()),
            cluster::envelope::Body::Error(err) => Err(ApiError::new(
                Code::Unavailable,
                format!(
                    "worker {worker} did not release the tenant: {}",
                    err.message
                ),
            )),
            _ => Err(ApiError::internal("unexpected answer to a release")),
        }
    }

    /// Ids of workers as they say hello (admitted), for work that follows a reconnect.
    pub fn hellos(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.hellos.subscribe()
    }

    /// Tells a worker to stop serving a tenant (paused, moved, deleted). The connection keeps the
    /// assignment until the worker answers: unloading seals the tenant's growing segments, for
    /// which the worker asks the key service, and refusing it would fail that seal and write a
    /// spurious `cluster.refused` row.
    pub async fn release(&self, worker: &str, tenant: &str, epoch: u64, timeout: Duration) {
        if self.worker(worker).is_none() {
            return;
        }
        if let Err(err) = self.release_checked(worker, tenant, epoch, timeout).await {
            tracing::warn!(worker, tenant, error = %err, "release not acknowledged");
        }
    }

    /// Accepts worker connections until `shutdown` resolves; then closes them all.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let hub = self.clone();
                        tasks.spawn(async move { hub.handle(stream, peer).await });
                    }
                    Err(err) => tracing::warn!(error = %err, "accepting a worker connection failed"),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Close every socket (a request still holding a connection must not keep it open), then
        // stop the connection tasks.
        let conns: Vec<Arc<WorkerConn>> = self.workers.write().drain().map(|(_, c)| c).collect();
        for conn in conns {
            let close = async { conn.sink.lock().await.close().await };
            let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
        }
        tasks.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
