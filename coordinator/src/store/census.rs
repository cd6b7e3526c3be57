//! Usage and the daily census (`jobs::census`): each tenant's requests and searches per UTC day
//! (`usage_days`, added to by the usage flush), and one census row per tenant and day: its tier,
//! state, collections, points and bytes stored when the census was taken, with that day's
//! requests and searches. What billing reads.

use rusqlite::params;
use serde::Serialize;

use super::{Error, Result, Store, from_sql_int, to_sql_int};

/// One tenant's census for one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CensusRow {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The tenant.
    pub tenant: String,
    /// Its tier when the census was taken (`paused` while paused).
    pub tier: String,
    /// `active`, `paused`, or `unplaced` (no data yet).
    pub state: String,
    /// Its collections, if its data could be asked.
    pub collections: Option<u64>,
    /// Its live points, if its data could be asked.
    pub points: Option<u64>,
    /// Bytes its live points occupy on the workers' data paths (vectors, ids, payloads).
    pub bytes_hot: Option<u64>,
    /// Bytes of its files on cold storage (its primary copy's, ciphertext as stored; 0 unless
    /// paused), if they could be asked.
    pub bytes_cold: Option<u64>,
    /// Requests that day.
    pub requests: u64,
    /// Searches that day (a batch counts once).
    pub searches: u64,
    /// When the census was taken, Unix ms.
    pub taken_ms: u64,
}

/// A day as stored: `YYYY-MM-DD` (UTC) of Unix ms.
pub fn day_of(unix_ms: u64) -> String {
    let days = (unix_ms / 86_400_000) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number (days since 1970-01-01) of a `YYYY-MM-DD` day, if it is one.
pub fn day_number(day: &str) -> Option<u64> {
    check_day(day).ok()?;
    let (y, m, d): (i64, i64, i64) = (
        day[0..4].parse().ok()?,
        day[5..7].parse().ok()?,
        day[8..10].parse().ok()?,
    );
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// Checks a `YYYY-MM-DD` day given by a client.
pub fn check_day(day: &str) -> Result<()> {
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && (1..=12).contains(&day[5..7].parse::<u8>().unwrap_or(0))
        && (1..=31).contains(&day[8..10].parse::<u8>().unwrap_or(0));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "a day is YYYY-MM-DD, not {}",
            super::shown(day)
        )))
    }
}

