//! The collections page: list with sizes, create, and delete behind a confirmation page that
//! asks for the collection's name. Each runs through the API's own service call (the same
//! validation, tier limits, rate and paused-tenant checks as a key's request) under an identity
//! naming the member, and creations and deletions are audited in the tenant's chain
//! (`collection.create`, `collection.delete`): a `started` row before, its outcome after.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::{Value, context};
use proto::vaultvec::v1 as api;

use super::super::tenant::TenantAuth;
use super::{Form, error_page, html, human_bytes, page_context, see_other};
use crate::api::error::ApiError;
use crate::api::{Op, Reply, Service};
use crate::auth::{Identity, Scopes};

type Svc = Arc<Service>;

/// The identity a member's collection request runs under: every scope of the tenant (the
/// route's role was checked already), named after the member in logs.
fn identity(auth: &TenantAuth) -> Identity {
    Identity {
        tenant: auth.tenant.clone(),
        key_id: auth.actor(),
        scopes: Scopes {
            read: true,
            write: true,
            manage: true,
        },
        collections: None,
    }
}

fn metric_name(metric: i32) -> &'static str {
    match api::Metric::try_from(metric) {
        Ok(api::Metric::Cosine) => "cosine",
        Ok(api::Metric::Dot) => "dot",
        Ok(api::Metric::L2) => "l2",
        _ => "?",
    }
}

fn page_of(auth: &TenantAuth) -> String {
    format!(
        "/dashboard/t/{}/collections",
        super::super::encode_path(&auth.tenant)
    )
}

/// `GET /dashboard/t/{tenant}/collections`.
pub(in super::super) async fn collections_page(State(s): State<Svc>, auth: TenantAuth) -> Response {
    let listed = s
        .call(
            &identity(&auth),
            Op::ListCollections(api::ListCollectionsRequest {}),
            false,
        )
        .await;
    let (collections, unavailable): (Vec<Value>, Option<String>) = match listed {
        Ok(Reply::Collections(list)) => (
            list.collections
                .into_iter()
                .map(|c| {
                    let config = c.config.unwrap_or_default();
                    context! {
                        name => c.name,
                        dimension => config.dim,
                        metric => metric_name(config.metric),
                        points => c.points,
                        stored => human_bytes(c.stored_bytes),
                    }
                })
                .collect(),
            None,
        ),
        Ok(_) => (vec![], Some("unexpected answer from the worker".into())),
        // A paused tenant, an unreachable worker: the page still renders, saying why.
        Err(err) => (vec![], Some(err.message)),
    };
    html(
        StatusCode::OK,
        "collections.html",
        context! {
            collections => collections,
            unavailable => unavailable,
            ..page_context(&auth, "collections")
        },
    )
}

/// `POST /dashboard/t/{tenant}/collections` (form: `name`, `dimension`, `metric`).
pub(in super::super) async fn create_collection(
    State(s): State<Svc>,
    auth: TenantAuth,
    body: Body,
) -> Response {
    let back = page_of(&auth);
    let result = async {
        let form = Form::read(body).await?;
        let name = form.get("name").to_owned();
        let dim: u32 = form
            .get("dimension")
            .parse()
            .map_err(|_| ApiError::invalid("the dimension is a whole number"))?;
        let metric = match form.get("metric") {
            "cosine" => api::Metric::Cosine,
            "dot" => api::Metric::Dot,
            "l2" => api::Metric::L2,
            other => {
                return Err(ApiError::invalid(format!(
                    "{other:?} is not a metric (cosine, dot or l2)"
                )));
            }
        };
        let details =
            serde_json::json!({ "name": name, "dim": dim, "metric": metric_name(metric as i32) });
        s.audit_required_by(
            &auth.actor(),
            &auth.tenant,
            "collection.create",
            "started",
            details.clone(),
        )?;
        let op = Op::CreateCollection(api::CreateCollectionRequest {
            name: name.clone(),
            config: Some(api::CollectionConfig {
                dim,
                metric: metric as i32,
                ..Default::default()
            }),
        });
        let result = s.call(&identity(&auth), op, false).await;
        s.audit_outcome(&auth, "collection.create", &name, &result, details);
        result
    }
    .await;
    match result {
        Ok(_) => see_other(&back),
        Err(err) => error_page(Some(&auth), err, &back),
    }
}

/// `GET /dashboard/t/{tenant}/collections/{name}/delete`: the confirmation page.
pub(in super::super) async fn confirm_delete_collection(
    auth: TenantAuth,
    Path((_, name)): Path<(String, String)>,
) -> Response {
    html(
        StatusCode::OK,
        "collection_delete.html",
        context! { name => name, ..page_context(&auth, "collections") },
    )
}

/// `POST /dashboard/t/{tenant}/collections/{name}/delete` (form: `confirm`, the name again).
pub(in super::super) async fn delete_collection(
    State(s): State<Svc>,
    auth: TenantAuth,
    Path((_, name)): Path<(String, String)>,
    body: Body,
) -> Response {
    let back = page_of(&auth);
    let result = async {
        let form = Form::read(body).await?;
        if form.get("confirm") != name {
            return Err(ApiError::invalid(
                "type the collection's name exactly to confirm its deletion",
            ));
        }
        let details = serde_json::json!({ "name": name });
        s.audit_required_by(
            &auth.actor(),
            &auth.tenant,
            "collection.delete",
            "started",
            details.clone(),
        )?;
        let op = Op::DeleteCollection(api::DeleteCollectionRequest { name: name.clone() });
        let result = s.call(&identity(&auth), op, false).await;
        s.audit_outcome(&auth, "collection.delete", &name, &result, details);
        result
    }
    .await;
    match result {
        Ok(_) => see_other(&back),
        Err(err) => error_page(Some(&auth), err, &back),
    }
}

impl Service {
    /// The outcome row of a member's collection change.
    fn audit_outcome(
        &self,
        auth: &TenantAuth,
        action: &str,
        resource: &str,
        result: &Result<Reply, ApiError>,
        mut details: serde_json::Value,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(err) => {
                details["error"] = serde_json::Value::String(err.message.clone());
                "error"
            }
        };
        self.audit(
            &auth.tenant,
            &auth.actor(),
            action,
            resource,
            outcome,
            details,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_names() {
        assert_eq!(metric_name(api::Metric::Cosine as i32), "cosine");
        assert_eq!(metric_name(api::Metric::L2 as i32), "l2");
        assert_eq!(metric_name(99), "?");
    }
}
