//! When a read or a filtered delete must stop.
//!
//! Long operations check their [`Deadline`] before each segment and every [`CHECK_EVERY`] points of
//! an exact scan, a filtered graph walk, a scroll, a count or a filtered delete's scan, so a request
//! that outlives its deadline stops inside the work, not only before it starts (INV-24).

use std::cell::Cell;
use std::time::Instant;

use crate::{Error, Result};

/// Points visited between two looks at the clock.
pub(crate) const CHECK_EVERY: u32 = 1024;

/// The moment an operation must give up, or none.
#[derive(Debug, Clone, Default)]
pub struct Deadline {
    at: Option<Instant>,
    /// Tests: the deadline counts as passed from the `n`-th check on, whatever the clock says.
    #[cfg(test)]
    pub(crate) trip_after: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Deadline {
    /// No deadline.
    pub fn none() -> Deadline {
        Deadline::default()
    }

    /// Stop once `at` has passed.
    pub fn at(at: Instant) -> Deadline {
        Deadline {
            at: Some(at),
            #[cfg(test)]
            trip_after: None,
        }
    }

    /// Tests: a deadline that counts as passed from its `n + 1`-th look on.
    #[cfg(test)]
    pub(crate) fn trips_after(n: u64) -> Deadline {
        Deadline {
            trip_after: Some(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(n))),
            ..Deadline::default()
        }
    }

    /// True once the deadline has passed. Also where long work of an idle-class thread pauses
    /// (`courtesy`).
    pub fn is_past(&self) -> bool {
        crate::courtesy::pause_if_due();
        #[cfg(test)]
        if let Some(left) = &self.trip_after {
            use std::sync::atomic::Ordering;
            if left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return true;
            }
        }
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// `Err(DeadlineExceeded)` once the deadline has passed.
    pub fn check(&self) -> Result<()> {
        if self.is_past() {
            return Err(Error::DeadlineExceeded);
        }
        Ok(())
    }
}

/// A [`Deadline`] watched from inside one loop: looks at the clock every [`CHECK_EVERY`] calls of
/// [`Watch::tick`] and, once past, stays stopped.
pub(crate) struct Watch<'a> {
    deadline: &'a Deadline,
    until_check: Cell<u32>,
    is_stopped: Cell<bool>,
}

impl<'a> Watch<'a> {
    pub(crate) fn new(deadline: &'a Deadline) -> Watch<'a> {
        Watch {
            deadline,
            until_check: Cell::new(CHECK_EVERY),
            is_stopped: Cell::new(false),
        }
    }

    /// Counts one unit of work; true when the operation must stop.
    pub(crate) fn tick(&self) -> bool {
        if self.is_stopped.get() {
            return true;
        }
        let left = self.until_check.get() - 1;
        if left > 0 {
            self.until_check.set(left);
            return false;
        }
        self.until_check.set(CHECK_EVERY);
        if self.deadline.is_past() {
            self.is_stopped.set(true);
        }
        self.is_stopped.get()
    }

    /// `Err(DeadlineExceeded)` if a tick saw the deadline pass, or it has passed now.
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_stopped.get() {
            return Err(Error::DeadlineExceeded);
        }
        self.deadline
            .check()
            .inspect_err(|_| self.is_stopped.set(true))
    }
}
