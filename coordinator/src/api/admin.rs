//! Operator actions behind the admin token: tenants, tiers, pause and resume, API keys, KEK rotation,
//! crypto-erasure, the audit chains, workers and placement. Each action is recorded in the audit
//! chain; where the store makes the change, the row is written in the same transaction, so an action
//! whose audit row cannot be written does not happen (INV-18).

use proto::vaultvec::cluster::v1 as cluster;
use serde::Serialize;
use storage::ids::TenantId;

use super::error::{ApiError, Code};
use super::{Op, Reply, Service};
use crate::audit::{AuditRow, ChainHead};
use crate::auth::{KeyRecord, Scopes, generate};
use crate::cluster::{WorkerHealth, WorkerState};
use crate::config::PAUSED_TIER;
use crate::store::{self, Actor, KeyInfo, Tenant, WorkerRow};

pub(super) const ADMIN: &str = "admin";

/// The platform chain's name.
pub const PLATFORM_CHAIN: &str = "platform";

impl From<store::Error> for ApiError {
    fn from(err: store::Error) -> ApiError {
        match err {
            store::Error::NotFound(m) => ApiError::new(Code::NotFound, m),
            store::Error::AlreadyExists(m) => ApiError::new(Code::AlreadyExists, m),
            store::Error::Invalid(m) => ApiError::new(Code::FailedPrecondition, m),
            other => ApiError::internal(other),
        }
    }
}

/// A placement as `/admin/v1/placements` shows it.
#[derive(Debug, Serialize)]
pub struct PlacementView {
    /// The tenant.
    pub tenant: String,
    /// The worker it is placed on.
    pub worker: String,
    /// Its fencing epoch.
    pub epoch: u64,
    /// Its move in progress, if any.
    #[serde(rename = "move")]
    pub moving: Option<MoveView>,
    /// Its copies beyond `worker` (tiers with replicas), by worker.
    pub replicas: Vec<ReplicaView>,
}

/// A copy of a tenant beyond its placement's worker.
#[derive(Debug, Serialize)]
pub struct ReplicaView {
    /// The worker holding it.
    pub worker: String,
    /// `live` (holds every acknowledged write; read from and written to) or `stale` (catching
    /// up; used for nothing meanwhile).
    pub state: &'static str,
    /// Since when it is in that state, Unix ms.
    pub since_ms: u64,
}

/// A move in progress.
#[derive(Debug, Serialize)]
pub struct MoveView {
    /// The worker it leaves.
    pub from: String,
    /// The worker it goes to.
    pub to: String,
    /// `copying`, `cleanup` (placed on `to`, `from`'s copy to be deleted) or `aborted` (stays
    /// on `from`, `to`'s copy to be deleted).
    pub state: &'static str,
    /// When it started, Unix ms.
    pub started_ms: u64,
    /// How far the copy has got, while this coordinator is copying.
    pub progress: Option<super::moves::MoveProgress>,
}

/// A worker as `/admin/v1/workers` shows it.
#[derive(Debug, Serialize)]
pub struct WorkerView {
    /// The worker's id.
    pub id: String,
    /// `up`, `suspect` or `down` (the health tracker's).
    pub state: &'static str,
    /// Whether it is connected now (up or suspect).
    pub connected: bool,
    /// Unix ms of its last heartbeat while connected; of its hello or disconnection otherwise.
    pub last_seen_ms: u64,
    /// Milliseconds since its last heartbeat, while connected.
    pub since_heartbeat_ms: Option<u64>,
    /// Its software version (from its last hello).
    pub version: String,
    /// Plaintext it may hold for loaded tenants.
    pub memory_budget_bytes: u64,
    /// Tenants placed on it.
    pub placed_tenants: usize,
    /// Whether it is being drained (no new tenants; its tenants are moved off).
    pub draining: bool,
    /// Its last heartbeat's figures, while connected.
    pub heartbeat: Option<HeartbeatView>,
}