impl Store {
    /// Adds requests and searches to tenants' days, and requests, searches and upserted points
    /// to their hours (the usage flush), in one transaction.
    pub fn add_usage(
        &self,
        counts: &[(String, String, u64, u64)],
        hours: &[(String, super::billing::HourUsage)],
    ) -> Result<()> {
        if counts.is_empty() && hours.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            super::billing::add_hours_in(tx, hours)?;
            let mut stmt = tx.prepare(
                "INSERT INTO usage_days (tenant, day, requests, searches) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (tenant, day) DO UPDATE SET requests = requests + ?3, \
                 searches = searches + ?4",
            )?;
            for (tenant, day, requests, searches) in counts {
                stmt.execute(params![
                    tenant,
                    day,
                    to_sql_int("requests", *requests)?,
                    to_sql_int("searches", *searches)?
                ])?;
            }
            Ok(())
        })
    }

    /// `tenant`'s requests and searches on `day`.
    pub fn usage_of(&self, tenant: &str, day: &str) -> Result<(u64, u64)> {
        self.read(|conn| {
            let found: Option<(i64, i64)> = rusqlite::OptionalExtension::optional(conn.query_row(
                "SELECT requests, searches FROM usage_days WHERE tenant = ?1 AND day = ?2",
                params![tenant, day],
                |row| Ok((row.get(0)?, row.get(1)?)),
            ))?;
            let (requests, searches) = found.unwrap_or((0, 0));
            Ok((
                from_sql_int("requests", requests)?,
                from_sql_int("searches", searches)?,
            ))
        })
    }

    /// The day number of the latest census day recorded, if any.
    pub fn last_census_day(&self) -> Result<Option<u64>> {
        let last: Option<String> = self.read(|conn| {
            Ok(conn.query_row("SELECT max(day) FROM census", [], |row| row.get(0))?)
        })?;
        match last {
            None => Ok(None),
            Some(day) => day_number(&day)
                .map(Some)
                .ok_or_else(|| Error::Corrupt(format!("census day {day:?}"))),
        }
    }

    /// Writes census rows (a day's row for a tenant replaces an earlier one of the same day).
    pub fn record_census(&self, rows: &[CensusRow]) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO census (day, tenant, tier, state, collections, points, \
                 bytes_hot, bytes_cold, requests, searches, taken_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let opt = |what: &str, v: Option<u64>| v.map(|v| to_sql_int(what, v)).transpose();
            for r in rows {
                stmt.execute(params![
                    r.day,
                    r.tenant,
                    r.tier,
                    r.state,
                    opt("collections", r.collections)?,
                    opt("points", r.points)?,
                    opt("bytes", r.bytes_hot)?,
                    opt("bytes", r.bytes_cold)?,
                    to_sql_int("requests", r.requests)?,
                    to_sql_int("searches", r.searches)?,
                    to_sql_int("time", r.taken_ms)?
                ])?;
            }
            Ok(())
        })
    }

    /// Census rows of days `from..=to`, of one tenant or all, by day and tenant, after the
    /// `(day, tenant)` cursor if given, at most `limit`.
    pub fn census(
        &self,
        (from, to): (&str, &str),
        tenant: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<CensusRow>> {
        let (after_day, after_tenant) = after.unwrap_or(("", ""));
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT day, tenant, tier, state, collections, points, bytes_hot, bytes_cold, \
                 requests, searches, taken_ms FROM census \
                 WHERE day >= ?1 AND day <= ?2 AND (?3 IS NULL OR tenant = ?3) \
                 AND (day, tenant) > (?4, ?5) ORDER BY day, tenant LIMIT ?6",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![from, to, tenant, after_day, after_tenant, limit],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        [
                            row.get::<_, Option<i64>>(4)?,
                            row.get::<_, Option<i64>>(5)?,
                            row.get::<_, Option<i64>>(6)?,
                            row.get::<_, Option<i64>>(7)?,
                        ],
                        [row.get::<_, i64>(8)?, row.get(9)?, row.get(10)?],
                    ))
                },
            )?;
            rows.map(|row| {
                let (day, tenant, tier, state, known, counts) = row?;
                let opt = |v: Option<i64>| v.map(|v| from_sql_int("census", v)).transpose();
                Ok(CensusRow {
                    day,
                    tenant,
                    tier,
                    state,
                    collections: opt(known[0])?,
                    points: opt(known[1])?,
                    bytes_hot: opt(known[2])?,
                    bytes_cold: opt(known[3])?,
                    requests: from_sql_int("census", counts[0])?,
                    searches: from_sql_int("census", counts[1])?,
                    taken_ms: from_sql_int("census", counts[2])?,
                })
            })
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(86_399_999), "1970-01-01");
        assert_eq!(day_of(86_400_000), "1970-01-02");
        // 2024-02-29 (a leap day), 2000-03-01, 2027-01-15.
        assert_eq!(day_of(1_709_164_800_000), "2024-02-29");
        assert_eq!(day_of(951_868_800_000), "2000-03-01");
        assert_eq!(day_of(1_800_000_000_000), "2027-01-15");
        for good in ["2027-01-15", "1999-12-31", "2024-02-29", "1970-01-01"] {
            assert!(check_day(good).is_ok(), "{good}");
            let n = day_number(good).unwrap();
            assert_eq!(day_of(n * 86_400_000), good);
        }
        for bad in [
            "2027-1-15",
            "2027-13-01",
            "2027-01-32",
            "2027/01/15",
            "",
            "2027-01-15x",
            "２０２７-01-15",
        ] {
            assert!(check_day(bad).is_err(), "{bad}");
        }
    }
}
