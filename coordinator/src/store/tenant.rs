//! Tenants: create, tier changes, pause and resume, delete.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::json;

use super::{
    Actor, Error, PLATFORM_CHAIN, Result, Store, Tenant, check_tenant_id, check_tier, from_sql_int,
    shown, to_sql_int,
};

/// The tier of a paused tenant.
pub(crate) const PAUSED: &str = "paused";

/// Where a tenant's files are (`Tenant::storage`).
pub(crate) const HOT: &str = "hot";
/// Moving to cold storage after a pause.
pub(crate) const COOLING: &str = "cooling";
/// On cold storage.
pub(crate) const COLD: &str = "cold";
/// Moving back for a resume.
pub(crate) const WARMING: &str = "warming";

const COLUMNS: &str = "id, tier, paused_from, created_ms, deleted_ms IS NOT NULL, storage";

type Raw = (String, String, Option<String>, i64, bool, String);

fn decode(row: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

/// The tenant `id`, deleted or not.
pub(crate) fn load(conn: &Connection, id: &str) -> Result<Option<Tenant>> {
    let raw = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM tenants WHERE id = ?1"),
            [id],
            decode,
        )
        .optional()?;
    raw.map(into_tenant).transpose()
}

/// The tenant `id` if it exists and is not deleted; otherwise [`Error::NotFound`].
pub(crate) fn live(conn: &Connection, id: &str) -> Result<Tenant> {
    match load(conn, id)? {
        Some(tenant) if !tenant.deleted => Ok(tenant),
        Some(_) => Err(Error::NotFound(format!("tenant {id} was deleted"))),
        None => Err(Error::NotFound(format!("tenant {} not found", shown(id)))),
    }
}

fn into_tenant(raw: Raw) -> Result<Tenant> {
    let (id, tier, paused_from, created_ms, deleted, storage) = raw;
    let created_ms = from_sql_int(&format!("created_ms of tenant {id}"), created_ms)?;
    Ok(Tenant {
        id,
        tier,
        paused_from,
        created_ms,
        deleted,
        storage,
    })
}

impl Store {
    /// Creates a tenant. Its first audit row goes to its own chain and to the platform chain.
    /// [`Error::AlreadyExists`] if the id was ever used, deleted tenants included.
    pub fn create_tenant(&self, actor: &Actor, id: &str, tier: &str) -> Result<Tenant> {
        self.create_tenant_then(actor, id, tier, || Ok(()))
    }

    /// As [`Store::create_tenant`], running `before_commit` once the tenant row and its audit rows
    /// are written and before they commit: its error rolls the creation back. The coordinator
    /// makes the tenant's KEK there, so a refused id never leaves a key file behind.
    pub fn create_tenant_then(
        &self,
        actor: &Actor,
        id: &str,
        tier: &str,
        before_commit: impl FnOnce() -> Result<()>,
    ) -> Result<Tenant> {
        check_tenant_id(id)?;
        check_tier(tier)?;
        let now = self.now();
        let created_ms = to_sql_int("time", now)?;
        self.write(|tx| {
            if let Some(old) = load(tx, id)? {
                return Err(Error::AlreadyExists(if old.deleted {
                    format!("tenant id {id} belonged to a deleted tenant; ids are never reused")
                } else {
                    format!("tenant {id} already exists")
                }));
            }
            tx.execute(
                "INSERT INTO tenants (id, tier, paused_from, created_ms, deleted_ms, placement_epoch)
                 VALUES (?1, ?2, NULL, ?3, NULL, 0)",
                params![id, tier, created_ms],
            )?;
            let draft = self.draft(actor, "tenant.create", id, json!({ "tier": tier }));
            self.append_in(tx, id, draft.clone())?;
            self.append_in(tx, PLATFORM_CHAIN, draft)?;
            before_commit()?;
            Ok(Tenant {
                id: id.to_owned(),
                tier: tier.to_owned(),
                paused_from: None,
                created_ms: now,
                deleted: false,
                storage: HOT.to_owned(),
            })
        })
    }

