//! INV-12: every route has an explicit policy, the OpenAPI document matches the routes, admin and
//! tenant credentials do not cross, and the metrics listener serves no data or admin routes.

use std::collections::BTreeSet;

use coordinator::http::{OPENAPI, Policy, ROUTES};
use serde_json::Value;
use tests::{ADMIN_TOKEN, Cluster};

fn concrete(path: &str) -> String {
    path.replace("{name}", "c")
        .replace("{tenant}", "inv12")
        .replace("{key_id}", "AAAAAAAA")
        .replace("{chain}", "platform")
        .replace("{entity_id}", "someone")
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("OpenAPI is JSON");
    let mut documented = BTreeSet::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            documented.insert((
                method.to_uppercase(),
                path.clone(),
                op["operationId"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let routed: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned(), r.name.to_owned()))
        .collect();
    assert_eq!(documented, routed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_its_policy() {
    // Every route is probed with bad credentials; a budget that large keeps the answers 401.
    let mut cluster =
        Cluster::start_without_workers(1, |config| config.auth_failures.burst = 100_000).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("inv12", None).await;
    for route in ROUTES {
        let path = concrete(route.path);
        let none = cluster.http(route.method, &path, None, None).await;
        let as_admin = cluster
            .http(route.method, &path, Some(ADMIN_TOKEN), None)
            .await;
        let as_tenant = cluster.http(route.method, &path, Some(&key), None).await;
        match route.policy {
            Policy::Public => {
                assert!(none.0 == 200, "{} {path}: {}", route.method, none.0);
            }
            Policy::ApiKey => {
                assert_eq!(none.0, 401, "{} {path}", route.method);
                assert_eq!(
                    as_admin.0, 401,
                    "{} {path}: the admin token is not an API key",
                    route.method
                );
                assert_ne!(as_tenant.0, 401, "{} {path}", route.method);
            }
            Policy::Admin => {
                assert_eq!(none.0, 401, "{} {path}", route.method);
                assert_eq!(
                    as_tenant.0, 401,
                    "{} {path}: an API key is not the admin token",
                    route.method
                );
                assert_ne!(as_admin.0, 401, "{} {path}", route.method);
            }
        }
    }
    // An unknown route is a JSON 404.
    let (s, v) = cluster.http("GET", "/v1/nothing", Some(&key), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    // The metrics listener has probes and metrics, nothing else.
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("http://{}{path}", cluster.metrics))
            .send()
    };
    assert_eq!(get("/livez").await.unwrap().status().as_u16(), 200);
    assert_eq!(get("/readyz").await.unwrap().status().as_u16(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("vaultvec_requests_total"), "{metrics}");
    assert!(!metrics.contains(&key[3..11]), "no key ids in metrics");
    for path in [
        "/v1/collections",
        "/admin/v1/tenants",
        "/v1/health",
        "/openapi.json",
    ] {
        let response = client
            .get(format!("http://{}{path}", cluster.metrics))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            404,
            "{path} on the metrics listener"
        );
    }
    cluster.shutdown().await;
}
