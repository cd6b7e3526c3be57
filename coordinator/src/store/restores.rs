//! Restores under way (`restores`): a row is written before a restore stages anything on its
//! worker and removed, in one transaction with the row that records the restore's outcome, when
//! it ends. A row left by a crash of the coordinator names what the restore was switching to, so
//! the next start can tell whether the switch happened (`crate::api::snapshots::settle`).

use rusqlite::{OptionalExtension, params};

use super::{Actor, Error, Result, Store, from_sql_int, tenant, to_sql_int};
use crate::audit::AuditRow;
use crate::snapshot::FileEntry;

/// A restore under way, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreIntent {
    /// The tenant being restored.
    pub tenant: String,
    /// The snapshot it is restored from.
    pub snapshot: String,
    /// The worker whose files are switched (the tenant's primary).
    pub worker: String,
    /// The snapshot's files: what the worker holds once the switch happened.
    pub files: Vec<FileEntry>,
    /// Whether the `started` row was written (the switch may have been asked for).
    pub started: bool,
    /// When the restore began, Unix ms.
    pub began_ms: u64,
}

type Raw = (String, String, String, String, i64, i64);

fn decode(row: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn into_intent(raw: Raw) -> Result<RestoreIntent> {
    let (tenant, snapshot, worker, files, started, began) = raw;
    Ok(RestoreIntent {
        tenant,
        snapshot,
        worker,
        files: serde_json::from_str(&files)
            .map_err(|e| Error::Corrupt(format!("a restore's file listing: {e}")))?,
        started: started != 0,
        began_ms: from_sql_int("time", began)?,
    })
}

const COLUMNS: &str = "tenant, snapshot, worker, files, started, began_ms";

impl Store {
    /// Records that a restore of `tenant` from `snapshot` onto `worker` begins. Refused while
    /// another restore of the tenant is recorded.
    pub fn begin_restore(
        &self,
        tenant: &str,
        snapshot: &str,
        worker: &str,
        files: &[FileEntry],
    ) -> Result<()> {
        let files = serde_json::to_string(files).map_err(|e| Error::Invalid(e.to_string()))?;
        let began = to_sql_int("time", self.now())?;
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let inserted = tx.execute(
                "INSERT INTO restores (tenant, snapshot, worker, files, started, began_ms) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5) ON CONFLICT (tenant) DO NOTHING",
                params![tenant, snapshot, worker, files, began],
            )?;
            if inserted == 0 {
                return Err(Error::AlreadyExists(format!(
                    "a restore of tenant {tenant} is under way or waits to be settled"
                )));
            }
            Ok(())
        })
    }

    /// Marks the restore of `tenant` started and writes its `started` row, in one transaction:
    /// from here a crash may leave the switch done or not, and the next start finds out which.
    pub fn restore_started(
        &self,
        actor: &Actor,
        tenant: &str,
        details: serde_json::Value,
    ) -> Result<AuditRow> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE restores SET started = 1 WHERE tenant = ?1",
                [tenant],
            )?;
            if updated == 0 {
                return Err(Error::NotFound(format!("no restore of tenant {tenant}")));
            }
            let mut draft = self.draft(actor, "snapshot.restore", tenant, details);
            draft.outcome = "started".into();
            self.append_in(tx, tenant, draft)
        })
    }

    /// Ends the restore of `tenant`: forgets it and writes its outcome's row (`ok` or
    /// `error`), in one transaction. Answers the row.
    pub fn end_restore(
        &self,
        actor: &Actor,
        tenant: &str,
        outcome: &str,
        details: serde_json::Value,
    ) -> Result<AuditRow> {
        self.write(|tx| {
            tx.execute("DELETE FROM restores WHERE tenant = ?1", [tenant])?;
            let mut draft = self.draft(actor, "snapshot.restore", tenant, details);
            draft.outcome = outcome.into();
            self.append_in(tx, tenant, draft)
        })
    }

    /// Forgets the restore of `tenant` without a row (one that never began on its worker).
    pub fn forget_restore(&self, tenant: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM restores WHERE tenant = ?1", [tenant])?;
            Ok(())
        })
    }

    /// The restore of `tenant` under way, if any.
    pub fn restore_of(&self, tenant: &str) -> Result<Option<RestoreIntent>> {
        self.read(|conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM restores WHERE tenant = ?1"),
                [tenant],
                decode,
            )
            .optional()?
            .map(into_intent)
            .transpose()
        })
    }

    /// Every restore under way (after a crash: those to settle).
    pub fn restores(&self) -> Result<Vec<RestoreIntent>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM restores ORDER BY began_ms, tenant"
            ))?;
            let raws = stmt
                .query_map([], decode)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(into_intent).collect()
        })
    }
}