/// A worker's own figures from its last heartbeat.
#[derive(Debug, Serialize)]
pub struct HeartbeatView {
    /// Tenants loaded in its memory.
    pub loaded_tenants: u64,
    /// Plaintext bytes they hold.
    pub plaintext_bytes: u64,
    /// Share of its memory budget they hold.
    pub memory_fraction: f64,
    /// Tenant requests running.
    pub in_flight: u32,
    /// Tenant requests it runs at once.
    pub max_in_flight: u32,
    /// Tenants assigned on its connection.
    pub assigned_tenants: u64,
    /// Resident set size of its process.
    pub rss_bytes: u64,
    /// Tenant requests finished since it started.
    pub requests_total: u64,
}

impl WorkerView {
    fn new(row: WorkerRow, live: Option<&WorkerHealth>, placed_tenants: usize) -> WorkerView {
        let since = live.and_then(|h| h.since_heartbeat);
        WorkerView {
            state: live.map_or(WorkerState::Down, |h| h.state).as_str(),
            connected: live.is_some(),
            last_seen_ms: match since {
                Some(since) => crate::cluster::now_ms().saturating_sub(since.as_millis() as u64),
                None => row.last_seen_ms,
            },
            since_heartbeat_ms: since.map(|d| d.as_millis() as u64),
            version: live.map_or(row.version, |h| h.hello.version.clone()),
            memory_budget_bytes: live
                .map_or(row.memory_budget_bytes, |h| h.hello.memory_budget_bytes),
            placed_tenants,
            draining: row.draining_since_ms.is_some(),
            heartbeat: live.map(|h| HeartbeatView {
                loaded_tenants: h.heartbeat.loaded_tenants,
                plaintext_bytes: h.heartbeat.plaintext_bytes,
                memory_fraction: h.memory_fraction(),
                in_flight: h.heartbeat.in_flight,
                max_in_flight: h.hello.max_in_flight,
                assigned_tenants: h.heartbeat.assigned_tenants,
                rss_bytes: h.heartbeat.rss_bytes,
                requests_total: h.heartbeat.requests_total,
            }),
            id: row.id,
        }
    }
}

/// A key as issued: the full key is in this answer and nowhere else, ever.
#[derive(Debug, Serialize)]
pub struct IssuedKey {
    /// The key's record (no secret).
    #[serde(flatten)]
    pub info: KeyInfoView,
    /// `vv_<keyid>_<secret>`; shown once.
    pub key: String,
}

/// A key as listed.
#[derive(Debug, Serialize)]
pub struct KeyInfoView {
    /// Public id.
    pub key_id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Free-form label.
    pub label: String,
    /// Scope names.
    pub scopes: Vec<&'static str>,
    /// Collections it is restricted to, if any.
    pub collections: Option<Vec<String>>,
    /// Creation time.
    pub created_ms: u64,
    /// Revocation time, if revoked.
    pub revoked_ms: Option<u64>,
}

impl From<KeyInfo> for KeyInfoView {
    fn from(k: KeyInfo) -> KeyInfoView {
        let mut scopes = Vec::new();
        if k.scopes.read {
            scopes.push("read");
        }
        if k.scopes.write {
            scopes.push("write");
        }
        if k.scopes.manage {
            scopes.push("manage");
        }
        KeyInfoView {
            key_id: k.key_id,
            tenant: k.tenant,
            label: k.label,
            scopes,
            collections: k.collections,
            created_ms: k.created_ms,
            revoked_ms: k.revoked_ms,
        }
    }
}

/// Outcome of a KEK rotation.
#[derive(Debug, Serialize)]
pub struct Rotation {
    /// The new current version.
    pub kek_version: u32,
    /// Versions destroyed after every file was re-wrapped.
    pub destroyed_versions: Vec<u32>,
    /// Old versions kept because a snapshot needs them (destroyed when the last snapshot that
    /// needs them is deleted).
    pub kept_for_snapshots: Vec<u32>,
}

/// An exported chain with its signed head.
#[derive(Debug, Serialize)]
pub struct Export {
    /// The rows, in order.
    pub rows: Vec<AuditRow>,
    /// The signed head at export time.
    pub head: ChainHead,
    /// Whether the rows verify (links, hashes and signatures under the audit key, against the
    /// head taken from them: a cut tail shows only against a head exported earlier).
    pub chain_verified: bool,
    /// The first bad row and what is wrong with it, when they do not.
    pub verify_error: Option<String>,
}

