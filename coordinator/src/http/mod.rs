//! The HTTP/JSON transport: the public API under `/v1`, the admin API under `/admin/v1`, the
//! OpenAPI document. Every route is listed in [`ROUTES`] with its auth policy, and the router is
//! built from that table, so a route cannot exist without a policy (INV-12).

pub(crate) mod admin;
pub mod dto;
mod export;
mod path;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde::de::DeserializeOwned;

use crate::api::error::{ApiError, Code};
use crate::api::{Op, Service};
use path::Path;
pub use routes::{Policy, ROUTES, RouteSpec};

/// Largest body any route accepts before its tier's own limit is applied.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Largest body of an admin request.
pub const MAX_ADMIN_BODY_BYTES: usize = 64 << 10;
/// How long an authenticated client may take to send its request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The OpenAPI document, checked against [`ROUTES`] by a test.
pub const OPENAPI: &str = include_str!("../../openapi.json");

type Svc = Arc<Service>;

fn handler(name: &str) -> MethodRouter<Svc> {
    match name {
        "health" => get(health),
        "openapi" => get(openapi),
        "create_collection" => post(create_collection),
        "list_collections" => get(list_collections),
        "get_collection" => get(get_collection),
        "delete_collection" => delete(delete_collection),
        "upsert" => put(upsert),
        "get_points" => post(get_points),
        "delete_points" => post(delete_points),
        "scroll" => post(scroll),
        "count" => post(count),
        "search" => post(search),
        "search_batch" => post(search_batch),
        other => admin::handler(other),
    }
}

/// The HTTP router. Methods of one path are merged; a path not in the table answers 404 with the
/// JSON error body.
pub fn router(service: Svc) -> Router {
    let mut router: Router<Svc> = Router::new();
    let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
    paths.dedup();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        let mut methods: MethodRouter<Svc> = MethodRouter::new();
        for spec in ROUTES.iter().filter(|r| r.path == path) {
            methods = methods.merge(handler(spec.name));
        }
        router = router.route(path, methods.fallback(method_not_allowed));
    }
    router
        .merge(crate::dashboard::routes::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such route")
}

async fn method_not_allowed() -> Response {
    let mut response = ApiError::invalid("method not allowed on this route").into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

async fn health(State(service): State<Svc>) -> Response {
    let workers = service.hub.connected().len();
    let status = if workers > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": workers > 0, "workers_connected": workers })),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The bearer credential of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::api::bearer_token)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("request body is larger than this route's limit of {limit} bytes"),
    )
}

/// Reads a request body of at most `limit` bytes. Called only once the caller is authenticated
/// (INV-22): before that a request holds its headers and nothing of its body. A declared length
/// over the limit is refused without reading a byte; a body that streams past the limit is cut
/// off there; a body slower than [`BODY_TIMEOUT`] is refused.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    read_body_gated(headers, body, limit, None).await
}

/// Time a gated body read spent waiting for the gate.
#[derive(Default)]
struct GateWaits {
    done: std::time::Duration,
    /// When the wait under way (if any) began.
    since: Option<tokio::time::Instant>,
}

impl GateWaits {
    fn end(&mut self) {
        if let Some(since) = self.since.take() {
            self.done += since.elapsed();
        }
    }

    fn total(&self) -> std::time::Duration {
        self.done
            + self
                .since
                .map_or(std::time::Duration::ZERO, |s| s.elapsed())
    }
}

/// How much of a gated body is read per pass through the gate.
const GATED_READ_BYTES: usize = 64 << 10;

