//! The scheduler's jobs: when each runs next, and how its last run went, so that a restarted
//! coordinator keeps the schedule and the admin API shows it (`jobs::Scheduler`).

use rusqlite::{OptionalExtension, params};

use super::{Error, Result, Store, from_sql_int, to_sql_int};

/// A scheduled job's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// The job's name.
    pub name: String,
    /// When it runs next, Unix ms.
    pub next_run_ms: u64,
    /// When its last run started and ended, Unix ms.
    pub last_run: Option<(u64, u64)>,
    /// `ok` or `error`, for the last run.
    pub last_outcome: Option<String>,
    /// What the last run found (JSON).
    pub last_details: Option<serde_json::Value>,
    /// Runs finished since the job was first scheduled.
    pub runs: u64,
}

const COLUMNS: &str =
    "name, next_run_ms, last_start_ms, last_end_ms, last_outcome, last_details, runs";

fn decode(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        name: row.get(0)?,
        next: row.get(1)?,
        start: row.get(2)?,
        end: row.get(3)?,
        outcome: row.get(4)?,
        details: row.get(5)?,
        runs: row.get(6)?,
    })
}

struct RawJob {
    name: String,
    next: i64,
    start: Option<i64>,
    end: Option<i64>,
    outcome: Option<String>,
    details: Option<String>,
    runs: i64,
}

impl RawJob {
    fn into_row(self) -> Result<JobRow> {
        let last_run = match (self.start, self.end) {
            (Some(start), Some(end)) => {
                Some((from_sql_int("time", start)?, from_sql_int("time", end)?))
            }
            _ => None,
        };
        let last_details = self
            .details
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|err| Error::Corrupt(format!("job {}: details: {err}", self.name)))?;
        Ok(JobRow {
            next_run_ms: from_sql_int("time", self.next)?,
            last_run,
            last_outcome: self.outcome,
            last_details,
            runs: from_sql_int("runs", self.runs)?,
            name: self.name,
        })
    }
}

impl Store {
    /// Every job's record, by name.
    pub fn jobs(&self) -> Result<Vec<JobRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM jobs ORDER BY name"))?;
            let raws = stmt
                .query_map([], decode)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(RawJob::into_row).collect()
        })
    }

    /// Schedules `name` to run at `first_ms` if it has no record, or brings its next run
    /// forward to `latest_ms` if it is later (its interval was shortened). Answers the record.
    pub fn schedule_job(&self, name: &str, first_ms: u64, latest_ms: u64) -> Result<JobRow> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO jobs (name, next_run_ms, runs) VALUES (?1, ?2, 0) \
                 ON CONFLICT (name) DO UPDATE SET next_run_ms = min(next_run_ms, ?3)",
                params![
                    name,
                    to_sql_int("time", first_ms)?,
                    to_sql_int("time", latest_ms)?
                ],
            )?;
            let raw = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM jobs WHERE name = ?1"),
                    [name],
                    decode,
                )
                .optional()?
                .ok_or_else(|| Error::NotFound(format!("job {name}")))?;
            raw.into_row()
        })
    }

    /// Records a finished run of `name` and when it runs next.
    pub fn finish_job(
        &self,
        name: &str,
        (start_ms, end_ms): (u64, u64),
        outcome: &str,
        details: &serde_json::Value,
        next_run_ms: u64,
    ) -> Result<()> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE jobs SET last_start_ms = ?2, last_end_ms = ?3, last_outcome = ?4, \
                 last_details = ?5, next_run_ms = ?6, runs = runs + 1 WHERE name = ?1",
                params![
                    name,
                    to_sql_int("time", start_ms)?,
                    to_sql_int("time", end_ms)?,
                    outcome,
                    details.to_string(),
                    to_sql_int("time", next_run_ms)?
                ],
            )?;
            if changed == 0 {
                return Err(Error::NotFound(format!("job {name}")));
            }
            Ok(())
        })
    }

    /// Every audit chain that has a row: `platform` and every tenant's, deleted ones too.
    pub fn audit_chains(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT DISTINCT chain FROM audit_rows ORDER BY chain")?;
            let chains = stmt
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(chains)
        })
    }
}

impl Store {
    /// When `tenant`'s KEK was last rotated, Unix ms (none since it was created).
    pub fn kek_rotated_ms(&self, tenant: &str) -> Result<Option<u64>> {
        self.read(|conn| {
            let at: Option<i64> = conn
                .query_row(
                    "SELECT rotated_ms FROM kek_rotations WHERE tenant = ?1",
                    [tenant],
                    |row| row.get(0),
                )
                .optional()?;
            at.map(|at| from_sql_int("time", at)).transpose()
        })
    }

    /// Records that `tenant`'s KEK was rotated at `at_ms`.
    pub fn record_kek_rotation(&self, tenant: &str, at_ms: u64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO kek_rotations (tenant, rotated_ms) VALUES (?1, ?2) \
                 ON CONFLICT (tenant) DO UPDATE SET rotated_ms = ?2",
                params![tenant, to_sql_int("time", at_ms)?],
            )?;
            Ok(())
        })
    }
}
