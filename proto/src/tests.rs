use proptest::prelude::*;
use prost::Message;

use crate::vaultvec::cluster::v1 as cluster;
use crate::vaultvec::v1 as api;

fn payload() -> prost_types::Struct {
    use prost_types::value::Kind;
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "color".to_owned(),
        prost_types::Value {
            kind: Some(Kind::StringValue("red".into())),
        },
    );
    fields.insert(
        "price".to_owned(),
        prost_types::Value {
            kind: Some(Kind::NumberValue(4.5)),
        },
    );
    prost_types::Struct { fields }
}

fn upsert_envelope() -> cluster::Envelope {
    let point = api::Point {
        id: Some(api::PointId {
            kind: Some(api::point_id::Kind::Str("doc-1".into())),
        }),
        vector: vec![0.25, -1.0, 3.5],
        payload: Some(payload()),
    };
    let upsert = api::UpsertRequest {
        collection: "docs".into(),
        points: vec![point],
        idempotency_key: "k1".into(),
    };
    cluster::Envelope {
        request_id: 42,
        deadline_unix_ms: 1_700_000_000_000,
        body: Some(cluster::envelope::Body::TenantRequest(
            cluster::TenantRequest {
                tenant: "acme".into(),
                epoch: 7,
                op: Some(cluster::tenant_request::Op::Upsert(upsert)),
                write_token: 0,
            },
        )),
    }
}

#[test]
fn an_envelope_round_trips_through_bytes() {
    let envelope = upsert_envelope();
    let bytes = envelope.encode_to_vec();
    assert_eq!(
        cluster::Envelope::decode(bytes.as_slice()).unwrap(),
        envelope
    );
}

#[test]
fn truncated_frames_fail_to_decode_instead_of_panicking() {
    let bytes = upsert_envelope().encode_to_vec();
    for len in 0..bytes.len() {
        // Some prefixes are themselves valid (shorter) messages; none may panic, and none equals
        // the whole envelope.
        if let Ok(decoded) = cluster::Envelope::decode(&bytes[..len]) {
            assert_ne!(decoded, upsert_envelope(), "prefix {len}");
        }
    }
}

#[test]
fn services_are_generated_for_both_transports_to_share() {
    // The coordinator implements these traits; referencing them pins the generated names.
    fn _points<T: api::points_server::Points>() {}
    fn _collections<T: api::collections_server::Collections>() {}
    fn _health<T: api::health_server::Health>() {}
    assert_eq!(api::Metric::Cosine as i32, 1);
    assert_eq!(cluster::ErrorCode::StaleEpoch as i32, 8);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = cluster::Envelope::decode(bytes.as_slice());
        let _ = api::SearchRequest::decode(bytes.as_slice());
    }
}
