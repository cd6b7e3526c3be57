//! Billing (schema V16): usage per tenant and hour, the anomalies the watch found, the tenants'
//! own settings, and the mail outbox. An anomaly, its audit row and its mails are written in one
//! transaction: none is recorded without the others.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Actor, Error, Result, Store, from_sql_int, to_sql_int};
use crate::audit::{AuditRow, Draft};

/// One tenant's usage in one UTC hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HourUsage {
    /// Hours since the epoch.
    pub hour: u64,
    /// Requests answered.
    pub requests: u64,
    /// Searches (a batch counts once).
    pub searches: u64,
    /// Points upserted.
    pub upserted: u64,
}

/// A spike the anomaly watch found, before it is recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewAnomaly {
    /// The tenant.
    pub tenant: String,
    /// `requests`, `searches`, `upserted` or `stored_bytes`.
    pub metric: String,
    /// Start of the hour (or census day) of the spike, Unix ms.
    pub period_ms: u64,
    /// Its length, ms.
    pub period_len_ms: u64,
    /// The value in that period.
    pub value: u64,
    /// The baseline's median.
    pub median: f64,
    /// The baseline's median absolute deviation.
    pub mad: f64,
    /// The threshold applied (robust z-score).
    pub threshold: f64,
    /// The value's robust z-score.
    pub score: f64,
    /// Whether the tenant's tier pauses it.
    pub auto_pause: bool,
    /// When it was found, Unix ms.
    pub found_ms: u64,
}

/// A recorded anomaly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyRow {
    /// Its id.
    pub id: i64,
    /// What was found.
    #[serde(flatten)]
    pub anomaly: NewAnomaly,
    /// The audit row that records it: chain, seq and hash.
    pub audit_chain: String,
    /// Its seq.
    pub audit_seq: u64,
    /// Its hash.
    pub audit_hash: String,
    /// When the tenant was paused for it, if it was.
    pub paused_ms: Option<u64>,
}

/// A mail to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// One address.
    pub recipient: String,
    /// Its subject.
    pub subject: String,
    /// Its plain-text body (the audit reference is appended when it is queued).
    pub body: String,
}

/// A queued mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    /// Its id.
    pub id: i64,
    /// One address.
    pub recipient: String,
    /// Its subject.
    pub subject: String,
    /// Its plain-text body.
    #[serde(skip)]
    pub body: String,
    /// The audit row it is about, `<chain>#<seq>`.
    pub audit_ref: String,
    /// When it was queued, Unix ms.
    pub created_ms: u64,
    /// Attempts so far.
    pub attempts: u64,
    /// When it is tried next, Unix ms.
    pub next_attempt_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the relay accepted it.
    pub sent_ms: Option<u64>,
}

/// What a tenant's owner sets on the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TenantSettings {
    /// Addresses that receive the tenant's notifications beside its owners.
    pub notify_emails: Vec<String>,
    /// The tenant's anomaly threshold, or `None` for its tier's.
    pub anomaly_threshold: Option<f64>,
}

/// Every hour from `first` to `last` (inclusive) in order, from the rows [`Store::usage_hours`]
/// answers (an hour without a row has no usage): one pass, however many hours.
pub fn every_hour(rows: &[HourUsage], first: u64, last: u64) -> Vec<HourUsage> {
    let mut hours: Vec<HourUsage> = (first..=last)
        .map(|hour| HourUsage {
            hour,
            ..HourUsage::default()
        })
        .collect();
    for row in rows {
        if let Some(slot) = row
            .hour
            .checked_sub(first)
            .and_then(|i| hours.get_mut(usize::try_from(i).ok()?))
        {
            *slot = *row;
        }
    }
    hours
}

/// The audit reference a mail names: `<chain>#<seq>`.
pub fn audit_ref(row: &AuditRow) -> String {
    format!("{}#{}", row.chain, row.seq)
}

