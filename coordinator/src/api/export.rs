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
        let names: Vec<String> = self
            .stored_collections(&row)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
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

    /// A tenant's collections, asked of its worker; none for a tenant never placed (it has no
    /// data), without placing it.
    pub(crate) async fn stored_collections(
        &self,
        row: &crate::store::Tenant,
    ) -> Result<Vec<api::CollectionInfo>, ApiError> {
        if self.store.placement(&row.id)?.is_none() {
            return Ok(Vec::new());
        }
        let tier = self.tiers.get(&row.tier).cloned();
        match self
            .route(
                &row.id,
                tier.as_ref(),
                Op::ListCollections(api::ListCollectionsRequest {}),
            )
            .await?
        {
            Reply::Collections(list) => Ok(list.collections),
            _ => Err(ApiError::internal("unexpected answer to a listing")),
        }
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