/// [`read_body`], reading each piece of the body only once `gate` (if any) lets it through
/// (`storage::gate`): a large body is taken off the socket when a core is free.
pub(crate) async fn read_body_gated(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    gate: Option<storage::gate::IdleGate>,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    let limited = http_body_util::Limited::new(body, limit);
    // Time spent waiting for the gate, not for the client: if the body does not arrive in time
    // mostly because the server had no core to spare, that is the server's state, not the
    // client's mistake.
    let gate_waits = std::sync::Arc::new(parking_lot::Mutex::new(GateWaits::default()));
    let waits = gate_waits.clone();
    let collect = async move {
        let Some(gate) = gate else {
            return http_body_util::BodyExt::collect(limited)
                .await
                .map(|collected| collected.to_bytes());
        };
        let mut limited = std::pin::pin!(limited);
        let mut collected = Vec::with_capacity(declared.map_or(0, |len| len as usize).min(limit));
        // One pass per 64 KiB taken, however small the frames the connection hands over.
        let mut passed_at = None;
        loop {
            if passed_at.is_none_or(|at| collected.len() - at >= GATED_READ_BYTES) {
                waits.lock().since = Some(tokio::time::Instant::now());
                gate.pass().await;
                waits.lock().end();
                passed_at = Some(collected.len());
            }
            match http_body_util::BodyExt::frame(&mut limited).await {
                None => return Ok(Bytes::from(collected)),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        collected.extend_from_slice(&data);
                    }
                }
            }
        }
    };
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) if gate_waits.lock().total() >= BODY_TIMEOUT / 2 => Err(ApiError {
            code: Code::Unavailable,
            message: format!(
                "the server is too busy to read a large body now (it reads them when a core is free, and could not within {} s); retry later",
                BODY_TIMEOUT.as_secs()
            ),
            retry_after: Some(std::time::Duration::from_secs(1)),
        }),
        Err(_) => Err(ApiError::invalid(format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(err)) => Err(ApiError::invalid(format!(
            "could not read the request body: {err}"
        ))),
    }
}

/// [`parse_json`] for a large body, on the large-message pool: read through
/// `storage::courtesy::Paced`, so that its idle-class thread pauses now and then.
pub(crate) fn parse_large_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let reader = std::io::BufReader::with_capacity(8 << 10, storage::courtesy::Paced::new(body));
    serde_json::from_reader(reader)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // An empty body reads as `{}`, so a request without arguments needs no body.
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Authenticates, applies the tier's body limit, parses, runs and renders one data request, and
/// logs and counts it.
async fn run<D: DeserializeOwned>(
    service: Svc,
    endpoint: &'static str,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
    build: impl FnOnce(D) -> Result<Op, ApiError> + Send + 'static,
) -> Response {
    let started = Instant::now();
    let mut tenant = String::new();
    let mut key_id = String::new();
    let result = async {
        let client = service.client_ip(Some(peer.ip()), forwarded_for(&headers));
        let identity = service.authenticate(bearer(&headers), client)?;
        tenant.clone_from(&identity.tenant);
        key_id.clone_from(&identity.key_id);
        // The body is read only now, and only up to the tier's limit; a large one only once the
        // memory it will take is reserved.
        let limit = service.body_limit(&identity)?.min(MAX_BODY_BYTES);
        // A body's length is known up front (Content-Length, or none at all); a chunked body of
        // unknown length may be at most 64 KiB, so that what it takes is known before it is read.
        let known = axum::body::HttpBody::size_hint(&body).exact();
        let read_limit = match known {
            Some(_) => limit,
            None => limit.min(crate::api::LARGE_MESSAGE_BYTES),
        };
        let expected = known.map_or(0, |len| usize::try_from(len).unwrap_or(usize::MAX));
        if expected > limit {
            return Err(too_large(limit));
        }
        let _body_reserved = if expected > crate::api::LARGE_MESSAGE_BYTES {
            Some(service.reserve_large(expected, "request body").await?)
        } else {
            None
        };
        let gate = (expected > crate::api::LARGE_MESSAGE_BYTES).then(|| service.gate().clone());
        let body = match read_body_gated(&headers, body, read_limit, gate).await {
            Err(err) if known.is_none() && err.code == Code::PayloadTooLarge => {
                return Err(ApiError::new(
                    Code::PayloadTooLarge,
                    format!(
                        "a request body over {} bytes must declare its length (Content-Length), not be sent in chunks",
                        crate::api::LARGE_MESSAGE_BYTES
                    ),
                ));
            }
            other => other?,
        };
        // A large body's parsing, and a large answer's rendering, run off the runtime's threads,
        // so one tenant's megabytes of JSON do not hold up other tenants' requests.
        let body_len = body.len();
        let op = if body_len > crate::api::LARGE_MESSAGE_BYTES {
            service.heavy(move || build(parse_large_json(&body)?)).await??
        } else {
            build(parse_json(&body)?)?
        };
        // A body over the bound makes an operation known to be large without walking it; a
        // smaller one (whose operation may still encode larger) is measured, at bounded cost.
        let large = body_len > crate::api::LARGE_MESSAGE_BYTES
            || op.encoded_len() > crate::api::LARGE_MESSAGE_BYTES;
        // A large answer arrives with the reservation it took before it was decoded.
        let (reply, reserved) =
            crate::api::collecting_answer(service.call(&identity, op, large)).await;
        let reply = reply?;
        let answer_len = reply.encoded_len();
        if answer_len > crate::api::LARGE_MESSAGE_BYTES {
            let reserved = match reserved {
                Some(reserved) => reserved,
                None => service.reserve_large(answer_len, "answer").await?,
            };
            service
                .heavy({
                    let gate = service.gate().clone();
                    move || dto::reply_json(reply).map(|v| render_reserved(&v, reserved, gate))
                })
                .await?
        } else {
            dto::reply_json(reply).map(render)
        }
    }
    .await;
    finish(
        &service, "http", endpoint, &tenant, &key_id, started, result,
    )
}

