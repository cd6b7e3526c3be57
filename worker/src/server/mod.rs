//! [`serve`]: dial the coordinator, follow the cluster protocol (`proto/.../cluster.proto`), run
//! tenant requests against the storage engine, reconnect when the connection drops.
//!
//! # Tasks
//!
//! One loop owns the WebSocket: it reads frames, writes answers, heartbeats and key-service calls
//! (which storage threads queue through the [`Link`]). No request work runs on the loop's thread
//! (INV-24): every tenant request, cheap search included, runs on a blocking thread (at most
//! `max_in_flight` at once), which also encodes the answer and checks it fits in a frame (INV-25),
//! inside a task of the worker's one `JoinSet`, which outlives connections: a
//! request in flight when the connection drops finishes, and its answer is dropped because it
//! belongs to an older connection (`generation`). Whoever spawns awaits: the loop reaps every task, and shutdown
//! waits for them (bounded) before the engine is closed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use storage::Engine;
use storage::ids::TenantId;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::Instrument;
use zeroize::{Zeroize, Zeroizing};

use cluster::envelope::Body;
use proto::chunk::{Outbox, Piece, Reassembly};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Error;
use crate::keys::{Link, RemoteKeyService};
use crate::op;
use crate::replay::{REPLAY_WINDOW, ReplayWindow};
use crate::tenant::Tenants;

mod dial;
mod frames;
mod share;
mod tenants;
mod transfer;

pub use dial::check_connection;
use dial::{UpgradeRefused, dial};

/// Largest WebSocket frame and message, either direction.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// The name of the thread (and `storage::gate` counter) of the gate the pieces of large answers
/// pass.
pub const GATE_THREAD: &str = "vv-worker-gate";

/// Bytes of requests arriving in pieces held at once, all requests together.
const MAX_REASSEMBLY_BYTES: usize = 2 * MAX_FRAME_BYTES;
/// Most frames handled in one go before the loop looks at answers, heartbeats and shutdown again.
const MAX_BURST: usize = 16;
/// The largest answer frame the worker sends: the coordinator's limit, less room for the
/// envelope around the answer.
const MAX_ANSWER_FRAME_BYTES: usize = MAX_FRAME_BYTES - 1024;
/// How long a storage thread waits for the key service.
const KEY_SERVICE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the TCP connection and the upgrade may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the coordinator may take to acknowledge the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two memory accounting passes started by finished requests (heartbeats
/// always start one).
const ACCOUNTING_PERIOD: Duration = Duration::from_millis(100);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Shutdown<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Serves the tenants the coordinator assigns until `shutdown` resolves.
///
/// Dials `config.coordinator_url` (`ws://`, or `wss://` verified against `ca_file` or the
/// platform's roots), says hello, and reconnects with capped exponential backoff when
/// the connection drops or is refused. On shutdown: new tenant requests are refused
/// (`UNAVAILABLE`), requests in flight get up to 30 s to finish, the engine is closed, and the
/// WebSocket is closed with a Close frame. Errors only if the configuration is invalid or the data
/// directory cannot be opened.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let tls = config.tls_client_config()?;
    let span = tracing::info_span!("worker", worker = %config.worker_id);
    let link = Arc::new(Link::default());
    let keys = Arc::new(RemoteKeyService::new(link.clone(), KEY_SERVICE_TIMEOUT));
    let (data_dir, limits) = (config.data_dir.clone(), config.limits);
    let engine = tokio::task::spawn_blocking(move || Engine::open(&data_dir, keys, limits))
        .await
        .context("opening the storage engine")?
        .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?;
    let clock = config.clock.clone();
    let mut worker = Worker {
        config: Arc::new(config),
        tls,
        engine: Arc::new(engine),
        link,
        tenants: Arc::new(Tenants::new(clock)),
        jobs: JoinSet::new(),
        in_flight: 0,
        requests_total: 0,
        tenant_in_flight: HashMap::new(),
        tenant_running: HashMap::new(),
        shares: Arc::new(share::Shares::new(2 * default_threads())?),
        gate: storage::gate::IdleGate::start(GATE_THREAD),
        is_accounting: false,
        last_accounting: Instant::now(),
        generation: 0,
        drain_deadline: None,
        is_closing: false,
        is_engine_closed: false,
    };
    let mut shutdown: Shutdown<'_> = Box::pin(shutdown.fuse());
    worker.run(&mut shutdown).instrument(span).await;
    Ok(())
}

