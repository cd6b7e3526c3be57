//! Exporting a tenant's data (portability): every collection's points, vectors and payloads,
//! page by page (`Scroll`), so the coordinator never holds more than one page of the tenant.
//! The transport streams the pages (`http/export.rs`).

use proto::vaultvec::v1 as api;

use super::error::{ApiError, Code};
use super::{Op, Reply, Service};
use crate::config::PAUSED_TIER;

/// Points per page: with the largest vector (16 KiB) and payload (64 KiB) a page stays within a
/// worker's answer bound.
pub const EXPORT_PAGE_POINTS: u32 = 64;

impl Service {
    /// Checks that `tenant` can be exported and audits the export (`tenant.export`); answers its
    /// collections' names.
    pub async fn begin_export(&self, tenant: &str) -> Result<Vec<String>, ApiError> {
        let row = self.existing(tenant)?;
        if row.tier == PAUSED_TIER {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!("tenant {tenant} is paused; resume it to export its data"),
            ));
        }
        let names = if self.store.placement(tenant)?.is_none() {
            // Never placed: it has no data.
            Vec::new()
        } else {
            let tier = self.tiers.get(&row.tier).cloned();
            match self
                .route(
                    tenant,
                    tier.as_ref(),
                    Op::ListCollections(api::ListCollectionsRequest {}),
                )
                .await?
            {
                Reply::Collections(list) => list.collections.into_iter().map(|c| c.name).collect(),
                _ => return Err(ApiError::internal("unexpected answer to a listing")),
            }
        };
        self.audit(
            tenant,
            "admin",
            "tenant.export",
            tenant,
            "ok",
            serde_json::json!({ "collections": names }),
        );
        Ok(names)
    }

    /// The page of `collection` after `cursor` (empty for the first), with vectors and payloads.
    pub async fn export_page(
        &self,
        tenant: &str,
        collection: &str,
        cursor: String,
    ) -> Result<api::ScrollResponse, ApiError> {
        let row = self.existing(tenant)?;
        let tier = self.tiers.get(&row.tier).cloned();
        let op = Op::Scroll(api::ScrollRequest {
            collection: collection.to_owned(),
            cursor,
            limit: EXPORT_PAGE_POINTS,
            filter: None,
            with_payload: true,
            with_vector: true,
        });
        match self.route(tenant, tier.as_ref(), op).await? {
            Reply::Scroll(page) => Ok(page),
            _ => Err(ApiError::internal("unexpected answer to a scroll")),
        }
    }
}
