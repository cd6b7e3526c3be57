use proto::vaultvec::v1 as api;
use storage::ids::PointId;

use super::*;

fn num(n: u64) -> api::PointId {
    proto::stored::point_id(PointId::Num(n))
}

#[test]
fn point_ids_round_trip_and_a_missing_id_is_refused() {
    assert_eq!(point_id(Some(num(7))).unwrap(), PointId::Num(7));
    let s = proto::stored::point_id(PointId::string("doc-1").unwrap());
    assert_eq!(
        point_id(Some(s)).unwrap(),
        PointId::string("doc-1").unwrap()
    );
    assert!(matches!(point_id(None), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        point_id(Some(api::PointId { kind: None })),
        Err(Error::InvalidArgument(_))
    ));
    let long = api::PointId {
        kind: Some(api::point_id::Kind::Str("x".repeat(129))),
    };
    assert!(point_id(Some(long)).is_err());
}

#[test]
fn id_lists_are_bounded_before_conversion() {
    let limits = Limits {
        max_batch: 3,
        ..Limits::default()
    };
    assert!(point_ids(vec![], &limits).is_err());
    assert!(point_ids((0..4).map(num).collect(), &limits).is_err());
    assert_eq!(
        point_ids((0..3).map(num).collect(), &limits).unwrap().len(),
        3
    );
}

#[test]
fn vectors_must_be_finite_and_of_the_right_dimension() {
    assert_eq!(vector(vec![1.0, 2.0], 2).unwrap(), vec![1.0, 2.0]);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let err = vector(vec![1.0, bad], 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "vector component at position 1 is not finite"
        );
    }
    let err = vector(vec![1.0], 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vector has 1 dimensions, collection expects 2"
    );
}

#[test]
fn metric_unspecified_and_unknown_are_refused() {
    assert!(metric(api::Metric::Unspecified as i32).is_err());
    assert!(metric(99).is_err());
    assert_eq!(metric(api::Metric::L2 as i32).unwrap(), Metric::L2);
}

#[test]
fn collection_config_uses_storage_defaults() {
    let config = collection_config(Some(api::CollectionConfig {
        dim: 3,
        metric: api::Metric::Cosine as i32,
        m: None,
        ef_construction: Some(100),
        ef: None,
    }))
    .unwrap();
    assert_eq!(config, {
        let mut expected = CollectionConfig::new(3, Metric::Cosine);
        expected.ef_construction = 100;
        expected
    });
    assert!(collection_config(None).is_err());
}

#[test]
fn search_bounds_are_checked_without_the_collection() {
    let limits = Limits::default();
    let ok = api::SearchRequest {
        vector: vec![0.0; 4],
        top_k: 10,
        ..Default::default()
    };
    check_search(&ok, &limits).unwrap();
    for (top_k, ef) in [(0, None), (1001, None), (10, Some(0)), (10, Some(4097))] {
        let req = api::SearchRequest {
            top_k,
            ef,
            ..ok.clone()
        };
        assert!(
            check_search(&req, &limits).is_err(),
            "top_k {top_k} ef {ef:?}"
        );
    }
    let huge = api::SearchRequest {
        vector: vec![0.0; MAX_DIM + 1],
        ..ok
    };
    assert!(check_search(&huge, &limits).is_err());
}

#[test]
fn cursors_round_trip_and_garbage_is_refused() {
    for id in [
        PointId::Num(0),
        PointId::Num(u64::MAX),
        PointId::string("é-id").unwrap(),
        PointId::string(&"x".repeat(128)).unwrap(),
    ] {
        let cursor = encode_cursor(&id);
        assert!(cursor.starts_with("c1."));
        assert_eq!(decode_cursor(&cursor).unwrap(), Some(id));
    }
    assert_eq!(decode_cursor("").unwrap(), None);
    let valid = encode_cursor(&PointId::Num(5));
    for bad in [
        "c1.",
        "c2.000500000000000000",
        "c1.0",
        "c1.zz",
        "c1.+0",
        "not a cursor",
        &format!("{valid}00"),
        &valid[..valid.len() - 2],
        &format!("c1.{}", "00".repeat(200)),
    ] {
        assert!(
            matches!(decode_cursor(bad), Err(Error::InvalidArgument(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn payloads_and_filters_go_through_the_bounded_parsers() {
    let payload_struct =
        proto::json::json_to_struct(&serde_json::json!({"color": "red", "n": 3})).unwrap();
    let limits = payload_limits(&Limits::default());
    let payload = payload(Some(payload_struct.clone()), &limits)
        .unwrap()
        .unwrap();
    assert_eq!(proto::stored::payload(&payload), payload_struct);
    let tiny = PayloadLimits {
        max_bytes: 4,
        ..PayloadLimits::default()
    };
    assert!(super::payload(Some(payload_struct), &tiny).is_err());

    let good = proto::json::json_to_struct(
        &serde_json::json!({"must": [{"key": "color", "match": {"value": "red"}}]}),
    )
    .unwrap();
    assert!(filter(Some(good)).unwrap().is_some());
    let bad = proto::json::json_to_struct(&serde_json::json!({"nonsense": 1})).unwrap();
    assert!(filter(Some(bad)).is_err());
    assert!(filter(None).unwrap().is_none());
}

#[test]
fn filters_and_payloads_beyond_their_bounds_are_refused_while_converting() {
    let message = |err: Error| err.to_string();
    // A 1 MiB key over a million elements: refused at the key, before its list is looked at.
    let long_key =
        proto::json::json_to_struct(&serde_json::json!({ "k".repeat(1 << 20): vec![0; 1 << 20] }))
            .unwrap();
    let text = message(filter(Some(long_key.clone())).unwrap_err());
    assert!(text.contains("is 1048576 bytes, limit 256"), "{text}");
    let limits = payload_limits(&Limits::default());
    let text = message(payload(Some(long_key), &limits).unwrap_err());
    assert!(text.contains("is 1048576 bytes, limit 65536"), "{text}");
    // More values than any valid filter holds.
    let many: Vec<u32> = vec![0; 300_000];
    let wide = proto::json::json_to_struct(
        &serde_json::json!({"must": [{"key": "a", "match": {"any": many}}]}),
    )
    .unwrap();
    let text = message(filter(Some(wide)).unwrap_err());
    assert!(
        text.contains("more than the limit of 263173 values"),
        "{text}"
    );
}
