//! What the binaries share about their logs.

/// Log directives both binaries add after `RUST_LOG`, whatever it says: these dependencies log
/// raw protocol bytes at `trace` (tungstenite prints the worker's upgrade request, bearer token
/// included; key-service frames carry data keys), so they never log below `debug`.
pub const CAPPED_LOG_DIRECTIVES: &[&str] = &[
    "tungstenite=debug",
    "tokio_tungstenite=debug",
    "hyper=debug",
    "hyper_util=debug",
    "h2=debug",
    "rustls=debug",
    "tonic=debug",
    "tower=debug",
    "axum=debug",
];
