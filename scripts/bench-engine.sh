#!/usr/bin/env bash
# Usage: scripts/bench-engine.sh DATASET [--json FILE] [--hnsw-rs] [--n-query N] [--runs N] [--ef LIST]
#
# Benchmarks vaultvec's HNSW index and whole engine (storage/benches/engine.rs) on a bench-kit dataset directory
# (base.npy, query.npy, gt_ids.npy, gt_dist.npy, meta.json; see ../shared/bench/README.md), then
# runs the peer baselines (hnswlib, faiss HNSW) on the same data in the same session, and prints
# the results side by side. With --json FILE the merged results are written to FILE:
#   {..our report.., "peers": {"hnswlib": [per-ef rows], "faiss": [per-ef rows]}, "peers_build_s": {..}}
# --hnsw-rs also measures hnsw_rs; --n-query, --runs and --ef are passed to both sides.
# Peer latencies come from a one-call-per-query Python loop, so they include Python's overhead.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    sed -n '2,11p' "$0" >&2
    exit 2
fi
dataset=$(realpath "$1")
shift
json_out=""
ours_args=()
peer_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --json) json_out=$(realpath -m "$2"); shift 2 ;;
        --hnsw-rs) ours_args+=(--hnsw-rs); shift ;;
        --n-query | --runs | --ef)
            ours_args+=("$1" "$2")
            peer_args+=("$1" "$2")
            shift 2
            ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
bench_kit="$PWD/../shared/bench"

if ! python3 -c 'import numpy, hnswlib, faiss' 2>/dev/null; then
    echo "installing the peer baselines' requirements" >&2
    pip install -r "$bench_kit/requirements.txt"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo bench -p storage --bench engine -- "$dataset" --json "$tmp/ours.json" "${ours_args[@]}"
python3 "$bench_kit/peers.py" "$dataset" --engines hnswlib,faiss --json "$tmp/peers.json" "${peer_args[@]}"

python3 - "$tmp/ours.json" "$tmp/peers.json" "$json_out" <<'PY'
import json
import sys

ours_path, peers_path, out_path = sys.argv[1:4]
ours = json.load(open(ours_path))
peers = json.load(open(peers_path))["datasets"][0]["engines"]
names = {"hnswlib": "hnswlib", "faiss-hnsw": "faiss"}

def row(p):
    return {"ef": p["ef"], "recall_at_10": p["recall"], "qps_1t": p.get("qps_1t"), "qps_2t": p.get("qps_2t"),
            "p50_us": round(p["lat_p50_ms"] * 1000, 1) if "lat_p50_ms" in p else None,
            "p99_us": round(p["lat_p99_ms"] * 1000, 1) if "lat_p99_ms" in p else None}

merged = dict(ours)
merged["peers"], merged["peers_build_s"], merged["peers_noise"] = {}, {}, {}
for e in peers:
    name = names.get(e["engine"], e["engine"])
    if "error" in e:
        print(f"peer {name} failed: {e['error']}", file=sys.stderr)
        continue
    merged["peers"][name] = [row(p) for p in e["points"]]
    merged["peers_build_s"][name] = e["build_s"]
    merged["peers_noise"][name] = e.get("noise", {}).get("foreign_share_of_cores")

engines = [("vaultvec index", ours["build_s"], ours["index"])]
if ours.get("engine"):
    engines.append(("vaultvec engine", "", ours["engine"]))
if ours.get("hnsw_rs"):
    engines.append(("hnsw_rs", ours.get("hnsw_rs_build_s"), ours["hnsw_rs"]))
engines += [(n, merged["peers_build_s"][n], rows) for n, rows in merged["peers"].items()]

print(f"\n## {ours['dataset']} (n={ours['n_base']}, dim={ours['dim']}, metric={ours['metric']}, "
      f"queries={ours['n_query']}, M={ours['m']}, efc={ours['ef_construction']}, build threads={ours['threads']})\n")
noise = {"vaultvec": ours.get("foreign_cpu_share"), **merged["peers_noise"]}
busy = {name: share for name, share in noise.items() if share and share > 0.05}
if busy:
    print("other processes' share of the cores during each run (> 5% makes QPS unreliable): "
          + ", ".join(f"{name} {share:.0%}" for name, share in busy.items()) + "\n")
print("| engine | build s | ef | recall@10 | QPS 1t | QPS 2t | p50 us | p99 us |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, build, rows in engines:
    for i, r in enumerate(rows):
        head = f"| {name} | {build} " if i == 0 else "| | "
        print(head + f"| {r['ef']} | {r['recall_at_10']:.4f} | {r['qps_1t'] or ''} | {r['qps_2t'] or ''} "
              f"| {r['p50_us'] or ''} | {r['p99_us'] or ''} |")

print("\nBest single-thread QPS at recall@10 >= 0.95 (ratio to hnswlib):")
best = {}
for name, _, rows in engines:
    ok = [r["qps_1t"] for r in rows if r["recall_at_10"] >= 0.95 and r["qps_1t"]]
    best[name] = max(ok) if ok else None
for name, qps in best.items():
    ratio = f" ({qps / best['hnswlib']:.2f}x)" if qps and best.get("hnswlib") else ""
    print(f"  {name}: {qps}{ratio}")

if ours.get("upsert_pps") is not None:
    print("\nEngine path (one tenant, one collection, everything encrypted at rest):")
    print(f"  acknowledged upserts: {ours['upsert_pps']:.0f} points/s (1,000-point batches, WAL fsync each)")
    hnswlib_build = merged["peers_build_s"].get("hnswlib")
    rate = f" ({ours['index_pps'] / (ours['n_base'] / hnswlib_build):.2f}x hnswlib's build rate of {ours['n_base'] / hnswlib_build:.0f})" if hnswlib_build else ""
    print(f"  background indexing: {ours['index_pps']:.0f} points/s{rate}")
    if hnswlib_build:
        print(f"  bulk graph build: {ours['build_s']} s = {ours['build_s'] / hnswlib_build:.2f}x hnswlib's {hnswlib_build} s")
    print(f"  seal: {ours['seal_s']} s; reopen: {ours['reopen_s']} s = {ours['reopen_s'] / ours['decrypt_s']:.2f}x the "
          f"{ours['decrypt_s']} s it takes to AES-GCM-decrypt its {ours['segment_bytes'] / 1e6:.0f} MB ({ours['decrypt_gbps']} GB/s)")
    print(f"  peak RSS: {ours['peak_rss_mb']} MB")

if out_path:
    with open(out_path, "w") as f:
        json.dump(merged, f, indent=2)
        f.write("\n")
    print(f"wrote {out_path}", file=sys.stderr)
PY
