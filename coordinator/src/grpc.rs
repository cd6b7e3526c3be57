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
use crate::http::Policy;

/// Largest gRPC message accepted (the tier's own body limit applies on top).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// One method of the gRPC listener and who may call it.
#[derive(Debug, Clone, Copy)]
pub struct GrpcRoute {
    /// The request path, `/<package>.<Service>/<Method>`.
    pub path: &'static str,
    /// Who may call it.
    pub policy: Policy,
}

const fn route(path: &'static str, policy: Policy) -> GrpcRoute {
    GrpcRoute { path, policy }
}

/// Every method of the gRPC listener with its policy (INV-12). A test checks it against the
/// services' descriptors ([`proto::FILE_DESCRIPTOR_SET`]), so a method added to the `.proto` without
/// a policy here fails, and probes each method on a live server with no credential, the admin token
/// and a tenant key. The admin API has no gRPC methods.
pub const GRPC_ROUTES: &[GrpcRoute] = &[
    route("/vaultvec.v1.Collections/CreateCollection", Policy::ApiKey),
    route("/vaultvec.v1.Collections/ListCollections", Policy::ApiKey),
    route("/vaultvec.v1.Collections/GetCollection", Policy::ApiKey),
    route("/vaultvec.v1.Collections/DeleteCollection", Policy::ApiKey),
    route("/vaultvec.v1.Points/Upsert", Policy::ApiKey),
    route("/vaultvec.v1.Points/Get", Policy::ApiKey),
    route("/vaultvec.v1.Points/Delete", Policy::ApiKey),
    route("/vaultvec.v1.Points/Scroll", Policy::ApiKey),
    route("/vaultvec.v1.Points/Count", Policy::ApiKey),
    route("/vaultvec.v1.Points/Search", Policy::ApiKey),
    route("/vaultvec.v1.Points/SearchBatch", Policy::ApiKey),
    route("/vaultvec.v1.Health/Check", Policy::Public),
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
        let result = async {
            let identity = self.service.authenticate(credential.as_deref(), peer)?;
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
