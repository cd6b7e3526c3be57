//! Reads (get, scroll, count, search) and the scan that picks a filtered delete's points.
//!
//! Every answer is bounded in bytes while it is built ([`Limits::max_answer_bytes`]): a get or a
//! search that would pass the bound is refused with [`Error::AnswerTooLarge`], a scroll page ends
//! early with the cursor to continue from. Scans and walks watch the request's [`Deadline`]
//! before each segment and every [`crate::deadline::CHECK_EVERY`] points (INV-24, INV-25).

use std::collections::BTreeSet;

use super::write::check_batch;
use super::{Collection, Limits, Record, ScoredPoint, ScrollPage, SearchRequest};
use crate::deadline::{Deadline, Watch};
use crate::filter::{Filter, Payload};
use crate::ids::PointId;
use crate::wal::Op;
use crate::{Error, Result};

use super::write::Apply;

/// Bytes counted for each record besides its id, payload and vector: the score and the framing
/// around each field on the wire.
const RECORD_OVERHEAD: usize = 16;

/// What an answer may still carry, in bytes.
pub(super) struct AnswerBudget {
    left: usize,
    limit: usize,
}

impl AnswerBudget {
    pub(super) fn new(limits: &Limits) -> AnswerBudget {
        AnswerBudget {
            left: limits.max_answer_bytes,
            limit: limits.max_answer_bytes,
        }
    }

    /// Takes `bytes` from the budget; false (and nothing taken) when they do not fit.
    fn take(&mut self, bytes: usize) -> bool {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    fn too_large(&self, hint: &'static str) -> Error {
        Error::AnswerTooLarge {
            limit: self.limit,
            hint,
        }
    }
}

/// The bytes one record of an answer is counted as.
fn record_bytes(id: &PointId, payload: Option<&Payload>, vector_dim: Option<usize>) -> usize {
    let id_bytes = match id {
        PointId::Num(_) => 9,
        PointId::Str(s) => 2 + s.len(),
    };
    RECORD_OVERHEAD
        + id_bytes
        + payload.map_or(0, Payload::encoded_len)
        + vector_dim.map_or(0, |dim| dim * 4)
}

impl Collection {
    /// Points by id, in the order first asked; missing ids are left out, a repeated id is answered
    /// once. Refused with [`Error::AnswerTooLarge`] when the records would pass
    /// [`Limits::max_answer_bytes`].
    pub fn get(
        &self,
        ids: &[PointId],
        with_payload: bool,
        with_vector: bool,
    ) -> Result<Vec<Record>> {
        let inner = &self.inner;
        check_batch(ids.len(), &inner.limits)?;
        let mut budget = AnswerBudget::new(&inner.limits);
        let mut seen = BTreeSet::new();
        let state = inner.state.read();
        let mut records = Vec::new();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            let Some(loc) = state.ids.get(id) else {
                continue;
            };
            let record = inner.record(&state, id.clone(), *loc, with_payload, with_vector);
            let bytes = record_bytes(
                &record.id,
                record.payload.as_ref(),
                record.vector.as_ref().map(Vec::len),
            );
            if !budget.take(bytes) {
                return Err(budget
                    .too_large("ask for fewer ids per call, or leave out vectors or payloads"));
            }
            records.push(record);
        }
        Ok(records)
    }

    /// Points in id order starting at `from` (inclusive), at most `limit`, matching `filter`.
    pub fn scroll(
        &self,
        from: Option<&PointId>,
        limit: usize,
        filter: Option<&Filter>,
        with_payload: bool,
        with_vector: bool,
    ) -> Result<ScrollPage> {
        self.scroll_within(
            from,
            limit,
            filter,
            with_payload,
            with_vector,
            &Deadline::none(),
        )
    }

