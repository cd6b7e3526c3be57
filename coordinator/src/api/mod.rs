//! The shared service layer: both public transports (gRPC in `grpc`, HTTP/JSON in `http`) turn a
//! request into an [`Op`] and call [`Service::call`], so they authenticate, authorize, validate,
//! rate-limit and route identically, and fail with the same [`ApiError`].
//!
//! **Invariant:** the tenant of a request is the tenant of its API key and nothing else; no field,
//! header or path names it. A collection of another tenant is never reachable: requests go only to
//! the caller's own tenant on its worker, where the name simply does not exist.

pub mod admin;
pub mod budget;
pub mod cold;
pub(crate) mod copy;
pub mod drain;
pub mod erasure;
pub mod error;
pub mod export;
pub mod failures;
pub mod handover;
pub mod idempotency;
pub mod leftovers;
pub mod limit;
mod members;
pub mod moves;
pub mod replicas;
mod route;
pub mod snapshots;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use proto::vaultvec::cluster::v1 as cluster;
use storage::Limits;
use storage::crypto::LocalKeyService;

pub use cluster::tenant_request::Op;
pub use cluster::tenant_response::Result as Reply;
use error::{ApiError, Code};

use crate::audit::Draft;
use crate::auth::{Authenticator, Identity, Pepper};
use crate::cluster::{Hub, now_ms};
use crate::config::{PAUSED_TIER, Tier};
use crate::metrics::Metrics;
use crate::store::{Placement, ReplicaRow, Store};

/// API keys kept in the authentication cache.
const AUTH_CACHE_KEYS: usize = 100_000;

struct TenantState {
    tier: String,
    /// Where its files are (`store::Tenant::storage`).
    storage: String,
    placement: Option<Placement>,
    /// Its copies beyond the placement's worker (tiers with replicas).
    replicas: Vec<ReplicaRow>,
}

/// Cached tenant states, and how many times one was forgotten. A request that read the store
/// before an admin change (pause, tier, delete, placement) may not cache what it read after the
/// change forgot the entry: it compares the generation it saw before reading.
#[derive(Default)]
struct TenantCache {
    states: HashMap<String, Arc<TenantState>>,
    generation: u64,
}

pub use budget::{
    DEFAULT_LARGE_MESSAGE_BUDGET_BYTES, LARGE_MESSAGE_EXPANSION, LargeMessages, Reservation,
    collecting_answer,
};

/// Requests and answers larger than this are parsed, checked and rendered with
/// [`off_runtime`]: their CPU time then holds up no other request's task.
pub const LARGE_MESSAGE_BYTES: usize = 64 * 1024;

/// Runs `f`, which waits on the store or works through a large message, without holding up the
/// other tasks of the runtime's thread: on the multi-threaded runtime they move to another thread
/// while `f` runs (`block_in_place`). On the current-thread runtime (some tests) it simply runs.
pub(crate) fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `f` on `pool` and waits for its result; `None` if it panicked. A panic must not reach
/// rayon, which would abort the process.
pub(crate) async fn on_pool<T: Send + 'static>(
    pool: &rayon::ThreadPool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.spawn(move || {
        if let Ok(out) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let _ = tx.send(out);
        }
    });
    rx.await.ok()
}

