//! `GET /admin/v1/tenants/{tenant}/export`: a tenant's data as JSON lines, streamed. Each line is
//! one point (`{"collection", "id", "vector", "payload"}`); the last line is
//! `{"end": {"collections", "points"}}`, so a reader can tell a whole export from a cut one. A
//! page is fetched from the worker only when the previous one has been taken by the client, so
//! the coordinator holds at most one page of the tenant. A failure after the first line cuts the
//! stream (no `end` line).

use std::collections::VecDeque;

use axum::body::{Body, Bytes};
use axum::response::Response;

use super::Svc;
use super::dto::record_json;
use crate::api::error::ApiError;

struct Export {
    service: Svc,
    tenant: String,
    collections: VecDeque<String>,
    /// The collection being read and the cursor of its next page (`None`: its first page).
    current: Option<(String, Option<String>)>,
    collections_done: u64,
    points: u64,
    ended: bool,
}

impl Export {
    /// The next piece of the body: a page's lines, or the end line; `None` after it.
    async fn next(&mut self) -> Option<Result<Bytes, ApiError>> {
        loop {
            if self.ended {
                return None;
            }
            let Some((collection, cursor)) = self.current.take() else {
                match self.collections.pop_front() {
                    Some(next) => {
                        self.current = Some((next, None));
                        continue;
                    }
                    None => {
                        self.ended = true;
                        let end = serde_json::json!({ "end": {
                            "collections": self.collections_done, "points": self.points,
                        }});
                        return Some(Ok(Bytes::from(format!("{end}\n"))));
                    }
                }
            };
            let page = match self
                .service
                .export_page(&self.tenant, &collection, cursor.unwrap_or_default())
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    self.ended = true;
                    return Some(Err(err));
                }
            };
            let mut out = Vec::new();
            for record in page.points {
                let mut line = match record_json(record) {
                    Ok(line) => line,
                    Err(err) => {
                        self.ended = true;
                        return Some(Err(err));
                    }
                };
                if let Some(object) = line.as_object_mut() {
                    object.insert("collection".into(), collection.clone().into());
                }
                out.extend_from_slice(line.to_string().as_bytes());
                out.push(b'\n');
                self.points += 1;
            }
            if page.next_cursor.is_empty() {
                self.collections_done += 1;
            } else {
                self.current = Some((collection, Some(page.next_cursor)));
            }
            if !out.is_empty() {
                return Some(Ok(Bytes::from(out)));
            }
        }
    }
}

/// The streamed export of `tenant` (checked and audited before the first byte).
pub(super) async fn export_tenant(service: Svc, tenant: String) -> Result<Response, ApiError> {
    let collections = service.begin_export(&tenant).await?;
    let export = Export {
        service,
        tenant,
        collections: collections.into(),
        current: None,
        collections_done: 0,
        points: 0,
        ended: false,
    };
    let stream = futures_util::stream::unfold(export, |mut export| async move {
        let piece = export.next().await?;
        Some((
            piece.map_err(|err| std::io::Error::other(err.message)),
            export,
        ))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}
