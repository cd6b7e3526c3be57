//! One tenant request against the storage engine. Runs on a blocking thread.

use std::collections::BTreeMap;

use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;
use storage::ids::{CollectionName, PointId, TenantId};
use storage::{Collection, Engine};

use cluster::tenant_request::Op;
use cluster::tenant_response::Result as Answer;

use crate::convert;
use crate::error::{Error, Result};
use crate::server::now_ms;
use crate::tenant::TenantSlot;

/// Scroll page size when the request gives none.
const DEFAULT_SCROLL_LIMIT: usize = 100;

/// What a request needs besides its operation.
pub(crate) struct Ctx<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) slot: &'a TenantSlot,
    pub(crate) tenant: &'a TenantId,
    pub(crate) quota: cluster::TenantQuota,
    /// Unix milliseconds, 0 for none.
    pub(crate) deadline_unix_ms: u64,
    /// The same deadline, for storage's scans and walks.
    pub(crate) deadline: storage::Deadline,
    /// The test hook of [`crate::Config::request_hook`].
    pub(crate) hook: Option<&'a crate::RequestHook>,
    /// The coordinator's token for a keyed write, logged with it (`TenantRequest.write_token`).
    pub(crate) write_token: Option<u64>,
    /// Where paused tenants' files go (`Config::cold_dir`).
    pub(crate) cold_dir: &'a std::path::Path,
}

/// The short name of an operation, for logs.
pub(crate) fn name(op: &Op) -> &'static str {
    match op {
        Op::CreateCollection(_) => "create_collection",
        Op::ListCollections(_) => "list_collections",
        Op::GetCollection(_) => "get_collection",
        Op::DeleteCollection(_) => "delete_collection",
        Op::Upsert(_) => "upsert",
        Op::Get(_) => "get",
        Op::Delete(_) => "delete",
        Op::Scroll(_) => "scroll",
        Op::Count(_) => "count",
        Op::Search(_) => "search",
        Op::SearchBatch(_) => "search_batch",
        Op::RewrapKeys(_) => "rewrap_keys",
        Op::EraseTenant(_) => "erase_tenant",
        Op::AppliedToken(_) => "applied_token",
        Op::EraseEntity(_) => "erase_entity",
        Op::MoveStorage(_) => "move_storage",
        Op::FileBytes(_) => "file_bytes",
    }
}

/// Runs `op` under the tenant's gate, logging failures that are not the caller's fault.
pub(crate) fn run(ctx: &Ctx<'_>, op: Op) -> Result<Answer> {
    let is_create = matches!(op, Op::CreateCollection(_));
    let res = if matches!(
        op,
        Op::EraseTenant(_) | Op::MoveStorage(_) | Op::FileBytes(_)
    ) {
        let _exclusive = ctx.slot.gate.write();
        check_deadline(ctx)?;
        exclusive(ctx, op)
    } else {
        let _shared = ctx.slot.gate.read();
        // The request may have waited for the gate; nothing is applied after its deadline.
        check_deadline(ctx)?;
        // A tenant whose files are on cold storage is not loaded from an empty data directory
        // (where a creation could then start a second, empty copy).
        if !ctx.engine.is_loaded(ctx.tenant) && ctx.cold_dir.join(ctx.tenant.as_str()).exists() {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} is paused on cold storage",
                ctx.tenant
            )));
        }
        if let Some(hook) = ctx.hook {
            hook(ctx.tenant.as_str(), name(&op));
        }
        execute(ctx, op)
    };
    if let Err(err) = &res {
        if err.is_user_error() {
            tracing::debug!(error = %err, "request refused");
        } else {
            tracing::warn!(error = %err, "request failed");
        }
        // The engine keeps a collection that failed to load as failed, and a creation cut short
        // keeps its name taken, until the tenant loads again. A key-service failure is usually
        // passing (a reconnect, a timeout), so unload the tenant and let the next request retry.
        // A loaded collection that could not get a key (a write that needed a new WAL) is left
        // alone: it stays writable and retries by itself, and unloading it would make its reads
        // need the key service too.
        let is_loaded_key_failure = matches!(err, Error::Storage(storage::Error::Key(_)));
        if is_key_failure(err)
            && (is_create || !is_loaded_key_failure)
            && let Some(_exclusive) = ctx.slot.gate.try_write()
        {
            match ctx.engine.unload_tenant(ctx.tenant) {
                Ok(()) => tracing::info!(
                    "unloaded the tenant after a key-service failure; its next request loads it again"
                ),
                Err(err) => tracing::warn!(error = %err, "unloading the tenant failed"),
            }
        }
    }
    res
}

