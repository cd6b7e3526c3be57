//! Workers and placement: which worker holds each tenant, under which fencing epoch.
//!
//! The epoch counter is `tenants.placement_epoch`, not the placement row, so removing a placement
//! never lets a later epoch repeat an earlier one: a worker that was cut off and comes back with an
//! old epoch is always behind (DESIGN.md section 6).

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::json;

use super::{
    Actor, Error, Placement, Result, Store, WorkerRow, check_ident, from_sql_int, shown, tenant,
    to_sql_int,
};

/// Longest worker id, in bytes.
const MAX_WORKER_ID: usize = 128;
/// Longest version string, in bytes.
const MAX_VERSION: usize = 64;

fn decode_placement(row: &Row<'_>) -> rusqlite::Result<(String, String, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn into_placement((tenant, worker, epoch): (String, String, i64)) -> Result<Placement> {
    let epoch = from_sql_int(&format!("placement epoch of tenant {tenant}"), epoch)?;
    Ok(Placement {
        tenant,
        worker,
        epoch,
    })
}

pub(super) fn load(conn: &Connection, tenant: &str) -> Result<Option<Placement>> {
    conn.query_row(
        "SELECT tenant, worker, epoch FROM placements WHERE tenant = ?1",
        [tenant],
        decode_placement,
    )
    .optional()?
    .map(into_placement)
    .transpose()
}

