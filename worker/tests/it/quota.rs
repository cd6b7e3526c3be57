use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;

use crate::fake::*;
use storage::ids::PointId;

#[tokio::test]
async fn max_points_counts_live_points_over_all_collections() {
    let mut setup = Setup::new(3).await;
    let conn = &mut setup.conn;
    let quota = cluster::TenantQuota {
        max_points: 5,
        max_collections: 0,
        max_stored_bytes: 0,
    };
    // Same epoch: only the quota changes.
    assert_eq!(
        conn.assign(TENANT, 1, quota).await,
        Body::Ack(cluster::Ack::default())
    );
    conn.op(create("more", 2, api::Metric::L2)).await.unwrap();
    conn.op(upsert("more", vec![point(1, vec![1.0, 0.0], None)]))
        .await
        .unwrap();
    assert_eq!(conn.count("docs").await + conn.count("more").await, 4);

    // Two new points (one repeated) would make 6.
    let over = upsert(
        "docs",
        vec![
            point(10, vec![1.0, 0.0], None),
            point(11, vec![1.0, 0.0], None),
            point(11, vec![2.0, 0.0], None),
        ],
    );
    let message = conn.refused(over, ErrorCode::ResourceExhausted).await;
    assert!(message.contains("quota of 5"), "{message}");
    assert_eq!(conn.count("docs").await, 3);

    // Replacing existing points and adding one new point fits exactly.
    conn.op(upsert(
        "docs",
        vec![
            point(1, vec![5.0, 0.0], None),
            point(2, vec![5.0, 0.0], None),
            point(12, vec![5.0, 0.0], None),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(conn.count("docs").await, 4);
    conn.refused(
        upsert("more", vec![point(2, vec![1.0, 0.0], None)]),
        ErrorCode::ResourceExhausted,
    )
    .await;

    // Deleting frees room.
    conn.op(Op::Delete(api::DeletePointsRequest {
        collection: "docs".into(),
        ids: vec![num_id(12)],
        filter: None,
        idempotency_key: String::new(),
    }))
    .await
    .unwrap();
    conn.op(upsert("more", vec![point(2, vec![1.0, 0.0], None)]))
        .await
        .unwrap();

    // A higher quota on the same epoch lifts the limit.
    conn.assign(
        TENANT,
        1,
        cluster::TenantQuota {
            max_points: 100,
            max_collections: 0,
            max_stored_bytes: 0,
        },
    )
    .await;
    conn.op(upsert("docs", vec![point(20, vec![1.0, 0.0], None)]))
        .await
        .unwrap();
    setup.stop().await;
}

#[tokio::test]
async fn max_collections_is_enforced() {
    let mut setup = Setup::new(0).await;
    let conn = &mut setup.conn;
    conn.assign(
        TENANT,
        1,
        cluster::TenantQuota {
            max_points: 0,
            max_collections: 2,
            max_stored_bytes: 0,
        },
    )
    .await;
    conn.op(create("second", 2, api::Metric::L2)).await.unwrap();
    let message = conn
        .refused(
            create("third", 2, api::Metric::L2),
            ErrorCode::ResourceExhausted,
        )
        .await;
    assert!(message.contains("quota is 2"), "{message}");
    conn.op(Op::DeleteCollection(api::DeleteCollectionRequest {
        name: "second".into(),
    }))
    .await
    .unwrap();
    conn.op(create("third", 2, api::Metric::L2)).await.unwrap();
    setup.stop().await;
}

/// Bytes of a point of `docs` (dim 2) with id `id` and payload `{"pad": "x" * pad}`, as storage
/// counts them.
fn point_bytes(id: u64, pad: usize) -> u64 {
    let payload = storage::filter::Payload::from_value(
        serde_json::json!({ "pad": "x".repeat(pad) }),
        &storage::filter::PayloadLimits::default(),
    )
    .unwrap();
    storage::collection::point_stored_bytes(2, &PointId::Num(id), Some(&payload))
}

fn padded(id: u64, pad: usize) -> api::Point {
    point(
        id,
        vec![id as f32, 0.0],
        Some(serde_json::json!({ "pad": "x".repeat(pad) })),
    )
}

fn byte_quota(max_stored_bytes: u64) -> cluster::TenantQuota {
    cluster::TenantQuota {
        max_stored_bytes,
        ..cluster::TenantQuota::default()
    }
}

#[tokio::test]
async fn max_stored_bytes_counts_real_bytes_and_lets_overwrites_through() {
    let mut setup = Setup::new(0).await;
    let conn = &mut setup.conn;
    // Payloads are what a point count misses: 10 KB points, room for three and a bit.
    let heavy = point_bytes(1, 10_000);
    assert!(heavy > 10_000, "real bytes are counted: {heavy}");
    let quota = 3 * heavy + heavy / 2;
    conn.assign(TENANT, 1, byte_quota(quota)).await;
    conn.op(create("more", 2, api::Metric::L2)).await.unwrap();
    conn.op(upsert("docs", vec![padded(1, 10_000), padded(2, 10_000)]))
        .await
        .unwrap();
    conn.op(upsert("more", vec![padded(3, 10_000)]))
        .await
        .unwrap();

    // A fourth would pass the quota, counted over both collections; nothing of it is written.
    let message = conn
        .refused(
            upsert("docs", vec![padded(4, 10_000)]),
            ErrorCode::ResourceExhausted,
        )
        .await;
    assert!(
        message.contains(&format!("quota of {quota} bytes")),
        "{message}"
    );
    assert_eq!(conn.count("docs").await, 2);
    // A small point still fits.
    conn.op(upsert("docs", vec![padded(5, 10)])).await.unwrap();

    // The quota goes down below what the tenant holds (a tier change).
    conn.assign(TENANT, 1, byte_quota(2 * heavy)).await;
    // Overwrites that do not grow the tenant go through, repeated ids counted once, the last
    // one winning.
    conn.op(upsert(
        "docs",
        vec![padded(1, 10_000), padded(1, 9_000), padded(2, 10_000)],
    ))
    .await
    .unwrap();
    conn.op(upsert("docs", vec![padded(1, 8_000)]))
        .await
        .unwrap();
    // One that grows it does not (point 1 back to its old size included), nor does a new point,
    // however small.
    for grows in [padded(1, 10_000), padded(2, 10_100), padded(6, 0)] {
        conn.refused(upsert("docs", vec![grows]), ErrorCode::ResourceExhausted)
            .await;
    }

    // Deleting frees room at once.
    conn.op(Op::Delete(api::DeletePointsRequest {
        collection: "more".into(),
        ids: vec![num_id(3)],
        filter: None,
        idempotency_key: String::new(),
    }))
    .await
    .unwrap();
    conn.op(Op::Delete(api::DeletePointsRequest {
        collection: "docs".into(),
        ids: vec![num_id(5)],
        filter: None,
        idempotency_key: String::new(),
    }))
    .await
    .unwrap();
    conn.op(upsert("docs", vec![padded(6, 0)])).await.unwrap();

    // 0 is unlimited.
    conn.assign(TENANT, 1, byte_quota(0)).await;
    conn.op(upsert(
        "docs",
        (10..20).map(|i| padded(i, 10_000)).collect(),
    ))
    .await
    .unwrap();
    assert_eq!(conn.count("docs").await, 13);
    setup.stop().await;
}
