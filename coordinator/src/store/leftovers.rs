//! Copies whose files a worker still has to delete: a replica removed (by the repair, a
//! hand-over, a drain), recorded in the transaction that removes it, so that a worker that is away, or does not answer, deletes the files when it is back
//! (`Service::drop_leftovers_on`, run at every worker's hello). A row goes when the files are
//! deleted, or when the worker holds a copy of the tenant again (its files are that copy's).
//! (A deleted tenant's files on a worker that was away go by the hello's reconciliation,
//! `cluster::reconcile`.)

use rusqlite::{Transaction, params};

use super::{Result, Store, from_sql_int, to_sql_int};

/// A copy to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The tenant.
    pub tenant: String,
    /// The worker holding the files.
    pub worker: String,
    /// Why the copy went.
    pub reason: String,
    /// When it was recorded, Unix ms.
    pub since_ms: u64,
}

/// Records `worker`'s copy of `tenant` as to be deleted.
pub(super) fn record(
    tx: &Transaction<'_>,
    tenant: &str,
    worker: &str,
    reason: &str,
    now_ms: u64,
) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO leftover_copies (tenant, worker, reason, since_ms) \
         VALUES (?1, ?2, ?3, ?4)",
        params![tenant, worker, reason, to_sql_int("time", now_ms)?],
    )?;
    Ok(())
}

/// Forgets a recorded leftover (the worker holds a copy of the tenant again).
pub(super) fn clear(tx: &Transaction<'_>, tenant: &str, worker: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM leftover_copies WHERE tenant = ?1 AND worker = ?2",
        params![tenant, worker],
    )?;
    Ok(())
}

impl Store {
    /// The copies `worker` still has to delete, by tenant.
    pub fn leftovers_on(&self, worker: &str) -> Result<Vec<Leftover>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT tenant, worker, reason, since_ms FROM leftover_copies \
                 WHERE worker = ?1 ORDER BY tenant",
            )?;
            let rows = stmt.query_map([worker], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get::<_, i64>(3)?))
            })?;
            rows.map(|row| {
                let (tenant, worker, reason, since) = row?;
                Ok(Leftover {
                    tenant,
                    worker,
                    reason,
                    since_ms: from_sql_int("time", since)?,
                })
            })
            .collect()
        })
    }

    /// How many copies workers still have to delete (metrics).
    pub fn leftover_count(&self) -> Result<u64> {
        self.read(|conn| {
            let n: i64 =
                conn.query_row("SELECT count(*) FROM leftover_copies", [], |row| row.get(0))?;
            from_sql_int("count", n)
        })
    }

    /// Whether `worker` holds a copy of `tenant` now: its placement, a replica, or either end of
    /// a move still copying (a move that switched or was aborted deletes its own leftover). Such a worker's files are never deleted as a leftover.
    pub fn holds_copy(&self, tenant: &str, worker: &str) -> Result<bool> {
        self.read(|conn| {
            let n: i64 = conn.query_row(
                "SELECT (SELECT count(*) FROM placements WHERE tenant = ?1 AND worker = ?2) \
                      + (SELECT count(*) FROM replicas WHERE tenant = ?1 AND worker = ?2) \
                      + (SELECT count(*) FROM moves WHERE tenant = ?1 AND state = 'copying' \
                            AND (from_worker = ?2 OR to_worker = ?2))",
                params![tenant, worker],
                |row| row.get(0),
            )?;
            Ok(n > 0)
        })
    }

    /// Forgets `worker`'s leftover copy of `tenant` (its files are deleted, or it holds a copy
    /// of the tenant again).
    pub fn end_leftover(&self, tenant: &str, worker: &str) -> Result<()> {
        self.write(|tx| clear(tx, tenant, worker))
    }
}
