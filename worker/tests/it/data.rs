use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;

use crate::fake::*;

#[tokio::test]
async fn collections_are_created_listed_described_and_deleted() {
    let mut setup = Setup::new(3).await;
    let conn = &mut setup.conn;
    let Answer::Collection(info) = conn
        .op(create("other", 4, api::Metric::Cosine))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(info.name, "other");
    let config = info.config.unwrap();
    assert_eq!(
        (config.dim, config.m, config.ef_construction, config.ef),
        (4, Some(16), Some(200), Some(64))
    );
    assert_eq!(config.metric, api::Metric::Cosine as i32);

    let Answer::Collections(list) = conn
        .op(Op::ListCollections(api::ListCollectionsRequest {}))
        .await
        .unwrap()
    else {
        panic!()
    };
    let names: Vec<_> = list
        .collections
        .iter()
        .map(|c| (c.name.as_str(), c.points))
        .collect();
    assert_eq!(names, [("docs", 3), ("other", 0)]);

    let get = |name: &str| Op::GetCollection(api::GetCollectionRequest { name: name.into() });
    let Answer::Collection(docs) = conn.op(get("docs")).await.unwrap() else {
        panic!()
    };
    assert_eq!(docs.points, 3);
    conn.refused(create("docs", 2, api::Metric::L2), ErrorCode::AlreadyExists)
        .await;
    conn.refused(get("missing"), ErrorCode::NotFound).await;
    conn.refused(get("Bad Name"), ErrorCode::InvalidArgument)
        .await;

    let delete = Op::DeleteCollection(api::DeleteCollectionRequest {
        name: "other".into(),
    });
    assert!(matches!(
        conn.op(delete.clone()).await.unwrap(),
        Answer::DeletedCollection(_)
    ));
    conn.refused(delete, ErrorCode::NotFound).await;
    setup.stop().await;
}

#[tokio::test]
async fn upsert_search_get_and_count_round_trip() {
    let mut setup = Setup::new(10).await;
    let conn = &mut setup.conn;

    let mut req = search("docs", vec![3.2, 0.0], 3);
    req.with_payload = true;
    req.with_vector = true;
    let Answer::Search(result) = conn.op(Op::Search(req)).await.unwrap() else {
        panic!()
    };
    assert!(!result.partial);
    let ids: Vec<u64> = result.points.iter().map(|p| id_of(&p.id)).collect();
    assert_eq!(ids, [3, 4, 2]);
    assert!((result.points[0].distance - 0.04).abs() < 1e-4);
    assert_eq!(result.points[0].vector, vec![3.0, 0.0]);
    let payload = proto::json::struct_to_json(
        result.points[0].payload.as_ref().unwrap(),
        &proto::json::Bounds::NONE,
    )
    .unwrap();
    assert_eq!(
        serde_json::Value::Object(payload),
        serde_json::json!({"i": 3, "even": false})
    );

    // A filtered search only sees even points.
    let mut req = search("docs", vec![3.2, 0.0], 2);
    req.filter = filter(serde_json::json!({"must": [{"key": "even", "match": {"value": true}}]}));
    let Answer::Search(result) = conn.op(Op::Search(req)).await.unwrap() else {
        panic!()
    };
    let ids: Vec<u64> = result.points.iter().map(|p| id_of(&p.id)).collect();
    assert_eq!(ids, [4, 2]);

    let batch = Op::SearchBatch(api::SearchBatchRequest {
        collection: "docs".into(),
        searches: vec![
            search("", vec![1.0, 0.0], 1),
            search("docs", vec![9.0, 0.0], 1),
        ],
    });
    let Answer::SearchBatch(results) = conn.op(batch).await.unwrap() else {
        panic!()
    };
    let firsts: Vec<u64> = results
        .results
        .iter()
        .map(|r| id_of(&r.points[0].id))
        .collect();
    assert_eq!(firsts, [1, 9]);

    let get = Op::Get(api::GetPointsRequest {
        collection: "docs".into(),
        ids: vec![num_id(7), num_id(99), num_id(2)],
        with_payload: false,
        with_vector: true,
    });
    let Answer::Get(got) = conn.op(get).await.unwrap() else {
        panic!()
    };
    let got: Vec<(u64, Vec<f32>, bool)> = got
        .points
        .iter()
        .map(|r| (id_of(&r.id), r.vector.clone(), r.payload.is_some()))
        .collect();
    assert_eq!(
        got,
        [(7, vec![7.0, 0.0], false), (2, vec![2.0, 0.0], false)]
    );

    // Replacing a point keeps the count and changes the payload.
    conn.op(upsert(
        "docs",
        vec![point(7, vec![7.0, 1.0], Some(serde_json::json!({"i": 70})))],
    ))
    .await
    .unwrap();
    assert_eq!(conn.count("docs").await, 10);
    let range = filter(serde_json::json!({"must": [{"key": "i", "range": {"gte": 5}}]}));
    let Answer::Count(n) = conn.op(count("docs", range)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 6);
    let even = filter(serde_json::json!({"must": [{"key": "even", "match": {"value": true}}]}));
    let Answer::Count(n) = conn.op(count("docs", even)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 5);
    setup.stop().await;
}

