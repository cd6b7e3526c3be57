//! Admin routes of the fleet: workers, placements, moves, rebalance and drain.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::super::path::Path;
use super::{NoArgs, Svc, admin, json, no_body};
use crate::api::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rebalance {
    max_moves: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveTenant {
    to: Option<String>,
}

pub(super) async fn move_tenant(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    b: Body,
) -> Response {
    admin(
        s,
        "admin_move_tenant",
        peer,
        h,
        b,
        |s, a: MoveTenant| async move { json(s.move_tenant_detached(&tenant, a.to.as_deref()).await?) },
    )
    .await
}

pub(super) async fn rebalance(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    b: Body,
) -> Response {
    admin(
        s,
        "admin_rebalance",
        peer,
        h,
        b,
        |s, a: Rebalance| async move {
            let max_moves = a.max_moves.unwrap_or(16);
            if !(1..=1000).contains(&max_moves) {
                return Err(ApiError::invalid("max_moves is 1..=1000"));
            }
            json(s.rebalance_detached(max_moves as usize).await?)
        },
    )
    .await
}

pub(super) async fn drain_worker(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(worker): Path<String>,
) -> Response {
    admin(
        s,
        "admin_drain_worker",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { json(s.drain_worker(&worker)?) },
    )
    .await
}

pub(super) async fn undrain_worker(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    Path(worker): Path<String>,
) -> Response {
    admin(
        s,
        "admin_undrain_worker",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move {
            s.undrain_worker(&worker)?;
            Ok(serde_json::json!({ "worker": worker, "draining": false }))
        },
    )
    .await
}

pub(super) async fn workers(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
) -> Response {
    admin(
        s,
        "admin_workers",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { Ok(serde_json::json!({ "workers": s.workers()? })) },
    )
    .await
}

pub(super) async fn placements(
    State(s): State<Svc>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
) -> Response {
    admin(
        s,
        "admin_placements",
        peer,
        h,
        no_body(),
        |s, _: NoArgs| async move { Ok(serde_json::json!({ "placements": s.placements()? })) },
    )
    .await
}
