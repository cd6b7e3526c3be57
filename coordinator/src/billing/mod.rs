//! Billing anomalies: each tenant's usage against its own recent baseline.
//!
//! **Method.** For each live, unpaused tenant, the `anomalies` job (hourly by default) looks at
//! the last complete UTC hour's requests, searches and upserted points, and at the tenant's stored
//! bytes on the last census day. The baseline is the same metric over the [`BASELINE_DAYS`] before
//! (every hour of them, an hour without usage counting 0; stored bytes: each census day), never
//! before the tenant existed, and at least [`MIN_BASELINE_HOURS`] hours (stored bytes:
//! [`MIN_BASELINE_DAYS`] days) of it. With `m` its median and `MAD` the median of `|x - m|`, the
//! value's robust z-score is `(value - m) / s` with `s = max(1.4826 · MAD, 0.1 · m, 1)`: 1.4826
//! makes the MAD estimate a standard deviation for normal data; the floors keep a flat baseline
//! (MAD 0) from making any tiny change infinitely unusual, so over a flat baseline a value must
//! exceed `m · (1 + threshold / 10)`. The median and the MAD ignore a few earlier spikes, which a
//! mean and standard deviation would not. A value is an anomaly when its score exceeds the
//! threshold (the tenant's own setting within its tier's range, else the tier's) and the value
//! itself is at least the tier's floor (`min_hourly`, `min_stored_bytes`), so a small tenant
//! going from 2 requests to 40 is not flagged. Only increases count.
//!
//! **What an anomaly does** (`watch.rs`): one row per tenant, metric and period; its
//! `billing.anomaly` audit row on the tenant's chain; a mail to the tenant's owners, its
//! notification addresses and the operators, naming that audit row; all three in one transaction.
//! Where the tier says `auto_pause`, the tenant is then paused (the cold-storage pause, by
//! `system`); a pause that fails is tried again at the next run.

mod watch;

use serde::Deserialize;

pub use watch::ANOMALIES;

/// Days of baseline before the period looked at.
pub const BASELINE_DAYS: u64 = 7;
/// Hours of baseline a tenant needs before its hourly usage is judged.
pub const MIN_BASELINE_HOURS: usize = 24;
/// Census days of baseline a tenant needs before its stored bytes are judged.
pub const MIN_BASELINE_DAYS: usize = 3;
/// Most notification addresses a tenant may set.
pub const MAX_NOTIFY_EMAILS: usize = 10;

/// A tier's anomaly policy (`[tiers.<name>.anomaly]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyPolicy {
    /// The robust z-score above which a value is an anomaly (default 8).
    pub threshold: f64,
    /// The lowest threshold a tenant may set for itself (default 4).
    pub threshold_min: f64,
    /// The highest (default 50).
    pub threshold_max: f64,
    /// An hour with fewer requests (searches, upserted points) than this is never an anomaly
    /// (default 1000).
    pub min_hourly: u64,
    /// Stored bytes below this are never an anomaly (default 1 GiB).
    pub min_stored_bytes: u64,
    /// Whether an anomaly pauses the tenant (default false).
    pub auto_pause: bool,
}

impl Default for AnomalyPolicy {
    fn default() -> Self {
        AnomalyPolicy {
            threshold: 8.0,
            threshold_min: 4.0,
            threshold_max: 50.0,
            min_hourly: 1000,
            min_stored_bytes: 1 << 30,
            auto_pause: false,
        }
    }
}

impl AnomalyPolicy {
    /// Checks the policy of tier `name`.
    pub fn validate(&self, name: &str) -> anyhow::Result<()> {
        let finite = [self.threshold, self.threshold_min, self.threshold_max]
            .iter()
            .all(|t| t.is_finite() && *t > 0.0);
        if !finite
            || self.threshold_min > self.threshold
            || self.threshold > self.threshold_max
            || self.threshold_max > 1e6
        {
            anyhow::bail!(
                "tier {name}: anomaly thresholds must be positive numbers with \
                 threshold_min <= threshold <= threshold_max <= 1000000"
            );
        }
        Ok(())
    }

    /// The threshold a tenant that set `own` gets: its own within the range, else the tier's.
    pub fn threshold_for(&self, own: Option<f64>) -> f64 {
        match own {
            Some(t) if t >= self.threshold_min && t <= self.threshold_max => t,
            _ => self.threshold,
        }
    }
}

/// How unusual a value is against its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// The baseline's median.
    pub median: f64,
    /// Its median absolute deviation.
    pub mad: f64,
    /// The value's robust z-score.
    pub score: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Judges `value` against `baseline` (see the module docs): `Some` when it is an anomaly.
