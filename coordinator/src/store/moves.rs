//! Tenant moves between workers: a row per move in progress, so that a move cut short by a crash
//! of the coordinator or of either worker ends on one consistent placement.
//!
//! A move starts `copying` (the tenant fenced: a new epoch, still placed on the source, served by
//! no one until the move ends), then either switches the placement to the target under a new
//! epoch (`cleanup`: the source's copy is to be deleted) or is aborted (`aborted`: the tenant
//! stays on the source, and the target's copy is to be deleted). The row goes once the leftover
//! copy is deleted. Each change is audited in the same transaction (`tenant.move`, with a
//! `stage`).

use rusqlite::{OptionalExtension, params};
use serde_json::json;

use super::placement::{load, next_epoch};
use super::{Actor, Error, Placement, Result, Store, from_sql_int, shown, tenant, to_sql_int};

/// Where a move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveState {
    /// The tenant is fenced while its files are copied.
    Copying,
    /// It is placed on the target; the source's copy is still to be deleted.
    Cleanup,
    /// It stays on the source; the target's copy is still to be deleted.
    Aborted,
}

impl MoveState {
    /// The state's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::Copying => "copying",
            MoveState::Cleanup => "cleanup",
            MoveState::Aborted => "aborted",
        }
    }

    fn parse(raw: &str) -> Result<MoveState> {
        match raw {
            "copying" => Ok(MoveState::Copying),
            "cleanup" => Ok(MoveState::Cleanup),
            "aborted" => Ok(MoveState::Aborted),
            other => Err(Error::Corrupt(format!("unknown move state {other:?}"))),
        }
    }
}

/// A move in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveRow {
    /// The tenant.
    pub tenant: String,
    /// The worker it leaves.
    pub from: String,
    /// The worker it goes to.
    pub to: String,
    /// Where the move is.
    pub state: MoveState,
    /// When it started, Unix ms.
    pub started_ms: u64,
}

const MOVE_COLUMNS: &str = "SELECT tenant, from_worker, to_worker, state, started_ms FROM moves";

type RawMove = (String, String, String, String, i64);

