//! `vaultvec-worker --config PATH [--log-json] [--check]`: runs `worker::serve` until SIGTERM or
//! ctrl-c; with `--check`, dials the coordinator once and reports instead.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// vaultvec worker: serves the tenants the coordinator assigns to it.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The TOML configuration file (see worker.example.toml).
    #[arg(long)]
    config: PathBuf,
    /// Log JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Dial the coordinator once (TCP, TLS for wss://, the upgrade with the token), report the
    /// outcome and exit, without serving.
    #[arg(long)]
    check: bool,
}

// One runtime thread: the async side only moves frames between the socket and the blocking threads
// that run the storage calls, and a single thread does that with fewer cross-thread wake-ups.
/// mimalloc, not glibc's malloc: glibc's arenas are shared between threads under a lock, and an
/// idle-class thread preempted while holding one stalls every normal thread that allocates in the
/// same arena (measured: request threads waiting up to 28 ms; see ARCHITECTURE, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // First of all: no core dump and no same-user ptrace of the keys and plaintext we will hold.
    storage::process::forbid_core_dumps().context("prctl(PR_SET_DUMPABLE, 0)")?;
    storage::process::return_freed_memory_promptly();
    let args = Args::parse();
    // Colour only on a terminal: journald and log files get plain text.
    storage::logging::init(
        std::io::stdout,
        args.log_json,
        std::io::stdout().is_terminal(),
    );
    let config = worker::Config::load(&args.config)
        .with_context(|| format!("loading config {}", args.config.display()))?;
    if args.check {
        worker::check_connection(&config)
            .await
            .with_context(|| format!("dialing {}", config.coordinator_url))?;
        println!(
            "ok: {} accepted worker {}",
            config.coordinator_url, config.worker_id
        );
        return Ok(());
    }
    worker::serve(config, shutdown_signal()).await
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => _ = term.recv().await,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => {}
        () = interrupt => {}
    }
    tracing::info!("shutdown signal received");
}
