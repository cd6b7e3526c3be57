//! API keys, scopes, revocation, the admin token, rate limits, tier limits, pause and resume.

use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::points_client::PointsClient;
use serde_json::{Value, json};
use tests::{ADMIN_TOKEN, Cluster, with_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_indistinguishable_and_revocation_is_immediate() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("auth-a", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let key_id = &key[3..11];
    let wrong_secret = format!("vv_{key_id}_{}", "A".repeat(32));
    let unknown = format!("vv_ZZZZZZZZ_{}", "b".repeat(32));
    let candidates: Vec<Option<&str>> = vec![
        None,
        Some("garbage"),
        Some(&wrong_secret),
        Some(&unknown),
        Some(ADMIN_TOKEN),
        Some(""),
    ];
    let mut answers = Vec::new();
    for candidate in &candidates {
        answers.push(
            cluster
                .http("GET", "/v1/collections/c", *candidate, None)
                .await,
        );
    }
    for (candidate, answer) in candidates.iter().zip(&answers) {
        assert_eq!(
            answer, &answers[0],
            "{candidate:?} must get the same answer"
        );
    }
    assert_eq!(answers[0].0, 401);
    assert_eq!(answers[0].1["error"]["code"], "unauthenticated");

    // The scheme name is case-insensitive (RFC 9110).
    for scheme in ["bearer", "BEARER"] {
        let response = reqwest::Client::new()
            .get(cluster.url("/v1/collections/c"))
            .header("authorization", format!("{scheme} {key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
    }
    // The key works (and is now cached); revoke it; the very next request fails, on both transports.
    assert_eq!(
        cluster
            .http("GET", "/v1/collections/c", Some(&key), None)
            .await
            .0,
        200
    );
    let (s, _) = cluster
        .admin(
            "DELETE",
            &format!("/admin/v1/tenants/auth-a/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        cluster
            .http("GET", "/v1/collections/c", Some(&key), None)
            .await,
        answers[0]
    );
    let mut points = PointsClient::new(cluster.grpc_channel().await);
    let status = points
        .count(with_key(
            api::CountRequest {
                collection: "c".into(),
                filter: None,
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_and_collection_restrictions_are_enforced() {
    let cluster = Cluster::start(1).await;
    let admin_key = cluster.tenant("scopes", None).await;
    cluster.create_collection(&admin_key, "open", 2).await;
    cluster.create_collection(&admin_key, "closed", 2).await;
    let reader = cluster.key("scopes", &["read"], None).await;
    let writer_open = cluster
        .key("scopes", &["read", "write"], Some(&["open"]))
        .await;
    let upsert = json!({"points": [{"id": 1, "vector": [1.0, 2.0]}]});

    let (s, v) = cluster
        .http(
            "PUT",
            "/v1/collections/open/points",
            Some(&reader),
            Some(upsert.clone()),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    let (s, _) = cluster
        .http(
            "POST",
            "/v1/collections",
            Some(&reader),
            Some(json!({"name": "x", "dim": 2, "metric": "l2"})),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        cluster
            .http(
                "PUT",
                "/v1/collections/open/points",
                Some(&writer_open),
                Some(upsert.clone())
            )
            .await
            .0,
        200
    );
    assert_eq!(
        cluster
            .http(
                "PUT",
                "/v1/collections/closed/points",
                Some(&writer_open),
                Some(upsert)
            )
            .await
            .0,
        403
    );
    assert_eq!(
        cluster
            .http(
                "POST",
                "/v1/collections/closed/points/count",
                Some(&writer_open),
                None
            )
            .await
            .0,
        403
    );
    let (_, list) = cluster
        .http("GET", "/v1/collections", Some(&writer_open), None)
        .await;
    let names: Vec<&str> = list["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["open"]);
    // gRPC gives the same code.
    let mut points = PointsClient::new(cluster.grpc_channel().await);
    let status = points
        .upsert(with_key(
            api::UpsertRequest {
                collection: "open".into(),
                points: vec![],
                idempotency_key: String::new(),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_tier_limits_answer_with_the_right_codes() {
    let cluster = Cluster::start(1).await;
    // Tier `free` in tests: 5 requests/s, burst 10, 3 collections, 1000 points, dim 256, 256 KiB bodies.
    let key = cluster.tenant("limited", Some("free")).await;
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections",
            Some(&key),
            Some(json!({"name": "big", "dim": 300, "metric": "l2"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("resource_exhausted")),
        "{v}"
    );
    for name in ["c1", "c2", "c3"] {
        cluster.create_collection(&key, name, 2).await;
    }
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections",
            Some(&key),
            Some(json!({"name": "c4", "dim": 2, "metric": "l2"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("resource_exhausted")),
        "{v}"
    );
    // Bodies over the tier's limit.
    let huge: Vec<Value> = (0..9000)
        .map(|i| json!({"id": i, "vector": [0.123456789, 0.987654321]}))
        .collect();
    let (s, v) = cluster
        .http(
            "PUT",
            "/v1/collections/c1/points",
            Some(&key),
            Some(json!({"points": huge})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{v}"
    );
    // Points quota.
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": i, "vector": [1.0, 0.0]}))
        .collect();
    let (s, v) = cluster
        .http(
            "PUT",
            "/v1/collections/c1/points",
            Some(&key),
            Some(json!({"points": many})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("resource_exhausted")),
        "{v}"
    );
    // The request rate: the burst is spent by now; the next ones are refused with a retry-after.
    let mut limited = None;
    for _ in 0..20 {
        let response = reqwest::Client::new()
            .post(cluster.url("/v1/collections/c1/points/count"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the rate limit was never hit");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "resource_exhausted");
    let mut points = PointsClient::new(cluster.grpc_channel().await);
    let status = points
        .count(with_key(
            api::CountRequest {
                collection: "c1".into(),
                filter: None,
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_admin_token_and_pause_resume_keeps_results() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("pausable", None).await;
    for token in [
        None,
        Some(key.as_str()),
        Some("test-admin-token-0123456789abcdefghiX"),
    ] {
        let (s, v) = cluster.http("GET", "/admin/v1/tenants", token, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("unauthenticated"))
        );
    }
    cluster.create_collection(&key, "c", 2).await;
    let points: Vec<Value> = (0..50)
        .map(|i| json!({"id": i, "vector": [i as f32, (50 - i) as f32]}))
        .collect();
    assert_eq!(
        cluster
            .http(
                "PUT",
                "/v1/collections/c/points",
                Some(&key),
                Some(json!({"points": points}))
            )
            .await
            .0,
        200
    );
    let query = json!({"vector": [10.0, 40.0], "top_k": 5});
    let before = cluster
        .http(
            "POST",
            "/v1/collections/c/points/search",
            Some(&key),
            Some(query.clone()),
        )
        .await;
    assert_eq!(before.0, 200);
    assert_eq!(
        cluster
            .admin("POST", "/admin/v1/tenants/pausable/pause", None)
            .await
            .0,
        200
    );
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/c/points/search",
            Some(&key),
            Some(query.clone()),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("failed_precondition")),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("paused"));
    assert_eq!(
        cluster
            .admin("POST", "/admin/v1/tenants/pausable/resume", None)
            .await
            .0,
        200
    );
    let after = cluster
        .http(
            "POST",
            "/v1/collections/c/points/search",
            Some(&key),
            Some(query),
        )
        .await;
    assert_eq!(after, before);
    let (_, tenant) = cluster
        .admin("GET", "/admin/v1/tenants/pausable", None)
        .await;
    assert_eq!(
        tenant["placement"]["epoch"], 5,
        "the pause, its move to cold storage, the move back and the resume each fenced the \
         assignment before them: {tenant}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_keys_neither_revives_a_revoked_key_nor_queries_the_store_per_request() {
    use coordinator::api::error::Code;
    let cluster = Cluster::start(1).await;
    let revoked = cluster.tenant("flooded", None).await;
    let kept = cluster.key("flooded", &["read"], None).await;
    let service = cluster.service();
    let us: std::net::IpAddr = [127, 0, 0, 1].into();
    service
        .authenticate(Some(&revoked), Some(us))
        .expect("valid before revocation (and now cached)");
    service
        .authenticate(Some(&kept), Some(us))
        .expect("valid (and now cached)");
    let fresh = cluster.key("flooded", &["read"], None).await;
    let (s, _) = cluster
        .admin(
            "DELETE",
            &format!("/admin/v1/tenants/flooded/keys/{}", &revoked[3..11]),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let rows_before = service_rows(&cluster).await;

    // 10^5 random well-formed keys from one address.
    let flooder: std::net::IpAddr = [10, 9, 8, 7].into();
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ALPHABET[(state % 62) as usize] as char
    };
    let started = std::time::Instant::now();
    let (mut refused_after_lookup, mut throttled) = (0u64, 0u64);
    for _ in 0..100_000 {
        let id: String = (0..8).map(|_| next()).collect();
        let secret: String = (0..32).map(|_| next()).collect();
        match service.authenticate(Some(&format!("vv_{id}_{secret}")), Some(flooder)) {
            Ok(_) => panic!("a random key authenticated"),
            Err(e) if e.code == Code::Unauthenticated => refused_after_lookup += 1,
            Err(e) if e.code == Code::ResourceExhausted => throttled += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Only the failure budget (burst 50, then 10/s) reached the store: every lookup that fails is
    // audited, and the audit rows are bounded by the budget.
    let budget = 50.0 + 10.0 * elapsed + 1.0;
    assert!(
        (refused_after_lookup as f64) <= budget,
        "{refused_after_lookup} lookups in {elapsed:.1}s"
    );
    assert_eq!(refused_after_lookup + throttled, 100_000);
    let audited = service_rows(&cluster).await - rows_before;
    assert!(audited as f64 <= budget, "{audited} audit rows");

    // The revoked key stays refused and the other key still works, from the flooded address too.
    let refused = service.authenticate(Some(&revoked), Some(us)).unwrap_err();
    assert_eq!(refused.code, Code::Unauthenticated);
    service
        .authenticate(Some(&kept), Some(flooder))
        .expect("a cached valid key is not throttled");
    // A key not yet cached may wait for the flooded address's budget (429), but is never refused as
    // invalid; from elsewhere it works.
    if let Err(e) = service.authenticate(Some(&fresh), Some(flooder)) {
        assert_eq!(e.code, Code::ResourceExhausted);
    }
    service
        .authenticate(Some(&fresh), Some(us))
        .expect("valid from another address");
    cluster.shutdown().await;
}

async fn service_rows(cluster: &Cluster) -> usize {
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    // Each export adds its own `audit.export` row; count only authentication failures.
    export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "auth.failure")
        .count()
}

/// A lookup of a tenant's state that read the store before a pause committed cannot cache the
/// state it read: the next request sees the pause (before the fix, the stale state stayed cached
/// and the paused tenant kept being served until the coordinator restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_racing_a_pause_cannot_cache_the_state_before_it() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("racer", None).await;
    let service = cluster.service().clone();
    let identity = service.authenticate(Some(&key), None).expect("a valid key");
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    service.set_tenant_read_hook(move || {
        read_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    // The tenant's state is not cached yet, so this lookup reads the store, then stops.
    let lookup = {
        let (service, identity) = (service.clone(), identity.clone());
        std::thread::spawn(move || service.check_body_size(&identity, 1).is_ok())
    };
    tokio::task::spawn_blocking(move || read_rx.recv().unwrap())
        .await
        .unwrap();
    let (s, v) = cluster
        .admin("POST", "/admin/v1/tenants/racer/pause", None)
        .await;
    assert_eq!(s, 200, "{v}");
    go_tx.send(()).unwrap();
    let lookup_ok = tokio::task::spawn_blocking(move || lookup.join().unwrap())
        .await
        .unwrap();
    assert!(
        lookup_ok,
        "the racing lookup read the tenant before the pause"
    );
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&key), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("failed_precondition")),
        "a paused tenant was served from a stale cache: {v}"
    );
    cluster.shutdown().await;
}

/// INV-14 and INV-20: a request that read a tenant's placement before it was paused cannot get
/// the tenant loaded again. Pausing moves the fencing epoch on, and the key service refuses a
/// paused tenant's keys, so a worker assigned under the old epoch serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_racing_a_pause_cannot_reload_the_paused_tenant() {
    use proto::vaultvec::cluster::v1 as wire;
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("paused-race", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let (s, _) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            Some(&key),
            Some(json!({"points": [{"id": 1, "vector": [1.0, 0.0]}]})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, before) = cluster
        .admin("GET", "/admin/v1/tenants/paused-race", None)
        .await;
    let old_epoch = before["placement"]["epoch"].as_u64().unwrap();
    let worker = before["placement"]["worker"].as_str().unwrap().to_owned();
    let (s, v) = cluster
        .admin("POST", "/admin/v1/tenants/paused-race/pause", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, after) = cluster
        .admin("GET", "/admin/v1/tenants/paused-race", None)
        .await;
    assert!(
        after["placement"]["epoch"].as_u64().unwrap() > old_epoch,
        "pausing fences the placement: {after}"
    );

    // What a request that passed the pause check just before the pause would do next: assign the
    // tenant under the epoch it read, then ask for its data.
    let hub = cluster.hub();
    let timeout = std::time::Duration::from_secs(10);
    let quota = wire::TenantQuota {
        max_points: 1000,
        max_collections: 10,
        max_stored_bytes: 0,
    };
    let served = match hub
        .assign(&worker, "paused-race", old_epoch, quota, timeout)
        .await
    {
        Err(_) => None,
        Ok(()) => {
            let body = wire::envelope::Body::TenantRequest(wire::TenantRequest {
                tenant: "paused-race".into(),
                epoch: old_epoch,
                op: Some(wire::tenant_request::Op::Count(api::CountRequest {
                    collection: "c".into(),
                    filter: None,
                })),
                write_token: 0,
            });
            Some(hub.request(&worker, body, timeout).await)
        }
    };
    match served {
        None | Some(Err(_)) | Some(Ok(wire::envelope::Body::Error(_))) => {}
        Some(Ok(other)) => panic!("a paused tenant's data was served: {other:?}"),
    }
    cluster.shutdown().await;
}

/// Requests refused for their key's scope or for bad input do not spend the tenant's rate budget:
/// a stream of them cannot starve the tenant's valid requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_do_not_drain_the_tenants_rate_budget() {
    let cluster = Cluster::start(1).await;
    // Tier `free` allows a burst of 10 at 5 per second.
    let full = cluster.tenant("budgeted", Some("free")).await;
    let reader = cluster.key("budgeted", &["read"], None).await;
    for _ in 0..30 {
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections",
                Some(&reader),
                Some(json!({"name": "c", "dim": 2, "metric": "l2"})),
            )
            .await;
        assert_eq!(s, 403, "{v}");
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections",
                Some(&full),
                Some(json!({"name": "c", "dim": 0, "metric": "l2"})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
    }
    let (s, v) = cluster
        .http("GET", "/v1/collections", Some(&full), None)
        .await;
    assert_eq!(s, 200, "the budget is intact for valid requests: {v}");
    cluster.shutdown().await;
}
