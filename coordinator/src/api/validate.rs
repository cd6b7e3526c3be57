//! Checks every request before it leaves the coordinator (INV-17, INV-23): names, bounds, finite
//! vectors, and the shape and size of payloads and filters, with the limits storage applies, so a
//! bad one never reaches a worker. The worker checks again against the collection itself
//! (dimension). Bounds are checked before anything is allocated for the request, and payloads and
//! filters are converted with their bounds checked on the way (`proto::json::Bounds`).

use proto::vaultvec::cluster::v1::tenant_request::Op;
use proto::vaultvec::v1 as api;
use storage::Limits;
use storage::filter::{Filter, FilterLimits, Payload, PayloadLimits};
use storage::ids::CollectionName;

use super::error::{ApiError, Code};
use crate::auth::Scope;
use crate::config::Tier;

/// Largest page of a scroll.
pub const MAX_SCROLL_LIMIT: u32 = 10_000;

/// What an operation needs: the scope, and the collection it names (if any).
pub fn scope_of(op: &Op) -> (Scope, Option<&str>) {
    match op {
        Op::CreateCollection(r) => (Scope::Manage, Some(&r.name)),
        Op::DeleteCollection(r) => (Scope::Manage, Some(&r.name)),
        Op::ListCollections(_) => (Scope::Read, None),
        Op::GetCollection(r) => (Scope::Read, Some(&r.name)),
        Op::Upsert(r) => (Scope::Write, Some(&r.collection)),
        Op::Delete(r) => (Scope::Write, Some(&r.collection)),
        Op::Get(r) => (Scope::Read, Some(&r.collection)),
        Op::Scroll(r) => (Scope::Read, Some(&r.collection)),
        Op::Count(r) => (Scope::Read, Some(&r.collection)),
        Op::Search(r) => (Scope::Read, Some(&r.collection)),
        Op::SearchBatch(r) => (Scope::Read, Some(&r.collection)),
        // Internal operations never come from a client; the most demanding scope is asked.
        Op::RewrapKeys(_)
        | Op::EraseTenant(_)
        | Op::EraseEntity(_)
        | Op::MoveStorage(_)
        | Op::FileBytes(_)
        | Op::AppliedToken(_) => (Scope::Manage, None),
    }
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Checks an idempotency key: empty (none), or 1..=128 bytes of `[A-Za-z0-9._:-]`.
fn idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.len() > MAX_IDEMPOTENCY_KEY
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(ApiError::invalid(format!(
            "idempotency_key must be 1..={MAX_IDEMPOTENCY_KEY} bytes of [A-Za-z0-9._:-]"
        )));
    }
    Ok(())
}

fn name(raw: &str) -> Result<(), ApiError> {
    CollectionName::parse(raw)
        .map(|_| ())
        .map_err(|err| ApiError::invalid(err.to_string()))
}

fn vector(v: &[f32], what: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(ApiError::invalid(format!("{what} is empty")));
    }
    if let Some(position) = v.iter().position(|x| !x.is_finite()) {
        return Err(ApiError::invalid(format!(
            "{what} component at position {position} is not finite"
        )));
    }
    Ok(())
}

fn batch(n: usize, what: &str, max: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(format!("{what} is empty")));
    }
    if n > max {
        return Err(ApiError::invalid(format!(
            "{what} has {n} entries, more than the limit of {max}"
        )));
    }
    Ok(())
}

fn point_id(id: &Option<api::PointId>) -> Result<(), ApiError> {
    match id.as_ref().and_then(|id| id.kind.as_ref()) {
        None => Err(ApiError::invalid("a point id is missing")),
        Some(api::point_id::Kind::Str(s)) if s.is_empty() || s.len() > 128 => {
            Err(ApiError::invalid("a string point id must be 1..=128 bytes"))
        }
        Some(_) => Ok(()),
    }
}

/// The payload limits the worker applies (`worker::convert::payload_limits`).
fn payload_limits(limits: &Limits) -> PayloadLimits {
    PayloadLimits {
        max_bytes: limits.max_payload_bytes,
        ..PayloadLimits::default()
    }
}

/// Checks a payload as the worker will: bounded while converted, then storage's own checks.
fn payload(value: &Option<prost_types::Struct>, limits: &PayloadLimits) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Ok(());
    };
    let bounds = proto::json::Bounds {
        max_depth: limits.max_depth,
        // The compact encoding has at least one byte per value and every byte of keys and strings.
        max_values: limits.max_bytes,
        max_key_bytes: limits.max_bytes,
        max_bytes: limits.max_bytes,
    };
    let map = proto::json::struct_to_json(value, &bounds)
        .map_err(|err| ApiError::invalid(format!("payload: {err}")))?;
    Payload::from_value(serde_json::Value::Object(map), limits)
        .map(drop)
        .map_err(|err| ApiError::invalid(err.to_string()))
}

/// Checks a filter as the worker will: bounded while converted, then parsed.
fn filter(value: &Option<prost_types::Struct>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Ok(());
    };
    let limits = FilterLimits::default();
    let bounds = proto::json::Bounds {
        max_depth: limits.max_json_depth(),
        max_values: limits.max_json_values(),
        max_key_bytes: limits.max_key_bytes,
        // Strings are bounded by the request that carried them.
        max_bytes: usize::MAX,
    };
    let map = proto::json::struct_to_json(value, &bounds)
        .map_err(|err| ApiError::invalid(format!("filter: {err}")))?;
    Filter::from_value(serde_json::Value::Object(map), &limits)
        .map(drop)
        .map_err(|err| ApiError::invalid(err.to_string()))
}

