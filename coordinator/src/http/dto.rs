//! The JSON bodies of the HTTP API and their conversions to and from the protobuf messages both
//! transports share. Unknown fields are refused everywhere.

use proto::vaultvec::v1 as api;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use storage::filter::StrictObject;

use crate::api::error::ApiError;
use crate::api::{Op, Reply};

/// A point id: a non-negative integer or a string.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PointId {
    /// Integer id.
    Num(u64),
    /// String id.
    Str(String),
}

impl From<PointId> for api::PointId {
    fn from(id: PointId) -> api::PointId {
        api::PointId {
            kind: Some(match id {
                PointId::Num(n) => api::point_id::Kind::Num(n),
                PointId::Str(s) => api::point_id::Kind::Str(s),
            }),
        }
    }
}

fn id_json(id: Option<api::PointId>) -> Value {
    match id.and_then(|id| id.kind) {
        Some(api::point_id::Kind::Num(n)) => Value::from(n),
        Some(api::point_id::Kind::Str(s)) => Value::from(s),
        None => Value::Null,
    }
}

/// A filter or payload: duplicate keys are refused at every level, as everywhere else.
type Object = Option<StrictObject>;

fn object(value: Object) -> Option<prost_types::Struct> {
    value.map(|o| proto::json::map_into_struct(o.0))
}

/// A payload from the worker's answer. It passed the payload limits when it was stored.
fn struct_json(value: Option<prost_types::Struct>) -> Result<Option<Value>, ApiError> {
    value
        .map(|s| {
            proto::json::struct_to_json(&s, &proto::json::Bounds::NONE)
                .map(Value::Object)
                .map_err(|e| ApiError::internal(format_args!("worker sent a bad payload: {e}")))
        })
        .transpose()
}

fn metric(name: &str) -> Result<api::Metric, ApiError> {
    match name {
        "cosine" => Ok(api::Metric::Cosine),
        "dot" => Ok(api::Metric::Dot),
        "l2" => Ok(api::Metric::L2),
        other => Err(ApiError::invalid(format!(
            "unknown metric {other:?}; metrics are cosine, dot and l2"
        ))),
    }
}

fn metric_name(m: i32) -> &'static str {
    match api::Metric::try_from(m) {
        Ok(api::Metric::Cosine) => "cosine",
        Ok(api::Metric::Dot) => "dot",
        Ok(api::Metric::L2) => "l2",
        _ => "unspecified",
    }
}

/// `POST /v1/collections`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    name: String,
    dim: u32,
    metric: String,
    m: Option<u32>,
    ef_construction: Option<u32>,
    ef: Option<u32>,
}

impl CreateCollection {
    /// As an operation.
    pub fn into_op(self) -> Result<Op, ApiError> {
        Ok(Op::CreateCollection(api::CreateCollectionRequest {
            name: self.name,
            config: Some(api::CollectionConfig {
                dim: self.dim,
                metric: metric(&self.metric)? as i32,
                m: self.m,
                ef_construction: self.ef_construction,
                ef: self.ef,
            }),
        }))
    }
}

/// A collection as the HTTP API shows it.
pub fn collection_json(info: api::CollectionInfo) -> Value {
    let config = info.config.unwrap_or_default();
    serde_json::json!({
        "name": info.name,
        "dim": config.dim,
        "metric": metric_name(config.metric),
        "m": config.m,
        "ef_construction": config.ef_construction,
        "ef": config.ef,
        "points": info.points,
        "unindexed_points": info.unindexed_points,
        "segments": info.segments,
        "stored_bytes": info.stored_bytes,
    })
}

/// One point of an upsert.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    id: PointId,
    vector: Vec<f32>,
    payload: Object,
}

/// `PUT /v1/collections/{name}/points`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upsert {
    points: Vec<Point>,
    #[serde(default)]
    idempotency_key: String,
}

impl Upsert {
    /// As an operation.
    pub fn into_op(self, collection: String) -> Op {
        Op::Upsert(api::UpsertRequest {
            collection,
            points: self
                .points
                .into_iter()
                .map(|p| api::Point {
                    id: Some(p.id.into()),
                    vector: p.vector,
                    payload: object(p.payload),
                })
                .collect(),
            idempotency_key: self.idempotency_key,
        })
    }
}

/// `POST /v1/collections/{name}/points/get`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Get {
    ids: Vec<PointId>,
    #[serde(default)]
    with_payload: bool,
    #[serde(default)]
    with_vector: bool,
}

impl Get {
    /// As an operation.
    pub fn into_op(self, collection: String) -> Op {
        Op::Get(api::GetPointsRequest {
            collection,
            ids: self.ids.into_iter().map(Into::into).collect(),
            with_payload: self.with_payload,
            with_vector: self.with_vector,
        })
    }
}

/// `POST /v1/collections/{name}/points/delete`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    #[serde(default)]
    ids: Vec<PointId>,
    filter: Object,
    #[serde(default)]
    idempotency_key: String,
}

