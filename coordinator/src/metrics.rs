//! Prometheus metrics, served on the metrics listener with the liveness and readiness probes.
//! Labels carry transports, endpoints and codes; never tenants' data.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `http`, `grpc` or `admin`.
    pub transport: &'static str,
    /// The operation, e.g. `search`.
    pub endpoint: &'static str,
    /// `ok` or the error code.
    pub code: &'static str,
}

/// Labels of a latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// `http`, `grpc` or `admin`.
    pub transport: &'static str,
    /// The operation.
    pub endpoint: &'static str,
}

/// Labels of a worker's figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker's id.
    pub worker: String,
}

/// Labels of a worker's state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerStateLabels {
    /// The worker's id.
    pub worker: String,
    /// `up`, `suspect` or `down`.
    pub state: &'static str,
}

/// Each worker's health and its own figures from its heartbeats (`vaultvec_worker_*`), set from
/// the health tracker each time metrics are scraped.
#[derive(Clone, Default)]
pub struct WorkerMetrics {
    /// 1 for the worker's current state, 0 for the others.
    pub state: Family<WorkerStateLabels, Gauge>,
    /// Seconds since its last heartbeat (connected workers).
    pub since_heartbeat: Family<WorkerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Tenants loaded in its memory.
    pub loaded_tenants: Family<WorkerLabels, Gauge>,
    /// Plaintext bytes they hold.
    pub plaintext_bytes: Family<WorkerLabels, Gauge>,
    /// Its memory budget.
    pub memory_budget_bytes: Family<WorkerLabels, Gauge>,
    /// Tenant requests running on it.
    pub in_flight: Family<WorkerLabels, Gauge>,
    /// Tenants assigned on its connection.
    pub assigned_tenants: Family<WorkerLabels, Gauge>,
    /// Resident set size of its process.
    pub rss_bytes: Family<WorkerLabels, Gauge>,
    /// Tenant requests it finished since it started.
    pub requests_finished: Family<WorkerLabels, Gauge>,
    /// Tenants placed on it (every known worker).
    pub placed_tenants: Family<WorkerLabels, Gauge>,
    /// Tenant moves recorded and not yet ended.
    pub moves: Gauge,
    /// Copies whose files a worker still has to delete (`store::leftovers`).
    pub leftover_copies: Gauge,
}

impl WorkerMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tenant_moves",
            "tenant moves recorded and not yet ended",
            self.moves.clone(),
        );
        registry.register(
            "leftover_copies",
            "copies whose files a worker still has to delete (it was away when they went)",
            self.leftover_copies.clone(),
        );
        let worker = registry.sub_registry_with_prefix("worker");
        worker.register(
            "state",
            "health tracker state (1 for the current one)",
            self.state.clone(),
        );
        worker.register(
            "seconds_since_heartbeat",
            "time since the last heartbeat",
            self.since_heartbeat.clone(),
        );
        worker.register(
            "loaded_tenants",
            "tenants loaded in memory",
            self.loaded_tenants.clone(),
        );
        worker.register(
            "plaintext_bytes",
            "plaintext bytes of loaded tenants",
            self.plaintext_bytes.clone(),
        );
        worker.register(
            "memory_budget_bytes",
            "plaintext the worker may hold",
            self.memory_budget_bytes.clone(),
        );
        worker.register(
            "in_flight",
            "tenant requests running",
            self.in_flight.clone(),
        );
        worker.register(
            "assigned_tenants",
            "tenants assigned on the connection",
            self.assigned_tenants.clone(),
        );
        worker.register("rss_bytes", "resident set size", self.rss_bytes.clone());
        worker.register(
            "placed_tenants",
            "tenants placed on the worker",
            self.placed_tenants.clone(),
        );
        worker.register(
            "requests_finished",
            "tenant requests finished since the worker started",
            self.requests_finished.clone(),
        );
    }

    /// Sets each known worker's placed tenants.
    pub fn set_placed(&self, known: &[String], placements: &[crate::store::Placement]) {
        self.placed_tenants.clear();
        for id in known {
            let placed = placements.iter().filter(|p| &p.worker == id).count();
            self.placed_tenants
                .get_or_create(&WorkerLabels { worker: id.clone() })
                .set(placed as i64);
        }
    }

    /// Sets every figure from the known workers' ids and the connected ones' health; figures of
    /// workers no longer connected are removed, their state stays (`down`).
    pub fn set(&self, known: &[String], health: &[crate::cluster::WorkerHealth]) {
        use crate::cluster::WorkerState;
        let families = [
            &self.loaded_tenants,
            &self.plaintext_bytes,
            &self.memory_budget_bytes,
            &self.in_flight,
            &self.assigned_tenants,
            &self.rss_bytes,
            &self.requests_finished,
        ];
        for family in families {
            family.clear();
        }
        self.since_heartbeat.clear();
        self.state.clear();
        let mut ids: Vec<&String> = known.iter().collect();
        ids.extend(
            health
                .iter()
                .map(|h| &h.id)
                .filter(|id| !known.contains(id)),
        );
        for id in ids {
            let current = health
                .iter()
                .find(|h| &h.id == id)
                .map_or(WorkerState::Down, |h| h.state);
            for state in WorkerState::ALL {
                self.state
                    .get_or_create(&WorkerStateLabels {
                        worker: id.clone(),
                        state: state.as_str(),
                    })
                    .set(i64::from(state == current));
            }
        }
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for h in health {
            let labels = WorkerLabels {
                worker: h.id.clone(),
            };
            let hb = &h.heartbeat;
            self.loaded_tenants
                .get_or_create(&labels)
                .set(clamp(hb.loaded_tenants));
            self.plaintext_bytes
                .get_or_create(&labels)
                .set(clamp(hb.plaintext_bytes));
            self.memory_budget_bytes
                .get_or_create(&labels)
                .set(clamp(h.hello.memory_budget_bytes));
            self.in_flight
                .get_or_create(&labels)
                .set(i64::from(hb.in_flight));
            self.assigned_tenants
                .get_or_create(&labels)
                .set(clamp(hb.assigned_tenants));
            self.rss_bytes
                .get_or_create(&labels)
                .set(clamp(hb.rss_bytes));
            self.requests_finished
                .get_or_create(&labels)
                .set(clamp(hb.requests_total));
            if let Some(since) = h.since_heartbeat {
                self.since_heartbeat
                    .get_or_create(&labels)
                    .set(since.as_secs_f64());
            }
        }
    }
}

