//! The gRPC transport: the `vaultvec.v1` services, each call turned into an [`Op`] for the shared
//! [`Service`]. The credential is the `authorization: Bearer <key>` metadata entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::collections_server::Collections;
use proto::vaultvec::v1::health_server::Health;
use proto::vaultvec::v1::points_server::Points;
use tonic::{Request, Response, Status};

pub mod message;

use crate::api::error::ApiError;
use crate::api::{Op, Reply, Service};
use crate::http::Policy;

/// Largest gRPC message accepted (the tier's own body limit applies on top).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Concurrent streams (calls) one HTTP/2 connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Largest header list (metadata) of a call.
pub const MAX_HEADER_BYTES: u32 = 16 << 10;

/// The path of a gRPC request (`/vaultvec.v1.Points/Search`), recorded by [`tag_path`] for the
/// interceptor, which sees only metadata and extensions.
#[derive(Debug, Clone)]
pub struct CallPath(pub String);

/// Records the request's path in its extensions.
pub fn tag_path<B>(mut request: http::Request<B>) -> http::Request<B> {
    let path = CallPath(request.uri().path().to_owned());
    request.extensions_mut().insert(path);
    request
}

/// The client address a call's failed authentications count against, and its bearer credential.
fn caller<'a, T>(
    service: &Service,
    request: &'a Request<T>,
) -> (Option<std::net::IpAddr>, Option<&'a str>) {
    let metadata = request.metadata();
    let peer = service.client_ip(
        request.remote_addr().map(|a| a.ip()),
        metadata
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let credential = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::api::bearer_token);
    (peer, credential)
}

/// Authenticates a call from its metadata before its message is read or decoded (INV-22): a
/// caller without a valid key gets `UNAUTHENTICATED` (or `RESOURCE_EXHAUSTED` over its failure
/// budget) having cost one header parse. The identity travels to the handler in the request's
/// extensions. Methods of policy `Public` in [`GRPC_ROUTES`] (health) pass unauthenticated.
#[derive(Clone)]
pub struct Authenticate {
    service: Arc<Service>,
}