    /// As [`Collection::scroll`], stopping with [`Error::DeadlineExceeded`] once `deadline`
    /// passes. A page whose records would pass [`Limits::max_answer_bytes`] ends early, with
    /// `next` set to the first point left out.
    pub fn scroll_within(
        &self,
        from: Option<&PointId>,
        limit: usize,
        filter: Option<&Filter>,
        with_payload: bool,
        with_vector: bool,
        deadline: &Deadline,
    ) -> Result<ScrollPage> {
        let inner = &self.inner;
        check_batch(limit, &inner.limits)?;
        deadline.check()?;
        let watch = Watch::new(deadline);
        let mut budget = AnswerBudget::new(&inner.limits);
        let state = inner.state.read();
        let range = match from {
            Some(from) => state.ids.range(from.clone()..),
            None => state.ids.range(..),
        };
        let mut points = Vec::with_capacity(limit.min(1024));
        let mut next = None;
        for (id, loc) in range {
            if watch.tick() {
                break;
            }
            if !inner.matches(&state, *loc, filter) {
                continue;
            }
            if points.len() == limit {
                next = Some(id.clone());
                break;
            }
            let record = inner.record(&state, id.clone(), *loc, with_payload, with_vector);
            let bytes = record_bytes(
                &record.id,
                record.payload.as_ref(),
                record.vector.as_ref().map(Vec::len),
            );
            if !budget.take(bytes) {
                if points.is_empty() {
                    return Err(budget.too_large("leave out vectors or payloads"));
                }
                next = Some(record.id);
                break;
            }
            points.push(record);
        }
        watch.check()?;
        Ok(ScrollPage { points, next })
    }

    /// Live points, or those matching `filter`.
    pub fn count(&self, filter: Option<&Filter>) -> u64 {
        // Without a deadline the count cannot stop early.
        self.count_within(filter, &Deadline::none())
            .unwrap_or_default()
    }

    /// As [`Collection::count`], stopping with [`Error::DeadlineExceeded`] once `deadline` passes.
    pub fn count_within(&self, filter: Option<&Filter>, deadline: &Deadline) -> Result<u64> {
        deadline.check()?;
        let inner = &self.inner;
        let state = inner.state.read();
        let Some(filter) = filter else {
            return Ok(state.ids.len() as u64);
        };
        let watch = Watch::new(deadline);
        let mut n = 0u64;
        for loc in state.ids.values() {
            if watch.tick() {
                break;
            }
            if inner.matches(&state, *loc, Some(filter)) {
                n += 1;
            }
        }
        watch.check()?;
        Ok(n)
    }

    /// Deletes every point whose payload matches `filter`. Returns how many.
    pub fn delete_by_filter(&self, filter: &Filter) -> Result<u64> {
        self.delete_by_filter_within(filter, &Deadline::none())
    }

    /// As [`Collection::delete_by_filter`]; when `deadline` passes while the points are chosen,
    /// nothing is deleted and the answer is [`Error::DeadlineExceeded`]. Once deleting has begun
    /// it runs to the end.
    pub fn delete_by_filter_within(&self, filter: &Filter, deadline: &Deadline) -> Result<u64> {
        let inner = &self.inner;
        deadline.check()?;
        // Hold the writer lock while choosing the ids, so no write slips in between.
        let mut writer = inner.writer.lock();
        writer.check_writable(&inner.name)?;
        let watch = Watch::new(deadline);
        let ids: Vec<PointId> = {
            let state = inner.state.read();
            let mut ids = Vec::new();
            for (id, loc) in &state.ids {
                if watch.tick() {
                    break;
                }
                if inner.matches(&state, *loc, Some(filter)) {
                    ids.push(id.clone());
                }
            }
            ids
        };
        watch.check()?;
        let deleted = ids.len() as u64;
        for chunk in ids.chunks(inner.limits.max_batch.max(1)) {
            let ops: Vec<Op> = chunk
                .iter()
                .map(|id| Op::Delete { id: id.clone() })
                .collect();
            let applies = chunk
                .iter()
                .map(|id| Apply::Delete { id: id.clone() })
                .collect();
            inner.log_and_apply_locked(&mut writer, &ops, applies)?;
        }
        Ok(deleted)
    }

    /// The nearest points to `req.vector`.
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<ScoredPoint>> {
        self.search_within(req, &Deadline::none())
    }