fn decode_move(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawMove> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn load_move(conn: &rusqlite::Connection, tenant: &str) -> Result<Option<MoveRow>> {
    let raw = conn
        .query_row(
            &format!("{MOVE_COLUMNS} WHERE tenant = ?1"),
            [tenant],
            decode_move,
        )
        .optional()?;
    raw.map(into_move).transpose()
}

fn into_move((tenant, from, to, state, started): RawMove) -> Result<MoveRow> {
    Ok(MoveRow {
        state: MoveState::parse(&state)?,
        started_ms: from_sql_int(&format!("start of the move of {tenant}"), started)?,
        tenant,
        from,
        to,
    })
}

impl Store {
    /// Starts moving a live tenant from the worker it is placed on to `to`, a known worker: fences
    /// it (a new epoch, still on the source) and records the move. Answers the fenced placement.
    /// [`Error::Invalid`] if it has no placement, is already on `to`, or a move of it is still in
    /// progress.
    pub fn begin_move(&self, actor: &Actor, tenant: &str, to: &str) -> Result<Placement> {
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let known: Option<i64> = tx
                .query_row("SELECT 1 FROM workers WHERE id = ?1", [to], |row| row.get(0))
                .optional()?;
            if known.is_none() {
                return Err(Error::NotFound(format!("worker {} not found", shown(to))));
            }
            if let Some(current) = load_move(tx, tenant)? {
                return Err(Error::Invalid(format!(
                    "tenant {tenant} is already moving ({} from {} to {}); retry when it is done",
                    current.state.as_str(),
                    current.from,
                    current.to
                )));
            }
            let Some(mut placement) = load(tx, tenant)? else {
                return Err(Error::Invalid(format!(
                    "tenant {tenant} is not placed on any worker yet; it is placed at its first request"
                )));
            };
            if placement.worker == to {
                return Err(Error::Invalid(format!(
                    "tenant {tenant} is already on worker {to}"
                )));
            }
            super::replicas::check_no_copy(tx, tenant, to)?;
            placement.epoch = next_epoch(tx, tenant)?;
            tx.execute(
                "UPDATE placements SET epoch = ?2 WHERE tenant = ?1",
                params![tenant, to_sql_int("epoch", placement.epoch)?],
            )?;
            tx.execute(
                "INSERT INTO moves (tenant, from_worker, to_worker, state, started_ms)
                 VALUES (?1, ?2, ?3, 'copying', ?4)",
                params![tenant, placement.worker, to, to_sql_int("time", self.now())?],
            )?;
            let details = json!({
                "stage": "started", "from": placement.worker, "to": to, "epoch": placement.epoch,
            });
            self.append_in(tx, tenant, self.draft(actor, "tenant.move", tenant, details))?;
            Ok(placement)
        })
    }

    /// Places a tenant whose files were copied on its move's target, under a new epoch; the
    /// source's copy is now to be deleted. `details` (files, bytes) go into the audit row.
    pub fn switch_move(
        &self,
        actor: &Actor,
        tenant: &str,
        mut details: serde_json::Value,
    ) -> Result<Placement> {
        self.write(|tx| {
            tenant::live(tx, tenant)?;
            let row = self.copying(tx, tenant)?;
            let epoch = next_epoch(tx, tenant)?;
            tx.execute(
                "UPDATE placements SET worker = ?2, epoch = ?3 WHERE tenant = ?1",
                params![tenant, row.to, to_sql_int("epoch", epoch)?],
            )?;
            tx.execute(
                "UPDATE moves SET state = 'cleanup' WHERE tenant = ?1",
                [tenant],
            )?;
            details["stage"] = "switched".into();
            details["from"] = row.from.clone().into();
            details["to"] = row.to.clone().into();
            details["epoch"] = epoch.into();
            self.append_in(
                tx,
                tenant,
                self.draft(actor, "tenant.move", tenant, details),
            )?;
            Ok(Placement {
                tenant: tenant.to_owned(),
                worker: row.to,
                epoch,
            })
        })
    }

    /// Gives up a move that is copying: the tenant stays on the source (at its fenced epoch); the
    /// target's copy is now to be deleted.
    pub fn abort_move(&self, actor: &Actor, tenant: &str, reason: &str) -> Result<MoveRow> {
        self.write(|tx| {
            let mut row = self.copying(tx, tenant)?;
            tx.execute(
                "UPDATE moves SET state = 'aborted' WHERE tenant = ?1",
                [tenant],
            )?;
            row.state = MoveState::Aborted;
            let details = json!({
                "stage": "aborted", "from": row.from, "to": row.to, "reason": reason,
            });
            let mut draft = self.draft(actor, "tenant.move", tenant, details);
            draft.outcome = "error".into();
            self.append_in(tx, tenant, draft)?;
            Ok(row)
        })
    }

    /// Ends a move whose leftover copy is deleted (`cleanup` or `aborted`).
    pub fn end_move(&self, actor: &Actor, tenant: &str) -> Result<()> {
        self.write(|tx| {
            let Some(row) = load_move(tx, tenant)? else {
                return Err(Error::NotFound(format!("tenant {tenant} is not moving")));
            };
            if row.state == MoveState::Copying {
                return Err(Error::Invalid(format!(
                    "the move of tenant {tenant} is still copying"
                )));
            }
            tx.execute("DELETE FROM moves WHERE tenant = ?1", [tenant])?;
            let details = json!({
                "stage": "done",
                "moved": row.state == MoveState::Cleanup,
                "from": row.from,
                "to": row.to,
                "copy_deleted_on": if row.state == MoveState::Cleanup { &row.from } else { &row.to },
            });
            self.append_in(tx, tenant, self.draft(actor, "tenant.move", tenant, details))?;
            Ok(())
        })
    }

    /// Every move in progress, by tenant.
    pub fn moves(&self) -> Result<Vec<MoveRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!("{MOVE_COLUMNS} ORDER BY tenant"))?;
            let raws = stmt
                .query_map([], decode_move)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(into_move).collect()
        })
    }

    fn copying(&self, tx: &rusqlite::Transaction<'_>, tenant: &str) -> Result<MoveRow> {
        match load_move(tx, tenant)? {
            Some(row) if row.state == MoveState::Copying => Ok(row),
            Some(row) => Err(Error::Invalid(format!(
                "the move of tenant {tenant} is not copying (it is {})",
                row.state.as_str()
            ))),
            None => Err(Error::NotFound(format!("tenant {tenant} is not moving"))),
        }
    }
}