/// Searches arriving back to back run on blocking threads side by side; every one still gets its
/// own, right answer.
#[tokio::test]
async fn a_burst_of_searches_gets_every_answer_right() {
    // Every search counts against max_in_flight, and one tenant gets half of it while alone:
    // room for the whole burst.
    let mut setup = Setup::with(10, |config| config.max_in_flight = 128).await;
    let conn = &mut setup.conn;
    let targets: Vec<u64> = (0..64).map(|i| 1 + i % 10).collect();
    let bodies = targets
        .iter()
        .map(|&t| {
            tenant_request(
                TENANT,
                1,
                Op::Search(search("docs", vec![t as f32 + 0.1, 0.0], 1)),
            )
        })
        .collect();
    let ids = conn.request_burst(bodies).await;
    // Collected in reverse: answers may come in any order.
    for (id, target) in ids.iter().zip(&targets).rev() {
        let Answer::Search(result) = answer(conn.reply(*id).await).unwrap() else {
            panic!("not a search answer")
        };
        assert_eq!(id_of(&result.points[0].id), *target, "request {id}");
    }
    // The connection still serves single requests afterwards.
    assert_eq!(conn.count("docs").await, 10);
    setup.stop().await;
}

#[tokio::test]
async fn scroll_pages_through_every_point_with_cursors() {
    let mut setup = Setup::new(25).await;
    let conn = &mut setup.conn;
    let mut cursor = String::new();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let scroll = Op::Scroll(api::ScrollRequest {
            collection: "docs".into(),
            cursor: cursor.clone(),
            limit: 10,
            filter: None,
            with_payload: true,
            with_vector: false,
        });
        let Answer::Scroll(page) = conn.op(scroll).await.unwrap() else {
            panic!()
        };
        pages += 1;
        assert!(page.points.len() <= 10);
        assert!(
            page.points
                .iter()
                .all(|p| p.payload.is_some() && p.vector.is_empty())
        );
        seen.extend(page.points.iter().map(|p| id_of(&p.id)));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());

    // With a filter, pages hold only matching points.
    let scroll = Op::Scroll(api::ScrollRequest {
        collection: "docs".into(),
        limit: 50,
        filter: filter(serde_json::json!({"must": [{"key": "even", "match": {"value": true}}]})),
        ..Default::default()
    });
    let Answer::Scroll(page) = conn.op(scroll).await.unwrap() else {
        panic!()
    };
    assert_eq!(page.points.len(), 12);
    assert!(page.next_cursor.is_empty());

    let bad = Op::Scroll(api::ScrollRequest {
        collection: "docs".into(),
        cursor: "c1.garbage".into(),
        limit: 5,
        ..Default::default()
    });
    conn.refused(bad, ErrorCode::InvalidArgument).await;
    setup.stop().await;
}

#[tokio::test]
async fn delete_by_ids_and_by_filter() {
    let mut setup = Setup::new(10).await;
    let conn = &mut setup.conn;
    let by_ids = Op::Delete(api::DeletePointsRequest {
        collection: "docs".into(),
        ids: vec![num_id(1), num_id(2), num_id(2), num_id(42)],
        filter: None,
        idempotency_key: String::new(),
    });
    let Answer::Delete(deleted) = conn.op(by_ids).await.unwrap() else {
        panic!()
    };
    assert_eq!(deleted.deleted, 2);
    assert_eq!(conn.count("docs").await, 8);

    let by_filter = Op::Delete(api::DeletePointsRequest {
        collection: "docs".into(),
        ids: vec![],
        filter: filter(serde_json::json!({"must": [{"key": "even", "match": {"value": true}}]})),
        idempotency_key: String::new(),
    });
    let Answer::Delete(deleted) = conn.op(by_filter).await.unwrap() else {
        panic!()
    };
    assert_eq!(deleted.deleted, 4); // 4, 6, 8, 10
    assert_eq!(conn.count("docs").await, 4);

    // Exactly one of ids and filter.
    for (ids, filter) in [
        (vec![], None),
        (vec![num_id(3)], filter(serde_json::json!({}))),
    ] {
        let op = Op::Delete(api::DeletePointsRequest {
            collection: "docs".into(),
            ids,
            filter,
            idempotency_key: String::new(),
        });
        conn.refused(op, ErrorCode::InvalidArgument).await;
    }
    assert_eq!(conn.count("docs").await, 4);
    setup.stop().await;
}

#[tokio::test]
async fn rewrap_keys_moves_every_file_to_the_new_kek_and_erase_deletes_the_tenant() {
    let mut setup = Setup::new(5).await;
    let old = 1;
    let new = setup.coordinator.rotate_kek(TENANT);
    assert_eq!(
        setup
            .conn
            .op(Op::RewrapKeys(cluster::RewrapKeys {}))
            .await
            .unwrap(),
        Answer::Done(cluster::Ack::default())
    );
    // With the old KEK destroyed, the tenant still loads (after an unload) from re-wrapped files.
    setup.coordinator.destroy_kek(TENANT, old);
    assert_eq!(new, 2);
    assert_eq!(
        setup.conn.release(TENANT, 1).await,
        Body::Ack(cluster::Ack::default())
    );
    setup.conn.assign(TENANT, 2, no_quota()).await;
    let conn = &mut setup.conn;
    let Answer::Count(n) = conn.op_for(TENANT, 2, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 5);

    let tenant_dir = setup.dir.path().join("tenants").join(TENANT);
    let files = std::fs::read_dir(tenant_dir.join("docs")).unwrap().count() as u64;
    assert!(files >= 2, "a manifest and a WAL at least");
    // The answer counts the files it deleted.
    assert_eq!(
        conn.op_for(TENANT, 2, Op::EraseTenant(cluster::EraseTenant {}))
            .await
            .unwrap(),
        Answer::Purged(cluster::Purged {
            files_deleted: files,
            ..Default::default()
        })
    );
    assert!(!tenant_dir.exists());
    setup.stop().await;
}
