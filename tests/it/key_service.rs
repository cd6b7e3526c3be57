//! INV-14 for the key service: it answers a worker only for tenants assigned to it (single keys
//! and batches alike), refuses a replayed request id, and audits its refusals.

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use tests::Cluster;

use super::cluster::{dial, frame, say_hello};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_service_answers_only_for_tenants_assigned_to_the_asker() {
    // Two worker ids are configured; worker-0 is real, worker-1's slot is taken by this test.
    let mut cluster = Cluster::start(2).await;
    cluster.kill_worker(1).await;
    cluster.hub().wait_for_worker_gone("worker-1").await;
    let key = cluster.tenant("victim", None).await;
    let (s, _) = cluster
        .http(
            "POST",
            "/v1/collections",
            Some(&key),
            Some(serde_json::json!({"name": "c", "dim": 2, "metric": "l2"})),
        )
        .await;
    assert_eq!(s, 200, "victim is placed on worker-0");

    // Wrong tokens and unknown worker ids do not get a connection.
    for (worker, token) in [
        ("worker-1", "wrong-token-wrong-token-wrong-token"),
        ("worker-9", "worker-token-1-0123456789abcdefghijklmnop"),
    ] {
        let err = dial(&cluster, worker, token)
            .await
            .expect_err("must be refused");
        assert!(err.to_string().contains("401"), "{err}");
    }

    let mut ws = dial(
        &cluster,
        "worker-1",
        "worker-token-1-0123456789abcdefghijklmnop",
    )
    .await
    .expect("valid token");
    say_hello(&mut ws, "worker-1", 4).await;

    // Asking for a data key of a tenant placed on worker-0 is refused.
    let ask = cluster::envelope::Body::GenerateDataKey(cluster::GenerateDataKeyRequest {
        tenant: "victim".into(),
        collection: "c".into(),
        file_id: 99,
    });
    ws.send(frame(1, ask.clone())).await.unwrap();
    let answer = loop {
        let message = ws.next().await.unwrap().unwrap();
        let env = cluster::Envelope::decode(message.into_data().as_ref()).unwrap();
        if env.request_id == 1 {
            break env;
        }
    };
    match answer.body {
        Some(cluster::envelope::Body::Error(e)) => {
            assert_eq!(e.code, cluster::ErrorCode::NotAssigned as i32, "{e:?}")
        }
        other => panic!("a foreign tenant's key was answered: {other:?}"),
    }
    // A replayed request id is refused too.
    ws.send(frame(1, ask)).await.unwrap();
    let answer = loop {
        let message = ws.next().await.unwrap().unwrap();
        let env = cluster::Envelope::decode(message.into_data().as_ref()).unwrap();
        if env.request_id == 1 {
            break env;
        }
    };
    match answer.body {
        Some(cluster::envelope::Body::Error(e)) => {
            assert_eq!(e.code, cluster::ErrorCode::Replayed as i32, "{e:?}")
        }
        other => panic!("a replay was answered: {other:?}"),
    }
    // So is a batch of its keys, and a batch that smuggles one of its keys under another
    // tenant's name, and an empty or oversized batch.
    let key_of = |tenant: &str| cluster::DecryptDataKeyRequest {
        tenant: tenant.into(),
        collection: "c".into(),
        file_id: 1,
        kek_version: 1,
        wrapped_data_key: vec![0; 60],
    };
    let batch = |tenant: &str, keys: Vec<cluster::DecryptDataKeyRequest>| {
        cluster::envelope::Body::DecryptDataKeys(cluster::DecryptDataKeysRequest {
            tenant: tenant.into(),
            keys,
        })
    };
    for (id, ask, code) in [
        (
            2,
            batch("victim", vec![key_of("victim"), key_of("victim")]),
            cluster::ErrorCode::NotAssigned,
        ),
        (
            3,
            batch("nobody", vec![key_of("nobody"), key_of("victim")]),
            cluster::ErrorCode::InvalidArgument,
        ),
        (
            4,
            batch("victim", Vec::new()),
            cluster::ErrorCode::InvalidArgument,
        ),
        (
            5,
            batch("victim", (0..1025).map(|_| key_of("victim")).collect()),
            cluster::ErrorCode::InvalidArgument,
        ),
    ] {
        ws.send(frame(id, ask)).await.unwrap();
        let answer = loop {
            let message = ws.next().await.unwrap().unwrap();
            let env = cluster::Envelope::decode(message.into_data().as_ref()).unwrap();
            if env.request_id == id {
                break env;
            }
        };
        match answer.body {
            Some(cluster::envelope::Body::Error(e)) => assert_eq!(e.code, code as i32, "{e:?}"),
            other => panic!("batch {id} was answered: {other:?}"),
        }
    }
    drop(ws);

    let (_, export) = cluster.admin("GET", "/admin/v1/audit/victim", None).await;
    let refused = export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "cluster.refused" && r["actor"] == "worker:worker-1")
        .count();
    // The single key and the batch of the victim's keys.
    assert_eq!(refused, 2, "{export}");
    let (_, platform) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    assert!(
        platform.to_string().contains("worker.connect"),
        "refused upgrades are audited"
    );
    cluster.shutdown().await;
}
