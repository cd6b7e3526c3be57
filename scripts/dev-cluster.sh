#!/usr/bin/env bash
# Usage: scripts/dev-cluster.sh [DATA_DIR]
# Starts the embedded default on loopback: a coordinator and one worker, data under ./data (or
# DATA_DIR). On the first start it generates the secrets (mode 0600) and configs, creates the demo
# tenant and prints its API key with requests to try. Ctrl-C stops both (they drain and flush).
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-./data}

cargo build --locked --release -p coordinator -p worker
bin=target/release

"$bin/vaultvec-coordinator" init --dir "$data_dir"

"$bin/vaultvec-coordinator" serve --config "$data_dir/coordinator.toml" &
coordinator=$!
worker=""
stop() {
    kill -TERM "$coordinator" ${worker:+"$worker"} 2>/dev/null || true
    wait || true
}
trap stop EXIT INT TERM

"$bin/vaultvec-worker" --config "$data_dir/worker-1.toml" &
worker=$!

echo "vaultvec is running: HTTP on 127.0.0.1:7700, gRPC on 127.0.0.1:7701 (Ctrl-C stops it)" >&2
wait -n "$coordinator" "$worker"