/// The coordinator's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests by transport, endpoint and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency in seconds.
    pub latency: Family<LatencyLabels, Histogram>,
    /// Failed authentications (API keys and admin token).
    pub auth_failures: Counter,
    /// Audit chains found not to verify by the scheduled verification.
    pub audit_integrity_alerts: Counter,
    /// Billing anomalies recorded.
    pub billing_anomalies: Counter,
    /// Mails the relay accepted.
    pub mail_sent: Counter,
    /// Attempts at a mail that failed (each is tried again).
    pub mail_failed: Counter,
    /// Mails waiting in the outbox after the last `send_mail` run.
    pub mail_waiting: Gauge,
    /// Seconds the oldest of them has waited, at the last `send_mail` run (0: none waits).
    pub mail_oldest_waiting_seconds: Gauge,
    /// Workers connected now.
    pub workers_connected: Gauge,
    /// Each worker's health and figures.
    pub workers: WorkerMetrics,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vaultvec");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        let auth_failures = Counter::default();
        let audit_integrity_alerts = Counter::default();
        let billing_anomalies = Counter::default();
        let mail_sent = Counter::default();
        let mail_failed = Counter::default();
        let mail_waiting = Gauge::default();
        let mail_oldest_waiting_seconds = Gauge::default();
        let workers_connected = Gauge::default();
        registry.register("requests", "API requests", requests.clone());
        registry.register(
            "request_duration_seconds",
            "API request latency",
            latency.clone(),
        );
        registry.register(
            "auth_failures",
            "failed authentications",
            auth_failures.clone(),
        );
        registry.register(
            "audit_integrity_alerts",
            "audit chains the scheduled verification found not to verify",
            audit_integrity_alerts.clone(),
        );
        registry.register(
            "billing_anomalies",
            "billing anomalies recorded",
            billing_anomalies.clone(),
        );
        registry.register("mail_sent", "mails the relay accepted", mail_sent.clone());
        registry.register(
            "mail_failed",
            "attempts at a mail that failed (each is tried again)",
            mail_failed.clone(),
        );
        registry.register(
            "mail_waiting",
            "mails waiting in the outbox after the last send_mail run",
            mail_waiting.clone(),
        );
        registry.register(
            "mail_oldest_waiting_seconds",
            "seconds the oldest mail in the outbox has waited, at the last send_mail run (0: none waits)",
            mail_oldest_waiting_seconds.clone(),
        );
        registry.register(
            "workers_connected",
            "workers connected now",
            workers_connected.clone(),
        );
        let workers = WorkerMetrics::default();
        workers.register(&mut registry);
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            auth_failures,
            audit_integrity_alerts,
            billing_anomalies,
            mail_sent,
            mail_failed,
            mail_waiting,
            mail_oldest_waiting_seconds,
            workers_connected,
            workers,
        }
    }

    /// Records one finished request.
    pub fn observe(
        &self,
        transport: &'static str,
        endpoint: &'static str,
        code: &'static str,
        seconds: f64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                transport,
                endpoint,
                code,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                transport,
                endpoint,
            })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