/// Pieces a large answer's body is handed to the socket in: the answer's memory reservation is
/// held until the last of them is taken, close to when the answer has left.
const ANSWER_PIECE_BYTES: usize = 64 << 10;

/// A large answer's JSON body, serialised, holding `reserved` until its last piece is sent.
/// Each piece is handed over once `gate` lets it through (`storage::gate`): megabytes of one
/// tenant's answer are written when a core is free, not ahead of other tenants' requests.
pub(crate) fn render_reserved(
    value: &serde_json::Value,
    reserved: crate::api::Reservation,
    gate: storage::gate::IdleGate,
) -> Response {
    // Rendered through `Paced` on the large-message pool: its idle-class thread pauses now and
    // then (`storage::courtesy`).
    let mut out = storage::courtesy::Paced::new(Vec::with_capacity(64 << 10));
    let bytes = match serde_json::to_writer(&mut out, value) {
        Ok(()) => Bytes::from(out.into_inner()),
        Err(err) => {
            return ApiError::internal(format!("rendering the answer failed: {err}"))
                .into_response();
        }
    };
    let len = bytes.len();
    let pieces = futures_util::stream::unfold(
        (bytes, 0usize, Some(reserved)),
        move |(bytes, at, reserved)| {
            let gate = gate.clone();
            async move {
                if at >= bytes.len() {
                    return None;
                }
                gate.pass().await;
                let end = (at + ANSWER_PIECE_BYTES).min(bytes.len());
                let piece = bytes.slice(at..end);
                // The reservation goes with the last piece.
                let reserved = if end == bytes.len() { None } else { reserved };
                Some((
                    Ok::<_, std::convert::Infallible>(piece),
                    (bytes, end, reserved),
                ))
            }
        },
    );
    let mut response = Response::new(Body::from_stream(pieces));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    response
}

/// A successful answer's JSON body, serialised.
pub(crate) fn render(value: serde_json::Value) -> Response {
    axum::Json(value).into_response()
}

