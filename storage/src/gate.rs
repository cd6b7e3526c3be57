//! A gate that lets bulk I/O through only when a core is free.
//!
//! Writing a large message to a socket is work a normal-priority thread has to do (the I/O loops
//! own the sockets), and on loopback the kernel does the receiver's TCP work in the writer's
//! context too: megabytes of one tenant's answers, written as fast as the loop can, keep the cores
//! busy at normal priority and another tenant's small request waits for a core behind them.
//! Whatever builds those megabytes already runs in the `SCHED_IDLE` class; this gate extends that
//! to their writing.
//!
//! Before each piece of a large message is written (or read, for a large request body), the loop
//! awaits [`IdleGate::pass`]. A pass is granted by one thread in the `SCHED_IDLE` class, which the
//! kernel runs only when no normal thread wants its core, one pass at a time with a yield between
//! them. So a piece goes when a core was free a moment ago, and a request that arrives meanwhile
//! waits for at most the pieces already let through, never for a whole backlog. An idle-class
//! thread is never starved outright: under full load it still runs now and then, so large messages
//! slow down under load but keep moving.
//!
//! Without the thread (it could not be started), every pass is granted at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// Passes granted so far by the gates of each name, over the process's life (tests, metrics).
static PASSES: std::sync::LazyLock<Mutex<std::collections::BTreeMap<String, Arc<AtomicU64>>>> =
    std::sync::LazyLock::new(Default::default);

/// Passes granted so far by every gate started under `name` in this process.
pub fn passes_by_name(name: &str) -> u64 {
    PASSES
        .lock()
        .get(name)
        .map_or(0, |count| count.load(Ordering::Relaxed))
}

/// The gate (see the module docs). Cheap to clone; the thread stops when the last clone is gone.
#[derive(Clone)]
pub struct IdleGate {
    queue: Option<mpsc::Sender<Arc<Ticket>>>,
    passes: Arc<AtomicU64>,
}

struct Ticket {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Ticket {
    fn open(&self) {
        self.open.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().take() {
            waker.wake();
        }
    }
}

/// One pass through the gate: ready once the gate's thread has let it through.
pub struct Pass {
    ticket: Arc<Ticket>,
}

impl Future for Pass {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ticket.open.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.ticket.waker.lock() = Some(cx.waker().clone());
        // Opened between the check and storing the waker: the opener found no waker to wake.
        if self.ticket.open.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl IdleGate {
    /// Starts the gate's thread, named `name`, in the `SCHED_IDLE` class (nice 10 where that is
    /// refused). If the thread cannot be started, the gate grants every pass at once.
    pub fn start(name: &str) -> IdleGate {
        let (queue, tickets) = mpsc::channel::<Arc<Ticket>>();
        // Gates of one name share their count (`passes_by_name`).
        let passes = PASSES.lock().entry(name.to_owned()).or_default().clone();
        let counted = passes.clone();
        let started = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                crate::process::idle_background_thread();
                while let Ok(ticket) = tickets.recv() {
                    counted.fetch_add(1, Ordering::Relaxed);
                    ticket.open();
                    // The woken loop preempts this thread on a busy core; on a free one, the
                    // next pass waits for whatever else is runnable first.
                    std::thread::yield_now();
                }
            });
        let queue = match started {
            Ok(_) => Some(queue),
            Err(err) => {
                tracing::warn!(error = %err, "could not start the idle gate's thread; bulk I/O goes ungated");
                None
            }
        };
        IdleGate { queue, passes }
    }

    /// A gate that never grants a pass: its queue's receiving end is leaked, so nothing serves
    /// it and nothing fails (tests of what waits for a gate).
    pub fn closed() -> IdleGate {
        let (queue, tickets) = mpsc::channel::<Arc<Ticket>>();
        std::mem::forget(tickets);
        IdleGate {
            queue: Some(queue),
            passes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A gate that grants every pass at once (tests, tools).
    pub fn open() -> IdleGate {
        IdleGate {
            queue: None,
            passes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits until the gate's thread lets one piece through (see the module docs).
    pub fn pass(&self) -> Pass {
        let ticket = Arc::new(Ticket {
            open: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let queued = self
            .queue
            .as_ref()
            .is_some_and(|queue| queue.send(ticket.clone()).is_ok());
        if !queued {
            ticket.open.store(true, Ordering::Release);
        }
        Pass { ticket }
    }

    /// Passes granted so far by this gate's thread and any other started under its name
    /// (metrics, tests).
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    }

    #[test]
    fn passes_are_granted_by_an_idle_class_thread_and_counted() {
        let gate = IdleGate::start("vv-test-gate");
        for _ in 0..50 {
            block_on(gate.pass());
        }
        assert_eq!(gate.passes(), 50);
        assert_eq!(passes_by_name("vv-test-gate"), 50);
        // The thread that granted them is in the idle class (or, where that is refused, nice).
        let thread_class = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| t.ok())
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "vv-test-gate")
            })
            .map(|t| std::fs::read_to_string(t.path().join("stat")).unwrap());
        let stat = thread_class.expect("the gate's thread runs");
        // Field 41 of /proc/<pid>/task/<tid>/stat is the scheduling policy (5 = SCHED_IDLE);
        // field 19 the nice value. Fields after the parenthesised name start at 3.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        let nice: i32 = fields[19 - 3].parse().unwrap();
        let policy: i32 = fields[41 - 3].parse().unwrap();
        assert!(
            policy == libc::SCHED_IDLE || nice >= crate::process::BACKGROUND_NICE,
            "policy {policy}, nice {nice}"
        );
    }

    #[test]
    fn an_open_gate_grants_at_once_and_counts_nothing() {
        let gate = IdleGate::open();
        block_on(gate.pass());
        assert_eq!(gate.passes(), 0);
    }

    #[test]
    fn a_pass_polled_before_it_is_granted_is_woken() {
        let gate = IdleGate::start("vv-test-gate-2");
        // Many waiting at once from several threads: every one is woken.
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        block_on(gate.pass());
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(gate.passes(), 800);
    }
}
