//! The cluster channel on the coordinator's side: a worker needs its token to connect, one
//! connection per worker id, bounded requests in flight per worker and per tenant, refusals
//! audited (the key service's answers are `key_service.rs`).

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use tests::Cluster;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn dial(
    cluster: &Cluster,
    worker: &str,
    token: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}/v1/cluster", cluster.cluster)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .headers_mut()
        .insert("x-vaultvec-worker", worker.parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// Says hello as a fake worker and expects the coordinator's acknowledgement.
pub(crate) async fn say_hello(ws: &mut Ws, worker_id: &str, max_in_flight: u32) {
    let hello = cluster::Hello {
        worker_id: worker_id.into(),
        version: "test".into(),
        memory_budget_bytes: 1 << 20,
        max_in_flight,
        held_tenants: Vec::new(),
        heartbeat_interval_ms: 0,
    };
    ws.send(frame(0, cluster::envelope::Body::Hello(hello)))
        .await
        .unwrap();
    let ack = ws.next().await.unwrap().unwrap();
    let ack = cluster::Envelope::decode(ack.into_data().as_ref()).unwrap();
    assert!(matches!(ack.body, Some(cluster::envelope::Body::Ack(_))));
}

pub(crate) fn frame(request_id: u64, body: cluster::envelope::Body) -> Message {
    Message::binary(
        cluster::Envelope {
            request_id,
            deadline_unix_ms: 0,
            body: Some(body),
        }
        .encode_to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_answers_busy_at_once_instead_of_queueing() {
    let cluster =
        Cluster::start_without_workers(1, |config| config.max_in_flight_per_worker = 1).await;
    // A fake worker that acknowledges assignments but never answers a tenant request.
    let mut ws = dial(
        &cluster,
        "worker-0",
        "worker-token-0-0123456789abcdefghijklmnop",
    )
    .await
    .expect("valid token");
    say_hello(&mut ws, "worker-0", 1).await;
    cluster.hub().wait_for_worker("worker-0").await;
    // The fake worker reports each tenant request it parks, so the test knows the slot is held.
    let (parked_tx, mut parked_rx) = tokio::sync::mpsc::unbounded_channel();
    let silent = tokio::spawn(async move {
        let mut parked = 0;
        while let Some(Ok(message)) = ws.next().await {
            let Ok(env) = cluster::Envelope::decode(message.into_data().as_ref()) else {
                continue;
            };
            match env.body {
                Some(cluster::envelope::Body::AssignTenant(_)) => {
                    ws.send(frame(
                        env.request_id,
                        cluster::envelope::Body::Ack(cluster::Ack::default()),
                    ))
                    .await
                    .unwrap();
                }
                Some(cluster::envelope::Body::TenantRequest(_)) => {
                    parked += 1;
                    let _ = parked_tx.send(());
                }
                _ => {}
            }
        }
        parked
    });
    let key = cluster.tenant("busy", None).await;
    let first = {
        let url = cluster.url("/v1/collections");
        let key = key.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
        })
    };
    // Wait until the first request reached the worker (so it holds the only slot), then a second
    // one is refused at once.
    parked_rx
        .recv()
        .await
        .expect("the first request reached the worker");
    let conn = cluster.hub().worker("worker-0").unwrap();
    assert_eq!(conn.in_flight(1), 1);
    // Another tenant's request (the first tenant is also at its own in-flight share).
    let other = cluster.tenant("other", None).await;
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&other), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("busy"),
        "{v}"
    );
    first.abort();
    drop(conn);
    cluster.shutdown().await;
    assert!(silent.await.unwrap() >= 1);
}

/// Reads frames until the answer to `request_id` arrives.
pub(crate) async fn answer_to(ws: &mut Ws, request_id: u64) -> Option<cluster::envelope::Body> {
    while let Some(Ok(message)) = ws.next().await {
        let Ok(env) = cluster::Envelope::decode(message.into_data().as_ref()) else {
            continue;
        };
        if env.request_id == request_id {
            return env.body;
        }
    }
    None
}

