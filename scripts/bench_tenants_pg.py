"""The pgvector side of scripts/bench-tenants.sh (see its header): one table per tenant, on the
same data as vaultvec's run, in the throw-away PostgreSQL+pgvector server of the bench kit
(../shared/bench/peers.py `pg_cluster`).

- `--tenants` tables `t<N>` of `--points` rows of dimension `--dim`, each with an HNSW index
  (m 16, ef_construction 200), components from splitmix64 exactly as tests/benches/tenants.rs.
- After a restart of the server (its buffers empty, the OS page cache left warm, as vaultvec's
  unloaded tenants read their files through it): the server's memory (PSS summed over its
  processes, so shared buffers count once) and open files, and the first query of `--samples`
  tables (p50, p99).
- A table of the dataset's first `--large-points` base vectors with its HNSW index: the first
  query after a restart, `--large-runs` times (p50).
- `restart_ready_s`: from `pg_ctl start` until a query of a table answered.
"""

import argparse
import concurrent.futures
import glob
import json
import os
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
sys.path.insert(0, str(BENCH))
import benchlib  # noqa: E402
import peers  # noqa: E402

MASK = (1 << 64) - 1


def splitmix64(x):
    """Vectorised splitmix64 over uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def small_vectors(t, n, dim):
    i = np.arange(n, dtype=np.uint64)[:, None]
    c = np.arange(dim, dtype=np.uint64)[None, :]
    x = (np.uint64(t) << np.uint64(40)) ^ (i << np.uint64(12)) ^ c
    u = splitmix64(x)
    return ((u >> np.uint64(40)).astype(np.float64) / float(1 << 24)).astype(np.float32)


def pg_tools(data):
    """pg_ctl and the environment and user the bench kit's server runs with."""
    root = data.parent
    pg_ctl = glob.glob(str(root / "sp" / "**" / "bin" / "pg_ctl"), recursive=True)[0]
    env = dict(os.environ, LC_ALL="C", LANG="C")
    libs = [p for p in glob.glob(str(root / "sp" / "*.libs")) if os.path.isdir(p)]
    if libs:
        env["LD_LIBRARY_PATH"] = libs[0]
    pre = None
    if os.geteuid() == 0:
        st = os.stat(data)

        def pre():  # noqa: E306
            os.setgid(st.st_gid)
            os.setuid(st.st_uid)
    return pg_ctl, env, pre


