//! The dashboard's HTTP routes. Every route declares the permission it needs in
//! [`DASHBOARD_ROUTES`], the router is built from that table, and a route that needs a session
//! takes the [`SessionAuth`] extractor, which answers 401 without a valid one (and 403 for a
//! state-changing request whose CSRF token is missing or wrong).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use super::roles::Action;
use super::{Callback, Session, pages};
use crate::api::Service;

type Svc = Arc<Service>;

/// The cookie that holds a session's id.
pub const SESSION_COOKIE: &str = "__Host-vv_session";
/// The cookie that binds a login flow to its browser.
pub const LOGIN_COOKIE: &str = "__Host-vv_login";
/// The header (or form field `csrf`) a state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a dashboard route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Nothing (the login redirect and the provider's callback).
    Public,
    /// A valid session.
    Session,
    /// A valid session whose user is a member of the route's `{tenant}` with a role that has
    /// this action ([`super::roles`]).
    Tenant(super::roles::Action),
}

/// One route of the dashboard.
#[derive(Debug, Clone, Copy)]
pub struct DashboardRoute {
    /// HTTP method.
    pub method: &'static str,
    /// Path.
    pub path: &'static str,
    /// What it needs.
    pub permission: Permission,
    /// Its name.
    pub name: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    permission: Permission,
    name: &'static str,
) -> DashboardRoute {
    DashboardRoute {
        method,
        path,
        permission,
        name,
    }
}

/// Every dashboard route; the router is built from this table.
pub const DASHBOARD_ROUTES: &[DashboardRoute] = &[
    route(
        "GET",
        "/dashboard/login/{provider}",
        Permission::Public,
        "dashboard_login",
    ),
    route(
        "GET",
        "/dashboard/callback/{provider}",
        Permission::Public,
        "dashboard_callback",
    ),
    route(
        "GET",
        "/dashboard/v1/me",
        Permission::Session,
        "dashboard_me",
    ),
    route(
        "POST",
        "/dashboard/logout",
        Permission::Session,
        "dashboard_logout",
    ),
    route(
        "GET",
        "/dashboard/v1/tenants/{tenant}/keys",
        Permission::Tenant(Action::KeysRead),
        "dashboard_list_keys",
    ),
    route(
        "POST",
        "/dashboard/v1/tenants/{tenant}/keys",
        Permission::Tenant(Action::KeysWrite),
        "dashboard_issue_key",
    ),
    route(
        "DELETE",
        "/dashboard/v1/tenants/{tenant}/keys/{key_id}",
        Permission::Tenant(Action::KeysWrite),
        "dashboard_revoke_key",
    ),
    route(
        "GET",
        "/dashboard/v1/tenants/{tenant}/members",
        Permission::Tenant(Action::MembersRead),
        "dashboard_list_members",
    ),
    route(
        "POST",
        "/dashboard/v1/tenants/{tenant}/members",
        Permission::Tenant(Action::MembersWrite),
        "dashboard_add_member",
    ),
    route(
        "GET",
        "/dashboard/v1/tenants/{tenant}/audit",
        Permission::Tenant(Action::AuditRead),
        "dashboard_audit",
    ),
    // The HTML pages (`super::pages`).
    route("GET", "/dashboard", Permission::Public, "page_home"),
    route(
        "GET",
        "/dashboard/assets/style.css",
        Permission::Public,
        "page_style",
    ),
    route(
        "GET",
        "/dashboard/operator",
        Permission::Session,
        "page_operator",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}",
        Permission::Tenant(Action::Overview),
        "page_overview",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/charts/{chart}",
        Permission::Tenant(Action::Overview),
        "page_chart",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/collections",
        Permission::Tenant(Action::CollectionsRead),
        "page_collections",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/collections",
        Permission::Tenant(Action::CollectionsWrite),
        "page_create_collection",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/collections/{name}/delete",
        Permission::Tenant(Action::CollectionsWrite),
        "page_confirm_delete_collection",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/collections/{name}/delete",
        Permission::Tenant(Action::CollectionsWrite),
        "page_delete_collection",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/keys",
        Permission::Tenant(Action::KeysRead),
        "page_keys",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/keys",
        Permission::Tenant(Action::KeysWrite),
        "page_create_key",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/keys/{key_id}/revoke",
        Permission::Tenant(Action::KeysWrite),
        "page_revoke_key",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/members",
        Permission::Tenant(Action::MembersRead),
        "page_members",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/members",
        Permission::Tenant(Action::MembersWrite),
        "page_invite_member",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/members/{email}/role",
        Permission::Tenant(Action::MembersWrite),
        "page_set_role",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/members/{email}/remove",
        Permission::Tenant(Action::MembersWrite),
        "page_remove_member",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/audit",
        Permission::Tenant(Action::AuditRead),
        "page_audit",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/snapshots",
        Permission::Tenant(Action::SnapshotsRead),
        "page_snapshots",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/snapshots",
        Permission::Tenant(Action::SnapshotsWrite),
        "page_take_snapshot",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/settings",
        Permission::Tenant(Action::SettingsRead),
        "page_settings",
    ),
    route(
        "POST",
        "/dashboard/t/{tenant}/settings",
        Permission::Tenant(Action::SettingsWrite),
        "page_save_settings",
    ),
    route(
        "GET",
        "/dashboard/t/{tenant}/audit/export",
        Permission::Tenant(Action::AuditRead),
        "page_audit_export",
    ),
];