pub(crate) fn audit_rows(export: &serde_json::Value, action: &str) -> Vec<serde_json::Value> {
    export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == action)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_a_live_workers_id_is_refused_and_audited() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("held", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let live = cluster
        .hub()
        .worker("worker-0")
        .expect("worker-0 is connected");

    // Someone with worker-0's id and token dials while worker-0 is connected.
    let err = dial(
        &cluster,
        "worker-0",
        "worker-token-0-0123456789abcdefghijklmnop",
    )
    .await
    .expect_err("a second connection for a live worker id must be refused");
    assert!(err.to_string().contains("409"), "{err}");

    // The live connection is untouched and keeps serving its tenant.
    let current = cluster.hub().worker("worker-0").expect("still connected");
    assert!(std::sync::Arc::ptr_eq(&live, &current));
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&key), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["collections"][0]["name"], "c", "{v}");

    let (_, platform) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let duplicates: Vec<_> = audit_rows(&platform, "worker.connect")
        .into_iter()
        .filter(|r| r["details"]["stage"] == "duplicate")
        .collect();
    assert_eq!(duplicates.len(), 1, "{platform}");
    drop((live, current));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_connections_racing_with_one_id_only_the_first_hello_is_admitted() {
    let cluster = Cluster::start_without_workers(1, |_| {}).await;
    let token = "worker-token-0-0123456789abcdefghijklmnop";
    // Both upgrades pass before either says hello, so only the hello can decide.
    let mut first = dial(&cluster, "worker-0", token)
        .await
        .expect("first upgrade");
    let mut second = dial(&cluster, "worker-0", token)
        .await
        .expect("second upgrade (no hello yet)");
    say_hello(&mut first, "worker-0", 4).await;
    cluster.hub().wait_for_worker("worker-0").await;
    let hello = cluster::Hello {
        worker_id: "worker-0".into(),
        version: "test".into(),
        memory_budget_bytes: 1 << 20,
        max_in_flight: 4,
        held_tenants: Vec::new(),
        heartbeat_interval_ms: 0,
    };
    second
        .send(frame(0, cluster::envelope::Body::Hello(hello)))
        .await
        .unwrap();
    match answer_to(&mut second, 0).await {
        Some(cluster::envelope::Body::Error(e)) => {
            assert_eq!(e.code, cluster::ErrorCode::AlreadyExists as i32, "{e:?}");
            assert!(e.message.contains("already connected"), "{e:?}");
        }
        other => panic!("the second hello was admitted: {other:?}"),
    }
    // The coordinator closes the refused connection.
    assert!(answer_to(&mut second, u64::MAX).await.is_none());

    // The first connection still gets the tenant's traffic.
    let key = cluster.tenant("raced", None).await;
    let request = {
        let url = cluster.url("/v1/collections");
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
        })
    };
    let mut assigned = false;
    while let Some(Ok(message)) = first.next().await {
        let env = cluster::Envelope::decode(message.into_data().as_ref()).unwrap();
        match env.body {
            Some(cluster::envelope::Body::AssignTenant(a)) => {
                assert_eq!(a.tenant, "raced");
                assigned = true;
                first
                    .send(frame(
                        env.request_id,
                        cluster::envelope::Body::Ack(cluster::Ack::default()),
                    ))
                    .await
                    .unwrap();
            }
            Some(cluster::envelope::Body::TenantRequest(_)) => {
                let reply = cluster::envelope::Body::TenantResponse(cluster::TenantResponse {
                    result: Some(cluster::tenant_response::Result::Collections(
                        proto::vaultvec::v1::ListCollectionsResponse::default(),
                    )),
                });
                first.send(frame(env.request_id, reply)).await.unwrap();
                break;
            }
            _ => {}
        }
    }
    assert!(assigned, "the first connection got the assignment");
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);

    let (_, platform) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let duplicates = audit_rows(&platform, "worker.connect")
        .into_iter()
        .filter(|r| r["details"]["stage"] == "duplicate")
        .count();
    assert_eq!(duplicates, 1, "{platform}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_answer_fails_its_request_and_the_connection_stays_up() {
    let cluster = Cluster::start_without_workers(1, |_| {}).await;
    let mut ws = dial(
        &cluster,
        "worker-0",
        "worker-token-0-0123456789abcdefghijklmnop",
    )
    .await
    .expect("valid token");
    say_hello(&mut ws, "worker-0", 4).await;
    cluster.hub().wait_for_worker("worker-0").await;
    let conn = cluster.hub().worker("worker-0").unwrap();
    // A fake worker whose first answer is one frame above the 64 MiB limit; later answers are small.
    let fake = tokio::spawn(async move {
        let mut answered = 0;
        while let Some(Ok(message)) = ws.next().await {
            let Ok(env) = cluster::Envelope::decode(message.into_data().as_ref()) else {
                continue;
            };
            let reply = match env.body {
                Some(cluster::envelope::Body::AssignTenant(_)) => {
                    cluster::envelope::Body::Ack(cluster::Ack::default())
                }
                Some(cluster::envelope::Body::TenantRequest(_)) => {
                    let name = if answered == 0 {
                        "x".repeat(coordinator::cluster::MAX_FRAME_BYTES + 1024)
                    } else {
                        "small".into()
                    };
                    answered += 1;
                    let info = proto::vaultvec::v1::CollectionInfo {
                        name,
                        ..Default::default()
                    };
                    cluster::envelope::Body::TenantResponse(cluster::TenantResponse {
                        result: Some(cluster::tenant_response::Result::Collections(
                            proto::vaultvec::v1::ListCollectionsResponse {
                                collections: vec![info],
                            },
                        )),
                    })
                }
                _ => continue,
            };
            if ws.send(frame(env.request_id, reply)).await.is_err() {
                break;
            }
        }
        answered
    });
    let key = cluster.tenant("big", None).await;
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&key), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_argument")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("too large"), "{v}");
    // The same connection is still the worker's, and its next answer arrives.
    let current = cluster.hub().worker("worker-0").expect("still connected");
    assert!(std::sync::Arc::ptr_eq(&conn, &current));
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&key), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["collections"][0]["name"], "small", "{v}");
    drop((conn, current));
    cluster.shutdown().await;
    assert_eq!(fake.await.unwrap(), 2);
}

