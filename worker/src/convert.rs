//! Conversions between the wire types (`proto`) and the storage engine's types.
//!
//! Every bound that can be checked without the collection (batch sizes, `top_k`, `ef`, dimension
//! ceiling, finiteness) is checked here before anything is allocated for the request (INV-17);
//! storage checks them again.

use std::fmt::Write as _;

use proto::vaultvec::v1 as api;
use storage::collection::MAX_DIM;
use storage::filter::{Filter, FilterLimits, Payload, PayloadLimits};
use storage::ids::PointId;
use storage::index::Metric;
use storage::{CollectionConfig, Limits};

use crate::error::{Error, Result};

pub(crate) use proto::stored::{collection_info, record, scored_point};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Checks that a batch of `n` items is within `1..=max`.
pub(crate) fn check_batch(what: &str, n: usize, max: usize) -> Result<()> {
    if n == 0 || n > max {
        return Err(invalid(format!("{what} holds 1..={max} items, got {n}")));
    }
    Ok(())
}

/// A point id from the wire; a missing id is an error.
pub(crate) fn point_id(id: Option<api::PointId>) -> Result<PointId> {
    match id.and_then(|id| id.kind) {
        Some(api::point_id::Kind::Num(n)) => Ok(PointId::Num(n)),
        Some(api::point_id::Kind::Str(s)) => Ok(PointId::string(&s)?),
        None => Err(invalid("a point id is missing")),
    }
}

/// Point ids from the wire, at most `limits.max_batch` of them.
pub(crate) fn point_ids(ids: Vec<api::PointId>, limits: &Limits) -> Result<Vec<PointId>> {
    check_batch("the id list", ids.len(), limits.max_batch)?;
    ids.into_iter().map(|id| point_id(Some(id))).collect()
}

/// Checks a vector's length against `dim` and that every component is finite.
pub(crate) fn vector(vector: Vec<f32>, dim: usize) -> Result<Vec<f32>> {
    if vector.len() != dim {
        return Err(storage::Error::DimensionMismatch {
            expected: dim,
            got: vector.len(),
        }
        .into());
    }
    if let Some(position) = vector.iter().position(|x| !x.is_finite()) {
        return Err(storage::Error::NonFiniteVector { position }.into());
    }
    Ok(vector)
}

/// The payload limits derived from the engine limits.
pub(crate) fn payload_limits(limits: &Limits) -> PayloadLimits {
    PayloadLimits {
        max_bytes: limits.max_payload_bytes,
        ..PayloadLimits::default()
    }
}

/// A payload from the wire (`None` when absent).
pub(crate) fn payload(
    value: Option<prost_types::Struct>,
    limits: &PayloadLimits,
) -> Result<Option<Payload>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let map = proto::json::struct_to_json(&value, &payload_bounds(limits))
        .map_err(|err| invalid(format!("payload: {err}")))?;
    Ok(Some(Payload::from_value(
        serde_json::Value::Object(map),
        limits,
    )?))
}

/// A filter from the wire (`None` when absent).
pub(crate) fn filter(value: Option<prost_types::Struct>) -> Result<Option<Filter>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let limits = FilterLimits::default();
    let map = proto::json::struct_to_json(&value, &filter_bounds(&limits))
        .map_err(|err| invalid(format!("filter: {err}")))?;
    Ok(Some(Filter::from_value(
        serde_json::Value::Object(map),
        &limits,
    )?))
}

/// What a payload within `limits` can hold, checked while it is converted (INV-23): its encoding
/// has at least one byte per value and every byte of its keys and strings.
fn payload_bounds(limits: &PayloadLimits) -> proto::json::Bounds {
    proto::json::Bounds {
        max_depth: limits.max_depth,
        max_values: limits.max_bytes,
        max_key_bytes: limits.max_bytes,
        max_bytes: limits.max_bytes,
    }
}

/// What a filter within `limits` can hold, checked while it is converted (INV-23). Object keys
/// are field names or condition keys; strings are bounded by the request that carried them.
fn filter_bounds(limits: &FilterLimits) -> proto::json::Bounds {
    proto::json::Bounds {
        max_depth: limits.max_json_depth(),
        max_values: limits.max_json_values(),
        max_key_bytes: limits.max_key_bytes,
        max_bytes: usize::MAX,
    }
}

