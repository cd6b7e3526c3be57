//! Courtesy pauses of idle-class threads.
//!
//! A thread in the `SCHED_IDLE` class runs only where no normal thread wants its core, and a
//! normal thread that wakes on its core preempts it at once. What that does not cover: a normal
//! thread that becomes runnable on the *other* core while a normal thread runs there waits in
//! that core's queue, and the kernel moves it to the core running idle-class work only when that
//! core goes idle (and balances at once) or at its periodic load balancing, every few
//! milliseconds. Idle-class work that never blocks keeps its core from ever going idle, so a
//! request's thread can wait behind another request for milliseconds beside a free core.
//!
//! So an idle-class thread sleeps [`PAUSE`] once at least [`EVERY`] has passed since its last
//! pause, at the points where long work already looks at its deadline (every 1,024 points of a
//! scan or filtered walk, each segment), every 256 expansions of a graph walk (searches and
//! inserts), each condition of a filter parsed, every 4,096 values of a filter or payload
//! converted from protobuf to JSON (`proto::json`), and every 16 KiB of JSON parsed or rendered
//! through [`Paced`]. Measured beside the noisy-neighbour benchmark's victim, on 2 cores: two idle-class
//! processes streaming through memory put its p99 at 2.25-2.5x its baseline without pauses and
//! 1.07-1.11x with a 50 us pause every 2 MiB (a one-off variant of the benchmark's control row;
//! ARCHITECTURE, "What the scheduler still does"). The cost is
//! at most `PAUSE / EVERY` of the idle-class work's speed (sleeps overshoot by the timer slack).
//! Normal threads never pause: [`pause_if_due`] is one thread-local read for them.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Longest stretch an idle-class thread runs between pauses.
pub const EVERY: Duration = Duration::from_micros(500);
/// How long it pauses.
pub const PAUSE: Duration = Duration::from_micros(50);

thread_local! {
    /// When this thread last paused; `None` for a thread not in the idle class.
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Pauses this thread took (tests).
    static PAUSES: Cell<u64> = const { Cell::new(0) };
}

/// Marks the calling thread as one that pauses: it has just entered the idle class.
pub(crate) fn begin() {
    LAST.with(|last| last.set(Some(Instant::now())));
}

/// In an idle-class thread, sleeps [`PAUSE`] if [`EVERY`] has passed since its last pause.
#[inline]
pub fn pause_if_due() {
    LAST.with(|last| {
        let Some(at) = last.get() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(at) >= EVERY {
            std::thread::sleep(PAUSE);
            PAUSES.with(|n| n.set(n.get() + 1));
            last.set(Some(Instant::now()));
        }
    });
}

/// Bytes a [`Paced`] reader or writer moves between looks at [`pause_if_due`].
const PACED_BYTES: usize = 16 << 10;

/// A reader or writer that looks at [`pause_if_due`] every 16 KiB it moves: megabytes of JSON
/// parsed or rendered by an idle-class thread (the coordinator's large-message pool) pause like
/// the storage's own long work.
pub struct Paced<T> {
    inner: T,
    since: usize,
}

impl<T> Paced<T> {
    pub fn new(inner: T) -> Paced<T> {
        Paced { inner, since: 0 }
    }

    /// The reader or writer inside.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn moved(&mut self, n: usize) {
        self.since += n;
        if self.since >= PACED_BYTES {
            self.since = 0;
            pause_if_due();
        }
    }
}

impl<R: std::io::Read> std::io::Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.moved(n);
        Ok(n)
    }
}

impl<W: std::io::Write> std::io::Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.moved(n);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Pauses the calling thread has taken.
pub fn pauses() -> u64 {
    PAUSES.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A normal thread never pauses; an idle-class one pauses at a look once its stretch has
    /// passed, and not at one before. Timing-free: the test waits for the clock, never on it.
    #[test]
    fn only_idle_class_threads_pause_and_only_when_due() {
        std::thread::spawn(|| {
            let wait_out_a_stretch = || {
                let start = Instant::now();
                while start.elapsed() <= EVERY {
                    std::hint::spin_loop();
                }
            };
            wait_out_a_stretch();
            pause_if_due();
            assert_eq!(pauses(), 0, "a normal thread paused");
            crate::process::idle_background_thread();
            assert!(
                LAST.with(Cell::get).is_some(),
                "not marked on entering the idle class"
            );
            for n in 1..=3 {
                wait_out_a_stretch();
                pause_if_due();
                assert_eq!(pauses(), n, "no pause once a stretch had passed");
            }
            // A look before the stretch has passed (its last pause set ahead of now) does not.
            LAST.with(|last| last.set(Some(Instant::now() + Duration::from_secs(3600))));
            pause_if_due();
            assert_eq!(pauses(), 3, "paused before its stretch had passed");
        })
        .join()
        .unwrap();
    }

    /// A filter at its limits (256 conditions of 1,024 values) parsed by an idle-class thread
    /// pauses between its conditions; parsed by a normal one, it never does.
    #[test]
    fn a_maximal_filter_is_parsed_with_pauses_in_an_idle_class_thread() {
        let values: Vec<String> = (0..1024).map(|i| format!("tag-{i}")).collect();
        let conditions: Vec<_> = (0..256)
            .map(|i| serde_json::json!({"key": format!("f{i}"), "match": {"any": values}}))
            .collect();
        let filter = serde_json::json!({ "should": conditions });
        // Parses until the thread has paused, at most 200 times (each parse takes well over a
        // stretch of EVERY, so an idle-class thread pauses within two).
        let parse = |most: usize| {
            for _ in 0..most {
                crate::filter::Filter::from_value(
                    filter.clone(),
                    &crate::filter::FilterLimits::default(),
                )
                .unwrap();
                if pauses() > 0 {
                    break;
                }
            }
            pauses()
        };
        assert_eq!(
            std::thread::scope(|s| s.spawn(|| parse(3)).join().unwrap()),
            0
        );
        let paused = std::thread::scope(|s| {
            s.spawn(|| {
                crate::process::idle_background_thread();
                parse(200)
            })
            .join()
            .unwrap()
        });
        assert!(paused >= 1, "a maximal filter parsed without a pause");
    }

    /// Megabytes of JSON parsed and rendered through `Paced` by an idle-class thread pause
    /// along the way, and come out the same.
    #[test]
    fn paced_json_pauses_in_an_idle_class_thread() {
        std::thread::spawn(|| {
            crate::process::idle_background_thread();
            let numbers: Vec<u64> = (0..1_000_000).collect();
            let mut out = Paced::new(Vec::new());
            serde_json::to_writer(&mut out, &numbers).unwrap();
            let text = out.into_inner();
            let reader = std::io::BufReader::new(Paced::new(text.as_slice()));
            let back: Vec<u64> = serde_json::from_reader(reader).unwrap();
            assert_eq!(back, numbers);
            assert!(pauses() >= 1, "{} bytes moved without a pause", text.len());
        })
        .join()
        .unwrap();
    }
}
