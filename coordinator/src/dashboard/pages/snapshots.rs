//! The snapshots page: the tenant's snapshots, and (for an owner) taking one now. A snapshot
//! taken here has origin `owner`, is audited `snapshot.create` in the member's name, and counts
//! against `[snapshots] max_owner_snapshots`; the store's `max_total_bytes` bounds them all.
//! Restoring stays with the operator (the admin API).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::{Value, context};

use super::super::tenant::TenantAuth;
use super::{error_page, html, human_bytes, page_context, see_other, time_of};
use crate::api::Service;
use crate::api::snapshots::ORIGIN_OWNER;

fn page_of(auth: &TenantAuth) -> String {
    format!(
        "/dashboard/t/{}/snapshots",
        super::super::encode_path(&auth.tenant)
    )
}

/// `GET /dashboard/t/{tenant}/snapshots`.
pub(in super::super) async fn snapshots_page(
    State(s): State<Arc<Service>>,
    auth: TenantAuth,
) -> Response {
    let listed = match crate::api::off_runtime(|| s.list_snapshots(&auth.tenant)) {
        Ok(l) => l,
        Err(err) => return error_page(Some(&auth), err, "/dashboard"),
    };
    let snapshots: Vec<Value> = listed
        .into_iter()
        .rev()
        .map(|v| {
            context! {
                id => v.id,
                created => time_of(v.created_ms),
                origin => v.origin,
                files => v.files,
                size => human_bytes(v.archive_bytes),
            }
        })
        .collect();
    html(
        StatusCode::OK,
        "snapshots.html",
        context! {
            snapshots => snapshots,
            max_owner => s.snapshot_settings().max_owner_snapshots,
            ..page_context(&auth, "snapshots")
        },
    )
}

/// `POST /dashboard/t/{tenant}/snapshots`: takes one now (in a task of its own, so a browser
/// that goes away does not cut it short).
pub(in super::super) async fn take_snapshot(
    State(s): State<Arc<Service>>,
    auth: TenantAuth,
    _body: Body,
) -> Response {
    let (tenant, actor) = (auth.tenant.clone(), auth.actor());
    let taken =
        tokio::spawn(async move { s.take_snapshot_by(&tenant, ORIGIN_OWNER, &actor).await }).await;
    match taken {
        Ok(Ok(_)) => see_other(&page_of(&auth)),
        Ok(Err(err)) => error_page(Some(&auth), err, &page_of(&auth)),
        Err(join) => error_page(
            Some(&auth),
            crate::api::error::ApiError::internal(format!("the snapshot task failed: {join}")),
            &page_of(&auth),
        ),
    }
}