    /// As [`Collection::search`], stopping with [`Error::DeadlineExceeded`] once `deadline`
    /// passes; refused with [`Error::AnswerTooLarge`] when the hits with their payloads and
    /// vectors would pass [`Limits::max_answer_bytes`].
    pub fn search_within(
        &self,
        req: &SearchRequest,
        deadline: &Deadline,
    ) -> Result<Vec<ScoredPoint>> {
        let mut budget = AnswerBudget::new(&self.inner.limits);
        self.search_budgeted(req, deadline, &mut budget)
    }

    /// Several searches; answers in the same order.
    pub fn search_batch(&self, reqs: &[SearchRequest]) -> Result<Vec<Vec<ScoredPoint>>> {
        self.search_batch_within(reqs, &Deadline::none())
    }

    /// As [`Collection::search_batch`] under one deadline, and one bound on the bytes of all the
    /// answers together.
    pub fn search_batch_within(
        &self,
        reqs: &[SearchRequest],
        deadline: &Deadline,
    ) -> Result<Vec<Vec<ScoredPoint>>> {
        let limits = &self.inner.limits;
        if reqs.is_empty() || reqs.len() > limits.max_search_batch {
            return Err(Error::invalid(format!(
                "a batch search holds 1..={} searches, got {}",
                limits.max_search_batch,
                reqs.len()
            )));
        }
        let mut budget = AnswerBudget::new(limits);
        reqs.iter()
            .map(|req| self.search_budgeted(req, deadline, &mut budget))
            .collect()
    }

    fn search_budgeted(
        &self,
        req: &SearchRequest,
        deadline: &Deadline,
        budget: &mut AnswerBudget,
    ) -> Result<Vec<ScoredPoint>> {
        let inner = &self.inner;
        // Bounds first, before anything is allocated for the request.
        if req.top_k == 0 || req.top_k > inner.limits.max_top_k {
            return Err(Error::invalid(format!(
                "top_k {} is outside 1..={}",
                req.top_k, inner.limits.max_top_k
            )));
        }
        let ef = req.ef.unwrap_or(inner.config.ef);
        if ef == 0 || ef > inner.limits.max_ef {
            return Err(Error::invalid(format!(
                "ef {ef} is outside 1..={}",
                inner.limits.max_ef
            )));
        }
        if req.vector.len() != inner.config.dim {
            return Err(Error::DimensionMismatch {
                expected: inner.config.dim,
                got: req.vector.len(),
            });
        }
        let query = inner.check_vector(req.vector.clone())?;
        let segments = inner.state.read().segments.clone();
        let watch = Watch::new(deadline);
        let mut hits = Vec::with_capacity(req.top_k * segments.len());
        for segment in &segments {
            watch.check()?;
            for hit in segment.search(
                &inner.config,
                &query,
                req.top_k,
                ef.max(req.top_k),
                req.filter.as_ref(),
                &watch,
            ) {
                hits.push((hit.distance, segment.id, hit.node));
            }
        }
        watch.check()?;
        hits.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        hits.truncate(req.top_k);
        let vector_dim = req.with_vector.then_some(inner.config.dim);
        let mut points = Vec::with_capacity(hits.len());
        for (distance, segment_id, slot) in hits {
            let segment = segments
                .iter()
                .find(|s| s.id == segment_id)
                .expect("hit from a listed segment");
            let id = segment.ids.read()[slot as usize].clone();
            let payload = req
                .with_payload
                .then(|| segment.payloads.read()[slot as usize].clone())
                .flatten();
            // Counted before the vector is copied: a vector is always `dim` components.
            if !budget.take(record_bytes(&id, payload.as_ref(), vector_dim)) {
                return Err(budget.too_large(
                    "ask for a smaller top_k or fewer searches per batch, or leave out vectors or payloads",
                ));
            }
            let vector = req
                .with_vector
                .then(|| segment.vectors.get(slot).map(<[f32]>::to_vec))
                .flatten();
            points.push(ScoredPoint {
                id,
                distance,
                payload,
                vector,
            });
        }
        Ok(points)
    }
}