/// An operation that runs with the tenant's gate held exclusively, without loading the tenant:
/// erasure, cold storage moves, and the size of its files.
fn exclusive(ctx: &Ctx<'_>, op: Op) -> Result<Answer> {
    match op {
        Op::EraseTenant(_) => {
            let hot = ctx.engine.delete_tenant(ctx.tenant)?;
            let cold = ctx.engine.delete_cold(ctx.tenant, ctx.cold_dir)?;
            Ok(Answer::Purged(cluster::Purged {
                files_deleted: hot + cold,
                ..Default::default()
            }))
        }
        Op::MoveStorage(req) => {
            let started = std::time::Instant::now();
            let bytes = if req.to_cold {
                ctx.engine.move_to_cold(ctx.tenant, ctx.cold_dir)?
            } else {
                ctx.engine.move_to_hot(ctx.tenant, ctx.cold_dir)?
            };
            tracing::info!(
                to_cold = req.to_cold,
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "tenant files moved"
            );
            Ok(Answer::MovedBytes(bytes))
        }
        Op::FileBytes(_) => {
            let (hot, cold) = ctx.engine.file_bytes(ctx.tenant, ctx.cold_dir)?;
            Ok(Answer::StoredFileBytes(cluster::StoredFileBytes {
                hot,
                cold,
            }))
        }
        _ => Err(Error::Internal("not an exclusive operation".into())),
    }
}

/// Whether `err` comes from the key service rather than from the data.
fn is_key_failure(err: &Error) -> bool {
    match err {
        Error::Storage(err) => crate::tenant::is_key_failure(err),
        _ => false,
    }
}

/// The storage deadline of a request that must finish by `deadline_unix_ms` (0: none).
///
/// Never later than the wall-clock deadline: the monotonic clock is read first and the time left
/// is taken from the wall clock at full precision (not whole milliseconds, which would move the
/// deadline up to a millisecond late), so a scan can never start after [`check_deadline`] would
/// have refused it.
pub(crate) fn storage_deadline(deadline_unix_ms: u64) -> storage::Deadline {
    if deadline_unix_ms == 0 {
        return storage::Deadline::none();
    }
    let mono = std::time::Instant::now();
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = std::time::Duration::from_millis(deadline_unix_ms).saturating_sub(since_epoch);
    storage::Deadline::at(mono + left)
}

fn check_deadline(ctx: &Ctx<'_>) -> Result<()> {
    if ctx.deadline_unix_ms != 0 && now_ms() >= ctx.deadline_unix_ms {
        return Err(Error::DeadlineExceeded);
    }
    Ok(())
}

fn collection_name(raw: &str) -> Result<CollectionName> {
    let name = CollectionName::parse(raw)?;
    tracing::Span::current().record("collection", name.as_str());
    Ok(name)
}

fn collection(ctx: &Ctx<'_>, raw: &str) -> Result<std::sync::Arc<Collection>> {
    let name = collection_name(raw)?;
    Ok(ctx.engine.collection(ctx.tenant, &name)?)
}

