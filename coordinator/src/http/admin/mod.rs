//! Admin routes: every one requires the admin token (compared in constant time) and nothing else.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::path::Path;
use super::{bearer, finish, parse_json};
use crate::api::Service;
use crate::api::admin::parse_scopes;
use crate::api::error::ApiError;
use crate::store::Tenant;

mod billing;
mod fleet;
mod members;
mod snapshots;

use billing::{list_anomalies, outbox, test_mail};
use fleet::{drain_worker, move_tenant, placements, rebalance, undrain_worker, workers};
use members::{add_member, list_members, remove_member};
use snapshots::{
    delete_snapshot, download_snapshot, list_snapshots, restore_snapshot, take_snapshot,
    upload_snapshot, verify_snapshot,
};

type Svc = Arc<Service>;

pub(super) fn handler(name: &str) -> MethodRouter<Svc> {
    match name {
        "admin_create_tenant" => post(create_tenant),
        "admin_list_tenants" => get(list_tenants),
        "admin_get_tenant" => get(get_tenant),
        "admin_delete_tenant" => delete(delete_tenant),
        "admin_erase_entity" => delete(erase_entity),
        "admin_set_tier" => put(set_tier),
        "admin_pause" => post(pause),
        "admin_resume" => post(resume),
        "admin_issue_key" => post(issue_key),
        "admin_list_keys" => get(list_keys),
        "admin_revoke_key" => delete(revoke_key),
        "admin_rotate_kek" => post(rotate_kek),
        "admin_export_audit" => get(export_audit),
        "admin_verify_audit" => post(verify_audit),
        "admin_move_tenant" => post(move_tenant),
        "admin_workers" => get(workers),
        "admin_drain_worker" => post(drain_worker),
        "admin_rebalance" => post(rebalance),
        "admin_undrain_worker" => post(undrain_worker),
        "admin_placements" => get(placements),
        "admin_jobs" => get(jobs),
        "admin_census" => post(census),
        "admin_export_tenant" => get(export_tenant),
        "admin_take_snapshot" => post(take_snapshot),
        "admin_list_snapshots" => get(list_snapshots),
        "admin_add_member" => post(add_member),
        "admin_list_members" => get(list_members),
        "admin_remove_member" => delete(remove_member),
        "admin_verify_snapshot" => post(verify_snapshot),
        "admin_restore_snapshot" => post(restore_snapshot),
        "admin_delete_snapshot" => delete(delete_snapshot),
        "admin_download_snapshot" => get(download_snapshot),
        "admin_upload_snapshot" => put(upload_snapshot),
        "admin_list_anomalies" => get(list_anomalies),
        "admin_outbox" => get(outbox),
        "admin_test_mail" => post(test_mail),
        other => unreachable!("route {other} has no handler"),
    }
}

fn tenant_json(t: Tenant) -> Value {
    serde_json::json!({
        "id": t.id,
        "tier": t.tier,
        "paused": t.paused_from.is_some(),
        "storage": t.storage,
        "created_ms": t.created_ms,
    })
}

fn json<T: serde::Serialize>(value: T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// Checks the admin token, then runs `f` with the parsed body; logs and counts the request.
async fn admin<D, F, Fut>(
    service: Svc,
    endpoint: &'static str,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
    f: F,
) -> Response
where
    D: DeserializeOwned,
    F: FnOnce(Svc, D) -> Fut,
    Fut: Future<Output = Result<Value, ApiError>>,
{
    admin_response(service, endpoint, peer, headers, body, |s, d| async move {
        f(s, d).await.map(super::render)
    })
    .await
}

/// [`admin`] for a handler that answers a whole response (another content type than JSON).
async fn admin_response<D, F, Fut>(
    service: Svc,
    endpoint: &'static str,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
    f: F,
) -> Response
where
    D: DeserializeOwned,
    F: FnOnce(Svc, D) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    admin_raw(service, endpoint, peer, headers.clone(), |s| async move {
        // Nothing of the body is read before the token is checked.
        let body = super::read_body(&headers, body, super::MAX_ADMIN_BODY_BYTES).await?;
        let args = parse_json(&body)?;
        f(s, args).await
    })
    .await
}

/// Checks the admin token, then runs `f`, which reads the request's body (if any) itself;
/// logs and counts the request.
async fn admin_raw<F, Fut>(
    service: Svc,
    endpoint: &'static str,
    peer: SocketAddr,
    headers: HeaderMap,
    f: F,
) -> Response
where
    F: FnOnce(Svc) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let started = Instant::now();
    let result = async {
        let client = service.client_ip(Some(peer.ip()), super::forwarded_for(&headers));
        service.check_admin(bearer(&headers), client)?;
        f(service.clone()).await
    }
    .await;
    finish(&service, "admin", endpoint, "", "admin", started, result)
}

