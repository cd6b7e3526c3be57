use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;

use crate::fake::*;

#[tokio::test]
async fn max_points_counts_live_points_over_all_collections() {
    let mut setup = Setup::new(3).await;
    let conn = &mut setup.conn;
    let quota = cluster::TenantQuota {
        max_points: 5,
        max_collections: 0,
    };
    // Same epoch: only the quota changes.
    assert_eq!(
        conn.assign(TENANT, 1, quota).await,
        Body::Ack(cluster::Ack {})
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