fn execute(ctx: &Ctx<'_>, op: Op) -> Result<Answer> {
    let limits = *ctx.engine.limits();
    match op {
        Op::CreateCollection(req) => create_collection(ctx, req),
        Op::ListCollections(_) => {
            let collections = ctx
                .engine
                .list_collections(ctx.tenant)?
                .into_iter()
                .map(|(name, info)| match info {
                    Ok(info) => convert::collection_info(name.as_str(), &info),
                    // Listed by name, so the tenant sees it exists; its config is unknown.
                    Err(_) => api::CollectionInfo {
                        name: name.as_str().to_owned(),
                        ..Default::default()
                    },
                })
                .collect();
            Ok(Answer::Collections(api::ListCollectionsResponse {
                collections,
            }))
        }
        Op::GetCollection(req) => {
            let collection = collection(ctx, &req.name)?;
            Ok(Answer::Collection(convert::collection_info(
                &req.name,
                &collection.info(),
            )))
        }
        Op::DeleteCollection(req) => {
            let name = collection_name(&req.name)?;
            ctx.engine.drop_collection(ctx.tenant, &name)?;
            tracing::info!("collection deleted");
            Ok(Answer::DeletedCollection(api::DeleteCollectionResponse {}))
        }
        Op::Upsert(req) => upsert(ctx, req),
        Op::Get(req) => {
            let ids = convert::point_ids(req.ids, &limits)?;
            let collection = collection(ctx, &req.collection)?;
            let points = collection
                .get(&ids, req.with_payload, req.with_vector)?
                .into_iter()
                .map(convert::record)
                .collect();
            Ok(Answer::Get(api::GetPointsResponse { points }))
        }
        Op::Delete(req) => {
            let deleted = match (req.ids.is_empty(), req.filter) {
                (false, None) => {
                    let ids = convert::point_ids(req.ids, &limits)?;
                    collection(ctx, &req.collection)?.delete_with_token(&ids, ctx.write_token)?
                }
                (true, Some(filter)) => {
                    let filter = convert::filter(Some(filter))?
                        .ok_or_else(|| Error::Internal("a given filter vanished".into()))?;
                    collection(ctx, &req.collection)?
                        .delete_by_filter_within(&filter, &ctx.deadline)?
                }
                _ => {
                    return Err(Error::InvalidArgument(
                        "a delete names either ids or a filter, exactly one of the two".into(),
                    ));
                }
            };
            Ok(Answer::Delete(api::DeletePointsResponse { deleted }))
        }
        Op::Scroll(req) => {
            let limit = match req.limit as usize {
                0 => DEFAULT_SCROLL_LIMIT.min(limits.max_batch),
                n => n,
            };
            convert::check_batch("a scroll page", limit, limits.max_batch)?;
            let from = convert::decode_cursor(&req.cursor)?;
            let filter = convert::filter(req.filter)?;
            let page = collection(ctx, &req.collection)?.scroll_within(
                from.as_ref(),
                limit,
                filter.as_ref(),
                req.with_payload,
                req.with_vector,
                &ctx.deadline,
            )?;
            Ok(Answer::Scroll(api::ScrollResponse {
                points: page.points.into_iter().map(convert::record).collect(),
                next_cursor: page
                    .next
                    .as_ref()
                    .map(convert::encode_cursor)
                    .unwrap_or_default(),
            }))
        }
        Op::Count(req) => {
            let filter = convert::filter(req.filter)?;
            let count =
                collection(ctx, &req.collection)?.count_within(filter.as_ref(), &ctx.deadline)?;
            Ok(Answer::Count(api::CountResponse { count }))
        }
        Op::Search(req) => {
            convert::check_search(&req, &limits)?;
            let collection = collection(ctx, &req.collection)?;
            let req = convert::search_request(req, collection.config().dim, &limits)?;
            Ok(Answer::Search(search_response(
                collection.search_within(&req, &ctx.deadline)?,
            )))
        }
        Op::SearchBatch(req) => {
            convert::check_batch(
                "a batch search",
                req.searches.len(),
                limits.max_search_batch,
            )?;
            for (i, search) in req.searches.iter().enumerate() {
                if !search.collection.is_empty() && search.collection != req.collection {
                    return Err(Error::InvalidArgument(format!(
                        "search {i} names collection {:?}, not the batch's {:?}",
                        search.collection, req.collection
                    )));
                }
                convert::check_search(search, &limits)?;
            }
            let collection = collection(ctx, &req.collection)?;
            let dim = collection.config().dim;
            let searches = req
                .searches
                .into_iter()
                .map(|search| convert::search_request(search, dim, &limits))
                .collect::<Result<Vec<_>>>()?;
            let results = collection
                .search_batch_within(&searches, &ctx.deadline)?
                .into_iter()
                .map(search_response)
                .collect();
            Ok(Answer::SearchBatch(api::SearchBatchResponse { results }))
        }
        Op::RewrapKeys(_) => {
            ctx.engine.rewrap_tenant(ctx.tenant)?;
            tracing::info!("tenant keys re-wrapped");
            Ok(Answer::Done(cluster::Ack::default()))
        }
        Op::EraseEntity(req) => {
            let filter = convert::filter(req.filter)?.ok_or_else(|| {
                Error::InvalidArgument("an erasure names the points it removes by a filter".into())
            })?;
            let purged =
                collection(ctx, &req.collection)?.erase_matching(&filter, &ctx.deadline)?;
            tracing::info!(
                points = purged.points,
                segments_rewritten = purged.segments_rewritten,
                files_deleted = purged.files_deleted,
                "points erased"
            );
            Ok(Answer::Purged(cluster::Purged {
                points: purged.points,
                segments_rewritten: purged.segments_rewritten,
                files_deleted: purged.files_deleted,
            }))
        }
        Op::EraseTenant(_) | Op::MoveStorage(_) | Op::FileBytes(_) => Err(Error::Internal(
            "erasure and moves run under the exclusive gate".into(),
        )),
        // Admitted only while no other request of the tenant runs (`Worker::admit`).
        Op::AppliedToken(req) => {
            let name = collection_name(&req.collection)?;
            let token = match ctx.engine.collection(ctx.tenant, &name) {
                Ok(collection) => collection.applied_token(),
                Err(storage::Error::CollectionNotFound(_)) => 0,
                Err(err) => return Err(err.into()),
            };
            Ok(Answer::AppliedToken(token))
        }
    }
}