impl Authenticate {
    /// The interceptor over the shared service.
    pub fn new(service: Arc<Service>) -> Authenticate {
        Authenticate { service }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // Public methods (health) and unknown ones (answered UNIMPLEMENTED) need no key.
        let needs_key = request.extensions().get::<CallPath>().is_some_and(|path| {
            GRPC_ROUTES
                .iter()
                .any(|r| r.path == path.0 && r.policy != Policy::Public)
        });
        if !needs_key {
            return Ok(request);
        }
        let (peer, credential) = caller(&self.service, &request);
        // A refusal is logged and counted by `RequestLog`, which sees the answer's status.
        let identity = self
            .service
            .authenticate(credential, peer)
            .map_err(Status::from)?;
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

/// One method of the gRPC listener and who may call it.
#[derive(Debug, Clone, Copy)]
pub struct GrpcRoute {
    /// The request path, `/<package>.<Service>/<Method>`.
    pub path: &'static str,
    /// The endpoint name in logs and metrics.
    pub endpoint: &'static str,
    /// Who may call it.
    pub policy: Policy,
}

const fn route(path: &'static str, endpoint: &'static str, policy: Policy) -> GrpcRoute {
    GrpcRoute {
        path,
        endpoint,
        policy,
    }
}

/// Every method of the gRPC listener with its policy (INV-12). A test checks it against the
/// services' descriptors ([`proto::FILE_DESCRIPTOR_SET`]), so a method added to the `.proto` without
/// a policy here fails, and probes each method on a live server with no credential, the admin token
/// and a tenant key. The admin API has no gRPC methods.
pub const GRPC_ROUTES: &[GrpcRoute] = &[
    route(
        "/vaultvec.v1.Collections/CreateCollection",
        "create_collection",
        Policy::ApiKey,
    ),
    route(
        "/vaultvec.v1.Collections/ListCollections",
        "list_collections",
        Policy::ApiKey,
    ),
    route(
        "/vaultvec.v1.Collections/GetCollection",
        "get_collection",
        Policy::ApiKey,
    ),
    route(
        "/vaultvec.v1.Collections/DeleteCollection",
        "delete_collection",
        Policy::ApiKey,
    ),
    route("/vaultvec.v1.Points/Upsert", "upsert", Policy::ApiKey),
    route("/vaultvec.v1.Points/Get", "get_points", Policy::ApiKey),
    route(
        "/vaultvec.v1.Points/Delete",
        "delete_points",
        Policy::ApiKey,
    ),
    route("/vaultvec.v1.Points/Scroll", "scroll", Policy::ApiKey),
    route("/vaultvec.v1.Points/Count", "count", Policy::ApiKey),
    route("/vaultvec.v1.Points/Search", "search", Policy::ApiKey),
    route(
        "/vaultvec.v1.Points/SearchBatch",
        "search_batch",
        Policy::ApiKey,
    ),
    route("/vaultvec.v1.Health/Check", "health", Policy::Public),
];

/// Implements the three services over the shared layer.
#[derive(Clone)]
pub struct Grpc {
    service: Arc<Service>,
}

impl Grpc {
    /// Wraps the shared service.
    pub fn new(service: Arc<Service>) -> Grpc {
        Grpc { service }
    }

    async fn run<T: prost::Message>(
        &self,
        endpoint: &'static str,
        request: Request<T>,
        build: impl FnOnce(T) -> Op,
    ) -> Result<(Reply, Option<message::Held>), Status> {
        let started = Instant::now();
        if let Some(Logged(logged)) = request.extensions().get::<Logged>() {
            logged.store(true, Ordering::Release);
        }
        let (peer, credential) = caller(&self.service, &request);
        let credential = credential.map(str::to_owned);
        let size = request.get_ref().encoded_len();
        let mut tenant = String::new();
        let mut key_id = String::new();
        // Authenticated by the interceptor before the message was decoded; the fallback covers
        // a server built without it.
        let authenticated = request
            .extensions()
            .get::<Arc<crate::auth::Identity>>()
            .cloned();
        let result = async {
            let identity = match authenticated {
                Some(identity) => identity,
                None => self.service.authenticate(credential.as_deref(), peer)?,
            };
            tenant.clone_from(&identity.tenant);
            key_id.clone_from(&identity.key_id);
            self.service.check_body_size(&identity, size)?;
            // The operation wraps the message, so its size is the message's.
            let large = size > crate::api::LARGE_MESSAGE_BYTES;
            // A large answer arrives with the reservation it took before it was decoded.
            let (reply, reserved) = crate::api::collecting_answer(self.service.call(
                &identity,
                build(request.into_inner()),
                large,
            ))
            .await;
            let reply = reply?;
            // A large answer holds its share of the large-message budget until it has been
            // sent (`message::MessageBudget` releases it).
            let answer_len = reply.encoded_len();
            let held = if answer_len > crate::api::LARGE_MESSAGE_BYTES {
                let reservation = match reserved {
                    Some(reservation) => reservation,
                    None => self.service.reserve_large(answer_len, "answer").await?,
                };
                Some(message::Held(Arc::new(reservation)))
            } else {
                None
            };
            Ok::<_, ApiError>((reply, held))
        }
        .await;
        let elapsed = started.elapsed();
        let code = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        self.service
            .metrics
            .observe("grpc", endpoint, code, elapsed.as_secs_f64());
        self.service.count_usage(&tenant, endpoint);
        tracing::info!(
            transport = "grpc",
            tenant,
            key_id,
            endpoint,
            status = code,
            latency_us = elapsed.as_micros() as u64,
            "request"
        );
        result.map_err(Status::from)
    }
}

/// Put in each request by [`RequestLog`]; set by [`Grpc::run`], which logs the request itself.
#[derive(Clone)]
struct Logged(Arc<AtomicBool>);

/// A layer on the gRPC server that logs and counts, as one `request` line like [`Grpc::run`]'s, the
/// requests `run` never sees: calls refused by the interceptor or by `message::MessageBudget`,
/// messages that do not decode (refused by the codec before the handler), unknown methods and
/// health checks. An authenticated one names its tenant and key id (`message::Caller`); the
/// others have them empty.
#[derive(Clone)]
pub struct RequestLog {
    service: Arc<Service>,
}

impl RequestLog {
    /// Logs through `service`'s metrics.
    pub fn new(service: Arc<Service>) -> RequestLog {
        RequestLog { service }
    }
}

impl<S> tower::Layer<S> for RequestLog {
    type Service = RequestLogService<S>;

    fn layer(&self, inner: S) -> RequestLogService<S> {
        RequestLogService {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service of [`RequestLog`].
#[derive(Clone)]
pub struct RequestLogService<S> {
    inner: S,
    service: Arc<Service>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RequestLogService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let logged = Arc::new(AtomicBool::new(false));
        request.extensions_mut().insert(Logged(logged.clone()));
        let endpoint = GRPC_ROUTES
            .iter()
            .find(|r| r.path == request.uri().path())
            .map_or("unknown", |r| r.endpoint);
        let service = self.service.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if !logged.load(Ordering::Acquire) {
                // An answer without a body carries its status in the headers (trailers-only).
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                let status = code_name(code);
                let elapsed = started.elapsed();
                // Authenticated calls answered before their handler ran name their caller.
                let caller = response.extensions().get::<message::Caller>();
                let tenant = caller.map_or("", |c| c.tenant.as_str());
                let key_id = caller.map_or("", |c| c.key_id.as_str());
                service
                    .metrics
                    .observe("grpc", endpoint, status, elapsed.as_secs_f64());
                service.count_usage(tenant, endpoint);
                tracing::info!(
                    transport = "grpc",
                    tenant,
                    key_id,
                    endpoint,
                    status,
                    latency_us = elapsed.as_micros() as u64,
                    "request"
                );
            }
            Ok(response)
        })
    }
}

/// The log and metrics name of a gRPC status code (the same names as `api::error::Code`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "cancelled",
        C::Unknown => "unknown",
        C::InvalidArgument => "invalid_argument",
        C::DeadlineExceeded => "deadline_exceeded",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Aborted => "aborted",
        C::OutOfRange => "out_of_range",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unavailable => "unavailable",
        C::DataLoss => "data_loss",
        C::Unauthenticated => "unauthenticated",
    }
}