/// Connects a fake worker-0 that parks every request of tenant `noisy` (each parked request is
/// sent on the channel) and answers the others at once; the task returns how many it parked.
async fn parking_worker(
    cluster: &Cluster,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::task::JoinHandle<usize>,
) {
    let mut ws = dial(
        cluster,
        "worker-0",
        "worker-token-0-0123456789abcdefghijklmnop",
    )
    .await
    .expect("valid token");
    say_hello(&mut ws, "worker-0", 4).await;
    cluster.hub().wait_for_worker("worker-0").await;
    let (parked_tx, parked_rx) = tokio::sync::mpsc::unbounded_channel();
    let fake = tokio::spawn(async move {
        let mut parked = Vec::new();
        while let Some(Ok(message)) = ws.next().await {
            let Ok(env) = cluster::Envelope::decode(message.into_data().as_ref()) else {
                continue;
            };
            let reply = match env.body {
                Some(cluster::envelope::Body::AssignTenant(_)) => {
                    cluster::envelope::Body::Ack(cluster::Ack::default())
                }
                Some(cluster::envelope::Body::TenantRequest(r)) if r.tenant == "noisy" => {
                    parked.push(env.request_id);
                    let _ = parked_tx.send(());
                    continue;
                }
                Some(cluster::envelope::Body::TenantRequest(_)) => {
                    cluster::envelope::Body::TenantResponse(cluster::TenantResponse {
                        result: Some(cluster::tenant_response::Result::Collections(
                            proto::vaultvec::v1::ListCollectionsResponse::default(),
                        )),
                    })
                }
                _ => continue,
            };
            if ws.send(frame(env.request_id, reply)).await.is_err() {
                break;
            }
        }
        parked.len()
    });
    (parked_rx, fake)
}