/// The credential of an `authorization: Bearer <token>` value (the scheme is case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The state both transports share.
pub struct Service {
    pub(crate) store: Arc<Store>,
    pub(crate) auth: Authenticator<Arc<Store>>,
    pub(crate) pepper: Pepper,
    pub(crate) hub: Arc<Hub>,
    pub(crate) keys: Arc<LocalKeyService>,
    pub(crate) tiers: BTreeMap<String, Tier>,
    pub(crate) default_tier: String,
    pub(crate) admin_token: crate::auth::BearerToken,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
    request_timeout: Duration,
    rates: limit::Buckets<String>,
    auth_failures: crate::config::AuthFailureBudget,
    failures: limit::Buckets<IpAddr>,
    /// Failed authentications not yet written to the audit chain.
    failure_log: failures::FailureLog,
    /// Cached per tenant and shared, so a request's lookups clone a pointer, not strings.
    tenants: RwLock<TenantCache>,
    /// Runs once after the next store read of a tenant's state, before it is cached (tests hold a
    /// lookup there to race an admin change against it).
    tenant_read_hook: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    placing: tokio::sync::Mutex<()>,
    /// Threads (one per core, at background priority) that work through large messages:
    /// parsing, checking and rendering of requests and answers over [`LARGE_MESSAGE_BYTES`] queue
    /// for them, so a flood of them takes at most the cores, at a lower priority than the
    /// runtime's threads that serve everyone else, and no more of their memory is expanded at once.
    heavy: Arc<rayon::ThreadPool>,
    /// Lets the pieces of large bodies and answers through the socket only when a core is free
    /// (`storage::gate`), shared with the hub.
    gate: storage::gate::IdleGate,
    large: budget::LargeMessages,
    /// Tenants being moved between workers now.
    moving: moves::Moving,
    /// Workers being drained now.
    drains: drain::Drains,
    /// Write locks and counters of replicated tenants.
    replication: replicas::Replication,
    /// How long a worker may be down before its replicas are replaced elsewhere.
    replace_after: Duration,
    /// Whether the repair hands copies over to even the workers out.
    auto_rebalance: bool,
    /// Tenants whose copy is being handed over now (the repair leaves their copies alone).
    handing: handover::Handing,
    /// When this service started, Unix ms (a worker's downtime counts from here at the earliest).
    started_ms: u64,
    /// The scheduler's jobs and clock.
    pub(crate) jobs: crate::jobs::Jobs,
    /// Privacy requests.
    pub(crate) privacy: crate::config::Privacy,
    /// The snapshot store and the tenants with a snapshot operation running.
    pub(crate) snapshots: snapshots::Snapshots,
    dashboard: Option<Arc<crate::dashboard::Dashboard>>,
    /// The relay the outbox sends through, if `[mail]` is configured.
    pub(crate) mailer: crate::mail::SharedMailer,
}

/// The large-message pool: one thread per core in the `SCHED_IDLE` class, where messages over
/// [`LARGE_MESSAGE_BYTES`] are parsed, decoded and rendered in turn ([`Service::heavy`], and the
/// hub's large answers).
pub fn heavy_pool() -> anyhow::Result<Arc<rayon::ThreadPool>> {
    Ok(Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name(|i| format!("vv-heavy-{i}"))
            .start_handler(|_| storage::process::idle_background_thread())
            .build()?,
    ))
}

/// What [`Service::new`] needs.
pub struct Parts {
    /// The control-plane database.
    pub store: Arc<Store>,
    /// Pepper bytes (the authenticator and key issuing each key an HMAC with them).
    pub pepper: zeroize::Zeroizing<Vec<u8>>,
    /// The workers.
    pub hub: Arc<Hub>,
    /// The large-message pool ([`heavy_pool`]), shared with the hub.
    pub heavy: Arc<rayon::ThreadPool>,
    /// The gate large messages' pieces pass (`storage::gate`), shared with the hub.
    pub gate: storage::gate::IdleGate,
    /// Memory for large messages in flight (`budget`), shared with the hub.
    pub large: LargeMessages,
    /// Tenant KEKs.
    pub keys: Arc<LocalKeyService>,
    /// Tiers by name.
    pub tiers: BTreeMap<String, Tier>,
    /// Tier of new tenants.
    pub default_tier: String,
    /// Admin bearer token.
    pub admin_token: crate::auth::BearerToken,
    /// Deadline of routed requests.
    pub request_timeout: Duration,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Failed authentications allowed per client address.
    pub auth_failures: crate::config::AuthFailureBudget,
    /// How long a worker may be down before its replicas are replaced elsewhere.
    pub replace_after: Duration,
    /// Whether the repair hands copies over to even the workers out.
    pub auto_rebalance: bool,
    /// The scheduler's jobs and clock.
    pub jobs: crate::jobs::Jobs,
    /// Privacy requests.
    pub privacy: crate::config::Privacy,
    /// The snapshot store.
    pub snapshots: crate::snapshot::Settings,
    /// The dashboard, if configured.
    pub dashboard: Option<Arc<crate::dashboard::Dashboard>>,
    /// The mail relay, if configured.
    pub mailer: crate::mail::SharedMailer,
}

