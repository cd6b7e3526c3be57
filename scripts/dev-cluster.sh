#!/usr/bin/env bash
# Usage: scripts/dev-cluster.sh [DATA_DIR]
# Starts the embedded default on loopback: a coordinator and one worker, data under ./data (or
# DATA_DIR). On the first start it generates the secrets (mode 0600) and configs, creates the demo
# tenant and prints its API key with requests to try. Ctrl-C stops the worker, then the coordinator
# (they drain and flush).
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-./data}

cargo build --locked --release -p coordinator -p worker
bin=target/release

"$bin/vaultvec-coordinator" init --dir "$data_dir"

# Each process in its own process group (job control), so a Ctrl-C at the terminal reaches only this
# script, whose trap stops them in order.
set -m
"$bin/vaultvec-coordinator" serve --config "$data_dir/coordinator.toml" &
coordinator=$!
worker=""
# The worker stops first and is waited for: its checkpoint at close asks the coordinator's key
# service for data keys. Only then does the coordinator stop.
stop() {
    trap - EXIT INT TERM
    if [[ -n $worker ]]; then
        kill -TERM "$worker" 2>/dev/null || true
        wait "$worker" || true
    fi
    kill -TERM "$coordinator" 2>/dev/null || true
    wait "$coordinator" || true
}
trap stop EXIT INT TERM

"$bin/vaultvec-worker" --config "$data_dir/worker-1.toml" &
worker=$!

echo "vaultvec is running: HTTP on 127.0.0.1:7700, gRPC on 127.0.0.1:7701 (Ctrl-C stops it)" >&2
wait -n "$coordinator" "$worker"