pub fn assess(baseline: &[u64], value: u64, threshold: f64, floor: u64) -> Option<Assessment> {
    if baseline.is_empty() || value < floor {
        return None;
    }
    let mut xs: Vec<f64> = baseline.iter().map(|&x| x as f64).collect();
    let m = median(&mut xs);
    let mut deviations: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
    let mad = median(&mut deviations);
    let scale = (1.4826 * mad).max(0.1 * m).max(1.0);
    let score = (value as f64 - m) / scale;
    (score > threshold).then_some(Assessment {
        median: m,
        mad,
        score,
    })
}

/// Checks the settings a tenant's owner submits: at most [`MAX_NOTIFY_EMAILS`] addresses (each
/// one an address, normalized to lower case, duplicates dropped), and a threshold within the
/// tier's range. Answers the settings to store, or what is wrong.
pub fn check_settings(
    policy: &AnomalyPolicy,
    emails: &str,
    threshold: &str,
) -> Result<crate::store::billing::TenantSettings, String> {
    let mut notify_emails: Vec<String> = Vec::new();
    for raw in emails
        .split([',', '\n', '\r', ' '])
        .filter(|e| !e.is_empty())
    {
        let email = crate::store::dashboard::normalize_email(raw).map_err(|e| e.to_string())?;
        if email.parse::<lettre::Address>().is_err() {
            return Err(format!("{email:?} is not an email address"));
        }
        if !notify_emails.contains(&email) {
            notify_emails.push(email);
        }
    }
    if notify_emails.len() > MAX_NOTIFY_EMAILS {
        return Err(format!(
            "at most {MAX_NOTIFY_EMAILS} notification addresses, not {}",
            notify_emails.len()
        ));
    }
    let threshold = threshold.trim();
    let anomaly_threshold = if threshold.is_empty() {
        None
    } else {
        let t: f64 = threshold
            .parse()
            .ok()
            .filter(|t: &f64| t.is_finite())
            .ok_or_else(|| format!("the anomaly threshold {threshold:?} is not a number"))?;
        if t < policy.threshold_min || t > policy.threshold_max {
            return Err(format!(
                "the anomaly threshold is {} to {} on this tier",
                policy.threshold_min, policy.threshold_max
            ));
        }
        Some(t)
    };
    Ok(crate::store::billing::TenantSettings {
        notify_emails,
        anomaly_threshold,
    })
}

impl crate::api::Service {
    /// `tenant`'s anomalies, newest first (at most 100).
    pub fn anomalies(
        &self,
        tenant: &str,
    ) -> Result<Vec<crate::store::billing::AnomalyRow>, crate::api::error::ApiError> {
        self.existing(tenant)?;
        Ok(self.store.anomalies_of(tenant, 100)?)
    }

    /// The anomaly policy of `tenant`'s tier (its tier before a pause, while paused).
    pub fn anomaly_policy(
        &self,
        tenant: &str,
    ) -> Result<AnomalyPolicy, crate::api::error::ApiError> {
        let t = self.existing(tenant)?;
        let tier = t.paused_from.unwrap_or(t.tier);
        self.tiers
            .get(&tier)
            .map(|t| t.anomaly.clone())
            .ok_or_else(|| {
                crate::api::error::ApiError::internal(format!(
                    "tenant {tenant} has unknown tier {tier}"
                ))
            })
    }

    /// Replaces `tenant`'s settings from a form's `emails` and `threshold` ([`check_settings`]
    /// against its tier), audited `settings.update` as `actor`.
    pub fn set_tenant_settings_as(
        &self,
        actor: &str,
        tenant: &str,
        emails: &str,
        threshold: &str,
    ) -> Result<(), crate::api::error::ApiError> {
        let policy = self.anomaly_policy(tenant)?;
        let settings = check_settings(&policy, emails, threshold)
            .map_err(crate::api::error::ApiError::invalid)?;
        self.store
            .set_tenant_settings(&crate::store::Actor(actor.into()), tenant, &settings)?;
        Ok(())
    }

    /// The outbox, newest first (at most 500; bodies are not shown).
    pub fn outbox(
        &self,
    ) -> Result<Vec<crate::store::billing::OutboxRow>, crate::api::error::ApiError> {
        Ok(self.store.outbox(500)?)
    }