/// A metric from the wire; `METRIC_UNSPECIFIED` and unknown values are errors.
pub(crate) fn metric(raw: i32) -> Result<Metric> {
    match api::Metric::try_from(raw) {
        Ok(api::Metric::Cosine) => Ok(Metric::Cosine),
        Ok(api::Metric::Dot) => Ok(Metric::Dot),
        Ok(api::Metric::L2) => Ok(Metric::L2),
        Ok(api::Metric::Unspecified) => {
            Err(invalid("metric is unspecified; choose cosine, dot or l2"))
        }
        Err(_) => Err(invalid(format!("unknown metric {raw}"))),
    }
}

/// A collection config from the wire, with the storage crate's defaults for absent HNSW
/// parameters. Bounds are checked by the engine when the collection is created.
pub(crate) fn collection_config(config: Option<api::CollectionConfig>) -> Result<CollectionConfig> {
    let config = config.ok_or_else(|| invalid("a collection config is required"))?;
    let mut out = CollectionConfig::new(config.dim as usize, metric(config.metric)?);
    if let Some(m) = config.m {
        out.m = m as usize;
    }
    if let Some(ef_construction) = config.ef_construction {
        out.ef_construction = ef_construction as usize;
    }
    if let Some(ef) = config.ef {
        out.ef = ef as usize;
    }
    Ok(out)
}

/// A point to upsert, its vector checked against the collection's dimension.
pub(crate) fn point_input(
    point: api::Point,
    dim: usize,
    limits: &PayloadLimits,
) -> Result<storage::PointInput> {
    Ok(storage::PointInput {
        id: point_id(point.id)?,
        vector: vector(point.vector, dim)?,
        payload: payload(point.payload, limits)?,
    })
}

/// Checks the bounds of a search that need no collection: `top_k`, `ef` and the dimension ceiling.
pub(crate) fn check_search(req: &api::SearchRequest, limits: &Limits) -> Result<()> {
    let top_k = req.top_k as usize;
    if top_k == 0 || top_k > limits.max_top_k {
        return Err(invalid(format!(
            "top_k {top_k} is outside 1..={}",
            limits.max_top_k
        )));
    }
    if let Some(ef) = req.ef
        && (ef == 0 || ef as usize > limits.max_ef)
    {
        return Err(invalid(format!("ef {ef} is outside 1..={}", limits.max_ef)));
    }
    if req.vector.len() > MAX_DIM {
        return Err(invalid(format!(
            "the query vector has {} dimensions, more than the maximum {MAX_DIM}",
            req.vector.len()
        )));
    }
    Ok(())
}

/// A search for the engine; `check_search` must have passed.
pub(crate) fn search_request(
    req: api::SearchRequest,
    dim: usize,
    limits: &Limits,
) -> Result<storage::SearchRequest> {
    check_search(&req, limits)?;
    Ok(storage::SearchRequest {
        vector: vector(req.vector, dim)?,
        top_k: req.top_k as usize,
        ef: req.ef.map(|ef| ef as usize),
        filter: filter(req.filter)?,
        with_payload: req.with_payload,
        with_vector: req.with_vector,
    })
}

/// Prefix of every scroll cursor, naming its format version.
const CURSOR_PREFIX: &str = "c1.";
/// Longest encoded point id: tag, length and 128 bytes.
const MAX_ENCODED_ID: usize = 2 + storage::ids::MAX_STRING_ID_BYTES;

/// An opaque scroll cursor naming the point the next page starts at: `c1.` and the hex of the id's
/// canonical storage encoding. It names a point id only, never a tenant or collection, so it
/// cannot reach outside the collection it is used with.
pub(crate) fn encode_cursor(next: &PointId) -> String {
    let mut bytes = Vec::with_capacity(MAX_ENCODED_ID);
    next.encode_into(&mut bytes);
    let mut out = String::with_capacity(CURSOR_PREFIX.len() + 2 * bytes.len());
    out.push_str(CURSOR_PREFIX);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Inverse of [`encode_cursor`]; the empty string is the first page.
pub(crate) fn decode_cursor(cursor: &str) -> Result<Option<PointId>> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("the scroll cursor is malformed; pass back a next_cursor unchanged");
    let hex = cursor.strip_prefix(CURSOR_PREFIX).ok_or_else(bad)?;
    if hex.len() > 2 * MAX_ENCODED_ID
        || hex.len() % 2 != 0
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    let bytes = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(pair, 16).ok()
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    match PointId::decode(&bytes) {
        Some((id, used)) if used == bytes.len() => Ok(Some(id)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests;