impl Service {
    /// Builds the service.
    pub fn new(parts: Parts) -> anyhow::Result<Service> {
        let pepper_for_auth =
            Pepper::new(&parts.pepper).ok_or_else(|| anyhow::anyhow!("pepper too short"))?;
        let pepper =
            Pepper::new(&parts.pepper).ok_or_else(|| anyhow::anyhow!("pepper too short"))?;
        let capacity = NonZeroUsize::new(AUTH_CACHE_KEYS).expect("non-zero");
        Ok(Service {
            auth: Authenticator::new(parts.store.clone(), pepper_for_auth, capacity),
            store: parts.store,
            pepper,
            hub: parts.hub,
            keys: parts.keys,
            tiers: parts.tiers,
            default_tier: parts.default_tier,
            admin_token: parts.admin_token,
            metrics: parts.metrics,
            limits: Limits::default(),
            request_timeout: parts.request_timeout,
            rates: limit::Buckets::new(100_000),
            auth_failures: parts.auth_failures,
            failures: limit::Buckets::new(100_000),
            failure_log: failures::FailureLog::new(failures::MAX_ENTRIES),
            tenants: RwLock::new(TenantCache::default()),
            tenant_read_hook: parking_lot::Mutex::new(None),
            placing: tokio::sync::Mutex::new(()),
            heavy: parts.heavy,
            gate: parts.gate,
            large: parts.large,
            moving: moves::Moving::default(),
            drains: drain::Drains::default(),
            replication: replicas::Replication::default(),
            replace_after: parts.replace_after,
            auto_rebalance: parts.auto_rebalance,
            handing: handover::Handing::default(),
            started_ms: now_ms(),
            jobs: parts.jobs,
            privacy: parts.privacy,
            snapshots: snapshots::Snapshots::new(parts.snapshots),
            dashboard: parts.dashboard,
            mailer: parts.mailer,
        })
    }

