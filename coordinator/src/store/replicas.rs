//! A tenant's copies beyond the one its placement names (tiers with `replicas` > 1).
//!
//! The placement's worker is the *primary* copy, and it is always live: when it misses a write,
//! a live replica takes its place in the same transaction ([`Store::mark_stale`]). Replicas are
//! `live` (every acknowledged write is durable on them) or `stale` (they missed one, or may
//! have, and are neither read from nor written to until they caught up from a live copy). Every
//! change moves the tenant's epoch on and is audited in the tenant's chain (`replica.*`) in the
//! same transaction. A write is acknowledged only after the copies that failed it are recorded
//! stale, so a copy recorded live holds every acknowledged write.

use rusqlite::{Transaction, params};
use serde_json::json;

use super::placement::{load, next_epoch};
use super::{Actor, Error, Placement, Result, Store, from_sql_int, shown, tenant, to_sql_int};

/// Whether a replica holds every acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// It holds every acknowledged write: read from and written to.
    Live,
    /// It missed a write (or may have): catches up before it is used again.
    Stale,
}

impl CopyState {
    /// The state's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::Live => "live",
            CopyState::Stale => "stale",
        }
    }

    fn parse(raw: &str) -> Result<CopyState> {
        match raw {
            "live" => Ok(CopyState::Live),
            "stale" => Ok(CopyState::Stale),
            other => Err(Error::Corrupt(format!("unknown replica state {other:?}"))),
        }
    }
}

/// One replica of a tenant (a copy other than its placement's worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    /// The tenant.
    pub tenant: String,
    /// The worker holding the copy.
    pub worker: String,
    /// Whether it holds every acknowledged write.
    pub state: CopyState,
    /// Since when it is in that state, Unix ms.
    pub since_ms: u64,
}

const COLUMNS: &str = "SELECT tenant, worker, state, since_ms FROM replicas";

