//! Wire forms of what the storage engine holds (outbound only: nothing here checks input). The
//! worker answers with them, and the coordinator uses them where it reads stored data itself (a
//! snapshot restored into another tenant).

use storage::CollectionConfig;
use storage::collection::CollectionInfo;
use storage::filter::Payload;
use storage::ids::PointId;
use storage::index::Metric;

use crate::vaultvec::v1 as api;

/// A point id for the wire.
pub fn point_id(id: PointId) -> api::PointId {
    let kind = match id {
        PointId::Num(n) => api::point_id::Kind::Num(n),
        PointId::Str(s) => api::point_id::Kind::Str(s),
    };
    api::PointId { kind: Some(kind) }
}

/// A payload for the wire.
pub fn payload(payload: &Payload) -> prost_types::Struct {
    crate::json::map_to_struct(payload.as_map())
}

/// A distance metric for the wire.
pub fn metric(metric: Metric) -> api::Metric {
    match metric {
        Metric::Cosine => api::Metric::Cosine,
        Metric::Dot => api::Metric::Dot,
        Metric::L2 => api::Metric::L2,
    }
}

/// A collection's configuration for the wire, every HNSW parameter set.
pub fn collection_config(config: &CollectionConfig) -> api::CollectionConfig {
    api::CollectionConfig {
        dim: config.dim as u32,
        metric: metric(config.metric) as i32,
        m: Some(config.m as u32),
        ef_construction: Some(config.ef_construction as u32),
        ef: Some(config.ef as u32),
    }
}

/// A collection's figures for the wire.
pub fn collection_info(name: &str, info: &CollectionInfo) -> api::CollectionInfo {
    api::CollectionInfo {
        name: name.to_owned(),
        config: Some(collection_config(&info.config)),
        points: info.points,
        unindexed_points: info.unindexed_points,
        segments: info.segments as u32,
        stored_bytes: info.stored_bytes,
    }
}

/// A stored point for the wire.
pub fn record(record: storage::Record) -> api::Record {
    api::Record {
        id: Some(point_id(record.id)),
        payload: record.payload.as_ref().map(payload),
        vector: record.vector.unwrap_or_default(),
    }
}

/// A search hit for the wire.
pub fn scored_point(point: storage::ScoredPoint) -> api::ScoredPoint {
    api::ScoredPoint {
        id: Some(point_id(point.id)),
        distance: point.distance,
        payload: point.payload.as_ref().map(payload),
        vector: point.vector.unwrap_or_default(),
    }
}