    /// The tenant `id`; deleted tenants are returned with `deleted = true`.
    pub fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        self.read(|conn| load(conn, id))
    }

    /// Every tenant that is not deleted, by id.
    pub fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM tenants WHERE deleted_ms IS NULL ORDER BY id"
            ))?;
            let raws = stmt
                .query_map([], decode)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(into_tenant).collect()
        })
    }

    /// Moves a tenant to another tier. A paused tenant must be resumed first, and `paused` is
    /// reached only through [`Store::pause_tenant`].
    pub fn set_tier(&self, actor: &Actor, id: &str, tier: &str) -> Result<Tenant> {
        check_tier(tier)?;
        self.write(|tx| {
            let mut tenant = live(tx, id)?;
            if tenant.tier == PAUSED {
                return Err(Error::Invalid(format!(
                    "tenant {id} is paused; resume it before changing its tier"
                )));
            }
            tx.execute(
                "UPDATE tenants SET tier = ?2 WHERE id = ?1",
                params![id, tier],
            )?;
            let details = json!({ "from": tenant.tier, "to": tier });
            self.append_in(tx, id, self.draft(actor, "tenant.set_tier", id, details))?;
            tenant.tier = tier.to_owned();
            Ok(tenant)
        })
    }

    /// Pauses a tenant: its tier becomes `paused` and the previous tier is remembered for
    /// [`Store::resume_tenant`]. Pausing a paused tenant is [`Error::Invalid`]. A placed tenant's
    /// fencing epoch moves on in the same transaction, so a request that read the placement
    /// before the pause cannot assign the tenant again under an epoch the key service honours.
    pub fn pause_tenant(&self, actor: &Actor, id: &str) -> Result<Tenant> {
        self.write(|tx| {
            let mut tenant = live(tx, id)?;
            if tenant.tier == PAUSED {
                return Err(Error::Invalid(format!("tenant {id} is already paused")));
            }
            tx.execute(
                "UPDATE tenants SET tier = ?2, paused_from = tier, storage = ?3 WHERE id = ?1",
                params![id, PAUSED, COOLING],
            )?;
            let epoch = super::placement::fence(tx, id)?;
            let details = json!({ "from": tenant.tier, "epoch": epoch });
            self.append_in(tx, id, self.draft(actor, "tenant.pause", id, details))?;
            tenant.paused_from = Some(std::mem::replace(&mut tenant.tier, PAUSED.into()));
            tenant.storage = COOLING.into();
            Ok(tenant)
        })
    }

    /// Resumes a paused tenant at the tier it had. [`Error::Invalid`] if it is not paused.
    pub fn resume_tenant(&self, actor: &Actor, id: &str) -> Result<Tenant> {
        self.write(|tx| {
            let mut tenant = live(tx, id)?;
            if tenant.tier != PAUSED {
                return Err(Error::Invalid(format!("tenant {id} is not paused")));
            }
            let Some(tier) = tenant.paused_from.take() else {
                return Err(Error::Corrupt(format!(
                    "tenant {id} is paused but its previous tier is missing"
                )));
            };
            tx.execute(
                "UPDATE tenants SET tier = paused_from, paused_from = NULL, storage = ?2
                 WHERE id = ?1",
                params![id, HOT],
            )?;
            let details = json!({ "to": tier });
            self.append_in(tx, id, self.draft(actor, "tenant.resume", id, details))?;
            tenant.tier = tier;
            tenant.storage = HOT.into();
            Ok(tenant)
        })
    }

    /// Records where a paused tenant's files are now (`cooling` -> `cold`, or `cold`/`cooling` ->
    /// `warming`), with its audit row (`tenant.storage`). [`Error::Invalid`] if the tenant is not
    /// paused. Answers the tenant as it is now.
    pub fn set_storage(&self, actor: &Actor, id: &str, storage: &str) -> Result<Tenant> {
        self.write(|tx| {
            let mut tenant = live(tx, id)?;
            if tenant.tier != PAUSED {
                return Err(Error::Invalid(format!("tenant {id} is not paused")));
            }
            if tenant.storage == storage {
                return Ok(tenant);
            }
            tx.execute(
                "UPDATE tenants SET storage = ?2 WHERE id = ?1",
                params![id, storage],
            )?;
            let details = json!({ "from": tenant.storage, "to": storage });
            self.append_in(tx, id, self.draft(actor, "tenant.storage", id, details))?;
            tenant.storage = storage.to_owned();
            Ok(tenant)
        })
    }

    /// Live tenants whose files are moving (`cooling` or `warming`).
    pub fn tenants_moving_storage(&self) -> Result<Vec<Tenant>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM tenants
                 WHERE deleted_ms IS NULL AND storage IN ('cooling', 'warming') ORDER BY id"
            ))?;
            let raws = stmt
                .query_map([], decode)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(into_tenant).collect()
        })
    }

    /// Deletes a tenant: marks it deleted (the row and its id stay, so the id is never reused),
    /// revokes all its keys and removes its placement (its epoch counter stays). Writes one row to
    /// the platform chain and a final row to the tenant's chain.
    pub fn delete_tenant(&self, actor: &Actor, id: &str) -> Result<()> {
        let now = self.now();
        let now_sql = to_sql_int("time", now)?;
        self.write(|tx| {
            live(tx, id)?;
            let revoked: Vec<String> = {
                let mut stmt = tx.prepare(
                    "UPDATE api_keys SET revoked_ms = ?2 WHERE tenant = ?1 AND revoked_ms IS NULL
                     RETURNING key_id",
                )?;
                let mut ids = stmt
                    .query_map(params![id, now_sql], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                // RETURNING gives no order; the audit row should not depend on the query plan.
                ids.sort();
                ids
            };
            // The epoch counter moves on too, so nothing that holds the last epoch stays current.
            let epoch = super::placement::fence(tx, id)?;
            let placement: Option<(String, i64)> = tx
                .query_row(
                    "DELETE FROM placements WHERE tenant = ?1 RETURNING worker, epoch",
                    [id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let replicas: Vec<String> = super::replicas::of(tx, id)?
                .into_iter()
                .map(|r| r.worker)
                .collect();
            tx.execute("DELETE FROM replicas WHERE tenant = ?1", [id])?;
            tx.execute(
                "UPDATE tenants SET deleted_ms = ?2 WHERE id = ?1",
                params![id, now_sql],
            )?;
            let placement =
                placement.map(|(worker, epoch)| json!({ "worker": worker, "epoch": epoch }));
            let details = json!({
                "revoked_keys": revoked, "placement": placement, "replicas": replicas,
                "epoch": epoch,
            });
            let draft = self.draft(actor, "tenant.delete", id, details);
            self.append_in(tx, id, draft.clone())?;
            self.append_in(tx, PLATFORM_CHAIN, draft)?;
            Ok(())
        })
    }
}
