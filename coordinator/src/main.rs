//! `vaultvec-coordinator`: serve, initialise a data directory, verify an audit export.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod init;

#[derive(Parser)]
#[command(version, about = "vaultvec coordinator")]
struct Args {
    /// Log as JSON lines (for journald and log shippers).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the APIs with the given config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a data directory for the embedded default: secrets (0600), configs for the
    /// coordinator and its workers (`worker-1.toml` ...), a demo tenant and API key (printed
    /// once).
    Init {
        #[arg(long, default_value = "./data")]
        dir: PathBuf,
        /// HTTP port (gRPC, cluster and metrics use the next three).
        #[arg(long, default_value_t = 7700)]
        port: u16,
        /// Workers to configure (1 to 64).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
    },
    /// Audit chain tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify an exported chain offline; names the first bad row.
    Verify {
        /// The export: the admin API's JSON (rows and head) or JSON lines of rows.
        file: PathBuf,
        /// A signed head exported earlier (JSON); a chain cut or rewritten below it is detected.
        /// Repeat it to check several heads kept over time.
        #[arg(long = "head")]
        heads: Vec<PathBuf>,
        /// The audit key file, to check every signature too.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

/// mimalloc, not glibc's malloc: glibc's arenas are shared between threads under a lock, and an
/// idle-class thread preempted while holding one stalls every normal thread that allocates in the
/// same arena (measured: request threads waiting up to 28 ms; see ARCHITECTURE, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // First of all: no core dump and no same-user ptrace of the keys and secrets we will hold.
    storage::process::forbid_core_dumps().context("prctl(PR_SET_DUMPABLE, 0)")?;
    let args = Args::parse();
    // Colour only on a terminal: journald and log files get plain text.
    storage::logging::init(
        std::io::stderr,
        args.log_json,
        std::io::stderr().is_terminal(),
    );
    match args.command {
        Command::Serve { config } => serve(config),
        Command::Init { dir, port, workers } => init::run(&dir, port, workers),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    heads,
                    key_file,
                },
        } => coordinator::audit::verify_file(&file, &heads, key_file.as_deref()),
    }
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = coordinator::config::Config::load(&path).context("loading config")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let listeners = coordinator::Listeners::bind(&config.listen).await?;
        let addrs = listeners.addrs()?;
        // One line per listener on stdout, so scripts and tests learn the ports (port 0 in configs).
        println!(
            "listening http={} grpc={} cluster={} metrics={}",
            addrs.http, addrs.grpc, addrs.cluster, addrs.metrics
        );
        coordinator::serve(config, listeners, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