/// Parses scope names.
pub fn parse_scopes(names: &[String]) -> Result<Scopes, ApiError> {
    let mut scopes = Scopes::default();
    if names.is_empty() {
        return Err(ApiError::invalid("a key needs at least one scope"));
    }
    for name in names {
        match name.as_str() {
            "read" => scopes.read = true,
            "write" => scopes.write = true,
            "manage" => scopes.manage = true,
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown scope {other:?}; scopes are read, write and manage"
                )));
            }
        }
    }
    Ok(scopes)
}

impl Service {
    /// Checks the admin token in constant time. API keys are never admin tokens.
    ///
    /// The token is compared before the failed-authentication budget is consulted: a valid token
    /// is never refused because others failed from the same address (or from behind the same
    /// proxy), so a flood cannot lock the operator out. The comparison costs one hash of each
    /// side and touches neither the store nor the audit chain, so checking it first costs an
    /// attacker's flood nothing extra.
    pub fn check_admin(
        &self,
        presented: Option<&str>,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), ApiError> {
        let presented = presented.unwrap_or("").as_bytes();
        if self.admin_token.matches(presented) {
            return Ok(());
        }
        self.check_failure_budget(peer)?;
        self.record_auth_failure(peer, "admin");
        Err(ApiError::unauthenticated())
    }

    fn check_tier(&self, tier: &str) -> Result<(), ApiError> {
        if tier == PAUSED_TIER {
            return Err(ApiError::invalid("use pause to pause a tenant"));
        }
        if !self.tiers.contains_key(tier) {
            return Err(ApiError::invalid(format!("unknown tier {tier:?}")));
        }
        Ok(())
    }

    pub(crate) fn existing(&self, tenant: &str) -> Result<Tenant, ApiError> {
        match self.store.tenant(tenant)? {
            Some(t) if !t.deleted => Ok(t),
            _ => Err(ApiError::new(
                Code::NotFound,
                format!("tenant {tenant} not found"),
            )),
        }
    }

    /// Creates a tenant and its first KEK.
    pub fn create_tenant(&self, id: &str, tier: Option<&str>) -> Result<Tenant, ApiError> {
        let tenant_id = TenantId::parse(id).map_err(|e| ApiError::invalid(e.to_string()))?;
        let tier = tier.unwrap_or(&self.default_tier);
        self.check_tier(tier)?;
        if self.store.tenant(id)?.is_some() {
            return Err(ApiError::new(
                Code::AlreadyExists,
                format!("tenant {id} already exists or existed (ids are never reused)"),
            ));
        }
        // The KEK is made inside the store's transaction, after the store has accepted the id and
        // before the row commits: a refused id leaves no key file behind, and a KEK that cannot
        // be made leaves no tenant without keys.
        Ok(self
            .store
            .create_tenant_then(&Actor(ADMIN.into()), id, tier, || {
                self.keys
                    .ensure_tenant(&tenant_id)
                    .map_err(|e| store::Error::Invalid(format!("creating the tenant's KEK: {e}")))
            })?)
    }

    /// Lists tenants.
    pub fn list_tenants(&self) -> Result<Vec<Tenant>, ApiError> {
        Ok(self.store.list_tenants()?)
    }

    /// One tenant.
    pub fn get_tenant(&self, id: &str) -> Result<Tenant, ApiError> {
        self.existing(id)
    }

    /// Changes a tenant's tier; the worker gets the new quota with the next request.
    pub fn set_tier(&self, id: &str, tier: &str) -> Result<Tenant, ApiError> {
        self.check_tier(tier)?;
        self.existing(id)?;
        let tenant = self.store.set_tier(&Actor(ADMIN.into()), id, tier)?;
        self.after_change(id);
        Ok(tenant)
    }

