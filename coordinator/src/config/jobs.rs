//! `[jobs]`: the scheduler's jobs and how often each runs.

use std::time::Duration;

use serde::Deserialize;

/// `[jobs]`: how often the scheduler runs each job (`crate::jobs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobs {
    #[serde(default = "default_verify_audit_every_s")]
    verify_audit_every_s: u64,
    #[serde(default = "default_rotate_keks_every_s")]
    rotate_keks_every_s: u64,
    #[serde(default = "default_flush_usage_every_s")]
    flush_usage_every_s: u64,
    #[serde(default = "default_census_every_s")]
    census_every_s: u64,
    #[serde(default = "default_snapshots_every_s")]
    snapshots_every_s: u64,
    #[serde(default = "default_anomalies_every_s")]
    anomalies_every_s: u64,
    #[serde(default = "default_send_mail_every_s")]
    send_mail_every_s: u64,
}

impl Default for RawJobs {
    fn default() -> RawJobs {
        RawJobs {
            verify_audit_every_s: default_verify_audit_every_s(),
            rotate_keks_every_s: default_rotate_keks_every_s(),
            flush_usage_every_s: default_flush_usage_every_s(),
            census_every_s: default_census_every_s(),
            snapshots_every_s: default_snapshots_every_s(),
            anomalies_every_s: default_anomalies_every_s(),
            send_mail_every_s: default_send_mail_every_s(),
        }
    }
}

fn default_verify_audit_every_s() -> u64 {
    3_600
}

fn default_rotate_keks_every_s() -> u64 {
    3_600
}

fn default_flush_usage_every_s() -> u64 {
    60
}

fn default_census_every_s() -> u64 {
    86_400
}

fn default_snapshots_every_s() -> u64 {
    3_600
}

fn default_anomalies_every_s() -> u64 {
    3_600
}

fn default_send_mail_every_s() -> u64 {
    60
}

/// The scheduled jobs with the intervals of `raw`.
pub(super) fn job_specs(raw: &RawJobs) -> Vec<crate::jobs::JobSpec> {
    use crate::billing::ANOMALIES;
    use crate::jobs::{CENSUS, FLUSH_USAGE, JobSpec, ROTATE_KEKS, SNAPSHOTS, VERIFY_AUDIT};
    use crate::mail::SEND_MAIL;
    [
        (VERIFY_AUDIT, raw.verify_audit_every_s),
        (ROTATE_KEKS, raw.rotate_keks_every_s),
        (FLUSH_USAGE, raw.flush_usage_every_s),
        (CENSUS, raw.census_every_s),
        (SNAPSHOTS, raw.snapshots_every_s),
        (ANOMALIES, raw.anomalies_every_s),
        (SEND_MAIL, raw.send_mail_every_s),
    ]
    .into_iter()
    .map(|(name, s)| JobSpec {
        name,
        every: Duration::from_secs(s),
    })
    .collect()
}