fn search(r: &api::SearchRequest, limits: &Limits) -> Result<(), ApiError> {
    if r.top_k == 0 || r.top_k as usize > limits.max_top_k {
        return Err(ApiError::invalid(format!(
            "top_k {} is outside 1..={}",
            r.top_k, limits.max_top_k
        )));
    }
    if let Some(ef) = r.ef
        && (ef == 0 || ef as usize > limits.max_ef)
    {
        return Err(ApiError::invalid(format!(
            "ef {ef} is outside 1..={}",
            limits.max_ef
        )));
    }
    vector(&r.vector, "the query vector")?;
    filter(&r.filter)
}

/// Checks the HNSW parameters of a new collection with storage's own check, so the ranges are
/// the ones the worker applies (m 2..=64, ef_construction m.max(4)..=1024, ef 1..=max_ef).
fn index_params(config: &api::CollectionConfig, limits: &Limits) -> Result<(), ApiError> {
    // The metric plays no part in the ranges; the dimension was checked against the tier.
    let mut storage_config =
        storage::CollectionConfig::new(config.dim as usize, storage::index::Metric::L2);
    let defaults = storage_config;
    storage_config.m = config.m.map_or(defaults.m, |m| m as usize);
    storage_config.ef_construction = config
        .ef_construction
        .map_or(defaults.ef_construction, |ef| ef as usize);
    storage_config.ef = config.ef.map_or(defaults.ef, |ef| ef as usize);
    storage_config.validate(limits).map_err(|err| match err {
        storage::Error::InvalidArgument { reason } => ApiError::invalid(reason),
        other => ApiError::invalid(other.to_string()),
    })
}

/// Validates an operation against the engine limits and the tenant's tier.
pub fn check(op: &Op, limits: &Limits, tier: &Tier) -> Result<(), ApiError> {
    match op {
        Op::CreateCollection(r) => {
            name(&r.name)?;
            let config = r
                .config
                .as_ref()
                .ok_or_else(|| ApiError::invalid("config is missing"))?;
            if config.dim == 0 || config.dim > tier.max_dim {
                return Err(ApiError::new(
                    if config.dim == 0 || config.dim > 4096 {
                        Code::InvalidArgument
                    } else {
                        Code::ResourceExhausted
                    },
                    format!(
                        "dim {} is outside 1..={} allowed by the tenant's tier",
                        config.dim, tier.max_dim
                    ),
                ));
            }
            if api::Metric::try_from(config.metric)
                .ok()
                .is_none_or(|m| m == api::Metric::Unspecified)
            {
                return Err(ApiError::invalid("metric must be cosine, dot or l2"));
            }
            index_params(config, limits)
        }
        Op::DeleteCollection(r) => name(&r.name),
        Op::GetCollection(r) => name(&r.name),
        Op::ListCollections(_) => Ok(()),
        Op::Upsert(r) => {
            name(&r.collection)?;
            idempotency_key(&r.idempotency_key)?;
            batch(r.points.len(), "points", limits.max_batch)?;
            let payload_limits = payload_limits(limits);
            for p in &r.points {
                point_id(&p.id)?;
                vector(&p.vector, "a point's vector")?;
                payload(&p.payload, &payload_limits)?;
            }
            Ok(())
        }
        Op::Get(r) => {
            name(&r.collection)?;
            batch(r.ids.len(), "ids", limits.max_batch)?;
            r.ids.iter().try_for_each(|id| point_id(&Some(id.clone())))
        }
        Op::Delete(r) => {
            name(&r.collection)?;
            idempotency_key(&r.idempotency_key)?;
            if !r.idempotency_key.is_empty() && r.filter.is_some() {
                return Err(ApiError::invalid(
                    "an idempotency_key is honoured for deletes by ids, not by filter",
                ));
            }
            match (r.ids.is_empty(), r.filter.is_some()) {
                (false, false) => {
                    batch(r.ids.len(), "ids", limits.max_batch)?;
                    r.ids.iter().try_for_each(|id| point_id(&Some(id.clone())))
                }
                (true, true) => filter(&r.filter),
                _ => Err(ApiError::invalid(
                    "give exactly one of ids (non-empty) or filter",
                )),
            }
        }
        Op::Scroll(r) => {
            name(&r.collection)?;
            if r.limit == 0 || r.limit > MAX_SCROLL_LIMIT {
                return Err(ApiError::invalid(format!(
                    "limit {} is outside 1..={MAX_SCROLL_LIMIT}",
                    r.limit
                )));
            }
            if r.cursor.len() > 1024 {
                return Err(ApiError::invalid("cursor is malformed"));
            }
            filter(&r.filter)
        }
        Op::Count(r) => {
            name(&r.collection)?;
            filter(&r.filter)
        }
        Op::Search(r) => {
            name(&r.collection)?;
            search(r, limits)
        }
        Op::SearchBatch(r) => {
            name(&r.collection)?;
            batch(r.searches.len(), "searches", limits.max_search_batch)?;
            for s in &r.searches {
                if !s.collection.is_empty() && s.collection != r.collection {
                    return Err(ApiError::invalid(
                        "a search in a batch names another collection than the batch",
                    ));
                }
                search(s, limits)?;
            }
            Ok(())
        }
        Op::RewrapKeys(_)
        | Op::EraseTenant(_)
        | Op::EraseEntity(_)
        | Op::MoveStorage(_)
        | Op::FileBytes(_)
        | Op::AppliedToken(_) => Err(ApiError::new(Code::PermissionDenied, "internal operation")),
    }
}
