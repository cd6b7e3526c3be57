#!/usr/bin/env bash
# Usage: scripts/dev-cluster.sh [--workers N] [DATA_DIR]
# Starts the embedded default on loopback: a coordinator and N workers (3 by default), data under
# ./data (or DATA_DIR). On the first start it generates the secrets (mode 0600) and configs,
# creates the demo tenant and prints its API key with requests to try. Ctrl-C stops the workers,
# then the coordinator (they drain and flush).
set -euo pipefail
cd "$(dirname "$0")/.."
workers=3
data_dir=./data
while [[ $# -gt 0 ]]; do
    case $1 in
        --workers)
            workers=${2:?--workers needs a number}
            shift 2
            ;;
        --workers=*)
            workers=${1#--workers=}
            shift
            ;;
        -h | --help)
            sed -n 2,6p "$0"
            exit 0
            ;;
        -*)
            echo "unknown option $1" >&2
            exit 2
            ;;
        *)
            data_dir=$1
            shift
            ;;
    esac
done
if ! [[ $workers =~ ^[0-9]+$ ]] || ((workers < 1 || workers > 64)); then
    echo "--workers must be between 1 and 64" >&2
    exit 2
fi

cargo build --locked --release -p coordinator -p worker
bin=target/release

"$bin/vaultvec-coordinator" init --dir "$data_dir" --workers "$workers"

# A data directory made earlier may configure fewer workers: start those it has.
configs=()
for ((i = 1; i <= workers; i++)); do
    if [[ -f $data_dir/worker-$i.toml ]]; then
        configs+=("$data_dir/worker-$i.toml")
    fi
done
if ((${#configs[@]} < workers)); then
    echo "$data_dir configures ${#configs[@]} worker(s); starting those (a new DATA_DIR gets $workers)" >&2
fi
if ((${#configs[@]} == 0)); then
    echo "$data_dir has no worker-N.toml" >&2
    exit 1
fi

# Each process in its own process group (job control), so a Ctrl-C at the terminal reaches only this
# script, whose trap stops them in order.
set -m
"$bin/vaultvec-coordinator" serve --config "$data_dir/coordinator.toml" &
coordinator=$!
pids=()
# The workers stop first and are waited for: their checkpoint at close asks the coordinator's key
# service for data keys. Only then does the coordinator stop.
stop() {
    # A second Ctrl-C while stopping must not end this script before the coordinator is told to
    # stop too (it would be left running, its process group not the terminal's).
    trap '' INT TERM
    trap - EXIT
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || true
    done
    kill -TERM "$coordinator" 2>/dev/null || true
    wait "$coordinator" || true
}
trap stop EXIT INT TERM

for config in "${configs[@]}"; do
    "$bin/vaultvec-worker" --config "$config" &
    pids+=($!)
done

echo "vaultvec is running with ${#pids[@]} worker(s): HTTP on 127.0.0.1:7700, gRPC on 127.0.0.1:7701 (Ctrl-C stops it)" >&2
# Any process ending stops them all.
wait -n "$coordinator" "${pids[@]}"