fn no_body() -> Body {
    Body::empty()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    tier: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// A member to invite (the admin API's and the dashboard's body).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMember {
    pub(crate) email: String,
    pub(crate) role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierArgs {
    tier: String,
}

/// A key to issue (the admin API's and the dashboard's body).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    pub(crate) scopes: Vec<String>,
    pub(crate) collections: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) label: String,
}

async fn create_tenant(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    b: Body,
) -> Response {
    admin(s, "admin_create_tenant", peer, h, b, |s, a: NewTenant| async move {
        Ok(tenant_json(s.create_tenant(&a.id, a.tier.as_deref())?))
    })
    .await
}

async fn list_tenants(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
) -> Response {
    admin(
        s,
        "admin_list_tenants",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            let tenants: Vec<Value> = s.list_tenants()?.into_iter().map(tenant_json).collect();
            Ok(serde_json::json!({ "tenants": tenants }))
        },
    )
    .await
}

async fn get_tenant(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_get_tenant",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            let t = s.get_tenant(&tenant)?;
            let placement = s.placements()?.into_iter().find(|p| p.tenant == tenant);
            let mut out = tenant_json(t);
            out["placement"] = match placement {
                Some(p) => serde_json::json!({ "worker": p.worker, "epoch": p.epoch }),
                None => Value::Null,
            };
            Ok(out)
        },
    )
    .await
}

async fn delete_tenant(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_delete_tenant",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { json(s.delete_tenant(&tenant).await?) },
    )
    .await
}

async fn erase_entity(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((tenant, entity)): Path<(String, String)>,
) -> Response {
    admin(
        s,
        "admin_erase_entity",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { json(s.erase_entity(&tenant, &entity).await?) },
    )
    .await
}

async fn set_tier(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    b: Body,
) -> Response {
    admin(
        s,
        "admin_set_tier",
        peer,
        h,
        b,
        |s, a: TierArgs| async move { Ok(tenant_json(s.set_tier(&tenant, &a.tier)?)) },
    )
    .await
}

async fn pause(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_pause",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { Ok(tenant_json(s.pause(&tenant).await?)) },
    )
    .await
}

async fn resume(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_resume",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { Ok(tenant_json(s.resume(&tenant).await?)) },
    )
    .await
}

async fn issue_key(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    b: Body,
) -> Response {
    admin(
        s,
        "admin_issue_key",
        peer,
        h,
        b,
        |s, a: NewKey| async move {
            let scopes = parse_scopes(&a.scopes)?;
            json(s.issue_key(&tenant, scopes, a.collections, &a.label)?)
        },
    )
    .await
}

async fn list_keys(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(s, "admin_list_keys", peer, h, no_body(), |s, _: NoArgs| async move {
        Ok(serde_json::json!({ "keys": json(s.list_keys(&tenant)?)? }))
    })
    .await
}

async fn revoke_key(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Response {
    admin(
        s,
        "admin_revoke_key",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { json(s.revoke_key(&tenant, &key_id)?) },
    )
    .await
}

async fn rotate_kek(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_rotate_kek",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { json(s.rotate_kek(&tenant).await?) },
    )
    .await
}

async fn export_audit(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(chain): Path<String>,
) -> Response {
    admin(
        s,
        "admin_export_audit",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { json(s.export_chain(&chain)?) },
    )
    .await
}

async fn verify_audit(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(chain): Path<String>,
) -> Response {
    admin(
        s,
        "admin_verify_audit",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            Ok(match s.verify_chain(&chain)? {
                Ok(()) => serde_json::json!({ "ok": true }),
                Err(error) => serde_json::json!({ "ok": false, "error": error }),
            })
        },
    )
    .await
}

async fn jobs(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
) -> Response {
    admin(
        s,
        "admin_jobs",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { Ok(serde_json::json!({ "jobs": s.jobs()? })) },
    )
    .await
}

async fn census(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    b: Body,
) -> Response {
    admin_response(
        s,
        "admin_census",
        peer,
        h,
        b,
        |s, q: crate::jobs::CensusQuery| async move {
            let csv = q.is_csv();
            let page = s.census(&q)?;
            if !csv {
                return Ok(super::render(json(page)?));
            }
            let next = page.next.clone();
            let text = page.to_csv()?;
            let mut response = axum::response::IntoResponse::into_response((
                [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                text,
            ));
            if let Some(next) = next
                && let Ok(value) = axum::http::HeaderValue::from_str(&next)
            {
                response.headers_mut().insert("vaultvec-next", value);
            }
            Ok(response)
        },
    )
    .await
}

async fn export_tenant(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin_response(
        s,
        "admin_export_tenant",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { super::export::export_tenant(s, tenant).await },
    )
    .await
}
