//! Admin routes of snapshots: take, list, verify, restore (into the tenant or another), delete.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::super::path::Path;
use super::{NoArgs, Svc, admin, json, no_body};
use crate::api::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreArgs {
    /// Another tenant to restore the snapshot into (by re-encrypting it) instead of its own.
    into: Option<String>,
}

/// Runs a long snapshot operation in a task of its own: a caller that goes away does not stop
/// it halfway.
pub(super) async fn detached<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    tokio::spawn(f)
        .await
        .map_err(|err| ApiError::internal(format!("the snapshot task failed: {err}")))?
}

pub(super) async fn take_snapshot(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_take_snapshot",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            let snapshot = detached(async move {
                s.take_snapshot(&tenant, crate::api::snapshots::ORIGIN_ADMIN)
                    .await
            })
            .await?;
            json(snapshot)
        },
    )
    .await
}

pub(super) async fn list_snapshots(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_list_snapshots",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            json(serde_json::json!({ "snapshots": s.list_snapshots(&tenant)? }))
        },
    )
    .await
}

pub(super) async fn verify_snapshot(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    admin(
        s,
        "admin_verify_snapshot",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            json(detached(async move { s.verify_snapshot(&tenant, &id).await }).await?)
        },
    )
    .await
}

pub(super) async fn restore_snapshot(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    b: Body,
) -> Response {
    admin(
        s,
        "admin_restore_snapshot",
        peer,
        h,
        b,
        |s, a: RestoreArgs| async move {
            match a.into {
                Some(into) => json(
                    detached(async move { s.restore_snapshot_into(&tenant, &id, &into).await })
                        .await?,
                ),
                None => {
                    json(detached(async move { s.restore_snapshot(&tenant, &id).await }).await?)
                }
            }
        },
    )
    .await
}

pub(super) async fn delete_snapshot(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    admin(
        s,
        "admin_delete_snapshot",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            s.delete_snapshot(&tenant, &id, "admin").await?;
            json(serde_json::json!({ "deleted": id }))
        },
    )
    .await
}
