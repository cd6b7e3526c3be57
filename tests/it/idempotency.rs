//! Idempotency keys of upserts and deletes: a retry gets the first outcome and applies nothing
//! again, across a coordinator restart and the loss of a replica; a key reused with another
//! request is refused; a first attempt whose outcome was unknown (the coordinator timed out
//! while the worker held it) is found to have run, or not to have run and then applied once.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tests::Cluster;

/// Holds a tenant's upserts on the worker while closed.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

async fn upsert(cluster: &Cluster, key: &str, body: Value) -> (u16, Value) {
    cluster
        .http("PUT", "/v1/collections/docs/points", Some(key), Some(body))
        .await
}

fn point(id: u64, v: u64, idempotency_key: Option<&str>) -> Value {
    let mut body = json!({
        "points": [{ "id": id, "vector": [1.0, v as f32, 0.5], "payload": { "v": v } }],
    });
    if let Some(k) = idempotency_key {
        body["idempotency_key"] = k.into();
    }
    body
}

async fn version(cluster: &Cluster, key: &str, id: u64) -> Option<u64> {
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/get",
            Some(key),
            Some(json!({ "ids": [id], "with_payload": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["points"][0]["payload"]["v"].as_u64()
}

/// Points the tenant upserted, as its hourly usage counts them (billing reads these).
fn upserted(cluster: &Cluster, tenant: &str) -> u64 {
    cluster.service().flush_usage();
    cluster
        .service()
        .hourly_usage(tenant, 0, 1 << 40)
        .unwrap()
        .iter()
        .map(|h| h.upserted)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_a_keyed_write_once_however_often_it_is_retried() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 3).await;
    let three = json!({
        "points": (0..3).map(|id| json!({"id": id, "vector": [1.0, 2.0, 3.0]})).collect::<Vec<_>>(),
        "idempotency_key": "three",
    });
    for _ in 0..3 {
        assert_eq!(
            upsert(&cluster, &key, three.clone()).await,
            (200, json!({ "upserted": 3 }))
        );
    }
    assert_eq!(upsert(&cluster, &key, point(7, 1, None)).await.0, 200);
    assert_eq!(upserted(&cluster, "acme"), 4);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_applies_once_and_gets_its_first_outcome_even_after_a_restart() {
    let mut cluster = Cluster::start(1).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 3).await;

    let first = upsert(&cluster, &key, point(1, 1, Some("batch-1"))).await;
    assert_eq!(first, (200, json!({ "upserted": 1 })));
    // Another writer changes the point; the retry must not put the first version back.
    assert_eq!(upsert(&cluster, &key, point(1, 2, None)).await.0, 200);
    assert_eq!(
        upsert(&cluster, &key, point(1, 1, Some("batch-1"))).await,
        first
    );
    assert_eq!(version(&cluster, &key, 1).await, Some(2));

    // The same key with another request is refused, and applies nothing.
    let (status, body) = upsert(&cluster, &key, point(9, 9, Some("batch-1"))).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different request")
    );
    assert_eq!(version(&cluster, &key, 9).await, None);
    for bad in ["", "has space", "ü", &"k".repeat(129)] {
        if bad.is_empty() {
            continue;
        }
        let (status, body) = upsert(&cluster, &key, point(9, 9, Some(bad))).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
    }

    // Deletes by ids: the retry answers the first count, though nothing is left to delete.
    let delete = |k: &'static str| json!({ "ids": [1, 1, 7], "idempotency_key": k });
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/delete",
            Some(&key),
            Some(delete("del-1")),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({ "deleted": 1 })));
    let again = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/delete",
            Some(&key),
            Some(delete("del-1")),
        )
        .await;
    assert_eq!(again, (200, json!({ "deleted": 1 })));
    let (status, _) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/delete",
            Some(&key),
            Some(json!({ "filter": {}, "idempotency_key": "del-2" })),
        )
        .await;
    assert_eq!(status, 400, "keys are honoured for deletes by ids only");

    // The outcome is the coordinator's, in SQLite: a restart keeps it.
    cluster.restart_coordinator().await;
    assert_eq!(
        upsert(&cluster, &key, point(1, 1, Some("batch-1"))).await,
        first
    );
    assert_eq!(
        version(&cluster, &key, 1).await,
        None,
        "deleted, and not put back"
    );
    cluster.shutdown().await;
}