    pub(super) fn after_change(&self, tenant: &str) {
        self.forget_tenant_state(tenant);
        if let Ok(Some(p)) = self.store.placement(tenant)
            && let Some(conn) = self.hub.worker(&p.worker)
        {
            conn.forget_assignment(tenant);
        }
    }

    /// Pauses a tenant: its requests are refused and its worker unloads it (plaintext zeroized).
    pub async fn pause(&self, id: &str) -> Result<Tenant, ApiError> {
        self.pause_by(id, ADMIN).await
    }

    /// [`Service::pause`] recorded as done by `actor` (`system` for an anomaly's pause).
    pub async fn pause_by(&self, id: &str, actor: &str) -> Result<Tenant, ApiError> {
        let existing = self.existing(id)?;
        if existing.tier == PAUSED_TIER && existing.storage == crate::store::tenant::COOLING {
            // Paused, its files not all moved yet: asking again finishes the moves.
            return self.settle_storage(id).await;
        }
        self.store.pause_tenant(&Actor(actor.into()), id)?;
        // New requests see the pause at once; the assignment goes when the worker has unloaded.
        self.forget_tenant_state(id);
        if let Some(p) = self.store.placement(id)? {
            self.hub
                .release(&p.worker, id, p.epoch, self.request_timeout)
                .await;
        }
        // Its files go to cold storage; a copy whose worker is away follows when it connects.
        self.settle_storage(id).await
    }

    /// Issues an API key; the full key is returned once.
    pub fn issue_key(
        &self,
        tenant: &str,
        scopes: Scopes,
        collections: Option<Vec<String>>,
        label: &str,
    ) -> Result<IssuedKey, ApiError> {
        self.issue_key_as(ADMIN, tenant, scopes, collections, label)
    }

    /// [`Service::issue_key`] recorded as done by `actor` (a dashboard user).
    pub fn issue_key_as(
        &self,
        actor: &str,
        tenant: &str,
        scopes: Scopes,
        collections: Option<Vec<String>>,
        label: &str,
    ) -> Result<IssuedKey, ApiError> {
        self.existing(tenant)?;
        if let Some(names) = &collections {
            for name in names {
                storage::ids::CollectionName::parse(name)
                    .map_err(|e| ApiError::invalid(e.to_string()))?;
            }
        }
        if label.len() > 200 {
            return Err(ApiError::invalid("label is longer than 200 bytes"));
        }
        let new = generate();
        let record = KeyRecord {
            key_id: new.key_id.clone(),
            tenant: tenant.to_owned(),
            scopes,
            collections,
            digest: self.pepper.digest(&new.full),
            is_revoked: false,
        };
        let info = self
            .store
            .insert_key(&Actor(actor.into()), &record, label)?;
        Ok(IssuedKey {
            info: info.into(),
            key: new.full.to_string(),
        })
    }