    /// Queues a test mail to `to` (an operator checking `[mail]`), audited `mail.test` on the
    /// platform chain, which the mail names. Answers the audit row's seq.
    pub fn queue_test_mail(&self, to: &str) -> Result<u64, crate::api::error::ApiError> {
        let to = crate::store::dashboard::normalize_email(to)
            .map_err(|e| crate::api::error::ApiError::invalid(e.to_string()))?;
        if to.parse::<lettre::Address>().is_err() {
            return Err(crate::api::error::ApiError::invalid(format!(
                "{to:?} is not an email address"
            )));
        }
        let draft = crate::audit::Draft {
            time_ms: self.clock().now_ms(),
            actor: "admin".into(),
            action: "mail.test".into(),
            resource: to.clone(),
            outcome: "ok".into(),
            details: serde_json::json!({}),
        };
        let mail = crate::store::billing::NewMail {
            recipient: to,
            subject: "[vaultvec] test mail".into(),
            body: "This is a test mail from vaultvec: the outbox reaches this address.".into(),
        };
        let row = self.store.audit_and_queue(
            crate::api::admin::PLATFORM_CHAIN,
            draft,
            std::slice::from_ref(&mail),
        )?;
        Ok(row.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_over_a_steady_baseline_is_an_anomaly_and_ordinary_noise_is_not() {
        // A day of 100 to 120 requests an hour.
        let baseline: Vec<u64> = (0..168).map(|i| 100 + (i * 7) % 21).collect();
        // Within the noise: not an anomaly.
        assert!(assess(&baseline, 125, 8.0, 50).is_none());
        let a = assess(&baseline, 400, 8.0, 50).expect("a spike");
        assert_eq!(a.median, 107.0);
        assert!(a.score > 8.0, "{a:?}");
        // Under the tier's floor: never an anomaly, however unusual.
        assert!(assess(&baseline, 400, 8.0, 1000).is_none());
        // A drop is not an anomaly.
        assert!(assess(&baseline, 0, 8.0, 0).is_none());
    }

    #[test]
    fn earlier_spikes_do_not_hide_a_new_one() {
        // A baseline with a few huge hours: the median and MAD barely move.
        let mut baseline: Vec<u64> = vec![100; 160];
        baseline.extend([100_000; 8]);
        let a = assess(&baseline, 1_000, 8.0, 0).expect("still unusual");
        assert_eq!(a.median, 100.0);
        assert_eq!(a.mad, 0.0);
        // Over a flat baseline the floor of the scale is a tenth of the median.
        assert!(assess(&vec![100; 168], 180, 8.0, 0).is_none());
        assert!(assess(&vec![100; 168], 181, 8.0, 0).is_some());
        // An empty baseline, or all zeros: the scale is at least 1.
        assert!(assess(&[], 10_000, 8.0, 0).is_none());
        assert!(assess(&[0; 48], 9, 8.0, 0).is_some());
        assert!(assess(&[0; 48], 8, 8.0, 0).is_none());
    }

    #[test]
    fn settings_are_checked_against_the_tier() {
        let policy = AnomalyPolicy::default();
        let s = check_settings(
            &policy,
            "Billing@Acme.example, ops@acme.example\nbilling@acme.example",
            "12",
        )
        .unwrap();
        assert_eq!(
            s.notify_emails,
            ["billing@acme.example", "ops@acme.example"]
        );
        assert_eq!(s.anomaly_threshold, Some(12.0));
        assert_eq!(check_settings(&policy, "", "").unwrap(), Default::default());
        for (emails, threshold) in [
            ("not-an-address", ""),
            ("a@b.example", "3"),
            ("a@b.example", "51"),
            ("a@b.example", "NaN"),
            ("a@b.example", "inf"),
            ("a@b.example", "twelve"),
        ] {
            assert!(
                check_settings(&policy, emails, threshold).is_err(),
                "{emails} {threshold}"
            );
        }
        let many: Vec<String> = (0..11).map(|i| format!("p{i}@acme.example")).collect();
        assert!(check_settings(&policy, &many.join(","), "").is_err());
        assert_eq!(policy.threshold_for(Some(12.0)), 12.0);
        assert_eq!(policy.threshold_for(Some(1.0)), 8.0);
        assert_eq!(policy.threshold_for(None), 8.0);
    }

    #[test]
    fn a_policy_out_of_order_is_refused() {
        let bad = AnomalyPolicy {
            threshold: 3.0,
            ..AnomalyPolicy::default()
        };
        assert!(bad.validate("pro").is_err());
        let nan = AnomalyPolicy {
            threshold_max: f64::NAN,
            ..AnomalyPolicy::default()
        };
        assert!(nan.validate("pro").is_err());
        AnomalyPolicy::default().validate("pro").unwrap();
    }
}
