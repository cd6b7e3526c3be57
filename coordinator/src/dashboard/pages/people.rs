//! The API keys and members pages. Keys: list, create with scopes and collection restrictions
//! (the secret is on the answer to the form, once, never stored in a way to show again), revoke.
//! Members: list, invite, change a role, remove; a tenant always keeps an owner. Every change is
//! the service's own, audited in the tenant's chain under the member's (or operator's) name.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::{Value, context};

use super::super::tenant::TenantAuth;
use super::{Form, error_page, html, page_context, see_other, time_of};
use crate::api::Service;
use crate::api::error::ApiError;
use crate::store::dashboard::ROLES;

type Svc = Arc<Service>;

/// Most collections a key made in the dashboard may be restricted to.
const MAX_KEY_COLLECTIONS: usize = 64;

fn keys_url(auth: &TenantAuth) -> String {
    format!(
        "/dashboard/t/{}/keys",
        super::super::encode_path(&auth.tenant)
    )
}

fn members_url(auth: &TenantAuth) -> String {
    format!(
        "/dashboard/t/{}/members",
        super::super::encode_path(&auth.tenant)
    )
}

fn render_keys(s: &Service, auth: &TenantAuth, created: Option<Value>) -> Response {
    let keys = match crate::api::off_runtime(|| s.list_keys(&auth.tenant)) {
        Ok(keys) => keys,
        Err(err) => return error_page(Some(auth), err, "/dashboard"),
    };
    let keys: Vec<Value> = keys
        .into_iter()
        .map(|k| {
            context! {
                key_id => k.key_id,
                label => k.label,
                scopes => k.scopes,
                collections => k.collections,
                created => time_of(k.created_ms),
                revoked => k.revoked_ms.is_some(),
            }
        })
        .collect();
    html(
        StatusCode::OK,
        "keys.html",
        context! { keys => keys, created => created, ..page_context(auth, "keys") },
    )
}

/// `GET /dashboard/t/{tenant}/keys`.
pub(in super::super) async fn keys_page(State(s): State<Svc>, auth: TenantAuth) -> Response {
    render_keys(&s, &auth, None)
}

/// `POST /dashboard/t/{tenant}/keys` (form: `label`, `scope` once per scope, `collections`
/// comma-separated). Answers the keys page with the new secret on it.
pub(in super::super) async fn create_key(
    State(s): State<Svc>,
    auth: TenantAuth,
    body: Body,
) -> Response {
    let result = async {
        let form = Form::read(body).await?;
        let scopes = crate::api::admin::parse_scopes(&form.all("scope"))?;
        let collections: Vec<String> = form
            .get("collections")
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        if collections.len() > MAX_KEY_COLLECTIONS {
            return Err(ApiError::invalid(format!(
                "a key may be restricted to at most {MAX_KEY_COLLECTIONS} collections"
            )));
        }
        let collections = (!collections.is_empty()).then_some(collections);
        let label = form.get("label").to_owned();
        crate::api::off_runtime(|| {
            s.issue_key_as(&auth.actor(), &auth.tenant, scopes, collections, &label)
        })
    }
    .await;
    match result {
        Ok(issued) => {
            let created = context! { key_id => issued.info.key_id, api_key => issued.key };
            render_keys(&s, &auth, Some(created))
        }
        Err(err) => error_page(Some(&auth), err, &keys_url(&auth)),
    }
}

/// `POST /dashboard/t/{tenant}/keys/{key_id}/revoke`.
pub(in super::super) async fn revoke_key(
    State(s): State<Svc>,
    auth: TenantAuth,
    Path((_, key_id)): Path<(String, String)>,
    _body: Body,
) -> Response {
    match crate::api::off_runtime(|| s.revoke_key_as(&auth.actor(), &auth.tenant, &key_id)) {
        Ok(_) => see_other(&keys_url(&auth)),
        Err(err) => error_page(Some(&auth), err, &keys_url(&auth)),
    }
}

/// `GET /dashboard/t/{tenant}/members`.
pub(in super::super) async fn members_page(State(s): State<Svc>, auth: TenantAuth) -> Response {
    let members = match crate::api::off_runtime(|| s.list_members(&auth.tenant)) {
        Ok(m) => m,
        Err(err) => return error_page(Some(&auth), err, "/dashboard"),
    };
    let members: Vec<Value> = members
        .into_iter()
        .map(|m| {
            context! {
                email => m.email,
                role => m.role,
                invited_by => m.invited_by,
                created => time_of(m.created_ms),
            }
        })
        .collect();
    html(
        StatusCode::OK,
        "members.html",
        context! { members => members, roles => ROLES, ..page_context(&auth, "members") },
    )
}

/// `POST /dashboard/t/{tenant}/members` (form: `email`, `role`).
pub(in super::super) async fn invite_member(
    State(s): State<Svc>,
    auth: TenantAuth,
    body: Body,
) -> Response {
    let result = async {
        let form = Form::read(body).await?;
        let (email, role) = (form.get("email").to_owned(), form.get("role").to_owned());
        crate::api::off_runtime(|| s.add_member_as(&auth.actor(), &auth.tenant, &email, &role))
    }
    .await;
    match result {
        Ok(_) => see_other(&members_url(&auth)),
        Err(err) => error_page(Some(&auth), err, &members_url(&auth)),
    }
}

/// `POST /dashboard/t/{tenant}/members/{email}/role` (form: `role`).
pub(in super::super) async fn set_role(
    State(s): State<Svc>,
    auth: TenantAuth,
    Path((_, email)): Path<(String, String)>,
    body: Body,
) -> Response {
    let result = async {
        let form = Form::read(body).await?;
        let role = form.get("role").to_owned();
        crate::api::off_runtime(|| s.set_member_role_as(&auth.actor(), &auth.tenant, &email, &role))
    }
    .await;
    match result {
        Ok(_) => see_other(&members_url(&auth)),
        Err(err) => error_page(Some(&auth), err, &members_url(&auth)),
    }
}

/// `POST /dashboard/t/{tenant}/members/{email}/remove`.
pub(in super::super) async fn remove_member(
    State(s): State<Svc>,
    auth: TenantAuth,
    Path((_, email)): Path<(String, String)>,
    _body: Body,
) -> Response {
    match crate::api::off_runtime(|| s.remove_member_as(&auth.actor(), &auth.tenant, &email)) {
        Ok(()) => see_other(&members_url(&auth)),
        Err(err) => error_page(Some(&auth), err, &members_url(&auth)),
    }
}