/// Sends `n` concurrent list requests with `key` and waits until each is parked on the
/// [`parking_worker`] or answered; gives the number parked, the answers (status, body) and the
/// requests still running.
async fn send_and_settle(
    cluster: &Cluster,
    key: &str,
    n: usize,
    parked_rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> (
    usize,
    Vec<(u16, serde_json::Value)>,
    tokio::task::JoinSet<(u16, serde_json::Value)>,
) {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = cluster.url("/v1/collections");
        let key = key.to_owned();
        requests.spawn(async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        });
    }
    let (mut parked, mut answered) = (0, Vec::new());
    while parked + answered.len() < n {
        tokio::select! {
            Some(()) = parked_rx.recv() => parked += 1,
            Some(done) = requests.join_next() => answered.push(done.unwrap()),
        }
    }
    (parked, answered, requests)
}

/// A tier's `max_in_flight` bounds its tenants' requests in flight below the coordinator's
/// per-tenant bound; tenants of other tiers keep the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiers_in_flight_bound_applies_to_its_tenants() {
    let cluster = Cluster::start_without_workers(1, |config| {
        config.max_in_flight_per_worker = 8;
        config.max_in_flight_per_tenant = 4;
        let mut small = config.tiers["pro"].clone();
        small.max_in_flight = 1;
        config.tiers.insert("small".into(), small);
    })
    .await;
    let (mut parked_rx, fake) = parking_worker(&cluster).await;
    let noisy = cluster.tenant("noisy", Some("small")).await;
    let quiet = cluster.tenant("quiet", None).await;
    let (parked, refused, mut requests) =
        send_and_settle(&cluster, &noisy, 3, &mut parked_rx).await;
    assert_eq!(parked, 1, "the tier allows one request in flight");
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("at most 1"), "{body}");
    }
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&quiet), None)
        .await;
    assert_eq!(s, 200, "{v}");
    requests.abort_all();
    cluster.shutdown().await;
    assert_eq!(fake.await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_in_flight_share_is_refused_and_others_keep_getting_through() {
    let cluster = Cluster::start_without_workers(1, |config| {
        config.max_in_flight_per_worker = 4;
        config.max_in_flight_per_tenant = 2;
    })
    .await;
    let (mut parked_rx, fake) = parking_worker(&cluster).await;
    let noisy = cluster.tenant("noisy", None).await;
    let quiet = cluster.tenant("quiet", None).await;

    // The noisy tenant sends as many requests as the worker has slots.
    let (parked, refused, mut requests) =
        send_and_settle(&cluster, &noisy, 4, &mut parked_rx).await;
    // The quiet tenant still gets a slot.
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&quiet), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(parked, 2, "the noisy tenant holds its share, no more");
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "resource_exhausted", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("too many requests in flight"), "{body}");
    }
    requests.abort_all();
    cluster.shutdown().await;
    assert_eq!(fake.await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_erased_while_its_worker_was_offline_loses_its_files_when_the_worker_returns() {
    let mut cluster = Cluster::start(1).await;
    let gone = cluster.tenant("gone", None).await;
    let kept = cluster.tenant("kept", None).await;
    for key in [&gone, &kept] {
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections",
                Some(key),
                Some(serde_json::json!({"name": "c", "dim": 2, "metric": "l2"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = cluster
            .http(
                "PUT",
                "/v1/collections/c/points",
                Some(key),
                Some(serde_json::json!({"points": [{"id": 1, "vector": [1.0, 2.0]}]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let tenants = cluster.worker_dir(0).join("tenants");
    let files = |tenant: &str| tenants.join(tenant);
    assert!(files("gone").exists());
    cluster.hub().wait_for_reconciliations(1).await;

    cluster.stop_worker(0).await;
    cluster.hub().wait_for_worker_gone("worker-0").await;
    let (s, v) = cluster
        .admin("DELETE", "/admin/v1/tenants/gone", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["files_deleted"], false, "the worker was offline: {v}");
    assert!(files("gone").exists());

    cluster.start_worker(0).await;
    cluster.hub().wait_for_reconciliations(2).await;
    assert!(
        !files("gone").exists(),
        "the erased tenant's files are deleted on reconnect"
    );
    assert!(files("kept").exists());
    let (s, v) = cluster
        .http("POST", "/v1/collections/c/points/count", Some(&kept), None)
        .await;
    assert_eq!((s, &v["count"]), (200, &serde_json::json!(1)), "{v}");
    let (_, platform) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let rows = audit_rows(&platform, "worker.reconcile");
    assert_eq!(rows.len(), 1, "{platform}");
    assert_eq!(rows[0]["details"]["erased"], serde_json::json!(["gone"]));
    assert_eq!(rows[0]["outcome"], "ok");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_tenant_writes_no_cluster_refused_rows() {
    let cluster = Cluster::start_without_workers(1, |_| {}).await;
    let mut ws = dial(
        &cluster,
        "worker-0",
        "worker-token-0-0123456789abcdefghijklmnop",
    )
    .await
    .expect("valid token");
    say_hello(&mut ws, "worker-0", 4).await;
    cluster.hub().wait_for_worker("worker-0").await;
    // A fake worker that, like the real one sealing a growing segment when it unloads a tenant,
    // asks the key service for a data key before it acknowledges the release.
    let fake = tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Ok(env) = cluster::Envelope::decode(message.into_data().as_ref()) else {
                continue;
            };
            let reply = match env.body {
                Some(cluster::envelope::Body::AssignTenant(_)) => {
                    cluster::envelope::Body::Ack(cluster::Ack::default())
                }
                Some(cluster::envelope::Body::TenantRequest(_)) => {
                    cluster::envelope::Body::TenantResponse(cluster::TenantResponse {
                        result: Some(cluster::tenant_response::Result::Collections(
                            proto::vaultvec::v1::ListCollectionsResponse::default(),
                        )),
                    })
                }
                Some(cluster::envelope::Body::ReleaseTenant(release)) => {
                    let ask =
                        cluster::envelope::Body::GenerateDataKey(cluster::GenerateDataKeyRequest {
                            tenant: release.tenant,
                            collection: "c".into(),
                            file_id: 7,
                        });
                    ws.send(frame(1, ask)).await.unwrap();
                    let answer = answer_to(&mut ws, 1).await;
                    ws.send(frame(
                        env.request_id,
                        cluster::envelope::Body::Ack(cluster::Ack::default()),
                    ))
                    .await
                    .unwrap();
                    return answer;
                }
                _ => continue,
            };
            ws.send(frame(env.request_id, reply)).await.unwrap();
        }
        None
    });
    let key = cluster.tenant("napping", None).await;
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&key), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = cluster
        .admin("POST", "/admin/v1/tenants/napping/pause", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let answer = fake.await.unwrap();
    assert!(
        matches!(
            answer,
            Some(cluster::envelope::Body::GenerateDataKeyResponse(_))
        ),
        "the worker may use the key service until it acknowledges the release: {answer:?}"
    );
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/napping", None).await;
    let refused = audit_rows(&export, "cluster.refused");
    assert!(refused.is_empty(), "{refused:#?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_are_budgeted_per_address_and_their_audit_rows_coalesced() {
    let cluster = Cluster::start_without_workers(1, |config| {
        config.auth_failures.burst = 3;
        config.auth_failures.per_second = 0.001;
    })
    .await;
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let err = dial(&cluster, "worker-0", "wrong-token-wrong-token-wrong-token")
            .await
            .expect_err("a wrong token is refused");
        outcomes.push(err.to_string().contains("401"));
    }
    // The budget's burst is answered 401 (and audited); beyond it the connection is closed at once.
    assert_eq!(
        outcomes,
        [
            true, true, true, false, false, false, false, false, false, false
        ]
    );
    let (_, platform) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let rows = audit_rows(&platform, "worker.connect");
    assert_eq!(
        rows.len(),
        3,
        "one row per budgeted refusal, not per attempt: {platform}"
    );
    // The refusals over the budget are not lost: the next row counts them. A budgeted refusal's
    // row is written after its 401 is sent, so under load it may already count some of the
    // closings that followed (`unaudited_refusals_before`); together they are all seven.
    let in_rows: u64 = rows
        .iter()
        .map(|r| {
            r["details"]["unaudited_refusals_before"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    let suppressed = cluster.hub().refusals_not_audited();
    assert_eq!(suppressed + in_rows, 7, "{platform}");
    cluster.shutdown().await;
}
