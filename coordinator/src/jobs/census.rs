//! Usage counting and the daily census.
//!
//! Every tenant request the coordinator answers (either transport, refused ones too) counts in
//! memory against the tenant and the UTC hour of the scheduler's clock; searches (single or batch,
//! a batch once) count as searches too, and an upsert that succeeds counts its points. The
//! `flush_usage` job (every minute by default) adds the counts to `usage_days` and `usage_hours`
//! in one transaction, and the coordinator flushes once more when it stops; a crash loses at most
//! the counts since the last flush.
//!
//! The `census` job (daily by default) flushes, then writes one row per live tenant for each
//! UTC day that ended since the last census (at most [`MAX_CATCH_UP_DAYS`] back): its tier, its
//! state (`active`, `paused`, `unplaced`), its collections, points and stored bytes as its
//! worker reports them now (`ListCollections`; unknown while paused or unreachable), and that
//! day's requests and searches. `POST /admin/v1/census` exports the rows of a range of days.
//! With each census every audit chain's signed head is kept in the store (later verifications
//! check against it) and exported to `<data_dir>/audit-anchors/<day>.json`.

use std::collections::HashMap;

use proto::vaultvec::v1 as api;

use crate::api::error::ApiError;
use crate::api::{Op, Reply, Service, off_runtime};
use crate::store::billing::HourUsage;
use crate::store::census::{CensusRow, day_number, day_of};
use proto::vaultvec::cluster::v1 as cluster;

/// The usage flush.
pub const FLUSH_USAGE: &str = "flush_usage";
/// The daily census.
pub const CENSUS: &str = "census";
/// How many ended days a census fills in after the coordinator was stopped.
pub const MAX_CATCH_UP_DAYS: u64 = 31;

const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// Requests, searches and upserted points per hour number and tenant since the last flush.
#[derive(Default)]
pub struct Usage(parking_lot::Mutex<Counts>);

type Counts = HashMap<u64, HashMap<String, HourUsage>>;

impl Usage {
    fn count(&self, tenant: &str, hour: u64, add: impl FnOnce(&mut HourUsage)) {
        let mut counts = self.0.lock();
        let hour_counts = counts.entry(hour).or_default();
        // The tenant's string is copied only for its first count of the hour.
        let c = match hour_counts.get_mut(tenant) {
            Some(c) => c,
            None => hour_counts.entry(tenant.to_owned()).or_default(),
        };
        c.hour = hour;
        add(c);
    }

    fn take(&self) -> Counts {
        std::mem::take(&mut *self.0.lock())
    }

    fn put_back(&self, taken: Counts) {
        let mut counts = self.0.lock();
        for (hour, tenants) in taken {
            let hour_counts = counts.entry(hour).or_default();
            for (tenant, u) in tenants {
                let c = hour_counts.entry(tenant).or_default();
                c.hour = hour;
                c.requests += u.requests;
                c.searches += u.searches;
                c.upserted += u.upserted;
            }
        }
    }
}

impl Service {
    /// Counts one answered request of `tenant` at `endpoint` (nothing for an empty tenant: an
    /// admin call, or a refusal before the caller was known).
    pub(crate) fn count_usage(&self, tenant: &str, endpoint: &str) {
        if tenant.is_empty() {
            return;
        }
        let hour = self.jobs.clock.now_ms() / HOUR_MS;
        let search = matches!(endpoint, "search" | "search_batch");
        self.jobs.usage.count(tenant, hour, |c| {
            c.requests += 1;
            c.searches += u64::from(search);
        });
    }

    /// Counts `points` upserted by `tenant` (an upsert that succeeded).
    pub(crate) fn count_upserted(&self, tenant: &str, points: u64) {
        if points == 0 {
            return;
        }
        let hour = self.jobs.clock.now_ms() / HOUR_MS;
        self.jobs
            .usage
            .count(tenant, hour, |c| c.upserted += points);
    }