fn short_timeout(config: &mut coordinator::config::Config) {
    config.request_timeout = Duration::from_secs(2);
}

/// A cluster of one in-process worker whose upserts of tenant `acme` wait at `gate`.
async fn gated() -> (Cluster, Arc<Gate>, String) {
    let mut cluster = Cluster::start_without_workers(1, short_timeout).await;
    let gate = Arc::new(Gate::default());
    let mut config = cluster.worker_config(0);
    let held = gate.clone();
    config.request_hook = Some(Arc::new(move |tenant: &str, op: &str| {
        if tenant == "acme" && op == "upsert" {
            held.pass();
        }
    }));
    cluster.start_worker_with(0, config).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 3).await;
    (cluster, gate, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_outcome_was_unknown_is_found_to_have_run_and_is_not_applied_again() {
    let (cluster, gate, key) = gated().await;
    gate.set(true);
    let (status, body) = upsert(&cluster, &key, point(1, 1, Some("k1"))).await;
    assert!(matches!(status, 503 | 504), "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("same idempotency_key"),
        "{body}"
    );
    // The worker runs the held attempt. The tenant's next keyed write settles it first: it
    // waits until nothing of the tenant runs on the worker, finds k1's token applied, and
    // records k1 as done.
    gate.set(false);
    assert_eq!(
        upsert(&cluster, &key, point(5, 1, Some("k2"))).await,
        (200, json!({ "upserted": 1 }))
    );
    // k1 ran, so its point counts in the usage, once, with k2's.
    assert_eq!(upserted(&cluster, "acme"), 2);
    // So another writer's change to the point is not undone by k1's retry.
    assert_eq!(upsert(&cluster, &key, point(1, 2, None)).await.0, 200);
    assert_eq!(
        upsert(&cluster, &key, point(1, 1, Some("k1"))).await,
        (200, json!({ "upserted": 1 }))
    );
    assert_eq!(version(&cluster, &key, 1).await, Some(2), "applied once");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_outcome_was_unknown_and_that_never_ran_is_applied_by_its_retry() {
    let (cluster, gate, key) = gated().await;
    gate.set(true);
    let (status, _) = upsert(&cluster, &key, point(1, 1, Some("k1"))).await;
    assert!(matches!(status, 503 | 504));
    // The held attempt's collection goes away under it, so it fails when it runs; a new
    // collection of the same name has applied nothing.
    let (status, body) = cluster
        .http("DELETE", "/v1/collections/docs", Some(&key), None)
        .await;
    assert_eq!(status, 200, "{body}");
    gate.set(false);
    cluster.create_collection(&key, "docs", 3).await;
    assert_eq!(
        upsert(&cluster, &key, point(1, 1, Some("k1"))).await,
        (200, json!({ "upserted": 1 }))
    );
    assert_eq!(version(&cluster, &key, 1).await, Some(1));
    cluster.shutdown().await;
}

fn two_copies(config: &mut coordinator::config::Config) {
    config.tiers.get_mut("pro").expect("pro tier").replicas = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_primary_is_lost_gets_the_first_outcome() {
    let mut cluster = Cluster::start_without_workers(2, two_copies).await;
    cluster.start_worker(0).await;
    cluster.start_worker(1).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 3).await;
    let first = upsert(&cluster, &key, point(1, 1, Some("k1"))).await;
    assert_eq!(first, (200, json!({ "upserted": 1 })));
    assert_eq!(upsert(&cluster, &key, point(1, 2, None)).await.0, 200);
    let (_, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
    let primary = body["placements"][0]["worker"].as_str().unwrap().to_owned();
    cluster
        .kill_worker(primary.trim_start_matches("worker-").parse().unwrap())
        .await;
    assert_eq!(upsert(&cluster, &key, point(1, 1, Some("k1"))).await, first);
    assert_eq!(version(&cluster, &key, 1).await, Some(2));
    // A new keyed write goes to the surviving copy.
    assert_eq!(
        upsert(&cluster, &key, point(2, 1, Some("k2"))).await,
        (200, json!({ "upserted": 1 }))
    );
    cluster.shutdown().await;
}