/// The number of cores (2 when it cannot be read).
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What a finished task reports to the loop.
enum Done {
    /// The answer to a coordinator request, encoded (by [`answer_frame`]) off the loop's thread.
    Reply {
        generation: u64,
        request_id: u64,
        deadline_unix_ms: u64,
        /// The tenant whose request this answers, when it was counted against `max_in_flight`
        /// and the tenant's share of it.
        counted_for: Option<TenantId>,
        /// The encoded answer: one frame, or the pieces of a large one.
        frames: Vec<Vec<u8>>,
    },
    /// A memory accounting pass finished.
    Accounted,
    /// The engine is closed.
    Closed,
}

/// How a session ended.
enum End {
    /// The connection dropped; reconnect unless shutting down.
    Lost,
    /// Shutdown finished on this connection.
    Stopped,
}

/// A tenant assigned on the current connection.
#[derive(Debug, Clone, Copy)]
struct Assignment {
    epoch: u64,
    quota: cluster::TenantQuota,
}

/// State of one connection.
struct Session {
    ws: Ws,
    outbound: mpsc::UnboundedReceiver<cluster::Envelope>,
    assignments: HashMap<TenantId, Assignment>,
    /// The epoch each tenant was last released at on this connection: an assignment under an
    /// older one (a request that raced the release) is refused, so a tenant released for a move
    /// cannot be loaded and written here again while its files are copied.
    released: HashMap<TenantId, u64>,
    replay: ReplayWindow,
    /// Large requests arriving in pieces.
    reassembly: Reassembly,
    /// Large answers going out in pieces, one piece of each in turn.
    bulk: Outbox,
    /// The next piece's pass through the worker's gate (`storage::gate`), while pieces wait.
    pass: Option<storage::gate::Pass>,
}

struct Worker {
    config: Arc<Config>,
    /// The TLS client configuration for a `wss://` coordinator.
    tls: Option<Arc<rustls::ClientConfig>>,
    engine: Arc<Engine>,
    link: Arc<Link>,
    tenants: Arc<Tenants>,
    jobs: JoinSet<Done>,
    /// Tenant requests running (counted against `max_in_flight`).
    in_flight: u32,
    /// Tenant requests finished since the worker started (heartbeats carry it).
    requests_total: u64,
    /// Of those, each tenant's (tenants with none are left out).
    tenant_in_flight: HashMap<TenantId, u32>,
    /// Each tenant's permits to run on a blocking thread (`max_running_per_tenant`), kept while
    /// the tenant has requests in flight. Requests beyond them wait, in order, on the tenant's
    /// semaphore, not on a thread: one tenant's backlog never takes the CPU from another's
    /// request.
    tenant_running: HashMap<TenantId, Arc<tokio::sync::Semaphore>>,
    /// Which pool each started request runs on, by its tenant's recent CPU use (`share`).
    shares: Arc<share::Shares>,
    /// Pieces of large answers are written only as it lets them through: when a core is free
    /// (`storage::gate`).
    gate: storage::gate::IdleGate,
    is_accounting: bool,
    last_accounting: Instant,
    /// Numbers connections; answers of an older one are dropped.
    generation: u64,
    /// Set once shutdown began.
    drain_deadline: Option<Instant>,
    is_closing: bool,
    is_engine_closed: bool,
}

/// The process's resident set size (`VmRSS` of `/proc/self/status`), 0 where unknown.
fn resident_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb.saturating_mul(1024))
}

fn frame(request_id: u64, body: Body) -> Message {
    Message::binary(
        cluster::Envelope {
            request_id,
            deadline_unix_ms: 0,
            body: Some(body),
        }
        .encode_to_vec(),
    )
}

fn error_frame(request_id: u64, err: &Error) -> Message {
    frame(request_id, Body::Error(err.to_proto()))
}

/// The encoded answer to request `request_id`. An answer larger than a frame the coordinator
/// accepts becomes an error for this request alone: sent whole, it would make the coordinator drop
/// the connection and every other tenant's requests on it (INV-25).
/// [`answer_frame`] in the pieces it travels in (`proto::chunk`), cut on the calling thread so
/// the loop only sends them.
fn answer_frames(request_id: u64, result: Result<Body, Error>) -> Vec<Vec<u8>> {
    proto::chunk::split(request_id, answer_frame(request_id, result))
}

