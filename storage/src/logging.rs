//! What the binaries share about their logs.

use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, registry};

/// Dependencies whose logs are capped at `debug`, whatever `RUST_LOG` says: they log raw
/// protocol bytes at `trace` (tungstenite prints the worker's upgrade request, bearer token
/// included; key-service frames carry data keys).
pub const CAPPED_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tonic",
    "tower",
    "axum",
];

/// The cap alone: every target at any level, except [`CAPPED_TARGETS`] at `debug` at most. It is
/// applied together with (`and`) the operator's filter, so it only ever removes lines: with the
/// default `info` the dependencies log nothing at `debug` (an `h2=debug` directive added to the
/// operator's filter would have turned on a line per HTTP/2 frame, and cost every call far more
/// than the call itself).
pub fn dependency_cap() -> Targets {
    CAPPED_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, name| targets.with_target(*name, LevelFilter::DEBUG),
    )
}

/// Installs the process's logger: `RUST_LOG` (default `info`) and [`dependency_cap`], plain text
/// (coloured when `ansi`) or JSON lines, to `writer`.
pub fn init<W>(writer: W, json: bool, ansi: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .and(dependency_cap());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    if json {
        registry().with(layer.json().with_filter(filter)).init();
    } else {
        registry().with(layer.with_filter(filter)).init();
    }
}
