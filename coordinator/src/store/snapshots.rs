//! Snapshots kept in the snapshot store (`crate::api::snapshots`), and the KEK versions a
//! rotation retired but kept because a snapshot still needs them.

use rusqlite::{OptionalExtension, params};
use serde_json::json;

use super::{Actor, Error, Result, Store, from_sql_int, tenant, to_sql_int};
use crate::audit::AuditKey;

/// A snapshot's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// Its id (`snap-<hex>`), also its archive's file name.
    pub id: String,
    /// The tenant it is of.
    pub tenant: String,
    /// When it was taken, Unix ms.
    pub created_ms: u64,
    /// `admin` (on request), `schedule`, `owner` (from the dashboard) or `upload`.
    pub origin: String,
    /// Files in it.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The archive's size in bytes.
    pub archive_bytes: u64,
    /// The tenant's KEK versions when it was taken.
    pub kek_versions: Vec<u32>,
}

const COLUMNS: &str = "id, tenant, created_ms, origin, files, bytes, archive_bytes, kek_versions";

fn decode(row: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

type Raw = (String, String, i64, String, i64, i64, i64, String);

fn into_row(raw: Raw) -> Result<SnapshotRow> {
    let (id, tenant, created, origin, files, bytes, archive, versions) = raw;
    Ok(SnapshotRow {
        id,
        tenant,
        created_ms: from_sql_int("time", created)?,
        origin,
        files: from_sql_int("files", files)?,
        bytes: from_sql_int("bytes", bytes)?,
        archive_bytes: from_sql_int("bytes", archive)?,
        kek_versions: serde_json::from_str(&versions)
            .map_err(|e| Error::Corrupt(format!("a snapshot's KEK versions: {e}")))?,
    })
}

impl Store {
    /// The key snapshot archives are signed with (the audit key).
    pub(crate) fn audit_key(&self) -> &AuditKey {
        &self.audit_key
    }

    /// Bytes of every recorded archive in the snapshot store.
    pub fn snapshot_store_bytes(&self) -> Result<u64> {
        self.read(|conn| {
            let total: i64 = conn.query_row(
                "SELECT COALESCE(SUM(archive_bytes), 0) FROM snapshots",
                [],
                |r| r.get(0),
            )?;
            from_sql_int("bytes", total)
        })
    }

    /// Records a snapshot whose archive is durable, with its audit row (`snapshot.create`).
    pub fn add_snapshot(&self, actor: &Actor, row: &SnapshotRow) -> Result<()> {
        self.write(|tx| {
            tenant::live(tx, &row.tenant)?;
            tx.execute(
                &format!(
                    "INSERT INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    row.id,
                    row.tenant,
                    to_sql_int("time", row.created_ms)?,
                    row.origin,
                    to_sql_int("files", row.files)?,
                    to_sql_int("bytes", row.bytes)?,
                    to_sql_int("bytes", row.archive_bytes)?,
                    serde_json::to_string(&row.kek_versions)
                        .map_err(|e| Error::Invalid(e.to_string()))?,
                ],
            )?;
            let details = json!({
                "snapshot": row.id, "origin": row.origin, "files": row.files,
                "bytes": row.bytes, "kek_versions": row.kek_versions,
            });
            self.append_in(
                tx,
                &row.tenant,
                self.draft(actor, "snapshot.create", &row.tenant, details),
            )?;
            Ok(())
        })
    }

    /// A tenant's snapshots, oldest first.
    pub fn snapshots(&self, tenant: &str) -> Result<Vec<SnapshotRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM snapshots WHERE tenant = ?1 ORDER BY created_ms, id"
            ))?;
            let raws = stmt
                .query_map([tenant], decode)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(into_row).collect()
        })
    }

    /// Every snapshot's id and tenant (the store's sweep at start).
    pub fn all_snapshots(&self) -> Result<Vec<SnapshotRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM snapshots ORDER BY id"))?;
            let raws = stmt
                .query_map([], decode)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(into_row).collect()
        })
    }

    /// The snapshot `id`, whichever tenant's.
    pub fn snapshot(&self, id: &str) -> Result<Option<SnapshotRow>> {
        self.read(|conn| {
            let raw = conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM snapshots WHERE id = ?1"),
                    [id],
                    decode,
                )
                .optional()?;
            raw.map(into_row).transpose()
        })
    }

    /// Forgets a snapshot whose archive is being deleted, with its audit row
    /// (`snapshot.delete`, with `reason`). Answers whether it was recorded.
    pub fn remove_snapshot(&self, actor: &Actor, id: &str, reason: &str) -> Result<bool> {
        self.write(|tx| {
            let tenant: Option<String> = tx
                .query_row(
                    "DELETE FROM snapshots WHERE id = ?1 RETURNING tenant",
                    [id],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(tenant) = tenant else {
                return Ok(false);
            };
            let details = json!({ "snapshot": id, "reason": reason });
            self.append_in(
                tx,
                &tenant,
                self.draft(actor, "snapshot.delete", &tenant, details),
            )?;
            Ok(true)
        })
    }

    /// Forgets every snapshot of a deleted tenant (its archives are deleted, its keys are gone).
    pub fn forget_snapshots_of(&self, tenant: &str) -> Result<usize> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM snapshots WHERE tenant = ?1", [tenant])?;
            tx.execute("DELETE FROM kek_retired WHERE tenant = ?1", [tenant])?;
            Ok(n)
        })
    }

    /// Records KEK versions a rotation would have destroyed but kept for snapshots.
    pub fn retire_keks(&self, tenant: &str, versions: &[u32]) -> Result<()> {
        self.write(|tx| {
            for v in versions {
                tx.execute(
                    "INSERT OR IGNORE INTO kek_retired (tenant, version) VALUES (?1, ?2)",
                    params![tenant, v],
                )?;
            }
            Ok(())
        })
    }

    /// The retired versions of `tenant`'s KEK.
    pub fn retired_keks(&self, tenant: &str) -> Result<Vec<u32>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare("SELECT version FROM kek_retired WHERE tenant = ?1 ORDER BY version")?;
            let versions = stmt
                .query_map([tenant], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<u32>>>()?;
            Ok(versions)
        })
    }

    /// Forgets a retired version once it is destroyed.
    pub fn forget_retired_kek(&self, tenant: &str, version: u32) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM kek_retired WHERE tenant = ?1 AND version = ?2",
                params![tenant, version],
            )?;
            Ok(())
        })
    }
}