fn answer_frame(request_id: u64, result: Result<Body, Error>) -> Vec<u8> {
    let encode = |body| {
        cluster::Envelope {
            request_id,
            deadline_unix_ms: 0,
            body: Some(body),
        }
        .encode_to_vec()
    };
    let body = match result {
        Ok(body) => {
            let bytes = body.encoded_len();
            if bytes > MAX_ANSWER_FRAME_BYTES {
                tracing::warn!(
                    request_id,
                    bytes,
                    limit = MAX_ANSWER_FRAME_BYTES,
                    "refusing to send an answer larger than a frame"
                );
                Body::Error(
                    Error::FrameTooLarge {
                        bytes,
                        limit: MAX_ANSWER_FRAME_BYTES,
                    }
                    .to_proto(),
                )
            } else {
                return encode(body);
            }
        }
        Err(err) => Body::Error(err.to_proto()),
    };
    encode(body)
}

impl Worker {
    fn is_stopping(&self) -> bool {
        self.drain_deadline.is_some()
    }

    async fn run(&mut self, shutdown: &mut Shutdown<'_>) {
        let mut backoff = Backoff::new(self.config.reconnect_max_backoff);
        'connect: while !self.is_stopping() {
            let attempt = tokio::select! {
                () = &mut *shutdown => {
                    self.begin_shutdown();
                    break 'connect;
                }
                res = self.connect() => res,
            };
            match attempt {
                Ok((ws, key_batches)) => {
                    backoff.reset();
                    match self.session(ws, key_batches, shutdown).await {
                        End::Stopped => return,
                        End::Lost if self.is_stopping() => break 'connect,
                        End::Lost => {}
                    }
                }
                Err(err) => {
                    if err.downcast_ref::<UpgradeRefused>().is_some() {
                        tracing::error!(coordinator = %self.config.coordinator_url, error = %format!("{err:#}"), "the coordinator refused this worker");
                    } else {
                        tracing::warn!(coordinator = %self.config.coordinator_url, error = %format!("{err:#}"), "connecting to the coordinator failed");
                    }
                }
            }
            let delay = backoff.next_delay();
            tracing::info!(
                retry_in_ms = delay.as_millis() as u64,
                "reconnecting to the coordinator"
            );
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = &mut *shutdown => {
                        self.begin_shutdown();
                        break 'connect;
                    }
                    () = tokio::time::sleep_until(wake) => break,
                    Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                        self.reap(done);
                    }
                }
            }
        }
        self.finish_offline().await;
    }

    fn begin_shutdown(&mut self) {
        if self.drain_deadline.is_none() {
            tracing::info!(
                in_flight = self.in_flight,
                "shutting down: refusing new requests and draining"
            );
            self.drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
        }
    }

    /// Shutdown without a connection: wait for the tasks (bounded), then close the engine.
    async fn finish_offline(&mut self) {
        self.begin_shutdown();
        let deadline = self.drain_deadline.unwrap_or_else(Instant::now);
        while !self.jobs.is_empty() {
            tokio::select! {
                Some(done) = self.jobs.join_next() => self.reap(done),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(tasks = self.jobs.len(), "tasks still running at the drain deadline; closing anyway");
                    break;
                }
            }
        }
        if !self.is_engine_closed {
            let engine = self.engine.clone();
            if let Err(err) = tokio::task::spawn_blocking(move || engine.close()).await {
                tracing::error!(error = %err, "closing the engine failed");
            }
            self.is_engine_closed = true;
        }
        tracing::info!("worker stopped");
    }

    /// Counts a finished tenant request out of `max_in_flight` and its tenant's share.
    fn finished(&mut self, counted_for: Option<TenantId>) {
        let Some(tenant) = counted_for else {
            return;
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        self.requests_total += 1;
        if let Some(n) = self.tenant_in_flight.get_mut(&tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.tenant_in_flight.remove(&tenant);
                self.tenant_running.remove(&tenant);
            }
        }
    }

    /// How many requests `tenant` may have in flight: an equal share of `max_in_flight` among the
    /// tenants with requests in flight, counting one more that may arrive, so a tenant that has
    /// none yet always finds a free slot (INV-26).
    fn tenant_share(&self, tenant: &TenantId) -> u32 {
        let others = self
            .tenant_in_flight
            .keys()
            .filter(|t| *t != tenant)
            .count() as u32;
        (self.config.max_in_flight / (others + 2)).max(1)
    }

    /// A finished task while no connection can carry its answer.
    fn reap(&mut self, done: Result<Done, tokio::task::JoinError>) {
        match done {
            Ok(Done::Reply { counted_for, .. }) => self.finished(counted_for),
            Ok(Done::Accounted) => self.is_accounting = false,
            Ok(Done::Closed) => self.is_engine_closed = true,
            Err(err) => tracing::error!(error = %err, "a worker task failed"),
        }
    }

    /// Dials the coordinator, says hello and waits for the acknowledgement. Answers the
    /// connection and whether the coordinator answers `DecryptDataKeys`.
    async fn connect(&self) -> anyhow::Result<(Ws, bool)> {
        let config = &self.config;
        let mut ws = dial(config, self.tls.clone()).await?;
        // The tenants on disk, so the coordinator can have erased ones deleted (reconciliation).
        let engine = self.engine.clone();
        let held_tenants = tokio::task::spawn_blocking(move || engine.stored_tenants())
            .await
            .context("listing the stored tenants")??
            .into_iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        let hello = Body::Hello(cluster::Hello {
            worker_id: config.worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            memory_budget_bytes: config.memory_budget_bytes,
            max_in_flight: config.max_in_flight,
            held_tenants,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        });
        ws.send(frame(0, hello)).await.context("sending hello")?;
        let answer = tokio::time::timeout(HELLO_TIMEOUT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => {
                        return cluster::Envelope::decode(bytes.as_ref())
                            .context("the answer to the hello does not decode");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Text(_))) => {
                        bail!("the coordinator answered the hello with text")
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        bail!(
                            "the coordinator closed the connection before acknowledging the hello"
                        )
                    }
                    Some(Err(err)) => return Err(err).context("reading the answer to the hello"),
                }
            }
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer to the hello within {} s",
                HELLO_TIMEOUT.as_secs()
            )
        })??;
        match answer.body {
            Some(Body::Ack(ack)) if answer.request_id == 0 => Ok((ws, ack.key_batches)),
            Some(Body::Error(err)) => bail!(
                "the coordinator refused the hello: {}: {}",
                cluster::ErrorCode::try_from(err.code)
                    .map(|c| c.as_str_name())
                    .unwrap_or("ERROR_CODE_UNKNOWN"),
                err.message
            ),
            _ => bail!("the coordinator answered the hello with something other than an Ack"),
        }
    }

    /// Serves one connection until it drops or shutdown completes on it.
    async fn session(&mut self, ws: Ws, key_batches: bool, shutdown: &mut Shutdown<'_>) -> End {
        self.generation += 1;
        let (tx, outbound) = mpsc::unbounded_channel();
        self.link.attach(tx, key_batches);
        tracing::info!(generation = self.generation, "connected to the coordinator");
        let mut session = Session {
            ws,
            outbound,
            assignments: HashMap::new(),
            released: HashMap::new(),
            replay: ReplayWindow::new(REPLAY_WINDOW),
            reassembly: Reassembly::new(MAX_FRAME_BYTES, MAX_REASSEMBLY_BYTES),
            bulk: Outbox::default(),
            pass: None,
        };
        let end = match self.serve_session(&mut session, shutdown).await {
            Ok(end) => end,
            Err(err) => {
                tracing::warn!(error = %err, "the connection to the coordinator failed");
                End::Lost
            }
        };
        // Key-service calls waiting on this connection fail at once; the assignments go with it.
        self.link.detach();
        if let End::Lost = end {
            tracing::warn!(
                in_flight = self.in_flight,
                "disconnected from the coordinator; assignments are forgotten until it re-sends them"
            );
        }
        end
    }

    async fn serve_session(
        &mut self,
        s: &mut Session,
        shutdown: &mut Shutdown<'_>,
    ) -> Result<End, tungstenite::Error> {
        let period = self.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(deadline) = self.drain_deadline
                && !self.is_closing
                && ((self.jobs.is_empty() && s.bulk.is_empty()) || Instant::now() >= deadline)
            {
                if !self.jobs.is_empty() {
                    tracing::warn!(
                        tasks = self.jobs.len(),
                        "tasks still running at the drain deadline; closing anyway"
                    );
                }
                self.start_close();
            }
            if s.pass.is_none() && !s.bulk.is_empty() {
                s.pass = Some(self.gate.pass());
            }
            let drain_wake = self
                .drain_deadline
                .unwrap_or_else(|| Instant::now() + DRAIN_TIMEOUT);
            // Biased, in this order: a shutdown is seen before any request that arrived after it;
            // heartbeats are never starved by a busy connection; answers and key-service calls go
            // out before more requests are read (backpressure).
            tokio::select! {
                biased;
                () = &mut *shutdown, if !self.is_stopping() => self.begin_shutdown(),
                _ = heartbeat.tick() => {
                    let (loaded_tenants, plaintext_bytes) = self.tenants.stats();
                    let beat = Body::Heartbeat(cluster::Heartbeat {
                        loaded_tenants,
                        plaintext_bytes,
                        in_flight: self.in_flight,
                        assigned_tenants: s.assignments.len() as u64,
                        rss_bytes: resident_bytes(),
                        requests_total: self.requests_total,
                    });
                    s.ws.send(frame(0, beat)).await?;
                    self.maybe_account(true);
                }
                Some(envelope) = s.outbound.recv() => {
                    s.ws.send(Message::binary(envelope.encode_to_vec())).await?;
                }
                // A piece of a large answer goes once the gate lets it through, before more
                // requests are read: a steady stream of them does not hold large answers back.
                () = async { s.pass.as_mut().expect("checked by the guard").await }, if s.pass.is_some() => {
                    s.pass = None;
                    frames::send_piece(s).await?;
                }
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if self.on_done(s, done).await? {
                        while !s.bulk.is_empty() {
                            frames::send_piece(s).await?;
                        }
                        let close = CloseFrame {
                            code: CloseCode::Normal,
                            reason: "worker shutting down".into(),
                        };
                        if let Err(err) = s.ws.close(Some(close)).await {
                            tracing::debug!(error = %err, "closing the WebSocket failed");
                        }
                        tracing::info!("worker stopped");
                        return Ok(End::Stopped);
                    }
                }
                message = s.ws.next() => match message {
                    Some(Ok(message)) => {
                        if !self.on_burst(s, message).await? {
                            return Ok(End::Lost);
                        }
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "reading from the coordinator failed");
                        return Ok(End::Lost);
                    }
                    None => return Ok(End::Lost),
                },
                () = tokio::time::sleep_until(drain_wake), if self.is_stopping() && !self.is_closing => {}
            }
        }
    }

    fn start_close(&mut self) {
        self.is_closing = true;
        let engine = self.engine.clone();
        self.jobs.spawn(async move {
            if let Err(err) = tokio::task::spawn_blocking(move || engine.close()).await {
                tracing::error!(error = %err, "closing the engine failed");
            }
            Done::Closed
        });
    }

    /// Starts a memory accounting pass unless one is running (or, unless `always`, one started
    /// less than [`ACCOUNTING_PERIOD`] ago).
    fn maybe_account(&mut self, always: bool) {
        if self.is_accounting
            || self.is_stopping()
            || (!always && self.last_accounting.elapsed() < ACCOUNTING_PERIOD)
        {
            return;
        }
        self.is_accounting = true;
        self.last_accounting = Instant::now();
        let (engine, tenants) = (self.engine.clone(), self.tenants.clone());
        let budget = self.config.memory_budget_bytes;
        let idle_after = self.config.idle_unload_after;
        self.jobs.spawn(
            async move {
                if let Err(err) = tokio::task::spawn_blocking(move || {
                    tenants.account(&engine, budget, idle_after)
                })
                .await
                {
                    tracing::error!(error = %err, "memory accounting failed");
                }
                Done::Accounted
            }
            .in_current_span(),
        );
    }

    /// Handles a finished task; true once the engine is closed (shutdown complete).
    async fn on_done(
        &mut self,
        s: &mut Session,
        done: Result<Done, tokio::task::JoinError>,
    ) -> Result<bool, tungstenite::Error> {
        let done = match done {
            Ok(done) => done,
            Err(err) => {
                tracing::error!(error = %err, "a worker task failed");
                return Ok(false);
            }
        };
        match done {
            Done::Reply {
                generation,
                request_id,
                deadline_unix_ms,
                counted_for,
                mut frames,
            } => {
                self.finished(counted_for);
                if generation != self.generation {
                    tracing::debug!(
                        request_id,
                        "dropping the answer to a request of an earlier connection"
                    );
                    return Ok(false);
                }
                if deadline_unix_ms != 0 && now_ms() >= deadline_unix_ms {
                    s.ws.send(error_frame(request_id, &Error::DeadlineExceeded))
                        .await?;
                } else if frames.len() > 1 {
                    // Megabytes of one answer go in pieces between other frames (INV-24).
                    s.bulk.push_pieces(frames);
                } else if let Some(frame) = frames.pop() {
                    s.ws.send(Message::binary(frame)).await?;
                }
                self.maybe_account(false);
                Ok(false)
            }
            Done::Accounted => {
                self.is_accounting = false;
                Ok(false)
            }
            Done::Closed => {
                self.is_engine_closed = true;
                Ok(true)
            }
        }
    }
}