fn handler(name: &str) -> MethodRouter<Svc> {
    match name {
        "dashboard_login" => get(login),
        "dashboard_callback" => get(callback),
        "dashboard_me" => get(me),
        "dashboard_logout" => post(logout),
        "dashboard_list_keys" => get(super::tenant::list_keys),
        "dashboard_issue_key" => post(super::tenant::issue_key),
        "dashboard_revoke_key" => axum::routing::delete(super::tenant::revoke_key),
        "dashboard_list_members" => get(super::tenant::list_members),
        "dashboard_add_member" => post(super::tenant::add_member),
        "dashboard_audit" => get(super::tenant::audit),
        "page_home" => get(pages::home),
        "page_style" => get(pages::style),
        "page_operator" => get(pages::operator),
        "page_overview" => get(pages::overview),
        "page_chart" => get(pages::chart),
        "page_collections" => get(pages::collections_page),
        "page_create_collection" => post(pages::create_collection),
        "page_confirm_delete_collection" => get(pages::confirm_delete_collection),
        "page_delete_collection" => post(pages::delete_collection),
        "page_keys" => get(pages::keys_page),
        "page_create_key" => post(pages::create_key),
        "page_revoke_key" => post(pages::revoke_key),
        "page_members" => get(pages::members_page),
        "page_invite_member" => post(pages::invite_member),
        "page_set_role" => post(pages::set_role),
        "page_remove_member" => post(pages::remove_member),
        "page_audit" => get(pages::audit_page),
        "page_snapshots" => get(pages::snapshots_page),
        "page_take_snapshot" => post(pages::take_snapshot),
        "page_settings" => get(pages::settings_page),
        "page_save_settings" => post(pages::save_settings),
        "page_audit_export" => get(pages::audit_export),
        other => unreachable!("dashboard route {other} has no handler"),
    }
}

/// The dashboard's routes, merged into the HTTP listener's router: every answer carries the
/// security headers (`pages::security_headers`), and a form's `csrf` field is checked as the
/// CSRF header (`pages::lift_form_csrf`).
pub fn router() -> Router<Svc> {
    let mut router = Router::new();
    for r in DASHBOARD_ROUTES {
        router = router.route(r.path, handler(r.name));
    }
    router
        .layer(axum::middleware::from_fn(pages::lift_form_csrf))
        .layer(axum::middleware::map_response(pages::security_headers))
}

/// The value of cookie `name` in `headers`, if present once.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
            {
                if found.is_some() {
                    // Two cookies of one name (a subdomain's planted one beside ours): neither.
                    return None;
                }
                found = Some(v);
            }
        }
    }
    found
}

pub(super) fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        message.into(),
    )
        .into_response()
}

fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax{age}"
    ))
    .expect("cookie values are base64url")
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(super) fn not_configured() -> Response {
    plain(StatusCode::NOT_FOUND, "the dashboard is not configured")
}

/// A request's valid session, checked before its handler runs (see the module docs).
pub struct SessionAuth {
    /// The session.
    pub session: Session,
    /// Its id, from the cookie.
    pub id: String,
}

