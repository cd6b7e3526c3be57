#!/usr/bin/env bash
# Usage: scripts/bench-isolation.sh [--json FILE] [--seconds S] [--clients N] [--scenarios A,B]
#
# The noisy-neighbour benchmark (not a test). Builds the release binaries, starts a coordinator and
# one worker as real processes on loopback in a fresh temporary data directory, and makes two
# tenants on tier `pro`: a victim and an aggressor, each with a 20,000 x 128 collection (the
# aggressor's points carry 1 KiB payloads). The victim runs a steady search load with one client
# (HTTP, ef 64, top 10) for S seconds (default 10) alone (the baseline), then once beside each
# aggressor scenario with N clients (default 32): heavy searches (ef 4096, top 1000), huge batch
# searches (100 queries x top 100 with payloads), maximal filters, bulk upserts (1,000 points per
# request), and an unauthenticated flood of requests declaring 64 MiB bodies (after a control:
# one idle-class memory-streaming process per core, no server involved). It reports the
# victim's p50/p99 latency and error count against its baseline, the aggressor's request count,
# and the coordinator's and worker's peak RSS during each scenario. With --json FILE:
#   {"baseline": {...}, "scenarios": [{"name", "victim_p50_us", "victim_p99_us", "victim_errors",
#    "coordinator_rss_mb", "worker_rss_mb", ...}]}
set -euo pipefail

cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --locked --release -p coordinator -p worker
bash scripts/py-env.sh >/dev/null
exec "$PWD/target/py-venv/bin/python" scripts/bench_isolation.py --bin "$target_dir/release" "$@"
