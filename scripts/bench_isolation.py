"""The noisy-neighbour benchmark driven by scripts/bench-isolation.sh (see its header).

One process runs the victim's steady single-client search loop; N aggressor processes run one
scenario at a time. Both talk HTTP/JSON to a real coordinator and worker started here. Peak RSS of
the two server processes is sampled every 50 ms from /proc while a scenario runs.
"""

import argparse
import http.client
import json
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import requests

DIM = 128
N_POINTS = 20_000
SCENARIOS = ("heavy_search", "huge_batch_search", "maximal_filter", "bulk_upsert", "unauthenticated_flood")
# A control, not an aggressor: one idle-class process per core that streams through 32 MiB of
# memory without touching the server. The victim's tail beside it is what any background work on
# these cores costs the victim on this host, with nothing of the server's in the way: the floor no
# scheduling inside the server can go below.
CONTROL = "idle_cpu_control"
BAD_KEY = "vv_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


def vector(rng):
    return [rng.uniform(-1.0, 1.0) for _ in range(DIM)]


def free_port_block():
    for _ in range(200):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for p in range(base, base + 4):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no four consecutive free ports")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def victim(url, key, seconds, out):
    """One client on one kept-alive connection, its query bodies built before the clock starts,
    so what it measures is the server, not the client library."""
    rng = random.Random(1)
    bodies = [json.dumps({"vector": vector(rng), "top_k": 10, "ef": 64}).encode() for _ in range(1000)]
    host, port = url.removeprefix("http://").split(":")
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    latencies, errors = [], 0
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        body = bodies[i % len(bodies)]
        i += 1
        started = time.perf_counter()
        try:
            conn.request("POST", "/v1/collections/v/points/search", body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            ok = r.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        elapsed = time.perf_counter() - started
        if ok:
            latencies.append(elapsed)
        else:
            errors += 1
    out.put((latencies, errors))


def big_filter():
    values = [f"tag-{i}" for i in range(1024)]
    return {"should": [{"key": f"field{i}", "match": {"any": values}} for i in range(256)]}


def aggressor_bodies(scenario):
    """Four pre-encoded request bodies, built before the scenario's clock starts and shared by
    every client, so the load generator spends its CPU sending, not building JSON."""
    rng = random.Random(11)
    bodies = []
    for _ in range(4):
        if scenario == "heavy_search":
            body = {"vector": vector(rng), "top_k": 1000, "ef": 4096}
        elif scenario == "huge_batch_search":
            body = {"searches": [{"vector": vector(rng), "top_k": 100, "with_payload": True} for _ in range(100)]}
        elif scenario == "maximal_filter":
            body = {"vector": vector(rng), "top_k": 10, "filter": big_filter()}
        elif scenario == "bulk_upsert":
            base = rng.randrange(0, 1_000_000)
            body = {"points": [{"id": base + i, "vector": vector(rng)} for i in range(1000)]}
        else:
            return []
        bodies.append(json.dumps(body).encode())
    return bodies


def aggressor(url, key, scenario, seconds, bodies, out):
    # The aggressor's clients stand for machines elsewhere: on this 2-core box they run in the
    # idle scheduling class (nice 19 if refused), so the CPU they take is what the server and the
    # victim's client leave, not theirs. The server's own processes are not changed.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    host, port = url.removeprefix("http://").split(":")
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    routes = {
        "heavy_search": ("post", "/v1/collections/a/points/search"),
        "huge_batch_search": ("post", "/v1/collections/a/points/search/batch"),
        "maximal_filter": ("post", "/v1/collections/a/points/search"),
        "bulk_upsert": ("put", "/v1/collections/a/points"),
    }
    if scenario not in routes and scenario not in ("unauthenticated_flood", CONTROL):
        raise SystemExit(f"unknown scenario {scenario}")
    sent, refused = 0, 0
    end = time.monotonic() + seconds
    if scenario == CONTROL:
        memory = bytes(32 << 20)
        while time.monotonic() < end:
            memory.count(1)
            sent += 1
        out.put((sent, refused))
        return
    while time.monotonic() < end:
        try:
            if scenario == "unauthenticated_flood":
                status = flood_once(url)
            else:
                method, path = routes[scenario]
                status = exchange_in_pieces(conn, method.upper(), path, bodies[sent % len(bodies)], headers)
        except (OSError, http.client.HTTPException):
            status = 0
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
        sent += 1
        refused += status != 200
    out.put((sent, refused))


# What an aggressor's client sends or reads per system call. On loopback the kernel does the
# server side's TCP work in the sending client's context, and on a kernel without full
# preemption (this one: PREEMPT_NONE) a system call moving megabytes holds its core until it
# returns, whatever the thread's class. The aggressor's clients stand for machines elsewhere, so
# their own kernel work here is kept in pieces a waking server thread can get past.
PIECE = 64 << 10


def exchange_in_pieces(conn, method, path, body, headers):
    """Sends one request with a declared length in PIECE-sized writes and reads its answer in
    PIECE-sized reads; answers the status."""
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.putheader("content-length", str(len(body)))
    conn.endheaders()
    view = memoryview(body)
    for at in range(0, len(body), PIECE):
        conn.send(view[at:at + PIECE])
    r = conn.getresponse()
    while r.read(PIECE):
        pass
    return r.status


def flood_once(url):
    """Declares a 64 MiB body with a bad key, sends 1 MiB of it, reads the status."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        head = (f"PUT /v1/collections/a/points HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {BAD_KEY}\r\n"
                f"content-type: application/json\r\ncontent-length: {64 << 20}\r\n\r\n")
        s.sendall(head.encode())
        piece = b" " * PIECE
        try:
            for _ in range((1 << 20) // PIECE):
                s.sendall(piece)
        except OSError:
            pass
        answer = s.recv(64)
    m = re.match(rb"HTTP/1.1 (\d+)", answer)
    return int(m.group(1)) if m else 0


def run_scenario(url, keys, pids, scenario, seconds, clients):
    out = mp.Queue()
    procs = [mp.Process(target=victim, args=(url, keys["victim"], seconds, out))]
    agg_out = mp.Queue()
    if scenario:
        bodies = aggressor_bodies(scenario)
        count = os.cpu_count() if scenario == CONTROL else clients
        procs += [mp.Process(target=aggressor, args=(url, keys["aggressor"], scenario, seconds, bodies, agg_out))
                  for i in range(count)]
    for p in procs:
        p.start()
    peak = {"coordinator": 0.0, "worker": 0.0}
    # The victim's result is taken while it runs: a process that put a large object on a queue
    # does not exit until it is read.
    while True:
        for name, pid in pids.items():
            peak[name] = max(peak[name], rss_mb(pid))
        try:
            latencies, errors = out.get(timeout=0.05)
            break
        except queue.Empty:
            if not procs[0].is_alive() and out.empty():
                raise SystemExit("the victim's client died without a result")
    sent = refused = 0
    for _ in procs[1:]:
        s, r = agg_out.get()
        sent += s
        refused += r
    for p in procs:
        p.join()
    latencies.sort()
    pct = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6, 1) if latencies else None
    return {
        "name": scenario or "baseline",
        "victim_requests": len(latencies) + errors,
        "victim_p50_us": pct(0.50),
        "victim_p90_us": pct(0.90),
        "victim_p99_us": pct(0.99),
        "victim_p999_us": pct(0.999),
        "victim_errors": errors,
        "aggressor_requests": sent,
        "aggressor_refused": refused,
        "coordinator_rss_mb": round(peak["coordinator"], 1),
        "worker_rss_mb": round(peak["worker"], 1),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--json")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--scenarios", default=",".join((CONTROL,) + SCENARIOS),
                        help="comma-separated subset of the scenarios to run")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="vv-isolation-")
    procs = []
    try:
        port = free_port_block()
        data = os.path.join(tmp, "data")
        subprocess.run([f"{args.bin}/vaultvec-coordinator", "init", "--dir", data, "--port", str(port), "--workers", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        coord_out = open(os.path.join(tmp, "coordinator.out"), "w+")
        coordinator = subprocess.Popen(
            [f"{args.bin}/vaultvec-coordinator", "serve", "--config", f"{data}/coordinator.toml"],
            stdout=coord_out, stderr=open(os.path.join(tmp, "coordinator.log"), "w"))
        procs.append(coordinator)
        url = f"http://127.0.0.1:{port}"
        worker = subprocess.Popen([f"{args.bin}/vaultvec-worker", "--config", f"{data}/worker-1.toml"],
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "worker.log"), "w"))
        procs.append(worker)
        for _ in range(600):
            try:
                if requests.get(f"{url}/v1/health", timeout=1).json().get("ready"):
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the server did not become ready")
        admin = {"authorization": f"Bearer {open(f'{data}/secrets/admin.token').read().strip()}"}
        keys = {}
        for tenant in ("victim", "aggressor"):
            requests.post(f"{url}/admin/v1/tenants", json={"id": tenant, "tier": "pro"}, headers=admin,
                          timeout=30).raise_for_status()
            r = requests.post(f"{url}/admin/v1/tenants/{tenant}/keys",
                              json={"scopes": ["read", "write", "manage"]}, headers=admin, timeout=30)
            r.raise_for_status()
            keys[tenant] = r.json()["key"]
        rng = random.Random(7)
        for tenant, name, payload in (("victim", "v", False), ("aggressor", "a", True)):
            h = {"authorization": f"Bearer {keys[tenant]}"}
            requests.post(f"{url}/v1/collections", json={"name": name, "dim": DIM, "metric": "l2"}, headers=h,
                          timeout=30).raise_for_status()
            for start in range(0, N_POINTS, 1000):
                points = []
                for i in range(start, start + 1000):
                    p = {"id": i, "vector": vector(rng)}
                    if payload:
                        p["payload"] = {"field0": f"tag-{i % 2048}", "text": "x" * 1024}
                    points.append(p)
                requests.put(f"{url}/v1/collections/{name}/points", json={"points": points}, headers=h,
                             timeout=60).raise_for_status()
        pids = {"coordinator": coordinator.pid, "worker": worker.pid}
        # Let background indexing finish, so the baseline is not measured against it.
        time.sleep(5)
        print(f"server: coordinator pid {coordinator.pid}, worker pid {worker.pid}, {url}", file=sys.stderr)
        # A warm-up run, discarded: one baseline without it was slower than every scenario after it.
        run_scenario(url, keys, pids, None, min(args.seconds, 5.0), args.clients)
        baseline = run_scenario(url, keys, pids, None, args.seconds, args.clients)
        print(json.dumps(baseline), file=sys.stderr)
        scenarios, control = [], None
        names = args.scenarios.split(",")
        for name in names:
            if name not in SCENARIOS + (CONTROL,):
                raise SystemExit(f"unknown scenario {name}; choose from {', '.join(SCENARIOS + (CONTROL,))}")
        for name in names:
            # The host's own noise (steal time on a shared VM) moves the victim's tail by itself
            # between runs, so each scenario also gets a baseline measured just before it.
            before = run_scenario(url, keys, pids, None, args.seconds, args.clients)
            row = run_scenario(url, keys, pids, name, args.seconds, args.clients)
            row["p99_vs_baseline"] = (round(row["victim_p99_us"] / baseline["victim_p99_us"], 2)
                                      if row["victim_p99_us"] and baseline["victim_p99_us"] else None)
            row["adjacent_baseline_p50_us"] = before["victim_p50_us"]
            row["adjacent_baseline_p99_us"] = before["victim_p99_us"]
            row["p99_vs_adjacent_baseline"] = (round(row["victim_p99_us"] / before["victim_p99_us"], 2)
                                               if row["victim_p99_us"] and before["victim_p99_us"] else None)
            if name == CONTROL:
                control = row
            else:
                scenarios.append(row)
            print(json.dumps(row), file=sys.stderr)
        result = {"clients": args.clients, "seconds": args.seconds, "cores": os.cpu_count(),
                  "baseline": baseline, "scenarios": scenarios}
        if control:
            result["control"] = control
        print(f"{'scenario':<24}{'p50 us':>10}{'p99 us':>10}{'p99/base':>10}{'adj p99':>10}{'p99/adj':>9}"
              f"{'errors':>8}{'aggr req':>10}{'coord MB':>10}{'worker MB':>10}")
        for r in [baseline] + ([control] if control else []) + scenarios:
            print(f"{r['name']:<24}{r['victim_p50_us'] or 0:>10}{r['victim_p99_us'] or 0:>10}"
                  f"{r.get('p99_vs_baseline') or 1.0:>10}{r.get('adjacent_baseline_p99_us') or '':>10}"
                  f"{r.get('p99_vs_adjacent_baseline') or '':>9}{r['victim_errors']:>8}{r['aggressor_requests']:>10}"
                  f"{r['coordinator_rss_mb']:>10}{r['worker_rss_mb']:>10}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