fn query(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Placement>> {
    let mut stmt = conn.prepare(sql)?;
    let raws = stmt
        .query_map(params, decode_placement)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(into_placement).collect()
}

/// Hands out the tenant's next epoch and records it as the highest so far.
pub(super) fn next_epoch(conn: &Connection, tenant: &str) -> Result<u64> {
    // The placement row's epoch is included in case the counter was ever behind it: the new epoch
    // must exceed every epoch a worker may still hold.
    let last: i64 = conn.query_row(
        "SELECT max(t.placement_epoch, coalesce(p.epoch, 0))
         FROM tenants t LEFT JOIN placements p ON p.tenant = t.id
         WHERE t.id = ?1",
        [tenant],
        |row| row.get(0),
    )?;
    let next = last
        .checked_add(1)
        .ok_or_else(|| Error::Corrupt(format!("placement epoch of tenant {tenant} overflowed")))?;
    conn.execute(
        "UPDATE tenants SET placement_epoch = ?2 WHERE id = ?1",
        params![tenant, next],
    )?;
    from_sql_int(&format!("placement epoch of tenant {tenant}"), next)
}

/// Moves a tenant's epoch on inside a caller's transaction (pause, delete): its placement, if
/// any, takes the new epoch, so every assignment under an older one is stale. Answers the new
/// epoch. The caller's audit row records it.
pub(crate) fn fence(conn: &Connection, tenant: &str) -> Result<u64> {
    let epoch = next_epoch(conn, tenant)?;
    conn.execute(
        "UPDATE placements SET epoch = ?2 WHERE tenant = ?1",
        params![tenant, to_sql_int("epoch", epoch)?],
    )?;
    Ok(epoch)
}

impl Store {
    /// Records a worker's hello (insert or update). Not audited: it says nothing about
    /// security (the connection's admission is audited where it is refused). `last_seen_ms` never moves backwards, so a delayed
    /// heartbeat cannot make a live worker look stale.
    pub fn record_worker(
        &self,
        id: &str,
        version: &str,
        memory_budget_bytes: u64,
        now_ms: u64,
    ) -> Result<()> {
        check_ident("worker id", id, MAX_WORKER_ID)?;
        check_ident("worker version", version, MAX_VERSION)?;
        let budget = to_sql_int("memory budget", memory_budget_bytes)?;
        let now = to_sql_int("time", now_ms)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO workers (id, last_seen_ms, version, memory_budget_bytes)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET
                     last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
                     version = excluded.version,
                     memory_budget_bytes = excluded.memory_budget_bytes",
                params![id, now, version, budget],
            )?;
            Ok(())
        })
    }

    /// Records that a known worker was seen at `now_ms` (its connection ended). `last_seen_ms`
    /// never moves backwards.
    pub fn worker_seen(&self, id: &str, now_ms: u64) -> Result<()> {
        let now = to_sql_int("time", now_ms)?;
        self.write(|tx| {
            tx.execute(
                "UPDATE workers SET last_seen_ms = max(last_seen_ms, ?2) WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        })
    }

    /// Every worker ever heard from, by id.
    pub fn list_workers(&self) -> Result<Vec<WorkerRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, last_seen_ms, version, memory_budget_bytes, draining_since_ms
                 FROM workers ORDER BY id",
            )?;
            let raws = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter()
                .map(|(id, last_seen_ms, version, budget, draining)| {
                    Ok(WorkerRow {
                        last_seen_ms: from_sql_int(
                            &format!("last_seen_ms of worker {id}"),
                            last_seen_ms,
                        )?,
                        memory_budget_bytes: from_sql_int(
                            &format!("memory budget of worker {id}"),
                            budget,
                        )?,
                        draining_since_ms: draining
                            .map(|ms| from_sql_int(&format!("drain start of worker {id}"), ms))
                            .transpose()?,
                        id,
                        version,
                    })
                })
                .collect()
        })
    }

    /// Starts (`true`) or stops draining a known worker: a draining worker takes no new tenant,
    /// and its tenants are moved off. Audited in the platform chain as `worker.drain` or
    /// `worker.undrain` (also when it changes nothing, which says so).
    pub fn set_draining(&self, actor: &Actor, id: &str, draining: bool) -> Result<()> {
        let now = to_sql_int("time", self.now())?;
        self.write(|tx| {
            let current: Option<Option<i64>> = tx
                .query_row(
                    "SELECT draining_since_ms FROM workers WHERE id = ?1",
                    [id],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(current) = current else {
                return Err(Error::NotFound(format!("worker {} not found", shown(id))));
            };
            let changed = current.is_some() != draining;
            if changed {
                tx.execute(
                    "UPDATE workers SET draining_since_ms = ?2 WHERE id = ?1",
                    params![id, draining.then_some(now)],
                )?;
            }
            let action = if draining {
                "worker.drain"
            } else {
                "worker.undrain"
            };
            let details = json!({ "worker": id, "changed": changed });
            self.append_in(
                tx,
                crate::api::admin::PLATFORM_CHAIN,
                self.draft(actor, action, id, details),
            )?;
            Ok(())
        })
    }

    /// The placement of `tenant`, if it has one.
    pub fn placement(&self, tenant: &str) -> Result<Option<Placement>> {
        self.read(|conn| load(conn, tenant))
    }

    /// Every placement, by tenant.
    pub fn placements(&self) -> Result<Vec<Placement>> {
        self.read(|conn| {
            query(
                conn,
                "SELECT tenant, worker, epoch FROM placements ORDER BY tenant",
                [],
            )
        })
    }

    /// The placements on `worker`, by tenant.
    pub fn placements_of(&self, worker: &str) -> Result<Vec<Placement>> {
        self.read(|conn| {
            query(
                conn,
                "SELECT tenant, worker, epoch FROM placements WHERE worker = ?1 ORDER BY tenant",
                [worker],
            )
        })
    }

    /// Assigns (or moves) a live tenant to a known worker under a new epoch: one more than any
    /// epoch the tenant ever had, starting at 1. Audited as `placement.assign`.
    pub fn place(&self, actor: &Actor, tenant: &str, worker: &str) -> Result<Placement> {
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let known: Option<i64> = tx
                .query_row("SELECT 1 FROM workers WHERE id = ?1", [worker], |row| {
                    row.get(0)
                })
                .optional()?;
            if known.is_none() {
                return Err(Error::NotFound(format!("worker {} not found", shown(worker))));
            }
            super::replicas::check_no_copy(tx, tenant, worker)?;
            let previous = load(tx, tenant)?;
            let epoch = next_epoch(tx, tenant)?;
            tx.execute(
                "INSERT INTO placements (tenant, worker, epoch) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant) DO UPDATE SET worker = excluded.worker, epoch = excluded.epoch",
                params![tenant, worker, to_sql_int("epoch", epoch)?],
            )?;
            let details = json!({
                "worker": worker,
                "epoch": epoch,
                "previous_worker": previous.map(|p| p.worker),
            });
            self.append_in(tx, tenant, self.draft(actor, "placement.assign", tenant, details))?;
            Ok(Placement {
                tenant: tenant.to_owned(),
                worker: worker.to_owned(),
                epoch,
            })
        })
    }

    /// Keeps a tenant on its worker under a new epoch (on resume). [`Error::NotFound`] if it has
    /// no placement. Audited as `placement.epoch`.
    pub fn bump_epoch(&self, actor: &Actor, tenant: &str) -> Result<Placement> {
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let Some(mut placement) = load(tx, tenant)? else {
                return Err(Error::NotFound(format!("tenant {tenant} has no placement")));
            };
            placement.epoch = next_epoch(tx, tenant)?;
            tx.execute(
                "UPDATE placements SET epoch = ?2 WHERE tenant = ?1",
                params![tenant, to_sql_int("epoch", placement.epoch)?],
            )?;
            let details = json!({ "worker": placement.worker, "epoch": placement.epoch });
            self.append_in(
                tx,
                tenant,
                self.draft(actor, "placement.epoch", tenant, details),
            )?;
            Ok(placement)
        })
    }

    /// Removes a live tenant's placement (its epoch counter stays) and returns what it was.
    /// [`Error::NotFound`] if it has none. Audited as `placement.remove`.
    pub fn unplace(&self, actor: &Actor, tenant: &str) -> Result<Placement> {
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let Some(placement) = load(tx, tenant)? else {
                return Err(Error::NotFound(format!("tenant {tenant} has no placement")));
            };
            tx.execute("DELETE FROM placements WHERE tenant = ?1", [tenant])?;
            let replicas: Vec<String> = super::replicas::of(tx, tenant)?
                .into_iter()
                .map(|r| r.worker)
                .collect();
            tx.execute("DELETE FROM replicas WHERE tenant = ?1", [tenant])?;
            let details = json!({
                "worker": placement.worker, "epoch": placement.epoch, "replicas": replicas,
            });
            self.append_in(
                tx,
                tenant,
                self.draft(actor, "placement.remove", tenant, details),
            )?;
            Ok(placement)
        })
    }
}
