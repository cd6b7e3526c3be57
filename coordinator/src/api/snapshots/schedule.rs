//! The `snapshots` job: scheduled snapshots per tier and their retention (see `crate::jobs`).

use super::*;

impl Service {
    /// The `snapshots` job (see `crate::jobs`): answers the outcome and what it did.
    pub(crate) async fn run_scheduled_snapshots(&self) -> (&'static str, serde_json::Value) {
        let now = self.clock().now_ms();
        let tenants = match off_runtime(|| self.store.list_tenants()) {
            Ok(tenants) => tenants,
            Err(err) => {
                return (
                    "error",
                    serde_json::json!({ "error": format!("listing the tenants failed: {err}") }),
                );
            }
        };
        let (mut taken, mut deleted, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for tenant in tenants.iter().filter(|t| !t.deleted) {
            let Some(tier) = self.tiers.get(&tenant.tier) else {
                continue;
            };
            if tier.snapshot_every_hours == 0 || tenant.storage != tenant_state::HOT {
                continue;
            }
            let scheduled = |rows: Vec<SnapshotRow>| -> Vec<SnapshotRow> {
                rows.into_iter()
                    .filter(|r| r.origin == ORIGIN_SCHEDULE)
                    .collect()
            };
            let rows = match off_runtime(|| self.store.snapshots(&tenant.id)) {
                Ok(rows) => scheduled(rows),
                Err(err) => {
                    failed
                        .push(serde_json::json!({ "tenant": tenant.id, "error": err.to_string() }));
                    continue;
                }
            };
            let every_ms = u64::from(tier.snapshot_every_hours) * 3_600_000;
            let due = rows
                .last()
                .is_none_or(|last| now.saturating_sub(last.created_ms) >= every_ms);
            if due {
                match self.take_snapshot(&tenant.id, ORIGIN_SCHEDULE).await {
                    Ok(view) => {
                        taken.push(serde_json::json!({ "tenant": tenant.id, "snapshot": view.id }))
                    }
                    Err(err) => {
                        failed
                            .push(serde_json::json!({ "tenant": tenant.id, "error": err.message }));
                        continue;
                    }
                }
            }
            let rows = match off_runtime(|| self.store.snapshots(&tenant.id)) {
                Ok(rows) => scheduled(rows),
                Err(err) => {
                    failed
                        .push(serde_json::json!({ "tenant": tenant.id, "error": err.to_string() }));
                    continue;
                }
            };
            let keep = tier.snapshot_keep as usize;
            for old in rows.iter().take(rows.len().saturating_sub(keep)) {
                match self.delete_snapshot(&tenant.id, &old.id, "system").await {
                    Ok(()) => {
                        deleted.push(serde_json::json!({ "tenant": tenant.id, "snapshot": old.id }))
                    }
                    Err(err) => failed
                        .push(serde_json::json!({ "tenant": tenant.id, "error": err.message })),
                }
            }
        }
        let outcome = if failed.is_empty() { "ok" } else { "error" };
        (
            outcome,
            serde_json::json!({ "taken": taken, "deleted": deleted, "failed": failed }),
        )
    }
}