def pg_ctl(data, *args):
    tool, env, pre = pg_tools(data)
    subprocess.run([tool, "-D", str(data), *args], preexec_fn=pre, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def server_pids(data):
    main = int((data / "postmaster.pid").read_text().split()[0])
    pids = [main]
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == main:
                pids.append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def memory_and_files(data):
    pss = 0
    files = 0
    for pid in server_pids(data):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
            files += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return pss, files


def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, min(len(xs), int(np.ceil(len(xs) * p)))) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--tenants", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--large-points", type=int, default=100_000)
    ap.add_argument("--large-runs", type=int, default=5)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    # What peers.pg_cluster reads.
    a.pg_bin, a.pg_user, a.tmp = "", "nobody", None
    a.pg_shared_buffers, a.pg_maintenance_work_mem = "'1GB'", "'1GB'"
    a.build_threads = os.cpu_count() or 2
    import psycopg
    from pgvector.psycopg import register_vector

    meta, base, query, _gi, _gd = benchlib.load_dataset(a.dataset)
    metric = meta["metric"]
    large_n = min(a.large_points, base.shape[0])
    out = {"tenants": a.tenants, "points_per_tenant": a.points, "dim": a.dim,
           "large_points": large_n, "large_dim": int(base.shape[1])}
    with peers.pg_cluster(a) as (dsn, data):
        conn = psycopg.connect(dsn, autocommit=True)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        started = time.perf_counter()

        def fill(first):
            """Fills tables first, first + fillers, ...: one connection (one server process) each,
            so the index builds use every core, as vaultvec's fill runs 4 tenants at a time."""
            c = psycopg.connect(dsn, autocommit=True)
            register_vector(c)
            for t in range(first, a.tenants, fillers):
                table = f"t{t:05d}"
                c.execute(f"CREATE TABLE {table} (id int4, embedding vector({a.dim}))")
                vecs = small_vectors(t, a.points, a.dim)
                with c.cursor() as cur:
                    with cur.copy(f"COPY {table} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
                        cp.set_types(["int4", "vector"])
                        for i in range(a.points):
                            cp.write_row((i, vecs[i]))
                c.execute(f"CREATE INDEX ON {table} USING hnsw (embedding vector_l2_ops) "
                          "WITH (m = 16, ef_construction = 200)")
                if first == 0 and (t // fillers + 1) % 250 == 0:
                    print(f"  pgvector: about {t + 1} tables in {time.perf_counter() - started:.0f} s",
                          file=sys.stderr)
            c.close()

        fillers = max(1, min(4, a.build_threads))
        with concurrent.futures.ThreadPoolExecutor(fillers) as pool:
            for done in [pool.submit(fill, f) for f in range(fillers)]:
                done.result()
        out["fill_s"] = time.perf_counter() - started
        ops, op = {"cosine": ("vector_cosine_ops", "<=>"), "l2": ("vector_l2_ops", "<->")}[metric]
        conn.execute(f"CREATE TABLE large (id int4, embedding vector({base.shape[1]}))")
        with conn.cursor() as cur:
            with cur.copy("COPY large (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "vector"])
                for i in range(large_n):
                    cp.write_row((i, np.asarray(base[i], dtype=np.float32)))
        conn.execute(f"CREATE INDEX ON large USING hnsw (embedding {ops}) WITH (m = 16, ef_construction = 200)")
        conn.execute("CHECKPOINT")
        conn.close()

        def restart():
            pg_ctl(data, "-m", "fast", "-w", "stop")
            t0 = time.perf_counter()
            pg_ctl(data, "-w", "-t", "120", "start")
            c = psycopg.connect(dsn, autocommit=True)
            register_vector(c)
            c.execute("SET hnsw.ef_search = 64")
            return c, t0

        conn, _ = restart()
        out["idle_pss_mb"], out["open_files"] = None, None
        pss, files = memory_and_files(data)
        out["idle_pss_mb"], out["open_files"] = pss / (1 << 20), files
        lat = []
        n_samples = min(a.samples, a.tenants)
        for s in range(n_samples):
            t = s * a.tenants // n_samples
            q = small_vectors(t, 1, a.dim)[0]
            t0 = time.perf_counter()
            rows = conn.execute(f"SELECT id FROM t{t:05d} ORDER BY embedding <-> %s LIMIT 10", (q,)).fetchall()
            lat.append((time.perf_counter() - t0) * 1000)
            assert rows, "a query found nothing"
        out["cold_small_p50_ms"], out["cold_small_p99_ms"] = pct(lat, 0.5), pct(lat, 0.99)
        large = []
        for r in range(a.large_runs):
            conn.close()
            conn, _ = restart()
            q = np.asarray(query[r % len(query)], dtype=np.float32)
            t0 = time.perf_counter()
            conn.execute(f"SELECT id FROM large ORDER BY embedding {op} %s LIMIT 10", (q,)).fetchall()
            large.append((time.perf_counter() - t0) * 1000)
        out["cold_large_p50_ms"] = pct(large, 0.5)
        conn.close()
        pg_ctl(data, "-m", "fast", "-w", "stop")
        t0 = time.perf_counter()
        pg_ctl(data, "-w", "-t", "120", "start")
        c = psycopg.connect(dsn, autocommit=True)
        register_vector(c)
        t = a.tenants // 2
        c.execute(f"SELECT id FROM t{t:05d} ORDER BY embedding <-> %s LIMIT 10",
                  (small_vectors(t, 1, a.dim)[0],)).fetchall()
        out["restart_ready_s"] = time.perf_counter() - t0
        c.close()
        # The peer of a snapshot and a restore of the large tenant: pg_dump of its table (custom
        # format), then the table dropped and pg_restore'd (which rebuilds its HNSW index).
        tool, env, _ = pg_tools(data)
        bindir = Path(tool).parent
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "large.dump"
            t0 = time.perf_counter()
            subprocess.run([str(bindir / "pg_dump"), "-d", dsn, "-Fc", "-t", "large", "-f", str(dump)],
                           env=env, check=True)
            out["snapshot_s"] = time.perf_counter() - t0
            c = psycopg.connect(dsn, autocommit=True)
            c.execute("DROP TABLE large")
            c.close()
            t0 = time.perf_counter()
            subprocess.run([str(bindir / "pg_restore"), "-d", dsn, str(dump)], env=env, check=True)
            out["restore_s"] = time.perf_counter() - t0
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text)


if __name__ == "__main__":
    main()
