//! The gRPC transport: the `vaultvec.v1` services, each call turned into an [`Op`] for the shared
//! [`Service`]. The credential is the `authorization: Bearer <key>` metadata entry.

use std::sync::Arc;
use std::time::Instant;

use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::collections_server::Collections;
use proto::vaultvec::v1::health_server::Health;
use proto::vaultvec::v1::points_server::Points;
use tonic::{Request, Response, Status};

use crate::api::error::ApiError;
use crate::api::{Op, Reply, Service};

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

/// `Search` of `/vaultvec.v1.Points/Search` as `search`, `SearchBatch` as `search_batch`: the
/// endpoint names of logs and metrics.
fn endpoint_of(path: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "create_collection",
        "list_collections",
        "get_collection",
        "delete_collection",
        "upsert",
        "get_points",
        "delete_points",
        "scroll",
        "count",
        "search",
        "search_batch",
    ];
    let method = path.rsplit('/').next().unwrap_or("");
    let snake: String = method
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(c.to_ascii_lowercase()))
        })
        .collect();
    // `Points/Get` and `Points/Delete` are logged as the HTTP routes name them.
    let snake = match snake.as_str() {
        "get" | "delete" => format!("{snake}_points"),
        _ => snake,
    };
    NAMES
        .iter()
        .find(|n| **n == snake)
        .copied()
        .unwrap_or("unknown")
}

/// Authenticates a call from its metadata before its message is read or decoded (INV-22): a
/// caller without a valid key gets `UNAUTHENTICATED` (or `RESOURCE_EXHAUSTED` over its failure
/// budget) having cost one header parse. The identity travels to the handler in the request's
/// extensions. Health calls pass unauthenticated.
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
        let path = request
            .extensions()
            .get::<CallPath>()
            .map(|p| p.0.clone())
            .unwrap_or_default();
        if path.starts_with("/vaultvec.v1.Health/") {
            return Ok(request);
        }
        let started = Instant::now();
        let peer = self.service.client_ip(
            request.remote_addr().map(|a| a.ip()),
            request
                .metadata()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let credential = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::api::bearer_token);
        match self.service.authenticate(credential, peer) {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
                Ok(request)
            }
            Err(err) => {
                let endpoint = endpoint_of(&path);
                let elapsed = started.elapsed();
                self.service.metrics.observe(
                    "grpc",
                    endpoint,
                    err.code.as_str(),
                    elapsed.as_secs_f64(),
                );
                tracing::info!(
                    transport = "grpc",
                    tenant = "",
                    key_id = "",
                    endpoint,
                    status = err.code.as_str(),
                    latency_us = elapsed.as_micros() as u64,
                    "request"
                );
                Err(Status::from(err))
            }
        }
    }
}

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
    ) -> Result<Reply, Status> {
        let started = Instant::now();
        let peer = self.service.client_ip(
            request.remote_addr().map(|a| a.ip()),
            request
                .metadata()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let credential = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::api::bearer_token)
            .map(str::to_owned);
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
            self.service
                .call(&identity, build(request.into_inner()))
                .await
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
        match self
            .run("create_collection", request, Op::CreateCollection)
            .await?
        {
            Reply::Collection(info) => Ok(Response::new(info)),
            _ => Err(unexpected()),
        }
    }

    async fn list_collections(
        &self,
        request: Request<api::ListCollectionsRequest>,
    ) -> Result<Response<api::ListCollectionsResponse>, Status> {
        match self
            .run("list_collections", request, Op::ListCollections)
            .await?
        {
            Reply::Collections(list) => Ok(Response::new(list)),
            _ => Err(unexpected()),
        }
    }

    async fn get_collection(
        &self,
        request: Request<api::GetCollectionRequest>,
    ) -> Result<Response<api::CollectionInfo>, Status> {
        match self
            .run("get_collection", request, Op::GetCollection)
            .await?
        {
            Reply::Collection(info) => Ok(Response::new(info)),
            _ => Err(unexpected()),
        }
    }

    async fn delete_collection(
        &self,
        request: Request<api::DeleteCollectionRequest>,
    ) -> Result<Response<api::DeleteCollectionResponse>, Status> {
        match self
            .run("delete_collection", request, Op::DeleteCollection)
            .await?
        {
            Reply::DeletedCollection(r) => Ok(Response::new(r)),
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
        match self.run("upsert", request, Op::Upsert).await? {
            Reply::Upsert(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn get(
        &self,
        request: Request<api::GetPointsRequest>,
    ) -> Result<Response<api::GetPointsResponse>, Status> {
        match self.run("get_points", request, Op::Get).await? {
            Reply::Get(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn delete(
        &self,
        request: Request<api::DeletePointsRequest>,
    ) -> Result<Response<api::DeletePointsResponse>, Status> {
        match self.run("delete_points", request, Op::Delete).await? {
            Reply::Delete(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn scroll(
        &self,
        request: Request<api::ScrollRequest>,
    ) -> Result<Response<api::ScrollResponse>, Status> {
        match self.run("scroll", request, Op::Scroll).await? {
            Reply::Scroll(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn count(
        &self,
        request: Request<api::CountRequest>,
    ) -> Result<Response<api::CountResponse>, Status> {
        match self.run("count", request, Op::Count).await? {
            Reply::Count(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn search(
        &self,
        request: Request<api::SearchRequest>,
    ) -> Result<Response<api::SearchResponse>, Status> {
        match self.run("search", request, Op::Search).await? {
            Reply::Search(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn search_batch(
        &self,
        request: Request<api::SearchBatchRequest>,
    ) -> Result<Response<api::SearchBatchResponse>, Status> {
        match self.run("search_batch", request, Op::SearchBatch).await? {
            Reply::SearchBatch(r) => Ok(Response::new(r)),
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