/// 401 without a valid session: a page (with a way back to the login page) for a browser's GET
/// of a page, plain text for the JSON routes and anything else.
fn unauthenticated(parts: &Parts, message: &str) -> Response {
    if parts.method == Method::GET && !parts.uri.path().starts_with("/dashboard/v1/") {
        return pages::error_page(
            None,
            crate::api::error::ApiError::new(crate::api::error::Code::Unauthenticated, message),
            "/dashboard",
        );
    }
    plain(StatusCode::UNAUTHORIZED, message)
}

impl FromRequestParts<Svc> for SessionAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, service: &Svc) -> Result<Self, Response> {
        let Some(dashboard) = service.dashboard() else {
            return Err(not_configured());
        };
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(unauthenticated(parts, "log in first"));
        };
        let Some(session) = dashboard.session(id) else {
            return Err(unauthenticated(
                parts,
                "the session has ended; log in again",
            ));
        };
        let id = id.to_owned();
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let presented = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let matches: bool =
                subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), session.csrf.as_bytes()).into();
            if !matches {
                return Err(plain(
                    StatusCode::FORBIDDEN,
                    "the request's CSRF token is missing or wrong",
                ));
            }
        }
        Ok(SessionAuth { session, id })
    }
}

async fn login(State(service): State<Svc>, Path(provider): Path<String>) -> Response {
    let Some(dashboard) = service.dashboard() else {
        return not_configured();
    };
    if !dashboard.provider_names().contains(&provider) {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no login provider is called {provider:?}"),
        );
    }
    match dashboard.start_login(&provider).await {
        Ok((location, browser)) => {
            let mut response = redirect(&location);
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, &browser, Some(super::LOGIN_MAX_AGE.as_secs())),
            );
            response
        }
        // The provider could not be reached (or answered nonsense): not the browser's fault.
        Err(refused) => {
            tracing::warn!(provider, error = %refused, "starting a dashboard login failed");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the login provider cannot be reached; try again shortly",
            )
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(service): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(dashboard) = service.dashboard() else {
        return not_configured();
    };
    // A refused login writes an audit row: a client spends its failed-authentication budget
    // with each, and past it is answered 429 before anything is looked up or written.
    let client = service.client_ip(Some(peer.ip()), crate::http::forwarded_for(&headers));
    if let Err(err) = service.check_failure_budget(client) {
        return err.into_response();
    }
    let Ok(Query(query)) = query else {
        return plain(StatusCode::BAD_REQUEST, "the callback's query is malformed");
    };
    let callback = Callback {
        code: query.code,
        state: query.state,
        error: query.error,
        browser: cookie(&headers, LOGIN_COOKIE).map(str::to_owned),
    };
    let previous = cookie(&headers, SESSION_COOKIE);
    let mut response = match dashboard.finish_login(&provider, callback, previous).await {
        Ok(id) => {
            let mut response = redirect("/dashboard");
            response
                .headers_mut()
                .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, None));
            response
        }
        Err(refused) => {
            service.spend_failure_budget(client);
            plain(StatusCode::FORBIDDEN, format!("login refused: {refused}"))
        }
    };
    // The flow is over either way.
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", Some(0)));
    response
}

async fn me(State(service): State<Svc>, auth: SessionAuth) -> Response {
    let Some(dashboard) = service.dashboard() else {
        return not_configured();
    };
    let memberships: Vec<serde_json::Value> = dashboard
        .memberships(&auth.session.email)
        .into_iter()
        .map(|m| serde_json::json!({ "tenant": m.tenant, "role": m.role }))
        .collect();
    let mut response = axum::Json(serde_json::json!({
        "email": auth.session.email,
        "provider": auth.session.provider,
        "memberships": memberships,
        "csrf_token": auth.session.csrf,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn logout(
    State(service): State<Svc>,
    headers: HeaderMap,
    auth: SessionAuth,
    _body: Body,
) -> Response {
    let Some(dashboard) = service.dashboard() else {
        return not_configured();
    };
    dashboard.logout(&auth.id);
    // The page's form goes back to the login page; a script's request gets text.
    let from_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let mut response = if from_form {
        redirect("/dashboard")
    } else {
        plain(StatusCode::OK, "logged out")
    };
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", Some(0)));
    response
}