    /// `tenant`'s flushed usage per hour, from hour `first` to `last` (hours since the epoch,
    /// inclusive), the hours with usage only.
    pub fn hourly_usage(
        &self,
        tenant: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<crate::store::billing::HourUsage>, crate::api::error::ApiError> {
        Ok(self.store.usage_hours(tenant, first, last)?)
    }

    /// Adds the counts since the last flush to the store (per day and per hour, in one
    /// transaction). Counts that could not be written are put back, to be written at the next
    /// flush.
    pub fn flush_usage(&self) -> (&'static str, serde_json::Value) {
        let taken = self.jobs.usage.take();
        let mut days: HashMap<(String, String), (u64, u64)> = HashMap::new();
        let mut hours = Vec::new();
        for (hour, tenants) in &taken {
            let day = day_of(hour * HOUR_MS);
            for (tenant, u) in tenants {
                let d = days.entry((tenant.clone(), day.clone())).or_default();
                d.0 += u.requests;
                d.1 += u.searches;
                hours.push((tenant.clone(), *u));
            }
        }
        let rows: Vec<(String, String, u64, u64)> = days
            .into_iter()
            .map(|((tenant, day), (requests, searches))| (tenant, day, requests, searches))
            .collect();
        match self.store.add_usage(&rows, &hours) {
            Ok(()) => (
                "ok",
                serde_json::json!({ "tenant_days": rows.len(), "tenant_hours": hours.len(),
                    "requests": rows.iter().map(|r| r.2).sum::<u64>() }),
            ),
            Err(err) => {
                self.jobs.usage.put_back(taken);
                tracing::error!(error = %err, "writing usage failed; kept for the next flush");
                (
                    "error",
                    serde_json::json!({ "error": format!("writing usage failed: {err}") }),
                )
            }
        }
    }

    /// The census (see the module docs). Answers the outcome and what it recorded.
    pub(super) async fn take_census(&self) -> (&'static str, serde_json::Value) {
        let (flushed, _) = off_runtime(|| self.flush_usage());
        let now = self.jobs.clock.now_ms();
        let today = now / DAY_MS;
        let last = match off_runtime(|| self.store.last_census_day()) {
            Ok(last) => last,
            Err(err) => return failed(&err.to_string()),
        };
        // Every day that ended since the last census, at most MAX_CATCH_UP_DAYS of them.
        let first = last
            .map_or(today.saturating_sub(1), |d| d + 1)
            .max(today.saturating_sub(MAX_CATCH_UP_DAYS));
        let days: Vec<u64> = (first..today).collect();
        if days.is_empty() {
            return ("ok", serde_json::json!({ "days": [], "tenants": 0 }));
        }
        let tenants = match off_runtime(|| self.store.list_tenants()) {
            Ok(tenants) => tenants,
            Err(err) => return failed(&err.to_string()),
        };
        let mut rows = Vec::new();
        let mut unknown = Vec::new();
        for tenant in &tenants {
            let (state, figures) = self.figures_of(tenant).await;
            let bytes_cold = if state == "paused" {
                self.cold_bytes_of(&tenant.id).await
            } else {
                Some(0)
            };
            if (figures.is_none() && state != "paused") || bytes_cold.is_none() {
                unknown.push(tenant.id.clone());
            }
            for day in &days {
                let day = day_of(day * DAY_MS);
                let (requests, searches) =
                    match off_runtime(|| self.store.usage_of(&tenant.id, &day)) {
                        Ok(usage) => usage,
                        Err(err) => return failed(&err.to_string()),
                    };
                rows.push(CensusRow {
                    day,
                    tenant: tenant.id.clone(),
                    tier: tenant.tier.clone(),
                    state: state.to_owned(),
                    collections: figures.map(|f| f.0),
                    points: figures.map(|f| f.1),
                    bytes_hot: figures.map(|f| f.2),
                    bytes_cold,
                    requests,
                    searches,
                    taken_ms: now,
                });
            }
        }
        if let Err(err) = off_runtime(|| self.store.record_census(&rows)) {
            return failed(&err.to_string());
        }
        let days: Vec<String> = days.iter().map(|d| day_of(d * DAY_MS)).collect();
        let anchored = match off_runtime(|| self.keep_audit_heads(days.last().map_or("", |d| d))) {
            Ok(anchored) => anchored,
            Err(err) => return failed(&format!("keeping the audit heads failed: {err}")),
        };
        (
            if flushed == "ok" { "ok" } else { "error" },
            serde_json::json!({
                "days": days, "tenants": tenants.len(), "rows": rows.len(),
                "figures_unknown": unknown, "audit_heads": anchored,
            }),
        )
    }

    /// Takes the signed head of every audit chain, keeps them in the store (every later
    /// verification of a chain checks against its latest) and exports them to
    /// `<data_dir>/audit-anchors/<day>.json` (0600, written atomically) for the operator to ship
    /// elsewhere. Answers how many.
    fn keep_audit_heads(&self, day: &str) -> anyhow::Result<usize> {
        let heads = self
            .store
            .audit_chains()?
            .iter()
            .map(|chain| self.store.chain_head(chain))
            .collect::<Result<Vec<_>, _>>()?;
        self.store.record_anchors(day, &heads)?;
        if let Some(data_dir) = self.store.path().and_then(std::path::Path::parent) {
            use storage::disk::Disk as _;
            let dir = data_dir.join("audit-anchors");
            let disk = storage::disk::StdDisk;
            disk.create_dir_all(&dir)?;
            let json = serde_json::to_vec_pretty(&heads)?;
            storage::disk::write_atomic(&disk, &dir.join(format!("{day}.json")), &json)?;
        }
        Ok(heads.len())
    }

    /// The bytes of a paused tenant's files on its primary's cold storage (ciphertext as stored),
    /// if its worker could be asked; asked without loading it (`FileBytes`).
    async fn cold_bytes_of(&self, tenant: &str) -> Option<u64> {
        let placement = match off_runtime(|| self.store.placement(tenant)) {
            Ok(Some(p)) => p,
            // Never placed: no files anywhere.
            Ok(None) => return Some(0),
            Err(_) => return None,
        };
        let op = Op::FileBytes(cluster::FileBytes {});
        let answer = self
            .send_to(
                &placement.worker,
                placement.epoch,
                tenant,
                None,
                op,
                false,
                0,
            )
            .await;
        self.hub
            .release(
                &placement.worker,
                tenant,
                placement.epoch,
                self.request_timeout(),
            )
            .await;
        match answer {
            Ok(Ok(Reply::StoredFileBytes(bytes))) => Some(bytes.cold),
            _ => None,
        }
    }

    /// A tenant's state and (collections, points, stored bytes) as its worker reports them, if
    /// it could be asked.
    async fn figures_of(
        &self,
        tenant: &crate::store::Tenant,
    ) -> (&'static str, Option<(u64, u64, u64)>) {
        if tenant.paused_from.is_some() {
            return ("paused", None);
        }
        match off_runtime(|| self.store.placement(&tenant.id)) {
            Ok(Some(_)) => {}
            Ok(None) => return ("unplaced", Some((0, 0, 0))),
            Err(_) => return ("active", None),
        }
        let tier = self.tiers.get(&tenant.tier).cloned();
        let listed = self
            .route(
                &tenant.id,
                tier.as_ref(),
                Op::ListCollections(api::ListCollectionsRequest {}),
            )
            .await;
        match listed {
            Ok(Reply::Collections(list)) => {
                let c = &list.collections;
                (
                    "active",
                    Some((
                        c.len() as u64,
                        c.iter().map(|i| i.points).sum(),
                        c.iter().map(|i| i.stored_bytes).sum(),
                    )),
                )
            }
            _ => ("active", None),
        }
    }
}

/// `POST /admin/v1/census`: days `from..=to` (UTC, `YYYY-MM-DD`, at most a year), of one tenant
/// or all, at most `limit` rows (1..=10000, default 10000) after the cursor `after`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CensusQuery {
    from: String,
    to: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
    /// `json` (the default) or `csv`.
    #[serde(default)]
    format: Option<CensusFormat>,
}