/// The answer, with its reservation (if any) in its extensions for [`message::MessageBudget`].
fn respond<T>(answer: T, held: Option<message::Held>) -> Response<T> {
    let mut response = Response::new(answer);
    if let Some(held) = held {
        response.extensions_mut().insert(held);
    }
    response
}

fn unexpected() -> Status {
    Status::from(ApiError::internal(
        "a worker answered with the wrong kind of result",
    ))
}

#[tonic::async_trait]
impl Collections for Grpc {
    async fn create_collection(
        &self,
        request: Request<api::CreateCollectionRequest>,
    ) -> Result<Response<api::CollectionInfo>, Status> {
        let (reply, held) = self
            .run("create_collection", request, Op::CreateCollection)
            .await?;
        match reply {
            Reply::Collection(info) => Ok(respond(info, held)),
            _ => Err(unexpected()),
        }
    }

    async fn list_collections(
        &self,
        request: Request<api::ListCollectionsRequest>,
    ) -> Result<Response<api::ListCollectionsResponse>, Status> {
        let (reply, held) = self
            .run("list_collections", request, Op::ListCollections)
            .await?;
        match reply {
            Reply::Collections(list) => Ok(respond(list, held)),
            _ => Err(unexpected()),
        }
    }

    async fn get_collection(
        &self,
        request: Request<api::GetCollectionRequest>,
    ) -> Result<Response<api::CollectionInfo>, Status> {
        let (reply, held) = self
            .run("get_collection", request, Op::GetCollection)
            .await?;
        match reply {
            Reply::Collection(info) => Ok(respond(info, held)),
            _ => Err(unexpected()),
        }
    }

    async fn delete_collection(
        &self,
        request: Request<api::DeleteCollectionRequest>,
    ) -> Result<Response<api::DeleteCollectionResponse>, Status> {
        let (reply, held) = self
            .run("delete_collection", request, Op::DeleteCollection)
            .await?;
        match reply {
            Reply::DeletedCollection(r) => Ok(respond(r, held)),
            _ => Err(unexpected()),
        }
    }
}

#[tonic::async_trait]
impl Points for Grpc {
    async fn upsert(
        &self,
        request: Request<api::UpsertRequest>,
    ) -> Result<Response<api::UpsertResponse>, Status> {
        let (reply, held) = self.run("upsert", request, Op::Upsert).await?;
        match reply {
            Reply::Upsert(r) => Ok(respond(r, held)),
            _ => Err(unexpected()),
        }
    }

    async fn get(
        &self,
        request: Request<api::GetPointsRequest>,
    ) -> Result<Response<api::GetPointsResponse>, Status> {
        let (reply, held) = self.run("get_points", request, Op::Get).await?;
        match reply {
            Reply::Get(r) => Ok(respond(r, held)),
            _ => Err(unexpected()),
        }
    }

    async fn delete(
        &self,
        request: Request<api::DeletePointsRequest>,
    ) -> Result<Response<api::DeletePointsResponse>, Status> {
        let (reply, held) = self.run("delete_points", request, Op::Delete).await?;
        match reply {
            Reply::Delete(r) => Ok(respond(r, held)),
            _ => Err(unexpected()),
        }
    }

    async fn scroll(
        &self,
        request: Request<api::ScrollRequest>,
    ) -> Result<Response<api::ScrollResponse>, Status> {
        let (reply, held) = self.run("scroll", request, Op::Scroll).await?;
        match reply {
            Reply::Scroll(r) => Ok(respond(r, held)),
            _ => Err(unexpected()),
        }
    }

    async fn count(
        &self,
        request: Request<api::CountRequest>,
    ) -> Result<Response<api::CountResponse>, Status> {
        let (reply, held) = self.run("count", request, Op::Count).await?;
        match reply {
            Reply::Count(r) => Ok(respond(r, held)),
            _ => Err(unexpected()),
        }
    }

    async fn search(
        &self,
        request: Request<api::SearchRequest>,
    ) -> Result<Response<api::SearchResponse>, Status> {
        let (reply, held) = self.run("search", request, Op::Search).await?;
        match reply {
            Reply::Search(r) => Ok(respond(r, held)),
            _ => Err(unexpected()),
        }
    }

    async fn search_batch(
        &self,
        request: Request<api::SearchBatchRequest>,
    ) -> Result<Response<api::SearchBatchResponse>, Status> {
        let (reply, held) = self.run("search_batch", request, Op::SearchBatch).await?;
        match reply {
            Reply::SearchBatch(r) => Ok(respond(r, held)),
            _ => Err(unexpected()),
        }
    }
}

#[tonic::async_trait]
impl Health for Grpc {
    async fn check(
        &self,
        _request: Request<api::HealthCheckRequest>,
    ) -> Result<Response<api::HealthCheckResponse>, Status> {
        let workers = self.service.hub.connected().len() as u32;
        Ok(Response::new(api::HealthCheckResponse {
            ready: workers > 0,
            workers_connected: workers,
        }))
    }
}