pub(crate) fn finish(
    service: &Service,
    transport: &'static str,
    endpoint: &'static str,
    tenant: &str,
    key_id: &str,
    started: Instant,
    result: Result<Response, ApiError>,
) -> Response {
    let elapsed = started.elapsed();
    let (status, code, response) = match result {
        Ok(response) => (StatusCode::OK, "ok", response),
        Err(err) => (err.http_status(), err.code.as_str(), err.into_response()),
    };
    service
        .metrics
        .observe(transport, endpoint, code, elapsed.as_secs_f64());
    service.count_usage(tenant, endpoint);
    tracing::info!(
        transport,
        tenant,
        key_id,
        endpoint,
        status = status.as_u16(),
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    response
}

type Peer = ConnectInfo<SocketAddr>;

/// The `X-Forwarded-For` values of a request, in order (see `Service::client_ip`).
pub(crate) fn forwarded_for(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
}

async fn create_collection(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    b: Body,
) -> Response {
    run(
        s,
        "create_collection",
        p,
        h,
        b,
        |d: dto::CreateCollection| d.into_op(),
    )
    .await
}

/// [`run`] for a route whose request carries no body: `op` is fixed by the path alone.
async fn run_bodyless(
    s: Svc,
    endpoint: &'static str,
    p: SocketAddr,
    h: HeaderMap,
    op: Op,
) -> Response {
    run(s, endpoint, p, h, Body::empty(), |_: serde_json::Value| {
        Ok(op)
    })
    .await
}

async fn list_collections(State(s): State<Svc>, ConnectInfo(p): Peer, h: HeaderMap) -> Response {
    let op = Op::ListCollections(proto::vaultvec::v1::ListCollectionsRequest {});
    run_bodyless(s, "list_collections", p, h, op).await
}

async fn get_collection(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let op = Op::GetCollection(proto::vaultvec::v1::GetCollectionRequest { name });
    run_bodyless(s, "get_collection", p, h, op).await
}

async fn delete_collection(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let op = Op::DeleteCollection(proto::vaultvec::v1::DeleteCollectionRequest { name });
    run_bodyless(s, "delete_collection", p, h, op).await
}

async fn upsert(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Body,
) -> Response {
    run(s, "upsert", p, h, b, |d: dto::Upsert| Ok(d.into_op(name))).await
}

async fn get_points(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Body,
) -> Response {
    run(s, "get_points", p, h, b, |d: dto::Get| Ok(d.into_op(name))).await
}

async fn delete_points(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Body,
) -> Response {
    run(s, "delete_points", p, h, b, |d: dto::Delete| {
        Ok(d.into_op(name))
    })
    .await
}

async fn scroll(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Body,
) -> Response {
    run(s, "scroll", p, h, b, |d: dto::Scroll| Ok(d.into_op(name))).await
}

async fn count(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Body,
) -> Response {
    run(s, "count", p, h, b, |d: dto::Count| Ok(d.into_op(name))).await
}

async fn search(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Body,
) -> Response {
    run(s, "search", p, h, b, |d: dto::Search| Ok(d.into_op(name))).await
}

async fn search_batch(
    State(s): State<Svc>,
    ConnectInfo(p): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Body,
) -> Response {
    run(s, "search_batch", p, h, b, |d: dto::SearchBatch| {
        Ok(d.into_op(name))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large body that cannot be read in time because the gate (the server's spare cores) never
    /// let it through is the server's state: 503 with a retry, not the client's 400. A client that
    /// stops sending still gets the 400.
    #[tokio::test(start_paused = true)]
    async fn a_body_held_up_by_the_gate_is_unavailable_not_a_client_error() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(1_000_000));
        let body = Body::from(vec![b' '; 1_000_000]);
        let gate = storage::gate::IdleGate::closed();
        let err = read_body_gated(&headers, body, 2_000_000, Some(gate))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Unavailable, "{err:?}");
        assert!(err.retry_after.is_some());

        // A client that sends nothing, through a gate that lets everything pass.
        let stalled = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let body = Body::from_stream(stalled);
        let err = read_body_gated(
            &headers,
            body,
            2_000_000,
            Some(storage::gate::IdleGate::open()),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument, "{err:?}");
    }
}
