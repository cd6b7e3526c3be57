//! The dashboard's tenant routes (`/dashboard/v1/tenants/{tenant}/...`), as JSON: API keys
//! (list, create with the secret shown once, revoke), members (list, invite), and the audit
//! chain with whether it verifies. Each is done in the member's name (`user:<email>` in the
//! tenant's audit chain).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::roles::allows;
use super::routes::{DASHBOARD_ROUTES, Permission, SessionAuth, plain};
use crate::api::Service;
use crate::api::error::ApiError;
use crate::http::admin::{NewKey, NewMember};

type Svc = Arc<Service>;

/// Largest body of a dashboard request.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// A member of the route's tenant (or an operator) whose role allows the route's declared
/// action.
pub struct TenantAuth {
    /// The tenant.
    pub tenant: String,
    /// The member's email.
    pub email: String,
    /// Their role in the tenant (`operator` for an operator).
    pub role: String,
    /// The session's CSRF token, for the page's forms.
    pub csrf: String,
    /// The dashboard clock's time of the request, Unix ms.
    pub now_ms: u64,
}

impl TenantAuth {
    /// Who the tenant's audit chain names for what this request does: `user:<email>`, or
    /// `operator:<email>` for an operator.
    pub fn actor(&self) -> String {
        if self.role == super::roles::OPERATOR {
            format!("operator:{}", self.email)
        } else {
            format!("user:{}", self.email)
        }
    }

    /// Whether the caller's role allows `action`.
    pub fn may(&self, action: super::roles::Action) -> bool {
        allows(&self.role, action)
    }
}

impl FromRequestParts<Svc> for TenantAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, service: &Svc) -> Result<Self, Response> {
        let auth = SessionAuth::from_request_parts(parts, service).await?;
        let matched = parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let method = parts.method.as_str();
        let declared = DASHBOARD_ROUTES
            .iter()
            .find(|r| r.path == matched && r.method == method)
            .map(|r| r.permission);
        let Some(Permission::Tenant(action)) = declared else {
            return Err(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this route declares no tenant permission",
            ));
        };
        let params: Path<HashMap<String, String>> = Path::from_request_parts(parts, service)
            .await
            .map_err(|_| plain(StatusCode::BAD_REQUEST, "a malformed path"))?;
        let tenant = params.get("tenant").cloned().unwrap_or_default();
        let Some(dashboard) = service.dashboard() else {
            return Err(super::routes::not_configured());
        };
        // An operator holds the operator role in every live tenant; anyone else their
        // membership's. Not a member: the same answer as a tenant that does not exist.
        let role = if dashboard.is_operator(&auth.session.email) {
            crate::api::off_runtime(|| service.get_tenant(&tenant))
                .map(|_| super::roles::OPERATOR.to_owned())
                .map_err(|_| plain(StatusCode::NOT_FOUND, "no such tenant"))?
        } else {
            dashboard
                .memberships(&auth.session.email)
                .into_iter()
                .find(|m| m.tenant == tenant)
                .map(|m| m.role)
                .ok_or_else(|| plain(StatusCode::NOT_FOUND, "no such tenant"))?
        };
        if !allows(&role, action) {
            return Err(plain(
                StatusCode::FORBIDDEN,
                format!("a {role} may not do this ({action:?})"),
            ));
        }
        let auth = TenantAuth {
            tenant,
            email: auth.session.email,
            role,
            csrf: auth.session.csrf,
            now_ms: dashboard.now_ms(),
        };
        // An operator's change to a tenant is mirrored on the platform chain (the tenant's
        // own chain names them in the change's row).
        if auth.role == super::roles::OPERATOR && parts.method != axum::http::Method::GET {
            service.audit(
                crate::api::admin::PLATFORM_CHAIN,
                &auth.actor(),
                "operator.request",
                &auth.tenant,
                "ok",
                serde_json::json!({ "method": parts.method.as_str(), "route": matched }),
            );
        }
        Ok(auth)
    }
}

fn answer<T: serde::Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::invalid(format!("the body is over {MAX_BODY_BYTES} bytes")))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("the body: {e}")))
}

pub(super) async fn list_keys(State(s): State<Svc>, auth: TenantAuth) -> Response {
    answer(
        s.list_keys(&auth.tenant)
            .map(|keys| serde_json::json!({ "keys": keys })),
    )
}

pub(super) async fn issue_key(State(s): State<Svc>, auth: TenantAuth, body: Body) -> Response {
    let result = async {
        let a: NewKey = json_body(body).await?;
        let scopes = crate::api::admin::parse_scopes(&a.scopes)?;
        s.issue_key_as(&auth.actor(), &auth.tenant, scopes, a.collections, &a.label)
    }
    .await;
    answer(result)
}

pub(super) async fn revoke_key(
    State(s): State<Svc>,
    auth: TenantAuth,
    Path((_, key_id)): Path<(String, String)>,
) -> Response {
    answer(s.revoke_key_as(&auth.actor(), &auth.tenant, &key_id))
}

pub(super) async fn list_members(State(s): State<Svc>, auth: TenantAuth) -> Response {
    answer(
        s.list_members(&auth.tenant)
            .map(|members| serde_json::json!({ "members": members })),
    )
}

pub(super) async fn add_member(State(s): State<Svc>, auth: TenantAuth, body: Body) -> Response {
    let result = async {
        let a: NewMember = json_body(body).await?;
        s.add_member_as(&auth.actor(), &auth.tenant, &a.email, &a.role)
    }
    .await;
    answer(result)
}

pub(super) async fn audit(State(s): State<Svc>, auth: TenantAuth) -> Response {
    let actor = auth.actor();
    let tenant = auth.tenant.clone();
    answer(crate::api::off_runtime(|| {
        s.export_chain_as(&actor, &tenant)
    }))
}