impl Delete {
    /// As an operation.
    pub fn into_op(self, collection: String) -> Op {
        Op::Delete(api::DeletePointsRequest {
            collection,
            ids: self.ids.into_iter().map(Into::into).collect(),
            filter: object(self.filter),
            idempotency_key: self.idempotency_key,
        })
    }
}

/// `POST /v1/collections/{name}/points/scroll`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scroll {
    #[serde(default)]
    cursor: Option<String>,
    limit: u32,
    filter: Object,
    #[serde(default)]
    with_payload: bool,
    #[serde(default)]
    with_vector: bool,
}

impl Scroll {
    /// As an operation.
    pub fn into_op(self, collection: String) -> Op {
        Op::Scroll(api::ScrollRequest {
            collection,
            cursor: self.cursor.unwrap_or_default(),
            limit: self.limit,
            filter: object(self.filter),
            with_payload: self.with_payload,
            with_vector: self.with_vector,
        })
    }
}

/// `POST /v1/collections/{name}/points/count`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Count {
    filter: Object,
}

impl Count {
    /// As an operation.
    pub fn into_op(self, collection: String) -> Op {
        Op::Count(api::CountRequest {
            collection,
            filter: object(self.filter),
        })
    }
}

/// `POST /v1/collections/{name}/points/search`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    vector: Vec<f32>,
    top_k: u32,
    ef: Option<u32>,
    filter: Object,
    #[serde(default)]
    with_payload: bool,
    #[serde(default)]
    with_vector: bool,
}

impl Search {
    fn into_request(self, collection: String) -> api::SearchRequest {
        api::SearchRequest {
            collection,
            vector: self.vector,
            top_k: self.top_k,
            ef: self.ef,
            filter: object(self.filter),
            with_payload: self.with_payload,
            with_vector: self.with_vector,
        }
    }

    /// As an operation.
    pub fn into_op(self, collection: String) -> Op {
        Op::Search(self.into_request(collection))
    }
}

/// `POST /v1/collections/{name}/points/search/batch`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBatch {
    searches: Vec<Search>,
}

impl SearchBatch {
    /// As an operation.
    pub fn into_op(self, collection: String) -> Op {
        Op::SearchBatch(api::SearchBatchRequest {
            searches: self
                .searches
                .into_iter()
                .map(|s| s.into_request(collection.clone()))
                .collect(),
            collection,
        })
    }
}

pub(crate) fn record_json(r: api::Record) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert("id".into(), id_json(r.id));
    if let Some(payload) = struct_json(r.payload)? {
        out.insert("payload".into(), payload);
    }
    if !r.vector.is_empty() {
        out.insert("vector".into(), Value::from(r.vector));
    }
    Ok(Value::Object(out))
}

fn search_json(r: api::SearchResponse) -> Result<Value, ApiError> {
    let points = r
        .points
        .into_iter()
        .map(|p| {
            let mut out = Map::new();
            out.insert("id".into(), id_json(p.id));
            out.insert("distance".into(), Value::from(p.distance));
            if let Some(payload) = struct_json(p.payload)? {
                out.insert("payload".into(), payload);
            }
            if !p.vector.is_empty() {
                out.insert("vector".into(), Value::from(p.vector));
            }
            Ok(Value::Object(out))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(serde_json::json!({ "points": points, "partial": r.partial }))
}

/// A worker's answer as the HTTP API shows it.
pub fn reply_json(reply: Reply) -> Result<Value, ApiError> {
    Ok(match reply {
        Reply::Collection(info) => collection_json(info),
        Reply::Collections(list) => serde_json::json!({
            "collections": list.collections.into_iter().map(collection_json).collect::<Vec<_>>()
        }),
        Reply::DeletedCollection(_) => serde_json::json!({ "deleted": true }),
        Reply::Upsert(r) => serde_json::json!({ "upserted": r.upserted }),
        Reply::Get(r) => serde_json::json!({
            "points": r.points.into_iter().map(record_json).collect::<Result<Vec<_>, _>>()?
        }),
        Reply::Delete(r) => serde_json::json!({ "deleted": r.deleted }),
        Reply::Scroll(r) => serde_json::json!({
            "points": r.points.into_iter().map(record_json).collect::<Result<Vec<_>, _>>()?,
            "next_cursor": (!r.next_cursor.is_empty()).then_some(r.next_cursor),
        }),
        Reply::Count(r) => serde_json::json!({ "count": r.count }),
        Reply::Search(r) => search_json(r)?,
        Reply::SearchBatch(r) => serde_json::json!({
            "results": r.results.into_iter().map(search_json).collect::<Result<Vec<_>, _>>()?
        }),
        Reply::Done(_)
        | Reply::AppliedToken(_)
        | Reply::Purged(_)
        | Reply::MovedBytes(_)
        | Reply::StoredFileBytes(_) => serde_json::json!({}),
    })
}
