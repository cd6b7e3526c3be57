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

/// The budget (see the module docs).
pub struct LargeMessages {
    permits: Arc<Semaphore>,
    total_units: usize,
    /// Bytes reserved, for whoever watches (tests, metrics).
    reserved: Arc<watch::Sender<usize>>,
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

impl LargeMessages {
    pub fn new(budget_bytes: usize) -> LargeMessages {
        let total_units = (budget_bytes / UNIT).clamp(1, u32::MAX as usize);
        LargeMessages {
            permits: Arc::new(Semaphore::new(total_units)),
            total_units,
            reserved: Arc::new(watch::Sender::new(0)),
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