    /// The caller's identity from the presented API key. Every failure is the same
    /// `Unauthenticated`, audited in the platform chain, and rate-limited per client address.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Arc<Identity>, ApiError> {
        if let Some(identity) = self.auth.authenticate_cached(presented) {
            return Ok(identity);
        }
        // A client over its budget of failed attempts is refused before any lookup, so a flood of
        // random keys costs neither store queries nor audit rows.
        self.check_failure_budget(peer)?;
        match off_runtime(|| self.auth.authenticate(presented)) {
            Ok(identity) => Ok(identity),
            Err(_) => {
                // The key id of a well-formed key helps an operator; the secret never appears.
                let key_id = presented
                    .and_then(|k| k.strip_prefix("vv_"))
                    .and_then(|k| k.get(..crate::auth::KEY_ID_LEN))
                    .filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric()))
                    .unwrap_or("");
                self.record_auth_failure(peer, key_id);
                Err(ApiError::unauthenticated())
            }
        }
    }

    /// The client address a request's failed authentications count against: its TCP peer, or,
    /// only when that peer is one of `[auth_failures] trusted_proxies`, the rightmost address in
    /// `forwarded_for` (the `X-Forwarded-For` values, in order) that is not a trusted proxy. What
    /// a client writes into the header itself sits left of what its proxy adds, so it cannot pick
    /// the address; a malformed entry counts against the proxy. From any other peer the header is
    /// ignored (INV-13).
    pub fn client_ip<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = &self.auth_failures.trusted_proxies;
        if !trusted.contains(&peer) {
            return Some(peer);
        }
        for value in forwarded_for.rev() {
            for entry in value.rsplit(',') {
                match entry.trim().parse::<IpAddr>() {
                    Ok(ip) if trusted.contains(&ip) => {}
                    Ok(ip) => return Some(ip),
                    Err(_) => return Some(peer),
                }
            }
        }
        Some(peer)
    }

    /// Reserves memory for a large message of `bytes` (see `budget`), waiting at most the
    /// request timeout.
    pub async fn reserve_large(&self, bytes: usize, what: &str) -> Result<Reservation, ApiError> {
        self.large.reserve(bytes, self.request_timeout, what).await
    }

    /// Bytes reserved for large messages now.
    pub fn large_reserved_bytes(&self) -> usize {
        self.large.reserved_bytes()
    }

    /// Watches the bytes reserved for large messages.
    pub fn watch_large_reserved(&self) -> tokio::sync::watch::Receiver<usize> {
        self.large.watch_reserved()
    }

    /// The gate the pieces of large messages pass before they are read or written.
    pub fn gate(&self) -> &storage::gate::IdleGate {
        &self.gate
    }

    /// Runs `f`, CPU work on a large message, on the background-priority pool, in turn.
    pub async fn heavy<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        on_pool(&self.heavy, f)
            .await
            .ok_or_else(|| ApiError::internal("work on a large message was lost"))
    }

    /// The proxies whose `X-Forwarded-For` is believed (`[auth_failures] trusted_proxies`).
    pub fn trusted_proxies(&self) -> &[IpAddr] {
        &self.auth_failures.trusted_proxies
    }

    /// Refuses a client whose budget of failed authentications is spent.
    pub(crate) fn check_failure_budget(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        if let Some(ip) = peer.map(limit::client_bucket) {
            let wait = self.failures.wait(
                &ip,
                self.auth_failures.per_second,
                self.auth_failures.burst,
                Instant::now(),
            );
            if !wait.is_zero() {
                self.metrics.auth_failures.inc();
                return Err(ApiError {
                    code: Code::ResourceExhausted,
                    message: "too many failed authentications from this address".into(),
                    retry_after: Some(wait),
                });
            }
        }
        Ok(())
    }

    /// Spends one failure from the client's budget, nothing else (a refused dashboard login,
    /// which writes its own audit row).
    pub(crate) fn spend_failure_budget(&self, peer: Option<IpAddr>) {
        self.metrics.auth_failures.inc();
        if let Some(ip) = peer.map(limit::client_bucket) {
            let _ = self.failures.take(
                &ip,
                self.auth_failures.per_second,
                self.auth_failures.burst,
                Instant::now(),
            );
        }
    }

    /// Spends one failure from the client's budget and counts it for the next coalesced audit row
    /// (platform chain; see [`failures`]). Touches no store.
    pub(crate) fn record_auth_failure(&self, peer: Option<IpAddr>, resource: &str) {
        self.metrics.auth_failures.inc();
        let bucket = peer.map(limit::client_bucket);
        if let Some(ip) = bucket {
            let _ = self.failures.take(
                &ip,
                self.auth_failures.per_second,
                self.auth_failures.burst,
                Instant::now(),
            );
        }
        let actor = bucket.map_or("unknown".into(), |ip| format!("peer:{ip}"));
        self.failure_log.record(&actor, resource, now_ms());
    }

    /// Writes the failed authentications counted so far as `auth.failure` rows on the platform
    /// chain, one per client address and resource with its count, in one transaction. Blocks on
    /// the store: call it from a blocking thread (the coordinator does, every
    /// [`failures::AUDIT_WINDOW`]). Rows that cannot be written are kept for the next call.
    pub fn flush_auth_failures(&self) {
        let drained = self.failure_log.drain();
        if drained.is_empty() {
            return;
        }
        let now = now_ms();
        let drafts = drained.iter().map(|p| p.draft(now)).collect();
        if let Err(err) = self.store.audit_many(admin::PLATFORM_CHAIN, drafts) {
            tracing::error!(rows = drained.len(), error = %err, "writing failed-authentication rows failed; kept for the next try");
            self.failure_log.restore(drained);
        }
    }

    /// Writes an audit row, logging (not failing) if it cannot: for events that are not themselves
    /// operations (an operation's own row is written by the store in its transaction).
    pub(crate) fn audit(
        &self,
        chain: &str,
        actor: &str,
        action: &str,
        resource: &str,
        outcome: &str,
        details: serde_json::Value,
    ) {
        let draft = Draft {
            time_ms: now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            outcome: outcome.to_owned(),
            details,
        };
        if let Err(err) = self.store.audit(chain, draft) {
            tracing::error!(chain, action, error = %err, "audit write failed");
        }
    }

    fn tenant_state(&self, tenant: &str) -> Result<Arc<TenantState>, ApiError> {
        let generation = {
            let cache = self.tenants.read();
            if let Some(state) = cache.states.get(tenant) {
                return Ok(state.clone());
            }
            cache.generation
        };
        let (row, placement, replicas) = off_runtime(|| {
            let row = self.store.tenant(tenant)?;
            let placement = self.store.placement(tenant)?;
            let replicas = self.store.replicas(tenant)?;
            Ok::<_, crate::store::Error>((row, placement, replicas))
        })
        .map_err(ApiError::internal)?;
        let row = row
            .filter(|t| !t.deleted)
            .ok_or_else(ApiError::unauthenticated)?;
        let state = Arc::new(TenantState {
            tier: row.tier,
            storage: row.storage,
            placement,
            replicas,
        });
        if let Some(hook) = self.tenant_read_hook.lock().take() {
            hook();
        }
        let mut cache = self.tenants.write();
        if cache.generation == generation {
            cache.states.insert(tenant.to_owned(), state.clone());
        }
        Ok(state)
    }

    /// Drops the cached state of a tenant after an admin change (call it after the change
    /// committed). A lookup that read the store before the change cannot cache its stale copy.
    pub(crate) fn forget_tenant_state(&self, tenant: &str) {
        let mut cache = self.tenants.write();
        cache.generation = cache.generation.wrapping_add(1);
        cache.states.remove(tenant);
    }

    /// Sets a function to run once, after the next store read of a tenant's state and before it
    /// is cached (tests race admin changes against a lookup with it).
    #[doc(hidden)]
    pub fn set_tenant_read_hook(&self, hook: impl FnOnce() + Send + 'static) {
        *self.tenant_read_hook.lock() = Some(Box::new(hook));
    }

    /// The deadline of a routed request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The largest request body the caller's tier accepts.
    pub fn body_limit(&self, identity: &Identity) -> Result<usize, ApiError> {
        let state = self.tenant_state(&identity.tenant)?;
        Ok(self
            .tiers
            .get(&state.tier)
            .map_or(crate::http::MAX_ADMIN_BODY_BYTES, |t| t.max_body_bytes))
    }

    /// Refuses a request body over the tier's limit; both transports call it before parsing.
    pub fn check_body_size(&self, identity: &Identity, bytes: usize) -> Result<(), ApiError> {
        let state = self.tenant_state(&identity.tenant)?;
        match self.tiers.get(&state.tier) {
            Some(tier) if bytes > tier.max_body_bytes => Err(ApiError::new(
                Code::PayloadTooLarge,
                format!(
                    "request body is {bytes} bytes, over the tier's limit of {}",
                    tier.max_body_bytes
                ),
            )),
            _ => Ok(()),
        }
    }

    fn quota(tier: Option<&Tier>) -> cluster::TenantQuota {
        cluster::TenantQuota {
            max_points: tier.map_or(0, |t| t.max_points),
            max_collections: tier.map_or(0, |t| t.max_collections),
            max_stored_bytes: tier.map_or(0, |t| t.max_stored_bytes),
        }
    }

    /// The dashboard, if configured.
    pub fn dashboard(&self) -> Option<&crate::dashboard::Dashboard> {
        self.dashboard.as_deref()
    }

    /// Runs one data operation for the caller. The caller says whether it is `large` (encoded
    /// over [`LARGE_MESSAGE_BYTES`]), which it knows from the message it came in: a large one is
    /// checked, encoded for its worker and dropped on the background-priority pool, never walked
    /// on the runtime's threads.
    pub async fn call(
        &self,
        identity: &Identity,
        mut op: Op,
        large: bool,
    ) -> Result<Reply, ApiError> {
        let tenant = identity.tenant.as_str();
        let state = self.tenant_state(tenant)?;
        if state.tier == PAUSED_TIER && state.storage == crate::store::tenant::WARMING {
            return Err(ApiError {
                code: Code::Unavailable,
                message: "this tenant is resuming: its files are moving back from cold storage; \
                          retry shortly"
                    .into(),
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        if state.tier == PAUSED_TIER {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                "this tenant is paused; its data is not served until an operator resumes it",
            ));
        }
        let tier = self.tiers.get(&state.tier).ok_or_else(|| {
            ApiError::internal(format_args!(
                "tenant {tenant} has unknown tier {}",
                state.tier
            ))
        })?;
        // The rate is charged only for requests that are allowed and well-formed: refused ones
        // cost the server little and must not drain the tenant's budget for its valid traffic.
        let (scope, collection) = validate::scope_of(&op);
        identity.require(scope, collection)?;
        if large {
            let limits = self.limits;
            let tier_copy = tier.clone();
            let (checked, result) = self
                .heavy(move || {
                    let result = validate::check(&op, &limits, &tier_copy);
                    (op, result)
                })
                .await?;
            result?;
            op = checked;
        } else {
            validate::check(&op, &self.limits, tier)?;
        }
        if let Err(wait) = self.rates.take(
            &identity.tenant,
            tier.requests_per_second,
            tier.burst,
            Instant::now(),
        ) {
            return Err(ApiError {
                code: Code::ResourceExhausted,
                message: "request rate limit of the tenant's tier exceeded".into(),
                retry_after: Some(wait),
            });
        }
        let restricted = matches!(op, Op::ListCollections(_))
            .then(|| identity.collections.clone())
            .flatten();
        let upserted = match &op {
            Op::Upsert(r) => r.points.len() as u64,
            _ => 0,
        };
        let mut reply = match idempotency::key_of(&op) {
            // Counts its points itself: once, when it runs, never for a retry it answers from
            // its record.
            Some(key) => {
                let key = key.to_owned();
                self.keyed_write(tenant, tier, op, large, key).await?
            }
            None => {
                let reply = self.route_sized(tenant, Some(tier), op, large).await?;
                self.count_upserted(tenant, upserted);
                reply
            }
        };
        // A key restricted to named collections lists only those.
        if let (Some(allowed), Reply::Collections(list)) = (restricted, &mut reply) {
            list.collections.retain(|c| allowed.contains(&c.name));
        }
        Ok(reply)
    }
}
