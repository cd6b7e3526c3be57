use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;
use tokio_tungstenite::tungstenite::Message;

use crate::fake::*;

#[tokio::test]
async fn bad_vectors_and_bounds_are_refused_and_the_connection_keeps_serving() {
    // max_batch is 50 in the test config; the engine defaults give max_top_k 1000, max_ef 4096.
    let mut setup = Setup::new(3).await;
    let conn = &mut setup.conn;
    let cases: Vec<(&str, Op)> = vec![
        (
            "NaN",
            upsert("docs", vec![point(9, vec![f32::NAN, 0.0], None)]),
        ),
        (
            "infinity",
            upsert("docs", vec![point(9, vec![1.0, f32::INFINITY], None)]),
        ),
        (
            "wrong dimension",
            upsert("docs", vec![point(9, vec![1.0, 2.0, 3.0], None)]),
        ),
        (
            "missing id",
            upsert(
                "docs",
                vec![api::Point {
                    id: None,
                    vector: vec![1.0, 2.0],
                    payload: None,
                }],
            ),
        ),
        ("empty batch", upsert("docs", vec![])),
        (
            "oversized batch",
            upsert(
                "docs",
                (100..151).map(|i| point(i, vec![1.0, 0.0], None)).collect(),
            ),
        ),
        (
            "NaN query",
            Op::Search(search("docs", vec![f32::NAN, 0.0], 1)),
        ),
        ("query dimension", Op::Search(search("docs", vec![1.0], 1))),
        ("top_k 0", Op::Search(search("docs", vec![1.0, 0.0], 0))),
        (
            "top_k over the limit",
            Op::Search(search("docs", vec![1.0, 0.0], 1001)),
        ),
        (
            "ef over the limit",
            Op::Search(api::SearchRequest {
                ef: Some(5000),
                ..search("docs", vec![1.0, 0.0], 1)
            }),
        ),
        (
            "empty search batch",
            Op::SearchBatch(api::SearchBatchRequest {
                collection: "docs".into(),
                searches: vec![],
            }),
        ),
        (
            "oversized search batch",
            Op::SearchBatch(api::SearchBatchRequest {
                collection: "docs".into(),
                searches: vec![search("", vec![1.0, 0.0], 1); 101],
            }),
        ),
        (
            "search batch naming another collection",
            Op::SearchBatch(api::SearchBatchRequest {
                collection: "docs".into(),
                searches: vec![search("other", vec![1.0, 0.0], 1)],
            }),
        ),
        (
            "metric unspecified",
            create("new", 2, api::Metric::Unspecified),
        ),
        ("dimension 0", create("new", 0, api::Metric::L2)),
        (
            "no config",
            Op::CreateCollection(api::CreateCollectionRequest {
                name: "new".into(),
                config: None,
            }),
        ),
        (
            "bad filter",
            count(
                "docs",
                filter(serde_json::json!({"must": [{"key": "", "match": {"value": 1}}]})),
            ),
        ),
        (
            "oversized get",
            Op::Get(api::GetPointsRequest {
                collection: "docs".into(),
                ids: (0..51).map(num_id).collect(),
                ..Default::default()
            }),
        ),
        (
            "oversized scroll page",
            Op::Scroll(api::ScrollRequest {
                collection: "docs".into(),
                limit: 51,
                ..Default::default()
            }),
        ),
    ];
    for (what, op) in cases {
        let err = conn.op(op).await.expect_err(what);
        assert_eq!(
            err.code(),
            ErrorCode::InvalidArgument,
            "{what}: {}",
            err.message
        );
        assert!(!err.message.is_empty(), "{what}");
        // Still serving, and nothing was applied.
        assert_eq!(conn.count("docs").await, 3, "after {what}");
    }
    setup.stop().await;
}

#[tokio::test]
async fn malformed_frames_are_answered_or_ignored_and_the_connection_keeps_serving() {
    let mut setup = Setup::new(3).await;
    let conn = &mut setup.conn;

    // Undecodable, but its request id is readable: answered with an error for that id.
    let mut garbage = cluster::Envelope {
        request_id: 77,
        deadline_unix_ms: 0,
        body: None,
    }
    .encode_to_vec();
    // Field 14 (tenant_request), length-delimited, 3 bytes of which are not a valid message.
    garbage.extend_from_slice(&[0x72, 0x03, 0xff, 0xff, 0xff]);
    conn.send_raw(Message::binary(garbage)).await;
    assert_eq!(
        error_code(&conn.reply(77).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(conn.count("docs").await, 3);

    // Pure garbage and a text frame: ignored.
    conn.send_raw(Message::binary(vec![0xff; 64])).await;
    conn.send_raw(Message::text("hello?")).await;
    assert_eq!(conn.count("docs").await, 3);

    // An envelope without a body, a request with id 0, and a key-service call in the wrong direction.
    conn.send_raw(Message::binary(
        cluster::Envelope {
            request_id: 78,
            deadline_unix_ms: 0,
            body: None,
        }
        .encode_to_vec(),
    ))
    .await;
    assert_eq!(
        error_code(&conn.reply(78).await),
        Some(ErrorCode::InvalidArgument)
    );
    conn.send(0, 0, tenant_request(TENANT, 1, count("docs", None)))
        .await;
    assert_eq!(
        error_code(&conn.reply(0).await),
        Some(ErrorCode::InvalidArgument)
    );
    let wrong_way = Body::KekVersion(cluster::KekVersionRequest {
        tenant: TENANT.into(),
    });
    assert_eq!(
        error_code(&conn.call(wrong_way).await),
        Some(ErrorCode::InvalidArgument)
    );
    // A request without an operation.
    let empty = Body::TenantRequest(cluster::TenantRequest {
        tenant: TENANT.into(),
        epoch: 1,
        op: None,
        write_token: 0,
    });
    assert_eq!(
        error_code(&conn.call(empty).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(conn.count("docs").await, 3);
    setup.stop().await;
}