/// A collection answers all or nothing, so a search result is never partial (INV-21).
fn search_response(points: Vec<storage::ScoredPoint>) -> api::SearchResponse {
    api::SearchResponse {
        points: points.into_iter().map(convert::scored_point).collect(),
        partial: false,
    }
}

fn create_collection(ctx: &Ctx<'_>, req: api::CreateCollectionRequest) -> Result<Answer> {
    let name = collection_name(&req.name)?;
    let config = convert::collection_config(req.config)?;
    let max_collections = ctx.quota.max_collections;
    let _quota = (max_collections > 0).then(|| ctx.slot.quota.lock());
    if max_collections > 0 {
        let existing = ctx.engine.list_collections(ctx.tenant)?.len();
        if existing >= max_collections as usize {
            return Err(Error::QuotaExceeded(format!(
                "the tenant has {existing} collections, its quota is {max_collections}"
            )));
        }
    }
    let collection = ctx.engine.create_collection(ctx.tenant, &name, config)?;
    tracing::info!("collection created");
    Ok(Answer::Collection(convert::collection_info(
        name.as_str(),
        &collection.info(),
    )))
}

fn upsert(ctx: &Ctx<'_>, req: api::UpsertRequest) -> Result<Answer> {
    let limits = *ctx.engine.limits();
    convert::check_batch("an upsert", req.points.len(), limits.max_batch)?;
    let collection = collection(ctx, &req.collection)?;
    let dim = collection.config().dim;
    let payload_limits = convert::payload_limits(&limits);
    let points = req
        .points
        .into_iter()
        .map(|point| convert::point_input(point, dim, &payload_limits))
        .collect::<Result<Vec<_>>>()?;
    let n_points = points.len() as u64;
    let _quota = has_point_quota(&ctx.quota).then(|| ctx.slot.quota.lock());
    if has_point_quota(&ctx.quota) {
        check_point_quota(ctx, &collection, dim, &points)?;
    }
    collection.upsert_with_token(points, ctx.write_token)?;
    Ok(Answer::Upsert(api::UpsertResponse { upserted: n_points }))
}

fn has_point_quota(quota: &cluster::TenantQuota) -> bool {
    quota.max_points > 0 || quota.max_stored_bytes > 0
}

/// Refuses an upsert that would take the tenant past its points or stored-bytes quota. The caller
/// holds the tenant's quota lock until the upsert is applied. Counted as storage will apply it:
/// the last write of a repeated id wins, and an overwrite replaces the bytes of the point it
/// replaces, so one that does not grow the tenant is never refused.
fn check_point_quota(
    ctx: &Ctx<'_>,
    collection: &Collection,
    dim: usize,
    points: &[storage::PointInput],
) -> Result<()> {
    let (mut live, mut live_bytes) = (0u64, 0u64);
    for (_, info) in ctx.engine.list_collections(ctx.tenant)? {
        if let Ok(info) = info {
            live += info.points;
            live_bytes += info.stored_bytes;
        }
    }
    let last: BTreeMap<&PointId, &storage::PointInput> =
        points.iter().map(|p| (&p.id, p)).collect();
    let distinct: Vec<PointId> = last.keys().map(|&id| id.clone()).collect();
    let (existing, old_bytes) = collection.stored_bytes_of(&distinct);
    let new = distinct.len() as u64 - existing;
    let max_points = ctx.quota.max_points;
    if max_points > 0 && live + new > max_points {
        return Err(Error::QuotaExceeded(format!(
            "the upsert adds {new} points to the tenant's {live}, over its quota of {max_points} points"
        )));
    }
    let new_bytes: u64 = last
        .values()
        .map(|p| storage::collection::point_stored_bytes(dim, &p.id, p.payload.as_ref()))
        .sum();
    let max_bytes = ctx.quota.max_stored_bytes;
    let after = live_bytes.saturating_sub(old_bytes) + new_bytes;
    if max_bytes > 0 && new_bytes > old_bytes && after > max_bytes {
        return Err(Error::QuotaExceeded(format!(
            "the upsert would grow the tenant's stored bytes from {live_bytes} to {after}, over its quota of {max_bytes} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The storage deadline has passed once the wall-clock deadline has: a request held until its
    /// deadline can never start a scan or a delete.
    #[test]
    fn the_storage_deadline_is_never_later_than_the_wall_clock_one() {
        for _ in 0..300 {
            let at = now_ms() + 1;
            let deadline = storage_deadline(at);
            while now_ms() < at {
                std::hint::spin_loop();
            }
            assert!(
                deadline.is_past(),
                "the wall-clock deadline passed, the storage one not"
            );
        }
    }
}
