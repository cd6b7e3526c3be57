//! The coordinator's memory for large messages: one budget, in bytes, that every request body and
//! answer over [`super::LARGE_MESSAGE_BYTES`] reserves from before it is read or rendered, so what
//! many large requests hold at once is bounded by configuration (`large_message_budget_bytes`),
//! not by how many clients send them.
//!
//! A message reserves [`LARGE_MESSAGE_EXPANSION`] times its size: the raw bytes, their parsed
//! form (a JSON tree or decoded protobuf takes several times the bytes it came from) and the
//! rendered answer. Reservations wait in arrival order, up to the request's deadline; one larger
//! than the whole budget is refused at once. Small messages reserve nothing: their count is
//! bounded by the in-flight limits.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::error::{ApiError, Code};

/// What a large message reserves per byte of its size.
pub const LARGE_MESSAGE_EXPANSION: usize = 4;
/// The default budget: 256 MiB, room at once for two bodies at `init`'s `free` limit (32 MiB,
/// reserving 128 MiB each), one at its `pro` limit (64 MiB, the whole budget), or four of the
/// largest answers a worker sends by default (16 MiB).
pub const DEFAULT_LARGE_MESSAGE_BUDGET_BYTES: usize = 256 << 20;

/// Reservations are counted in KiB, so the semaphore's `u32` counts cover any budget.
const UNIT: usize = 1024;

/// The budget (see the module docs). Clones share it: the hub holds one for the answers it
/// decodes.
#[derive(Clone)]
pub struct LargeMessages {
    permits: Arc<Semaphore>,
    total_units: usize,
    /// Bytes reserved, for whoever watches (tests, metrics).
    reserved: Arc<watch::Sender<usize>>,
    /// Room for messages already in memory that wait for their reservation
    /// ([`LargeMessages::reserve_arrived`]): a quarter of the budget, in units of their size.
    waiting: Arc<Semaphore>,
}

/// A reservation, given back when dropped.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    reserved: Arc<watch::Sender<usize>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // The permits go back before the count drops, so a watcher never sees fewer bytes
        // reserved than the semaphore holds.
        drop(self.permit.take());
        self.reserved.send_modify(|b| *b -= self.bytes);
    }
}

tokio::task_local! {
    /// The reservation a large answer took before it was decoded, for the request's own task to
    /// render it under ([`collecting_answer`]).
    static ANSWER: RefCell<Option<Reservation>>;
}

/// Runs `call`, collecting the reservation that a large answer to it took (in the hub, before
/// the answer was decoded), so that the answer is rendered and sent under the same
/// reservation rather than a second one.
pub async fn collecting_answer<F: Future>(call: F) -> (F::Output, Option<Reservation>) {
    ANSWER
        .scope(RefCell::new(None), async move {
            let out = call.await;
            (out, ANSWER.with(|slot| slot.borrow_mut().take()))
        })
        .await
}

/// Hands `reservation` to the task's [`collecting_answer`]; outside one it is given back here,
/// once the answer has been decoded.
pub fn keep_for_answer(reservation: Reservation) {
    let _ = ANSWER.try_with(|slot| *slot.borrow_mut() = Some(reservation));
}

impl LargeMessages {
    pub fn new(budget_bytes: usize) -> LargeMessages {
        let total_units = (budget_bytes / UNIT).clamp(1, u32::MAX as usize);
        LargeMessages {
            permits: Arc::new(Semaphore::new(total_units)),
            total_units,
            reserved: Arc::new(watch::Sender::new(0)),
            waiting: Arc::new(Semaphore::new((total_units / 4).max(1))),
        }
    }

