//! The HTTP listener's route table: every route with its auth policy. The router is built from
//! it, so a route cannot exist without a policy (INV-12).

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No credential (health, the OpenAPI document).
    Public,
    /// A tenant's API key.
    ApiKey,
    /// The admin token.
    Admin,
}

/// One route of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path, with `{param}` placeholders as in the OpenAPI document.
    pub path: &'static str,
    /// Who may call it.
    pub policy: Policy,
    /// Operation name (metrics, logs, OpenAPI operationId).
    pub name: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    policy: Policy,
    name: &'static str,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        policy,
        name,
    }
}

/// Every route of the HTTP listener. The router is built from this table.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/v1/health", Policy::Public, "health"),
    route("GET", "/openapi.json", Policy::Public, "openapi"),
    route(
        "POST",
        "/v1/collections",
        Policy::ApiKey,
        "create_collection",
    ),
    route("GET", "/v1/collections", Policy::ApiKey, "list_collections"),
    route(
        "GET",
        "/v1/collections/{name}",
        Policy::ApiKey,
        "get_collection",
    ),
    route(
        "DELETE",
        "/v1/collections/{name}",
        Policy::ApiKey,
        "delete_collection",
    ),
    route(
        "PUT",
        "/v1/collections/{name}/points",
        Policy::ApiKey,
        "upsert",
    ),
    route(
        "POST",
        "/v1/collections/{name}/points/get",
        Policy::ApiKey,
        "get_points",
    ),
    route(
        "POST",
        "/v1/collections/{name}/points/delete",
        Policy::ApiKey,
        "delete_points",
    ),
    route(
        "POST",
        "/v1/collections/{name}/points/scroll",
        Policy::ApiKey,
        "scroll",
    ),
    route(
        "POST",
        "/v1/collections/{name}/points/count",
        Policy::ApiKey,
        "count",
    ),
    route(
        "POST",
        "/v1/collections/{name}/points/search",
        Policy::ApiKey,
        "search",
    ),
    route(
        "POST",
        "/v1/collections/{name}/points/search/batch",
        Policy::ApiKey,
        "search_batch",
    ),
    route(
        "POST",
        "/admin/v1/tenants",
        Policy::Admin,
        "admin_create_tenant",
    ),
    route(
        "GET",
        "/admin/v1/tenants",
        Policy::Admin,
        "admin_list_tenants",
    ),
    route(
        "GET",
        "/admin/v1/tenants/{tenant}",
        Policy::Admin,
        "admin_get_tenant",
    ),
    route(
        "DELETE",
        "/admin/v1/tenants/{tenant}",
        Policy::Admin,
        "admin_delete_tenant",
    ),
    route(
        "DELETE",
        "/admin/v1/tenants/{tenant}/entities/{entity_id}",
        Policy::Admin,
        "admin_erase_entity",
    ),
    route(
        "PUT",
        "/admin/v1/tenants/{tenant}/tier",
        Policy::Admin,
        "admin_set_tier",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/pause",
        Policy::Admin,
        "admin_pause",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/resume",
        Policy::Admin,
        "admin_resume",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/keys",
        Policy::Admin,
        "admin_issue_key",
    ),
    route(
        "GET",
        "/admin/v1/tenants/{tenant}/keys",
        Policy::Admin,
        "admin_list_keys",
    ),
    route(
        "DELETE",
        "/admin/v1/tenants/{tenant}/keys/{key_id}",
        Policy::Admin,
        "admin_revoke_key",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/rotate-kek",
        Policy::Admin,
        "admin_rotate_kek",
    ),
    route(
        "GET",
        "/admin/v1/audit/{chain}",
        Policy::Admin,
        "admin_export_audit",
    ),
    route(
        "POST",
        "/admin/v1/audit/{chain}/verify",
        Policy::Admin,
        "admin_verify_audit",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/move",
        Policy::Admin,
        "admin_move_tenant",
    ),
    route(
        "POST",
        "/admin/v1/rebalance",
        Policy::Admin,
        "admin_rebalance",
    ),
    route("GET", "/admin/v1/workers", Policy::Admin, "admin_workers"),
    route(
        "POST",
        "/admin/v1/workers/{worker}/drain",
        Policy::Admin,
        "admin_drain_worker",
    ),
    route(
        "POST",
        "/admin/v1/workers/{worker}/undrain",
        Policy::Admin,
        "admin_undrain_worker",
    ),
    route(
        "GET",
        "/admin/v1/placements",
        Policy::Admin,
        "admin_placements",
    ),
    route("GET", "/admin/v1/jobs", Policy::Admin, "admin_jobs"),
    route("POST", "/admin/v1/census", Policy::Admin, "admin_census"),
    route(
        "GET",
        "/admin/v1/tenants/{tenant}/export",
        Policy::Admin,
        "admin_export_tenant",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/snapshots",
        Policy::Admin,
        "admin_take_snapshot",
    ),
    route(
        "GET",
        "/admin/v1/tenants/{tenant}/snapshots",
        Policy::Admin,
        "admin_list_snapshots",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/snapshots/{snapshot}/verify",
        Policy::Admin,
        "admin_verify_snapshot",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/snapshots/{snapshot}/restore",
        Policy::Admin,
        "admin_restore_snapshot",
    ),
    route(
        "DELETE",
        "/admin/v1/tenants/{tenant}/snapshots/{snapshot}",
        Policy::Admin,
        "admin_delete_snapshot",
    ),
    route(
        "GET",
        "/admin/v1/tenants/{tenant}/snapshots/{snapshot}/archive",
        Policy::Admin,
        "admin_download_snapshot",
    ),
    route(
        "PUT",
        "/admin/v1/tenants/{tenant}/snapshots/{snapshot}/archive",
        Policy::Admin,
        "admin_upload_snapshot",
    ),
    route(
        "POST",
        "/admin/v1/tenants/{tenant}/members",
        Policy::Admin,
        "admin_add_member",
    ),
    route(
        "GET",
        "/admin/v1/tenants/{tenant}/members",
        Policy::Admin,
        "admin_list_members",
    ),
    route(
        "DELETE",
        "/admin/v1/tenants/{tenant}/members/{email}",
        Policy::Admin,
        "admin_remove_member",
    ),
    route(
        "GET",
        "/admin/v1/tenants/{tenant}/anomalies",
        Policy::Admin,
        "admin_list_anomalies",
    ),
    route("GET", "/admin/v1/outbox", Policy::Admin, "admin_outbox"),
    route(
        "POST",
        "/admin/v1/mail/test",
        Policy::Admin,
        "admin_test_mail",
    ),
];