    /// Lists a tenant's keys (never their secrets).
    pub fn list_keys(&self, tenant: &str) -> Result<Vec<KeyInfoView>, ApiError> {
        self.existing(tenant)?;
        Ok(self
            .store
            .list_keys(tenant)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Revokes a key: the very next request with it is refused.
    pub fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<KeyInfoView, ApiError> {
        self.revoke_key_as(ADMIN, tenant, key_id)
    }

    /// [`Service::revoke_key`] recorded as done by `actor` (a dashboard user).
    pub fn revoke_key_as(
        &self,
        actor: &str,
        tenant: &str,
        key_id: &str,
    ) -> Result<KeyInfoView, ApiError> {
        let info = self
            .store
            .revoke_key(&Actor(actor.into()), tenant, key_id)?;
        self.auth.forget(key_id);
        Ok(info.into())
    }

    /// Rotates a tenant's KEK: a new version, every file re-wrapped by its worker, then the old
    /// versions destroyed. No vector is re-encrypted.
    ///
    /// The audit row is written after the re-wrap and before anything irreversible: if it cannot
    /// be written, the rotation fails and the old versions stay (INV-18). A rotation that failed
    /// can be run again; it destroys every version older than the new current one.
    pub async fn rotate_kek(&self, id: &str) -> Result<Rotation, ApiError> {
        self.rotate_kek_by(id, ADMIN).await
    }

    /// [`Service::rotate_kek`] on behalf of `actor` (the admin, or the scheduler's `system`);
    /// a rotation that destroyed the old versions is recorded as the tenant's last.
    pub(crate) async fn rotate_kek_by(&self, id: &str, actor: &str) -> Result<Rotation, ApiError> {
        // Never beside a snapshot being taken, restored or deleted (`snapshots.rs`).
        let _lifecycle = self.lifecycle_lock(id).await;
        self.rotate_kek_locked(id, actor).await
    }

    /// [`Service::rotate_kek_by`] with the tenant's lifecycle lock held by the caller.
    pub(super) async fn rotate_kek_locked(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<Rotation, ApiError> {
        self.existing(id)?;
        let tenant = TenantId::parse(id).map_err(|e| ApiError::invalid(e.to_string()))?;
        let version = self.keys.rotate_kek(&tenant).map_err(ApiError::internal)?;
        let old: Vec<u32> = match self.rewrap(id, version).await {
            Ok(true) => self
                .keys
                .kek_versions(&tenant)
                .map_err(ApiError::internal)?
                .into_iter()
                .filter(|old| *old < version)
                .collect(),
            Ok(false) => Vec::new(),
            Err(err) => {
                let details = serde_json::json!({ "kek_version": version, "error": err.message });
                self.audit_required_by(actor, id, "kek.rotate", "error", details)?;
                return Err(err);
            }
        };
        // A version a snapshot still needs is retired, not destroyed: it is destroyed when the
        // last snapshot that needs it is deleted.
        let pinned = self.pinned_keks(id)?;
        let (kept, to_destroy): (Vec<u32>, Vec<u32>) =
            old.into_iter().partition(|v| pinned.contains(v));
        let details = serde_json::json!({
            "kek_version": version, "destroyed": to_destroy, "kept_for_snapshots": kept,
        });
        self.audit_required_by(actor, id, "kek.rotate", "ok", details)?;
        self.store.retire_keks(id, &kept)?;
        for old in &to_destroy {
            self.keys
                .destroy_kek(&tenant, *old)
                .map_err(ApiError::internal)?;
            self.store.forget_retired_kek(id, *old)?;
        }
        self.store.record_kek_rotation(id, self.clock().now_ms())?;
        Ok(Rotation {
            kek_version: version,
            destroyed_versions: to_destroy,
            kept_for_snapshots: kept,
        })
    }

    /// Writes the audit row of an operation that must not happen unrecorded: its failure fails
    /// the operation.
    pub(super) fn audit_required(
        &self,
        chain: &str,
        action: &str,
        outcome: &str,
        details: serde_json::Value,
    ) -> Result<AuditRow, ApiError> {
        self.audit_required_by(ADMIN, chain, action, outcome, details)
    }

    /// [`Service::audit_required`] with `actor` as the row's actor.
    pub(crate) fn audit_required_by(
        &self,
        actor: &str,
        chain: &str,
        action: &str,
        outcome: &str,
        details: serde_json::Value,
    ) -> Result<AuditRow, ApiError> {
        let draft = crate::audit::Draft {
            time_ms: crate::cluster::now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: chain.to_owned(),
            outcome: outcome.to_owned(),
            details,
        };
        self.store.audit(chain, draft).map_err(|err| {
            tracing::error!(chain, action, error = %err, "audit write failed; the operation is refused");
            ApiError::new(
                Code::Unavailable,
                format!("{action} was not completed: its audit row could not be written; retry"),
            )
        })
    }

    /// Has the tenant's worker re-wrap its files under the current KEK. Answers whether the old
    /// versions may be destroyed: not while the tenant is paused (its files cannot be re-wrapped
    /// now), yes when it was never placed (it has no files).
    async fn rewrap(&self, id: &str, _version: u32) -> Result<bool, ApiError> {
        let tenant = self.existing(id)?;
        if self.store.placement(id)?.is_none() {
            return Ok(true);
        }
        if tenant.tier == PAUSED_TIER {
            return Ok(false);
        }
        let tier = self.tiers.get(&tenant.tier).cloned();
        match self
            .route(id, tier.as_ref(), Op::RewrapKeys(cluster::RewrapKeys {}))
            .await?
        {
            Reply::Done(_) => Ok(true),
            _ => Err(ApiError::internal("unexpected answer to a re-wrap")),
        }
    }

    /// Exports a chain (a tenant's, or `platform`) with its signed head; the export is audited.
    pub fn export_chain(&self, chain: &str) -> Result<Export, ApiError> {
        self.export_chain_as(ADMIN, chain)
    }

    /// [`Service::export_chain`] recorded as done by `actor` (a dashboard user).
    pub fn export_chain_as(&self, actor: &str, chain: &str) -> Result<Export, ApiError> {
        if chain != PLATFORM_CHAIN {
            self.existing_or_deleted(chain)?;
        } else {
            // The export shows every failed authentication noticed so far.
            self.flush_auth_failures();
        }
        self.audit(
            chain,
            actor,
            "audit.export",
            chain,
            "ok",
            serde_json::json!({}),
        );
        let rows = self.store.export_chain(chain)?;
        let head = self.store.chain_head(chain)?;
        let verified = self.store.verify_rows(&rows);
        Ok(Export {
            rows,
            head,
            chain_verified: verified.is_ok(),
            verify_error: verified.err().map(|e| e.to_string()),
        })
    }

    fn existing_or_deleted(&self, tenant: &str) -> Result<(), ApiError> {
        match self.store.tenant(tenant)? {
            Some(_) => Ok(()),
            None => Err(ApiError::new(
                Code::NotFound,
                format!("tenant {tenant} not found"),
            )),
        }
    }

    /// Verifies a stored chain; the verification is audited.
    pub fn verify_chain(&self, chain: &str) -> Result<Result<(), String>, ApiError> {
        if chain != PLATFORM_CHAIN {
            self.existing_or_deleted(chain)?;
        }
        let result = self.store.verify_chain(chain)?.map_err(|e| e.to_string());
        self.audit(
            chain,
            ADMIN,
            "audit.verify",
            chain,
            if result.is_ok() { "ok" } else { "error" },
            serde_json::json!({ "error": result.as_ref().err() }),
        );
        Ok(result)
    }

    /// Every worker the store knows, with its health: `up` or `suspect` with its latest
    /// heartbeat's figures while connected, `down` (figures absent) otherwise; and how many
    /// tenants are placed on it.
    pub fn workers(&self) -> Result<Vec<WorkerView>, ApiError> {
        let health = self.hub.health();
        let placements = self.store.placements()?;
        Ok(self
            .store
            .list_workers()?
            .into_iter()
            .map(|row| {
                let placed_tenants = placements.iter().filter(|p| p.worker == row.id).count();
                let live = health.iter().find(|h| h.id == row.id);
                WorkerView::new(row, live, placed_tenants)
            })
            .collect())
    }

    /// Every placement, with the move of its tenant in progress, if any.
    pub fn placements(&self) -> Result<Vec<PlacementView>, ApiError> {
        let moves = self.store.moves()?;
        let replicas = self.store.all_replicas()?;
        Ok(self
            .store
            .placements()?
            .into_iter()
            .map(|p| {
                let moving = moves
                    .iter()
                    .find(|m| m.tenant == p.tenant)
                    .map(|m| MoveView {
                        from: m.from.clone(),
                        to: m.to.clone(),
                        state: m.state.as_str(),
                        started_ms: m.started_ms,
                        progress: self.moving.progress(&p.tenant),
                    });
                let replicas = replicas
                    .iter()
                    .filter(|r| r.tenant == p.tenant)
                    .map(|r| ReplicaView {
                        worker: r.worker.clone(),
                        state: r.state.as_str(),
                        since_ms: r.since_ms,
                    })
                    .collect();
                PlacementView {
                    tenant: p.tenant,
                    worker: p.worker,
                    epoch: p.epoch,
                    moving,
                    replicas,
                }
            })
            .collect())
    }
}