/// How `POST /admin/v1/census` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CensusFormat {
    /// `{rows, next}`.
    Json,
    /// A header line and one line per row (RFC 4180); the next page's cursor in the
    /// `vaultvec-next` header.
    Csv,
}

impl CensusQuery {
    /// Whether the answer is CSV.
    pub fn is_csv(&self) -> bool {
        self.format == Some(CensusFormat::Csv)
    }
}

/// A page of census rows, and the cursor of the next page if there may be one.
#[derive(Debug, serde::Serialize)]
pub struct CensusPage {
    rows: Vec<CensusRow>,
    /// The cursor of the next page, if there may be one.
    pub next: Option<String>,
}

impl CensusPage {
    /// The rows as CSV: a header line, then one line per row; an unknown figure is empty.
    pub fn to_csv(&self) -> Result<String, ApiError> {
        let mut out = csv::Writer::from_writer(Vec::new());
        let fail = |err: csv::Error| ApiError::internal(format!("writing CSV failed: {err}"));
        out.write_record([
            "day",
            "tenant",
            "tier",
            "state",
            "collections",
            "points",
            "bytes_hot",
            "bytes_cold",
            "requests",
            "searches",
            "taken_ms",
        ])
        .map_err(fail)?;
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        for r in &self.rows {
            out.write_record([
                r.day.clone(),
                r.tenant.clone(),
                r.tier.clone(),
                r.state.clone(),
                opt(r.collections),
                opt(r.points),
                opt(r.bytes_hot),
                opt(r.bytes_cold),
                r.requests.to_string(),
                r.searches.to_string(),
                r.taken_ms.to_string(),
            ])
            .map_err(fail)?;
        }
        let bytes = out
            .into_inner()
            .map_err(|err| ApiError::internal(format!("writing CSV failed: {err}")))?;
        String::from_utf8(bytes).map_err(|err| ApiError::internal(err.to_string()))
    }
}