    /// Reserves room for a message of `bytes`, waiting at most `patience` for it. `what` names
    /// the message in errors ("request body", "answer").
    pub async fn reserve(
        &self,
        bytes: usize,
        patience: Duration,
        what: &str,
    ) -> Result<Reservation, ApiError> {
        let units = bytes
            .saturating_mul(LARGE_MESSAGE_EXPANSION)
            .div_ceil(UNIT)
            .max(1);
        if units > self.total_units {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!(
                    "the {what} of {bytes} bytes is larger than this server holds for one message ({} bytes); send or ask for less at once",
                    self.total_units * UNIT / LARGE_MESSAGE_EXPANSION
                ),
            ));
        }
        let acquire = self.permits.clone().acquire_many_owned(units as u32);
        match tokio::time::timeout(patience, acquire).await {
            Ok(Ok(permit)) => {
                let bytes = units * UNIT;
                self.reserved.send_modify(|b| *b += bytes);
                Ok(Reservation {
                    permit: Some(permit),
                    bytes,
                    reserved: self.reserved.clone(),
                })
            }
            Ok(Err(_)) | Err(_) => Err(ApiError::new(
                Code::Unavailable,
                format!(
                    "the server is busy with other large messages; the {what} could not be taken on within {} s, retry later",
                    patience.as_secs()
                ),
            )),
        }
    }

    /// [`LargeMessages::reserve`] for a message that is in memory already (a worker's answer,
    /// which arrives whole before it is decoded). It waits for its reservation only while the
    /// messages waiting that way come to at most a quarter of the budget; past that it is refused
    /// at once, so that what waits unreserved is bounded too (by the budget's quarter), not by
    /// how many requests are in flight.
    pub async fn reserve_arrived(
        &self,
        bytes: usize,
        patience: Duration,
        what: &str,
    ) -> Result<Reservation, ApiError> {
        let units = bytes.div_ceil(UNIT).max(1);
        let room = u32::try_from(units)
            .ok()
            .and_then(|units| self.waiting.clone().try_acquire_many_owned(units).ok());
        let Some(_room) = room else {
            // One that could never be held is refused as such, not as busy.
            if bytes.saturating_mul(LARGE_MESSAGE_EXPANSION).div_ceil(UNIT) > self.total_units {
                return self.reserve(bytes, Duration::ZERO, what).await;
            }
            return Err(ApiError {
                code: Code::Unavailable,
                message: format!(
                    "the server is busy with other large messages; too many {what}s wait to be taken on, retry later"
                ),
                retry_after: Some(Duration::from_secs(1)),
            });
        };
        self.reserve(bytes, patience, what).await
    }

    /// Bytes reserved now.
    pub fn reserved_bytes(&self) -> usize {
        *self.reserved.borrow()
    }

    /// Watches the bytes reserved.
    pub fn watch_reserved(&self) -> watch::Receiver<usize> {
        self.reserved.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages in memory already wait for their reservation only up to a quarter of the
    /// budget; one past that is refused at once, and those waiting are taken on in turn.
    #[tokio::test(start_paused = true)]
    async fn arrived_messages_wait_only_within_a_quarter_of_the_budget() {
        let budget = LargeMessages::new(1 << 20);
        let patience = Duration::from_secs(5);
        let held = budget.reserve(200 << 10, patience, "body").await.unwrap();
        // 100 KiB arrived: its 400 KiB do not fit beside the 800 KiB held, so it waits.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve_arrived(100 << 10, patience, "answer").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // Another 200 KiB would make 300 KiB waiting, past the quarter (256 KiB): refused now,
        // without waiting out its patience.
        let started = tokio::time::Instant::now();
        let err = budget
            .reserve_arrived(200 << 10, patience, "answer")
            .await
            .err()
            .unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(err.code, Code::Unavailable);
        assert!(
            err.message.contains("too many answers wait"),
            "{}",
            err.message
        );
        // One larger than the budget could ever hold is too large, not busy.
        let err = budget
            .reserve_arrived(300 << 10, patience, "answer")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, Code::PayloadTooLarge);
        // Once the held one goes, the waiting one is taken on, and its room given back.
        drop(held);
        let first = waiting.await.unwrap().unwrap();
        assert_eq!(budget.reserved_bytes(), 400 << 10);
        let second = budget.reserve_arrived(150 << 10, patience, "answer").await;
        assert!(second.is_ok());
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_wait_their_turn_and_one_over_the_budget_is_refused() {
        let budget = LargeMessages::new(1 << 20);
        let patience = Duration::from_secs(5);
        let first = budget.reserve(200 << 10, patience, "body").await.unwrap();
        assert_eq!(budget.reserved_bytes(), 800 << 10);
        // Another 200 KiB does not fit beside it: it waits, and gives up at its deadline.
        let err = budget
            .reserve(200 << 10, patience, "body")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, Code::Unavailable);
        drop(first);
        assert_eq!(budget.reserved_bytes(), 0);
        let _second = budget.reserve(200 << 10, patience, "body").await.unwrap();
        let err = budget
            .reserve(100 << 10, patience, "answer")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, Code::Unavailable);
        // Larger than the whole budget: refused at once, whatever is free.
        let err = budget
            .reserve(257 << 10, Duration::ZERO, "answer")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, Code::PayloadTooLarge);
        assert!(err.message.contains("262144 bytes"), "{}", err.message);
    }
}
