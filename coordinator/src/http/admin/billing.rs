//! Admin routes of billing: a tenant's anomalies, the mail outbox, a test mail.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::super::path::Path;
use super::{NoArgs, Svc, admin, json, no_body};

/// `POST /admin/v1/mail/test` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestMail {
    to: String,
}

pub(super) async fn list_anomalies(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    admin(
        s,
        "admin_list_anomalies",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            json(serde_json::json!({ "anomalies": s.anomalies(&tenant)? }))
        },
    )
    .await
}

pub(super) async fn outbox(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
) -> Response {
    admin(
        s,
        "admin_outbox",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { json(serde_json::json!({ "mail": s.outbox()? })) },
    )
    .await
}

pub(super) async fn test_mail(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    b: Body,
) -> Response {
    admin(
        s,
        "admin_test_mail",
        peer,
        h,
        b,
        |s, m: TestMail| async move {
            json(serde_json::json!({ "queued": true, "audit_seq": s.queue_test_mail(&m.to)? }))
        },
    )
    .await
}
