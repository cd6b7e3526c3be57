//! Admin routes of snapshots: take, list, verify, restore (into the tenant or another), delete.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::super::path::Path;
use super::{NoArgs, Svc, admin, admin_raw, json, no_body};
use crate::api::error::ApiError;
use crate::api::snapshots::Upload;

/// How long an upload may send nothing before it is cut off.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Bytes of an upload gathered before they are written to its file (off the runtime).
const UPLOAD_WRITE_BYTES: usize = 1 << 20;
/// Bytes of an archive read per piece of a download.
const DOWNLOAD_PIECE_BYTES: usize = 256 << 10;

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

/// Streams a snapshot's archive out of the store (`application/x-tar`, its length declared).
pub(super) async fn download_snapshot(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    admin_raw(s, "admin_download_snapshot", peer, h, |s| async move {
        let (file, len) = tokio::task::spawn_blocking(move || s.snapshot_archive(&tenant, &id))
            .await
            .map_err(|e| ApiError::internal(format!("opening the archive failed: {e}")))??;
        let file = tokio::fs::File::from_std(file);
        let pieces = futures_util::stream::try_unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt;
            let mut piece = vec![0u8; DOWNLOAD_PIECE_BYTES];
            let n = file.read(&mut piece).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            piece.truncate(n);
            Ok(Some((axum::body::Bytes::from(piece), file)))
        });
        let mut response = Response::new(Body::from_stream(pieces));
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/x-tar"),
        );
        headers.insert(axum::http::header::CONTENT_LENGTH, len.into());
        Ok(response)
    })
    .await
}

/// Takes an archive into the store as snapshot `id` of the tenant: streamed to a private file,
/// then checked whole and kept only if it passes (`Service::finish_upload`).
pub(super) async fn upload_snapshot(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    b: Body,
) -> Response {
    let declared = h
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    admin_raw(s, "admin_upload_snapshot", peer, h, |s| async move {
        // Nothing of the body is read before the token, the tenant, the id and the declared
        // length are checked.
        let upload = {
            let s = s.clone();
            tokio::task::spawn_blocking(move || s.begin_upload(&tenant, &id, declared))
                .await
                .map_err(|e| ApiError::internal(format!("starting the upload failed: {e}")))??
        };
        let upload = receive(upload, b).await?;
        let view = detached(async move { s.finish_upload(upload, "admin").await }).await?;
        Ok(super::super::render(json(view)?))
    })
    .await
}

/// Writes the body into the upload's file, a piece at a time; refused when the client sends
/// nothing for [`UPLOAD_IDLE`] or the upload passes its limit.
async fn receive(mut upload: Upload, body: Body) -> Result<Upload, ApiError> {
    let mut body = std::pin::pin!(body);
    let mut pending: Vec<u8> = Vec::with_capacity(UPLOAD_WRITE_BYTES);
    loop {
        let frame = tokio::time::timeout(UPLOAD_IDLE, http_body_util::BodyExt::frame(&mut body))
            .await
            .map_err(|_| {
                ApiError::invalid(format!(
                    "the upload sent nothing for {} s",
                    UPLOAD_IDLE.as_secs()
                ))
            })?;
        let end = match frame {
            None => true,
            Some(Err(err)) => {
                return Err(ApiError::invalid(format!(
                    "could not read the request body: {err}"
                )));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    pending.extend_from_slice(&data);
                }
                false
            }
        };
        if end || pending.len() >= UPLOAD_WRITE_BYTES {
            let piece = std::mem::take(&mut pending);
            upload = tokio::task::spawn_blocking(move || upload.write(&piece).map(|()| upload))
                .await
                .map_err(|e| ApiError::internal(format!("writing the upload failed: {e}")))??;
        }
        if end {
            return Ok(upload);
        }
    }
}
