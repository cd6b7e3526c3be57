//! INV-12 for the gRPC listener: every method the `.proto` files define has an explicit policy in
//! `GRPC_ROUTES` (a new method without one fails here), and a live server enforces each policy:
//! API-key methods refuse no credential and the admin token and accept a tenant key, public ones
//! need nothing, and a method not in the table is not served.

use std::collections::BTreeSet;

use coordinator::grpc::GRPC_ROUTES;
use coordinator::http::Policy;
use prost::Message;
use tests::{ADMIN_TOKEN, Cluster};
use tonic::Code;

/// `/<package>.<Service>/<Method>` of every method of the public API's descriptors.
fn described_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut methods = BTreeSet::new();
    for file in &set.file {
        let package = file.package();
        // The cluster package travels over the workers' WebSocket, not the gRPC listener.
        if package.starts_with("vaultvec.cluster") {
            assert!(
                file.service.is_empty(),
                "{package} defines gRPC services, which would need a policy"
            );
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                methods.insert(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    methods
}

#[test]
fn the_grpc_route_table_lists_exactly_the_described_methods() {
    let described = described_methods();
    assert!(
        described.contains("/vaultvec.v1.Points/Search"),
        "{described:?}"
    );
    let listed: BTreeSet<String> = GRPC_ROUTES.iter().map(|r| r.path.to_owned()).collect();
    assert_eq!(
        listed.len(),
        GRPC_ROUTES.len(),
        "a method is listed twice in GRPC_ROUTES"
    );
    let unlisted: Vec<_> = described.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "gRPC methods without a policy in coordinator::grpc::GRPC_ROUTES: {unlisted:?}"
    );
    let stale: Vec<_> = listed.difference(&described).collect();
    assert!(
        stale.is_empty(),
        "GRPC_ROUTES lists methods that do not exist: {stale:?}"
    );
}

/// Calls `path` with an empty message (valid for every proto3 request type) and the given bearer
/// credential; the answer's status code.
async fn call(
    channel: &tonic::transport::Channel,
    path: &'static str,
    bearer: Option<&str>,
) -> Code {
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.expect("channel ready");
    let mut request = tonic::Request::new(());
    if let Some(token) = bearer {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata value"),
        );
    }
    let codec = proto::codec::Codec::<(), ()>::default();
    match client
        .unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_method_enforces_its_policy() {
    // Every method is probed with bad credentials; a budget that large keeps the answers 401.
    let mut cluster =
        Cluster::start_without_workers(1, |config| config.auth_failures.burst = 100_000).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("inv12-grpc", None).await;
    let channel = cluster.grpc_channel().await;
    for route in GRPC_ROUTES {
        let none = call(&channel, route.path, None).await;
        let as_admin = call(&channel, route.path, Some(ADMIN_TOKEN)).await;
        let as_tenant = call(&channel, route.path, Some(&key)).await;
        assert_ne!(
            as_tenant,
            Code::Unimplemented,
            "{} is not served",
            route.path
        );
        match route.policy {
            Policy::Public => assert_eq!(none, Code::Ok, "{}", route.path),
            Policy::ApiKey => {
                assert_eq!(none, Code::Unauthenticated, "{}", route.path);
                assert_eq!(
                    as_admin,
                    Code::Unauthenticated,
                    "{}: the admin token is not an API key",
                    route.path
                );
                assert_ne!(as_tenant, Code::Unauthenticated, "{}", route.path);
            }
            Policy::Admin => panic!("{}: the gRPC listener has no admin methods", route.path),
        }
    }
    // Nothing else is served: not the cluster protocol, not reflection, not an invented method.
    for path in [
        "/vaultvec.v1.Points/Nothing",
        "/vaultvec.cluster.v1.Cluster/Hello",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
    ] {
        assert_eq!(
            call(&channel, path, Some(&key)).await,
            Code::Unimplemented,
            "{path}"
        );
    }
    cluster.shutdown().await;
}