const MAX_CENSUS_ROWS: usize = 10_000;

impl Service {
    /// The census rows `query` asks for.
    pub fn census(&self, query: &CensusQuery) -> Result<CensusPage, ApiError> {
        let (Some(from), Some(to)) = (day_number(&query.from), day_number(&query.to)) else {
            return Err(ApiError::invalid("from and to are days: YYYY-MM-DD"));
        };
        if from > to || to - from > 366 {
            return Err(ApiError::invalid(
                "from must not be after to, and the range is at most 366 days",
            ));
        }
        let limit = query.limit.unwrap_or(MAX_CENSUS_ROWS);
        if !(1..=MAX_CENSUS_ROWS).contains(&limit) {
            return Err(ApiError::invalid("limit is 1..=10000"));
        }
        let after = match &query.after {
            None => None,
            Some(cursor) => match cursor.split_once('/') {
                Some((day, tenant)) if day_number(day).is_some() && !tenant.is_empty() => {
                    Some((day, tenant))
                }
                _ => {
                    return Err(ApiError::invalid(
                        "after is the cursor a previous page answered as next",
                    ));
                }
            },
        };
        let rows = self.store.census(
            (&query.from, &query.to),
            query.tenant.as_deref(),
            after,
            limit,
        )?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|r| format!("{}/{}", r.day, r.tenant)))
            .flatten();
        Ok(CensusPage { rows, next })
    }
}

fn failed(error: &str) -> (&'static str, serde_json::Value) {
    tracing::error!(error, "the census failed");
    ("error", serde_json::json!({ "error": error }))
}
