//! Admin routes of a tenant's dashboard members.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::super::path::Path;
use super::{NewMember, NoArgs, Svc, admin, json, no_body};

pub(super) async fn add_member(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    b: Body,
) -> Response {
    admin(
        s,
        "admin_add_member",
        peer,
        h,
        b,
        |s, a: NewMember| async move { json(s.add_member(&tenant, &a.email, &a.role)?) },
    )
    .await
}

pub(super) async fn list_members(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_list_members",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            json(serde_json::json!({ "members": s.list_members(&tenant)? }))
        },
    )
    .await
}

pub(super) async fn remove_member(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path((tenant, email)): Path<(String, String)>,
) -> Response {
    admin(
        s,
        "admin_remove_member",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            s.remove_member(&tenant, &email)?;
            json(serde_json::json!({ "removed": email }))
        },
    )
    .await
}
