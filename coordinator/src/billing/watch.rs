//! The `anomalies` job (see the parent module): flush the usage counters, make the pauses still
//! owed, then judge each live, unpaused tenant's last complete hour and last census day.

use super::{AnomalyPolicy, BASELINE_DAYS, MIN_BASELINE_DAYS, MIN_BASELINE_HOURS, assess};
use crate::api::{Service, off_runtime};
use crate::audit::Draft;
use crate::config::PAUSED_TIER;
use crate::store::billing::{HourUsage, NewAnomaly, NewMail, every_hour};
use crate::store::census::day_of;
use crate::store::{Error, Tenant};

/// The anomaly watch.
pub const ANOMALIES: &str = "anomalies";

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

type Metric = (&'static str, fn(&HourUsage) -> u64);

const HOURLY: [Metric; 3] = [
    ("requests", |u| u.requests),
    ("searches", |u| u.searches),
    ("upserted", |u| u.upserted),
];

impl Service {
    /// The `anomalies` job. Answers its outcome and what it found.
    pub(crate) async fn watch_anomalies(&self) -> (&'static str, serde_json::Value) {
        let (flushed, _) = off_runtime(|| self.flush_usage());
        let now = self.clock().now_ms();
        let mut errors = Vec::new();
        let paused = self.make_owed_pauses(&mut errors).await;
        let tenants = match off_runtime(|| self.store.list_tenants()) {
            Ok(t) => t,
            Err(err) => {
                return (
                    "error",
                    serde_json::json!({ "error": format!("listing the tenants failed: {err}") }),
                );
            }
        };
        let mut found = Vec::new();
        for tenant in tenants.iter().filter(|t| t.tier != PAUSED_TIER) {
            let Some(policy) = self.tiers.get(&tenant.tier).map(|t| t.anomaly.clone()) else {
                continue;
            };
            match off_runtime(|| self.judge(tenant, &policy, now)) {
                Ok(spikes) => found.extend(spikes),
                Err(err) => errors.push(serde_json::json!({
                    "tenant": tenant.id, "error": err.to_string(),
                })),
            }
        }
        let mut recorded = Vec::new();
        for anomaly in found {
            match off_runtime(|| self.record(&anomaly)) {
                Ok(Some(seq)) => recorded.push(serde_json::json!({
                    "tenant": anomaly.tenant, "metric": anomaly.metric, "audit_seq": seq,
                })),
                Ok(None) => {}
                Err(err) => errors.push(serde_json::json!({
                    "tenant": anomaly.tenant, "error": err.to_string(),
                })),
            }
        }
        // The pauses the new anomalies owe.
        let paused_now = self.make_owed_pauses(&mut errors).await;
        // Hourly usage older than the baseline needs is not kept.
        let keep_from = (now / HOUR_MS).saturating_sub((BASELINE_DAYS + 28) * 24);
        if let Err(err) = off_runtime(|| self.store.prune_usage_hours(keep_from)) {
            errors.push(serde_json::json!({ "error": format!("pruning usage hours: {err}") }));
        }
        let outcome = if errors.is_empty() && flushed == "ok" {
            "ok"
        } else {
            "error"
        };
        (
            outcome,
            serde_json::json!({
                "tenants": tenants.len(),
                "anomalies": recorded,
                "paused": paused + paused_now,
                "failed": errors,
            }),
        )
    }

    /// Pauses the tenants whose anomalies owe a pause (a tenant paused or deleted meanwhile owes
    /// none). Answers how many it paused.
    async fn make_owed_pauses(&self, errors: &mut Vec<serde_json::Value>) -> usize {
        let owed = match off_runtime(|| self.store.pauses_owed()) {
            Ok(owed) => owed,
            Err(err) => {
                errors.push(serde_json::json!({ "error": format!("reading owed pauses: {err}") }));
                return 0;
            }
        };
        let mut paused = 0;
        for row in owed {
            let tenant = &row.anomaly.tenant;
            let live = off_runtime(|| self.store.tenant(tenant))
                .ok()
                .flatten()
                .filter(|t| !t.deleted && t.tier != PAUSED_TIER);
            if live.is_some() {
                if let Err(err) = self.pause_by(tenant, "system").await {
                    tracing::warn!(tenant = %tenant, error = %err, "pausing a tenant for a billing anomaly failed; tried again at the next run");
                    errors.push(serde_json::json!({ "tenant": tenant, "error": err.message }));
                    continue;
                }
                tracing::warn!(tenant = %tenant, metric = %row.anomaly.metric, "a tenant was paused for a billing anomaly");
                paused += 1;
            }
            let now = self.clock().now_ms();
            if let Err(err) = off_runtime(|| self.store.anomaly_paused(row.id, now)) {
                errors.push(serde_json::json!({ "tenant": tenant, "error": err.to_string() }));
            }
        }
        paused
    }

    /// The anomalies of `tenant` at `now` (see the parent module).
    fn judge(
        &self,
        tenant: &Tenant,
        policy: &AnomalyPolicy,
        now: u64,
    ) -> Result<Vec<NewAnomaly>, Error> {
        let own = self.store.tenant_settings(&tenant.id)?.anomaly_threshold;
        let threshold = policy.threshold_for(own);
        let mut out = Vec::new();
        let spike =
            |metric: &str, period_ms, period_len_ms, value, a: super::Assessment| NewAnomaly {
                tenant: tenant.id.clone(),
                metric: metric.to_owned(),
                period_ms,
                period_len_ms,
                value,
                median: a.median,
                mad: a.mad,
                threshold,
                score: a.score,
                auto_pause: policy.auto_pause,
                found_ms: now,
            };
        // The last complete hour, against the hours before it since the tenant was created.
        let last = (now / HOUR_MS).saturating_sub(1);
        let first = (last.saturating_sub(BASELINE_DAYS * 24)).max(tenant.created_ms / HOUR_MS + 1);
        if last >= first && (last - first) as usize >= MIN_BASELINE_HOURS {
            let rows = self.store.usage_hours(&tenant.id, first, last)?;
            let hours = every_hour(&rows, first, last);
            let (current, before) = hours.split_last().expect("first <= last");
            for (metric, get) in HOURLY {
                let baseline: Vec<u64> = before.iter().map(get).collect();
                if let Some(a) = assess(&baseline, get(current), threshold, policy.min_hourly) {
                    out.push(spike(metric, last * HOUR_MS, HOUR_MS, get(current), a));
                }
            }
        }
        // Stored bytes: the last census day against the census days before it.
        let today = now / DAY_MS;
        let rows = self.store.census(
            (
                &day_of(today.saturating_sub(BASELINE_DAYS + 1) * DAY_MS),
                &day_of(today.saturating_sub(1) * DAY_MS),
            ),
            Some(&tenant.id),
            None,
            (BASELINE_DAYS + 2) as usize,
        )?;
        if let Some((latest, before)) = rows.split_last()
            && let Some(value) = latest.bytes_hot
        {
            let baseline: Vec<u64> = before.iter().filter_map(|r| r.bytes_hot).collect();
            if baseline.len() >= MIN_BASELINE_DAYS
                && let Some(a) = assess(&baseline, value, threshold, policy.min_stored_bytes)
            {
                let day_ms = crate::store::census::day_number(&latest.day).unwrap_or(0) * DAY_MS;
                out.push(spike("stored_bytes", day_ms, DAY_MS, value, a));
            }
        }
        Ok(out)
    }

    /// Records `anomaly` with its audit row and mails (one transaction). Answers the audit
    /// row's seq, or `None` if it was recorded before.
    fn record(&self, anomaly: &NewAnomaly) -> Result<Option<u64>, Error> {
        let tenant = &anomaly.tenant;
        let period = format!(
            "{} {:02}:00 UTC, {} h",
            day_of(anomaly.period_ms),
            (anomaly.period_ms / HOUR_MS) % 24,
            anomaly.period_len_ms / HOUR_MS
        );
        let draft = Draft {
            time_ms: anomaly.found_ms,
            actor: "system".into(),
            action: "billing.anomaly".into(),
            resource: tenant.clone(),
            outcome: "ok".into(),
            // Figures as text: an audit row's JSON must read back exactly.
            details: serde_json::json!({
                "metric": anomaly.metric,
                "period_start_ms": anomaly.period_ms,
                "period_ms": anomaly.period_len_ms,
                "value": anomaly.value,
                "median": format!("{:.2}", anomaly.median),
                "mad": format!("{:.2}", anomaly.mad),
                "score": format!("{:.2}", anomaly.score),
                "threshold": format!("{}", anomaly.threshold),
                "auto_pause": anomaly.auto_pause,
            }),
        };
        let subject = format!("[vaultvec] unusual {} for tenant {tenant}", anomaly.metric);
        let action = if anomaly.auto_pause {
            "The tenant's tier pauses it on an anomaly: it is being paused, and an operator \
             resumes it."
        } else {
            "The tenant keeps running."
        };
        let body = format!(
            "vaultvec found unusual usage for tenant {tenant}.\n\n\
             Metric: {}\nPeriod: {period}\nValue: {}\nBaseline median: {:.2} (MAD {:.2})\n\
             Robust z-score: {:.2} (threshold {})\n\n{action}\n",
            anomaly.metric,
            anomaly.value,
            anomaly.median,
            anomaly.mad,
            anomaly.score,
            anomaly.threshold,
        );
        let mails: Vec<NewMail> = self
            .recipients(tenant)?
            .into_iter()
            .map(|recipient| NewMail {
                recipient,
                subject: subject.clone(),
                body: body.clone(),
            })
            .collect();
        let row = self.store.record_anomaly(anomaly, draft, &mails)?;
        if let Some(row) = &row {
            self.metrics.billing_anomalies.inc();
            tracing::warn!(tenant = %tenant, metric = %anomaly.metric, value = anomaly.value, audit_seq = row.seq, mails = mails.len(), "billing anomaly");
        }
        Ok(row.map(|r| r.seq))
    }

    /// Who hears about `tenant`: its owners, its notification addresses and the operators.
    fn recipients(&self, tenant: &str) -> Result<Vec<String>, Error> {
        let mut to: Vec<String> = self
            .store
            .members_of(tenant)?
            .into_iter()
            .filter(|m| m.role == "owner")
            .map(|m| m.email)
            .collect();
        to.extend(self.store.tenant_settings(tenant)?.notify_emails);
        if let Some(dashboard) = self.dashboard() {
            to.extend(dashboard.operators().iter().cloned());
        }
        let mut seen = std::collections::BTreeSet::new();
        to.retain(|e| seen.insert(e.clone()));
        Ok(to)
    }
}
