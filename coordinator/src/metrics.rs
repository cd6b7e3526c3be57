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
    /// Workers connected now.
    pub workers_connected: Gauge,
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
            "workers_connected",
            "workers connected now",
            workers_connected.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            auth_failures,
            workers_connected,
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