fn query(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<ReplicaRow>> {
    let mut stmt = conn.prepare(sql)?;
    let raws = stmt
        .query_map(params, |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter()
        .map(|(tenant, worker, state, since)| {
            Ok(ReplicaRow {
                state: CopyState::parse(&state)?,
                since_ms: from_sql_int(&format!("replica of {tenant} on {worker}"), since)?,
                tenant,
                worker,
            })
        })
        .collect()
}

pub(super) fn of(conn: &rusqlite::Connection, tenant: &str) -> Result<Vec<ReplicaRow>> {
    query(
        conn,
        &format!("{COLUMNS} WHERE tenant = ?1 ORDER BY worker"),
        [tenant],
    )
}

/// Refuses `worker` as a new home for one of `tenant`'s copies if it holds one already.
pub(super) fn check_no_copy(tx: &Transaction<'_>, tenant: &str, worker: &str) -> Result<()> {
    if of(tx, tenant)?.iter().any(|r| r.worker == worker) {
        return Err(Error::Invalid(format!(
            "worker {} holds a replica of tenant {tenant} already",
            shown(worker)
        )));
    }
    Ok(())
}

fn bump(tx: &Transaction<'_>, tenant: &str, placement: &mut Placement) -> Result<()> {
    placement.epoch = next_epoch(tx, tenant)?;
    tx.execute(
        "UPDATE placements SET epoch = ?2 WHERE tenant = ?1",
        params![tenant, to_sql_int("epoch", placement.epoch)?],
    )?;
    Ok(())
}

fn placed(tx: &Transaction<'_>, tenant: &str) -> Result<Placement> {
    load(tx, tenant)?.ok_or_else(|| Error::NotFound(format!("tenant {tenant} has no placement")))
}

impl Store {
    /// The replicas of `tenant`, by worker.
    pub fn replicas(&self, tenant: &str) -> Result<Vec<ReplicaRow>> {
        self.read(|conn| of(conn, tenant))
    }

    /// Every replica, by tenant and worker.
    pub fn all_replicas(&self) -> Result<Vec<ReplicaRow>> {
        self.read(|conn| query(conn, &format!("{COLUMNS} ORDER BY tenant, worker"), []))
    }

    /// Adds a replica of a placed live tenant on a known worker that holds no copy of it: `live`
    /// only if `fresh` and the tenant is at its first placement (epoch 1; the caller placed it a
    /// moment ago and has sent it nothing, so no copy holds anything), `stale` otherwise (it
    /// catches up first). Moves the epoch on. Audited as `replica.add`.
    pub fn add_replica(
        &self,
        actor: &Actor,
        tenant: &str,
        worker: &str,
        fresh: bool,
    ) -> Result<Placement> {
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let known: bool = tx.query_row(
                "SELECT count(*) FROM workers WHERE id = ?1",
                [worker],
                |row| row.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !known {
                return Err(Error::NotFound(format!(
                    "worker {} not found",
                    shown(worker)
                )));
            }
            let mut placement = placed(tx, tenant)?;
            if placement.worker == worker {
                return Err(Error::Invalid(format!(
                    "worker {} holds tenant {tenant}'s primary copy",
                    shown(worker)
                )));
            }
            check_no_copy(tx, tenant, worker)?;
            // Files left there by an earlier copy are this copy's to replace (or reuse).
            super::leftovers::clear(tx, tenant, worker)?;
            // A tenant at epoch 1 may well have been written to (its placement never changed):
            // only the caller knows that nothing was sent yet.
            let state = if fresh && placement.epoch == 1 {
                CopyState::Live
            } else {
                CopyState::Stale
            };
            bump(tx, tenant, &mut placement)?;
            tx.execute(
                "INSERT INTO replicas (tenant, worker, state, since_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    tenant,
                    worker,
                    state.as_str(),
                    to_sql_int("time", self.now())?
                ],
            )?;
            let details = json!({
                "worker": worker, "state": state.as_str(), "epoch": placement.epoch,
            });
            self.append_in(
                tx,
                tenant,
                self.draft(actor, "replica.add", tenant, details),
            )?;
            Ok(placement)
        })
    }

    /// Records that the copies on `workers` missed a write (or may have): replicas among them
    /// become stale, and if the primary is among them a live replica not among them becomes the
    /// primary and the old one a stale replica. With no such replica the primary stays (the only
    /// copy that may hold everything; the caller answers an error). Moves the epoch on and audits
    /// `replica.stale` with `reason`, if anything changed. Answers the placement now.
    pub fn mark_stale(
        &self,
        actor: &Actor,
        tenant: &str,
        workers: &[String],
        reason: &str,
    ) -> Result<Placement> {
        self.write(|tx| {
            let mut placement = placed(tx, tenant)?;
            let replicas = of(tx, tenant)?;
            let now = to_sql_int("time", self.now())?;
            let mut staled = Vec::new();
            for r in &replicas {
                if r.state == CopyState::Live && workers.contains(&r.worker) {
                    tx.execute(
                        "UPDATE replicas SET state = 'stale', since_ms = ?3
                         WHERE tenant = ?1 AND worker = ?2",
                        params![tenant, r.worker, now],
                    )?;
                    staled.push(r.worker.clone());
                }
            }
            let mut promoted = None;
            if workers.contains(&placement.worker)
                && let Some(new) = replicas
                    .iter()
                    .find(|r| r.state == CopyState::Live && !workers.contains(&r.worker))
            {
                tx.execute(
                    "DELETE FROM replicas WHERE tenant = ?1 AND worker = ?2",
                    params![tenant, new.worker],
                )?;
                tx.execute(
                    "INSERT INTO replicas (tenant, worker, state, since_ms)
                     VALUES (?1, ?2, 'stale', ?3)",
                    params![tenant, placement.worker, now],
                )?;
                tx.execute(
                    "UPDATE placements SET worker = ?2 WHERE tenant = ?1",
                    params![tenant, new.worker],
                )?;
                staled.push(placement.worker.clone());
                promoted = Some(new.worker.clone());
                placement.worker = new.worker.clone();
            }
            if staled.is_empty() {
                return Ok(placement);
            }
            bump(tx, tenant, &mut placement)?;
            let details = json!({
                "workers": staled, "primary": placement.worker, "promoted": promoted,
                "reason": reason, "epoch": placement.epoch,
            });
            let mut draft = self.draft(actor, "replica.stale", tenant, details);
            draft.outcome = "error".into();
            self.append_in(tx, tenant, draft)?;
            Ok(placement)
        })
    }

    /// Records that the stale replica on `worker` caught up (holds every acknowledged write):
    /// live again. Moves the epoch on. Audited as `replica.live` with `details`.
    pub fn mark_live(
        &self,
        actor: &Actor,
        tenant: &str,
        worker: &str,
        mut details: serde_json::Value,
    ) -> Result<Placement> {
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let mut placement = placed(tx, tenant)?;
            let changed = tx.execute(
                "UPDATE replicas SET state = 'live', since_ms = ?3
                 WHERE tenant = ?1 AND worker = ?2 AND state = 'stale'",
                params![tenant, worker, to_sql_int("time", self.now())?],
            )?;
            if changed == 0 {
                return Err(Error::Invalid(format!(
                    "tenant {tenant} has no stale replica on worker {}",
                    shown(worker)
                )));
            }
            bump(tx, tenant, &mut placement)?;
            details["worker"] = worker.into();
            details["epoch"] = placement.epoch.into();
            self.append_in(
                tx,
                tenant,
                self.draft(actor, "replica.live", tenant, details),
            )?;
            Ok(placement)
        })
    }

    /// Makes the live replica on `worker` the primary; the primary becomes a live replica. Moves
    /// the epoch on. Audited as `replica.promote` with `reason`.
    pub fn make_primary(
        &self,
        actor: &Actor,
        tenant: &str,
        worker: &str,
        reason: &str,
    ) -> Result<Placement> {
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let mut placement = placed(tx, tenant)?;
            let is_live = of(tx, tenant)?
                .iter()
                .any(|r| r.worker == worker && r.state == CopyState::Live);
            if !is_live {
                return Err(Error::Invalid(format!(
                    "tenant {tenant} has no live replica on worker {}",
                    shown(worker)
                )));
            }
            let now = to_sql_int("time", self.now())?;
            tx.execute(
                "DELETE FROM replicas WHERE tenant = ?1 AND worker = ?2",
                params![tenant, worker],
            )?;
            tx.execute(
                "INSERT INTO replicas (tenant, worker, state, since_ms) VALUES (?1, ?2, 'live', ?3)",
                params![tenant, placement.worker, now],
            )?;
            tx.execute(
                "UPDATE placements SET worker = ?2 WHERE tenant = ?1",
                params![tenant, worker],
            )?;
            let previous = std::mem::replace(&mut placement.worker, worker.to_owned());
            bump(tx, tenant, &mut placement)?;
            let details = json!({
                "primary": worker, "previous": previous, "reason": reason,
                "epoch": placement.epoch,
            });
            self.append_in(
                tx,
                tenant,
                self.draft(actor, "replica.promote", tenant, details),
            )?;
            Ok(placement)
        })
    }

    /// Removes the replica of `tenant` on `worker`; its files are recorded as a leftover copy,
    /// to delete (`store::leftovers`).
    /// Moves the epoch on. Audited as `replica.remove` with `reason`.
    pub fn remove_replica(
        &self,
        actor: &Actor,
        tenant: &str,
        worker: &str,
        reason: &str,
    ) -> Result<Placement> {
        self.write(|tx| {
            let mut placement = placed(tx, tenant)?;
            let changed = tx.execute(
                "DELETE FROM replicas WHERE tenant = ?1 AND worker = ?2",
                params![tenant, worker],
            )?;
            if changed == 0 {
                return Err(Error::NotFound(format!(
                    "tenant {tenant} has no replica on worker {}",
                    shown(worker)
                )));
            }
            bump(tx, tenant, &mut placement)?;
            super::leftovers::record(tx, tenant, worker, reason, self.now())?;
            let details = json!({ "worker": worker, "reason": reason, "epoch": placement.epoch });
            self.append_in(
                tx,
                tenant,
                self.draft(actor, "replica.remove", tenant, details),
            )?;
            Ok(placement)
        })
    }

    /// At start: every live replica of every tenant becomes stale (audited per tenant). A write
    /// the coordinator was sending when it stopped may have reached some copies and not others,
    /// and nothing says which; the primary is kept as the reference, and the others copy it.
    /// Answers how many replicas changed.
    pub fn stale_all_replicas(&self, actor: &Actor) -> Result<usize> {
        let live: Vec<ReplicaRow> = self
            .all_replicas()?
            .into_iter()
            .filter(|r| r.state == CopyState::Live)
            .collect();
        let mut tenants: Vec<&str> = live.iter().map(|r| r.tenant.as_str()).collect();
        tenants.dedup();
        for tenant in tenants {
            let workers: Vec<String> = live
                .iter()
                .filter(|r| r.tenant == tenant)
                .map(|r| r.worker.clone())
                .collect();
            self.mark_stale(
                actor,
                tenant,
                &workers,
                "the coordinator restarted; a write in flight may have reached only some copies",
            )?;
        }
        Ok(live.len())
    }
}