/// Adds requests, searches and upserted points to tenants' hours, in the caller's transaction
/// (the usage flush, with the days).
pub(super) fn add_hours_in(
    tx: &rusqlite::Connection,
    counts: &[(String, HourUsage)],
) -> Result<()> {
    let mut stmt = tx.prepare(
        "INSERT INTO usage_hours (tenant, hour, requests, searches, upserted) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (tenant, hour) DO UPDATE SET \
         requests = requests + ?3, searches = searches + ?4, upserted = upserted + ?5",
    )?;
    for (tenant, u) in counts {
        stmt.execute(params![
            tenant,
            to_sql_int("hour", u.hour)?,
            to_sql_int("requests", u.requests)?,
            to_sql_int("searches", u.searches)?,
            to_sql_int("upserted", u.upserted)?,
        ])?;
    }
    Ok(())
}

fn queue_in(conn: &rusqlite::Connection, row: &AuditRow, mails: &[NewMail]) -> Result<()> {
    let reference = audit_ref(row);
    let now = to_sql_int("audit time", row.time_ms)?;
    let mut stmt = conn.prepare(
        "INSERT INTO outbox (recipient, subject, body, audit_ref, created_ms, next_attempt_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?;
    for mail in mails {
        let body = format!(
            "{}\n\nAudit reference: chain {}, row {}, hash {}\n",
            mail.body.trim_end(),
            row.chain,
            row.seq,
            row.hash
        );
        stmt.execute(params![mail.recipient, mail.subject, body, reference, now])?;
    }
    Ok(())
}

const ANOMALY_COLUMNS: &str = "id, tenant, metric, period_ms, period_len_ms, value, median, mad, \
     threshold, score, found_ms, audit_chain, audit_seq, audit_hash, auto_pause, paused_ms";

fn anomaly_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AnomalyRow>> {
    let int = |i: usize, what: &str| -> rusqlite::Result<Result<u64>> {
        Ok(from_sql_int(what, row.get(i)?))
    };
    let paused: Option<i64> = row.get(15)?;
    let (period_ms, period_len_ms, value, found_ms, seq) = (
        int(3, "period")?,
        int(4, "period length")?,
        int(5, "value")?,
        int(10, "found")?,
        int(12, "audit seq")?,
    );
    let id: i64 = row.get(0)?;
    let tenant: String = row.get(1)?;
    let metric: String = row.get(2)?;
    let (median, mad, threshold, score): (f64, f64, f64, f64) =
        (row.get(6)?, row.get(7)?, row.get(8)?, row.get(9)?);
    let audit_chain: String = row.get(11)?;
    let audit_hash: String = row.get(13)?;
    let auto_pause: i64 = row.get(14)?;
    Ok((|| {
        Ok(AnomalyRow {
            id,
            anomaly: NewAnomaly {
                tenant,
                metric,
                period_ms: period_ms?,
                period_len_ms: period_len_ms?,
                value: value?,
                median,
                mad,
                threshold,
                score,
                auto_pause: auto_pause == 1,
                found_ms: found_ms?,
            },
            audit_chain,
            audit_seq: seq?,
            audit_hash,
            paused_ms: paused.map(|p| from_sql_int("paused", p)).transpose()?,
        })
    })())
}

fn outbox_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OutboxRow>> {
    let created: i64 = row.get(5)?;
    let attempts: i64 = row.get(6)?;
    let next: i64 = row.get(7)?;
    let sent: Option<i64> = row.get(9)?;
    let (id, recipient, subject, body, audit_ref, last_error) = (
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(8)?,
    );
    Ok((|| {
        Ok(OutboxRow {
            id,
            recipient,
            subject,
            body,
            audit_ref,
            created_ms: from_sql_int("created", created)?,
            attempts: from_sql_int("attempts", attempts)?,
            next_attempt_ms: from_sql_int("next attempt", next)?,
            last_error,
            sent_ms: sent.map(|s| from_sql_int("sent", s)).transpose()?,
        })
    })())
}

const OUTBOX_COLUMNS: &str = "id, recipient, subject, body, audit_ref, created_ms, attempts, \
     next_attempt_ms, last_error, sent_ms";

impl Store {
    /// `tenant`'s hours from `first` to `last` (inclusive) that have usage, in order.
    pub fn usage_hours(&self, tenant: &str, first: u64, last: u64) -> Result<Vec<HourUsage>> {
        let (first, last) = (to_sql_int("hour", first)?, to_sql_int("hour", last)?);
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT hour, requests, searches, upserted FROM usage_hours \
                 WHERE tenant = ?1 AND hour BETWEEN ?2 AND ?3 ORDER BY hour",
            )?;
            let rows = stmt.query_map(params![tenant, first, last], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?;
            rows.map(|r| {
                let (hour, requests, searches, upserted): (i64, i64, i64, i64) = r?;
                Ok(HourUsage {
                    hour: from_sql_int("hour", hour)?,
                    requests: from_sql_int("requests", requests)?,
                    searches: from_sql_int("searches", searches)?,
                    upserted: from_sql_int("upserted", upserted)?,
                })
            })
            .collect()
        })
    }

    /// Deletes hourly usage before hour `before`; answers how many rows went.
    pub fn prune_usage_hours(&self, before: u64) -> Result<usize> {
        let before = to_sql_int("hour", before)?;
        self.write(|tx| Ok(tx.execute("DELETE FROM usage_hours WHERE hour < ?1", params![before])?))
    }

    /// Records `anomaly` with its audit row (`draft`, on the tenant's chain) and queues `mails`
    /// naming that row, in one transaction. `None` if this tenant's metric already has an
    /// anomaly for that period (nothing is written).
    pub fn record_anomaly(
        &self,
        anomaly: &NewAnomaly,
        draft: Draft,
        mails: &[NewMail],
    ) -> Result<Option<AuditRow>> {
        self.write(|tx| {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT id FROM anomalies WHERE tenant = ?1 AND metric = ?2 AND period_ms = ?3",
                    params![
                        anomaly.tenant,
                        anomaly.metric,
                        to_sql_int("period", anomaly.period_ms)?
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return Ok(None);
            }
            let row = self.append_in(tx, &anomaly.tenant, draft)?;
            tx.execute(
                "INSERT INTO anomalies (tenant, metric, period_ms, period_len_ms, value, median, \
                 mad, threshold, score, found_ms, audit_chain, audit_seq, audit_hash, auto_pause) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    anomaly.tenant,
                    anomaly.metric,
                    to_sql_int("period", anomaly.period_ms)?,
                    to_sql_int("period length", anomaly.period_len_ms)?,
                    to_sql_int("value", anomaly.value)?,
                    anomaly.median,
                    anomaly.mad,
                    anomaly.threshold,
                    anomaly.score,
                    to_sql_int("found", anomaly.found_ms)?,
                    row.chain,
                    to_sql_int("audit seq", row.seq)?,
                    row.hash,
                    i64::from(anomaly.auto_pause),
                ],
            )?;
            queue_in(tx, &row, mails)?;
            Ok(Some(row))
        })
    }

    /// `tenant`'s anomalies, newest first, at most `limit`.
    pub fn anomalies_of(&self, tenant: &str, limit: u32) -> Result<Vec<AnomalyRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {ANOMALY_COLUMNS} FROM anomalies WHERE tenant = ?1 \
                 ORDER BY found_ms DESC, id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![tenant, limit], anomaly_row)?;
            rows.map(|r| r.map_err(Error::from).and_then(|r| r))
                .collect()
        })
    }

    /// Anomalies whose tier pauses the tenant and whose pause was not made yet.
    pub fn pauses_owed(&self) -> Result<Vec<AnomalyRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {ANOMALY_COLUMNS} FROM anomalies WHERE auto_pause = 1 \
                 AND paused_ms IS NULL ORDER BY id"
            ))?;
            let rows = stmt.query_map([], anomaly_row)?;
            rows.map(|r| r.map_err(Error::from).and_then(|r| r))
                .collect()
        })
    }

    /// Records that the tenant was paused for anomaly `id` at `now`.
    pub fn anomaly_paused(&self, id: i64, now: u64) -> Result<()> {
        let now = to_sql_int("paused", now)?;
        self.write(|tx| {
            tx.execute(
                "UPDATE anomalies SET paused_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        })
    }

    /// `tenant`'s settings (the defaults if it never set any).
    pub fn tenant_settings(&self, tenant: &str) -> Result<TenantSettings> {
        let found: Option<(String, Option<f64>)> = self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT notify_emails, anomaly_threshold FROM tenant_settings WHERE tenant = ?1",
                    params![tenant],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })?;
        let Some((emails, threshold)) = found else {
            return Ok(TenantSettings::default());
        };
        let notify_emails = serde_json::from_str(&emails)
            .map_err(|e| Error::Corrupt(format!("tenant {tenant}'s notify_emails: {e}")))?;
        Ok(TenantSettings {
            notify_emails,
            anomaly_threshold: threshold,
        })
    }

    /// Replaces `tenant`'s settings (checked by the caller), audited `settings.update`.
    pub fn set_tenant_settings(
        &self,
        actor: &Actor,
        tenant: &str,
        settings: &TenantSettings,
    ) -> Result<()> {
        let emails = serde_json::to_string(&settings.notify_emails)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let threshold = settings.anomaly_threshold.map(|t| format!("{t}"));
        let draft = self.draft(
            actor,
            "settings.update",
            tenant,
            serde_json::json!({
                "notify_emails": settings.notify_emails.len(),
                "anomaly_threshold": threshold,
            }),
        );
        let now = to_sql_int("time", self.now())?;
        self.write(|tx| {
            super::audit::check_chain(tx, tenant)?;
            tx.execute(
                "INSERT INTO tenant_settings (tenant, notify_emails, anomaly_threshold, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant) DO UPDATE SET \
                 notify_emails = ?2, anomaly_threshold = ?3, updated_ms = ?4",
                params![tenant, emails, settings.anomaly_threshold, now],
            )?;
            self.append_in(tx, tenant, draft)?;
            Ok(())
        })
    }

    /// Writes `draft` on `chain` and queues `mails` naming it, in one transaction (a test mail
    /// an operator asks for).
    pub fn audit_and_queue(
        &self,
        chain: &str,
        draft: Draft,
        mails: &[NewMail],
    ) -> Result<AuditRow> {
        self.write(|tx| {
            let row = self.append_in(tx, chain, draft)?;
            queue_in(tx, &row, mails)?;
            Ok(row)
        })
    }

    /// Mail not sent yet whose next attempt is due by `now`, oldest first, at most `limit`.
    pub fn due_mail(&self, now: u64, limit: u32) -> Result<Vec<OutboxRow>> {
        let now = to_sql_int("time", now)?;
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE sent_ms IS NULL \
                 AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms, id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now, limit], outbox_row)?;
            rows.map(|r| r.map_err(Error::from).and_then(|r| r))
                .collect()
        })
    }

    /// The outbox, newest first, at most `limit` (the admin API).
    pub fn outbox(&self, limit: u32) -> Result<Vec<OutboxRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit], outbox_row)?;
            rows.map(|r| r.map_err(Error::from).and_then(|r| r))
                .collect()
        })
    }

    /// Records an attempt at mail `id`: sent at `now`, or failed with `error` and tried again
    /// at `next`.
    pub fn mail_attempted(
        &self,
        id: i64,
        now: u64,
        outcome: std::result::Result<(), (&str, u64)>,
    ) -> Result<()> {
        let now = to_sql_int("time", now)?;
        self.write(|tx| {
            match outcome {
                Ok(()) => tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, sent_ms = ?2, last_error = NULL \
                     WHERE id = ?1",
                    params![id, now],
                )?,
                Err((error, next)) => tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, \
                     next_attempt_ms = ?3 WHERE id = ?1",
                    params![id, error, to_sql_int("next attempt", next)?],
                )?,
            };
            Ok(())
        })
    }

    /// How many mails are not sent yet, and when the oldest of them was queued (Unix ms).
    pub fn unsent_mail(&self) -> Result<(u64, Option<u64>)> {
        let (n, oldest): (i64, Option<i64>) = self.read(|conn| {
            Ok(conn.query_row(
                "SELECT count(*), min(created_ms) FROM outbox WHERE sent_ms IS NULL",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?)
        })?;
        Ok((
            from_sql_int("unsent mail", n)?,
            oldest.map(|t| from_sql_int("time", t)).transpose()?,
        ))
    }

    /// Deletes mail sent before `before` (Unix ms); answers how many went.
    pub fn prune_sent_mail(&self, before: u64) -> Result<usize> {
        let before = to_sql_int("time", before)?;
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM outbox WHERE sent_ms IS NOT NULL AND sent_ms < ?1",
                params![before],
            )?)
        })
    }
}
