#!/usr/bin/env python3
"""vaultvec driven by real third-party clients: Python `requests` (HTTP/JSON) and `grpcio` (gRPC).

Run by tests/it/python.rs, which starts a cluster and sets:
  VV_HTTP, VV_GRPC           host:port of the coordinator's HTTP and gRPC listeners
  VV_KEY_A, VV_KEY_B         all-scope keys of two fresh tenants
  VV_TENANT_A                tenant A's id (to issue and revoke a key of it)
  VV_KEY_READONLY            a read-only key of tenant A
  VV_ADMIN_TOKEN             the admin token
By hand: `bash scripts/py-env.sh` makes the venv, then `target/py-venv/bin/python
tests/python/test_clients.py` with those variables set.

The same scenario runs over HTTP for tenant A and over gRPC for tenant B; the two must observe the
same results (ids, order, counts, payloads; distances within 1e-5), and both must agree with a
brute-force computation here. Then error mapping on both transports, and health.

Every check prints what it compared; the script exits non-zero if any check failed.

Known server bugs: checks that assert the correct behaviour and fail until the server is fixed.
Their names start with the tag in brackets.
  [bug: overflowing distance] Vectors with large but finite components are accepted (f32, so up to
      ~3.4e38), but their L2 or dot distance to a query overflows f32: gRPC answers distance inf or
      -inf, and HTTP answers `"distance": null` (serde_json writes a non-finite float as null), which
      is not the `number` the OpenAPI document promises, and the two transports disagree. Expected:
      either such vectors are refused with 400 / INVALID_ARGUMENT, or every distance answered is a
      finite number. See huge_vectors().
"""

import atexit
import importlib.resources
import json
import math
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback

import grpc
import requests
from google.protobuf import json_format, struct_pb2
from grpc_tools import protoc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 30
DIM = 8
N = 100
TOP_K = 10
EF = 128
RED = {"must": [{"key": "color", "match": {"value": "red"}}]}
GREEN = {"must": [{"key": "color", "match": {"value": "green"}}]}
COLL_A = "docs_http"  # tenant A's collection, driven over HTTP
COLL_B = "docs_grpc"  # tenant B's collection, driven over gRPC
MISSING = "no_such_collection"
# Filled in by main() from the brute-force model: points left after the scenario.
MODEL_COUNTS = {}

# ---------------------------------------------------------------------------------------------
# A small runner: every check prints what it compared and is counted.

PASSED = 0
FAILED = []


def _show(value, limit=300):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check(name, ok, detail):
    global PASSED
    if ok:
        PASSED += 1
        print(f"ok    {name}: {detail}")
    else:
        FAILED.append(name)
        print(f"FAIL  {name}: {detail}")
    return ok


def check_eq(name, got, want):
    return check(name, got == want, f"got {_show(got)}, expected {_show(want)}")


def code_name(code):
    return code.name if isinstance(code, grpc.StatusCode) else code


def check_in(name, got, allowed):
    return check(name, got in allowed, f"got {_show(got)}, expected one of {_show(allowed)}")


def section(title, fn, *args):
    """Runs one group of checks; an exception fails the group and the run goes on."""
    print(f"\n== {title}")
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - any failure is reported, then the next section runs
        traceback.print_exc(file=sys.stdout)
        check(title, False, "raised an exception (traceback above)")
        return None


# ---------------------------------------------------------------------------------------------
# The data, and the brute-force model of what the server must answer.


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def point_id(i):
    """Mixed ids: every fourth point has a string id."""
    return f"s{i:03d}" if i % 4 == 3 else i


def id_order(pid):
    """The server's id order: numbers ascending, then strings by bytes."""
    return (0, pid, b"") if isinstance(pid, int) else (1, 0, pid.encode())


RNG = random.Random(20240611)
POINTS = []
for _i in range(N):
    POINTS.append(
        {
            "id": point_id(_i),
            "vector": [f32(RNG.uniform(-1.0, 1.0)) for _ in range(DIM)],
            "payload": {
                "color": ["red", "green", "blue"][_i % 3],
                "n": _i,
                "label": f"point {_i}",
                "tags": ["even" if _i % 2 == 0 else "odd", _i % 5],
                "nested": {"half": _i / 2, "flag": _i % 7 == 0, "none": None},
            },
        }
    )
QUERY = [f32(RNG.uniform(-1.0, 1.0)) for _ in range(DIM)]


def l2(a, b):
    return sum((x - y) * (x - y) for x, y in zip(a, b))


def matches(point, flt):
    if flt is None:
        return True
    return all(point["payload"][c["key"]] == c["match"]["value"] for c in flt["must"])


def brute_search(live, query, flt, k):
    scored = [(l2(p["vector"], query), p) for p in live.values() if matches(p, flt)]
    scored.sort(key=lambda sp: (sp[0], id_order(sp[1]["id"])))
    return [(p["id"], d) for d, p in scored[:k]]


def close(a, b, tol=1e-5):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def check_search_against_brute(name, got, expected):
    """got: [(id, distance, payload)]; expected: [(id, distance)] from brute force."""
    check_eq(f"{name}: number of hits", len(got), len(expected))
    dists = [d for _, d, _ in got]
    check(f"{name}: distances non-decreasing", dists == sorted(dists), _show(dists))
    check(
        f"{name}: distances equal brute force (1e-5)",
        len(got) == len(expected) and all(close(g[1], e[1]) for g, e in zip(got, expected)),
        f"got {_show(dists)}, expected {_show([d for _, d in expected])}",
    )
    # Ids must match exactly except where brute-force distances are within float noise.
    gaps_ok = all(
        not close(expected[i][1], expected[i + 1][1]) for i in range(len(expected) - 1)
    )
    got_ids = [i for i, _, _ in got]
    want_ids = [i for i, _ in expected]
    if gaps_ok:
        check_eq(f"{name}: ids and order equal brute force", got_ids, want_ids)
    else:
        check_eq(f"{name}: ids equal brute force (as a set; near ties)", set(got_ids), set(want_ids))
    by_id = {p["id"]: p for p in POINTS}
    check(
        f"{name}: each hit's distance is its own brute-force distance",
        all(close(d, l2(by_id[i]["vector"], QUERY)) for i, d, _ in got),
        _show([(i, d) for i, d, _ in got]),
    )


# ---------------------------------------------------------------------------------------------
# gRPC stubs, generated at run time by grpc_tools.protoc.


def generate_stubs():
    out = tempfile.mkdtemp(prefix="vaultvec-pystubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    proto_root = os.path.join(REPO, "proto", "proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(proto_root, "vaultvec", "v1", "vaultvec.proto"),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with {code}: {args}")
    sys.path.insert(0, out)
    from vaultvec.v1 import vaultvec_pb2, vaultvec_pb2_grpc  # noqa: E402 - generated above

    print(f"generated gRPC stubs in {out}")
    return vaultvec_pb2, vaultvec_pb2_grpc


pb, pb_grpc = generate_stubs()


def to_struct(value):
    s = struct_pb2.Struct()
    s.update(value)
    return s


def from_struct(s):
    return json_format.MessageToDict(s)


def pb_id(pid):
    return pb.PointId(str=pid) if isinstance(pid, str) else pb.PointId(num=pid)


def py_id(pid):
    return pid.str if pid.WhichOneof("kind") == "str" else pid.num


# ---------------------------------------------------------------------------------------------
# One client interface, two transports. Each method answers plain Python values.


class ApiError(Exception):
    def __init__(self, transport, code, message):
        super().__init__(f"{transport} {code}: {message}")
        self.code = code
        self.message = message


class Http:
    name = "http"

    def __init__(self, addr, key):
        self.base = f"http://{addr}"
        self.key = key
        self.session = requests.Session()

    def raw(self, method, path, body=None, key="default", data=None, headers=None):
        """Answers (status, parsed JSON body or None)."""
        h = dict(headers or {})
        key = self.key if key == "default" else key
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        r = self.session.request(
            method, self.base + path, json=body, data=data, headers=h, timeout=TIMEOUT
        )
        try:
            parsed = r.json()
        except ValueError:
            parsed = None
        return r.status_code, parsed

    def call(self, method, path, body=None):
        status, value = self.raw(method, path, body)
        if status != 200:
            err = (value or {}).get("error", {})
            raise ApiError("http", status, err.get("message", value))
        return value

    def create(self, name, dim=DIM, metric="l2"):
        r = self.call("POST", "/v1/collections", {"name": name, "dim": dim, "metric": metric})
        return {k: r[k] for k in ["name", "dim", "metric", "m", "ef_construction", "ef", "points"]}

    def upsert(self, name, points):
        return self.call("PUT", f"/v1/collections/{name}/points", {"points": points})["upserted"]

    def search(self, name, vector, flt=None, top_k=TOP_K):
        body = {"vector": vector, "top_k": top_k, "ef": EF, "with_payload": True}
        if flt is not None:
            body["filter"] = flt
        r = self.call("POST", f"/v1/collections/{name}/points/search", body)
        return r["partial"], [(p["id"], p["distance"], p.get("payload")) for p in r["points"]]

    def get(self, name, ids):
        r = self.call(
            "POST",
            f"/v1/collections/{name}/points/get",
            {"ids": ids, "with_payload": True, "with_vector": True},
        )
        return [(p["id"], p.get("payload"), p.get("vector")) for p in r["points"]]

    def delete_ids(self, name, ids):
        return self.call("POST", f"/v1/collections/{name}/points/delete", {"ids": ids})["deleted"]

    def delete_filter(self, name, flt):
        return self.call("POST", f"/v1/collections/{name}/points/delete", {"filter": flt})[
            "deleted"
        ]

    def scroll_pages(self, name, limit, flt=None):
        pages, cursor = [], None
        while True:
            body = {"limit": limit, "cursor": cursor, "with_payload": True}
            if flt is not None:
                body["filter"] = flt
            r = self.call("POST", f"/v1/collections/{name}/points/scroll", body)
            pages.append([(p["id"], p.get("payload")) for p in r["points"]])
            cursor = r["next_cursor"]
            if cursor is None:
                return pages
            if len(pages) > N:
                raise RuntimeError("scroll does not end")

    def count(self, name, flt=None):
        body = {} if flt is None else {"filter": flt}
        return self.call("POST", f"/v1/collections/{name}/points/count", body)["count"]


class Grpc:
    name = "grpc"

    def __init__(self, addr, key):
        self.channel = grpc.insecure_channel(addr)
        self.collections = pb_grpc.CollectionsStub(self.channel)
        self.points = pb_grpc.PointsStub(self.channel)
        self.health = pb_grpc.HealthStub(self.channel)
        self.key = key

    def meta(self, key="default"):
        key = self.key if key == "default" else key
        return [] if key is None else [("authorization", f"Bearer {key}")]

    def rpc(self, method, request, key="default"):
        try:
            return method(request, metadata=self.meta(key), timeout=TIMEOUT)
        except grpc.RpcError as e:
            raise ApiError("grpc", e.code(), e.details()) from None

    def create(self, name, dim=DIM, metric="l2"):
        config = pb.CollectionConfig(dim=dim, metric=pb.Metric.Value(f"METRIC_{metric.upper()}"))
        r = self.rpc(
            self.collections.CreateCollection, pb.CreateCollectionRequest(name=name, config=config)
        )
        c = r.config
        return {"name": r.name, "dim": c.dim, "metric": pb.Metric.Name(c.metric)[7:].lower(),
                "m": c.m, "ef_construction": c.ef_construction, "ef": c.ef, "points": r.points}

    @staticmethod
    def pb_point(p):
        point = pb.Point(id=pb_id(p["id"]), vector=p["vector"])
        if p.get("payload") is not None:
            point.payload.CopyFrom(to_struct(p["payload"]))
        return point

    def upsert(self, name, points):
        req = pb.UpsertRequest(collection=name, points=[self.pb_point(p) for p in points])
        return self.rpc(self.points.Upsert, req).upserted

    def search(self, name, vector, flt=None, top_k=TOP_K):
        req = pb.SearchRequest(
            collection=name, vector=vector, top_k=top_k, ef=EF, with_payload=True
        )
        if flt is not None:
            req.filter.CopyFrom(to_struct(flt))
        r = self.rpc(self.points.Search, req)
        return r.partial, [
            (py_id(p.id), p.distance, from_struct(p.payload) if p.HasField("payload") else None)
            for p in r.points
        ]

    def get(self, name, ids):
        req = pb.GetPointsRequest(
            collection=name, ids=[pb_id(i) for i in ids], with_payload=True, with_vector=True
        )
        r = self.rpc(self.points.Get, req)
        return [
            (
                py_id(p.id),
                from_struct(p.payload) if p.HasField("payload") else None,
                list(p.vector) or None,
            )
            for p in r.points
        ]

    def delete_ids(self, name, ids):
        req = pb.DeletePointsRequest(collection=name, ids=[pb_id(i) for i in ids])
        return self.rpc(self.points.Delete, req).deleted

    def delete_filter(self, name, flt):
        req = pb.DeletePointsRequest(collection=name, filter=to_struct(flt))
        return self.rpc(self.points.Delete, req).deleted

    def scroll_pages(self, name, limit, flt=None):
        pages, cursor = [], ""
        while True:
            req = pb.ScrollRequest(collection=name, cursor=cursor, limit=limit, with_payload=True)
            if flt is not None:
                req.filter.CopyFrom(to_struct(flt))
            r = self.rpc(self.points.Scroll, req)
            pages.append(
                [
                    (py_id(p.id), from_struct(p.payload) if p.HasField("payload") else None)
                    for p in r.points
                ]
            )
            cursor = r.next_cursor
            if not cursor:
                return pages
            if len(pages) > N:
                raise RuntimeError("scroll does not end")

    def count(self, name, flt=None):
        req = pb.CountRequest(collection=name)
        if flt is not None:
            req.filter.CopyFrom(to_struct(flt))
        return self.rpc(self.points.Count, req).count


# ---------------------------------------------------------------------------------------------
# The scenario: what one transport observes, rendered the same way for both.


def scenario(client, coll):
    t = client.name
    obs = {}
    info = client.create(coll)
    print(f"{t}: created {coll}: {info}")
    obs["created"] = dict(info, name="<name>")
    # Two batches, so the collection sees more than one write.
    obs["upserted"] = client.upsert(coll, POINTS[:60]) + client.upsert(coll, POINTS[60:])
    obs["count_all"] = client.count(coll)
    obs["count_red"] = client.count(coll, RED)
    obs["search"] = client.search(coll, QUERY)
    obs["search_red"] = client.search(coll, QUERY, RED)
    obs["search_self"] = client.search(coll, POINTS[7]["vector"], top_k=1)
    obs["get"] = client.get(coll, [2, "s007", 1000, "nope", 8])
    obs["deleted_ids"] = client.delete_ids(coll, [0, 1, "s003", 12345, "missing"])
    obs["deleted_green"] = client.delete_filter(coll, GREEN)
    obs["count_after"] = client.count(coll)
    obs["count_red_after"] = client.count(coll, RED)
    obs["scroll"] = client.scroll_pages(coll, 16)
    obs["scroll_red"] = client.scroll_pages(coll, 7, RED)
    obs["search_after"] = client.search(coll, QUERY)
    return obs


def the_model():
    """What the scenario must observe, computed here by brute force."""
    live = {p["id"]: p for p in POINTS}
    m = {"upserted": N, "count_all": N}
    m["count_red"] = sum(matches(p, RED) for p in POINTS)
    m["search"] = brute_search(live, QUERY, None, TOP_K)
    m["search_red"] = brute_search(live, QUERY, RED, TOP_K)
    m["get"] = [
        (i, live[i]["payload"], live[i]["vector"]) for i in [2, "s007", 1000, "nope", 8] if i in live
    ]
    m["deleted_ids"] = sum(1 for i in [0, 1, "s003", 12345, "missing"] if live.pop(i, None))
    green = [i for i, p in live.items() if matches(p, GREEN)]
    for i in green:
        del live[i]
    m["deleted_green"] = len(green)
    m["count_after"] = len(live)
    m["count_red_after"] = sum(matches(p, RED) for p in live.values())
    m["scroll_ids"] = sorted(live, key=id_order)
    m["scroll_red_ids"] = [i for i in m["scroll_ids"] if matches(live[i], RED)]
    m["search_after"] = brute_search(live, QUERY, None, TOP_K)
    m["live"] = live
    return m


def canonical(value):
    """JSON text with sorted keys: equal only when the types are equal too (1 vs 1.0)."""
    return json.dumps(value, sort_keys=True)


def integral(value):
    """As the server's documented Struct<->JSON mapping shows a value: a JSON number is a double
    on the way through, and one with an integral value comes back as an integer (46.0 -> 46)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def check_against_model(t, obs, m):
    check_eq(f"{t}: created collection", obs["created"],
             {"name": "<name>", "dim": DIM, "metric": "l2", "m": 16, "ef_construction": 200,
              "ef": 64, "points": 0})
    for k in ["upserted", "count_all", "count_red", "deleted_ids", "deleted_green"]:
        check_eq(f"{t}: {k}", obs[k], m[k])
    check_eq(f"{t}: count_after", obs["count_after"], m["count_after"])
    check_eq(f"{t}: count_red_after", obs["count_red_after"], m["count_red_after"])
    for k in ["search", "search_red", "search_after"]:
        partial, hits = obs[k]
        check_eq(f"{t}: {k}: partial", partial, False)
        check_search_against_brute(f"{t}: {k}", hits, m[k])
        by_id = {p["id"]: p for p in POINTS}
        check(
            f"{t}: {k}: payloads are the stored ones",
            all(p == by_id[i]["payload"] for i, _, p in hits),
            _show([p for _, _, p in hits][:2]),
        )
    check(
        f"{t}: search_red: every hit is red",
        all(p["color"] == "red" for _, _, p in obs["search_red"][1]),
        _show([p["color"] for _, _, p in obs["search_red"][1]]),
    )
    _, self_hits = obs["search_self"]
    check_eq(
        f"{t}: a stored vector is its own nearest neighbour at distance 0",
        [(i, d) for i, d, _ in self_hits],
        [(POINTS[7]["id"], 0.0)],
    )
    check_eq(f"{t}: get: ids found, in request order", [g[0] for g in obs["get"]],
             [g[0] for g in m["get"]])
    check(f"{t}: get: payloads", [g[1] for g in obs["get"]] == [g[1] for g in m["get"]],
          _show([g[1] for g in obs["get"]]))
    check_eq(f"{t}: get: vectors are the stored f32 values", [g[2] for g in obs["get"]],
             [g[2] for g in m["get"]])
    scrolled = [i for page in obs["scroll"] for i, _ in page]
    check_eq(f"{t}: scroll: all live ids once, in id order", scrolled, m["scroll_ids"])
    check_eq(f"{t}: scroll: page sizes", [len(p) for p in obs["scroll"]],
             [min(16, len(scrolled) - s) for s in range(0, len(scrolled), 16)])
    check(
        f"{t}: scroll: payloads",
        all(p == m["live"][i]["payload"] for page in obs["scroll"] for i, p in page),
        f"{sum(len(p) for p in obs['scroll'])} records compared",
    )
    scrolled_red = [i for page in obs["scroll_red"] for i, _ in page]
    check_eq(f"{t}: scroll with filter: red ids in id order", scrolled_red, m["scroll_red_ids"])
    check(
        f"{t}: scroll with filter: every page but the last is full",
        all(len(p) == 7 for p in obs["scroll_red"][:-1]),
        _show([len(p) for p in obs["scroll_red"]]),
    )


def check_transports_equal(h, g):
    for k in ["created", "upserted", "count_all", "count_red", "deleted_ids", "deleted_green",
              "count_after", "count_red_after"]:
        check_eq(f"http == grpc: {k}", h[k], g[k])
    for k in ["search", "search_red", "search_self", "search_after"]:
        check_eq(f"http == grpc: {k}: partial", h[k][0], g[k][0])
        check_eq(f"http == grpc: {k}: ids in order", [i for i, _, _ in h[k][1]],
                 [i for i, _, _ in g[k][1]])
        hd, gd = [d for _, d, _ in h[k][1]], [d for _, d, _ in g[k][1]]
        check(f"http == grpc: {k}: distances (1e-5)",
              len(hd) == len(gd) and all(abs(a - b) <= 1e-5 for a, b in zip(hd, gd)),
              f"http {_show(hd)}, grpc {_show(gd)}")
        # gRPC's Struct carries every number as a double, so 3 and 3.0 compare equal here.
        check_eq(f"http == grpc: {k}: payloads", [p for _, _, p in h[k][1]],
                 [p for _, _, p in g[k][1]])
    check_eq("http == grpc: get", h["get"], g["get"])
    check_eq("http == grpc: scroll pages", h["scroll"], g["scroll"])
    check_eq("http == grpc: scroll pages with filter", h["scroll_red"], g["scroll_red"])
    # Over HTTP, integers stay integers (no 3.0 for 3), booleans and null stay what they are, and
    # nothing is added or dropped.
    by_id = {p["id"]: p for p in POINTS}
    got = [canonical(payload) for _, payload, _ in h["get"]]
    want = [canonical(integral(by_id[i]["payload"])) for i, _, _ in h["get"]]
    check_eq("http: payload JSON types survive the round trip", got, want)


# ---------------------------------------------------------------------------------------------
# Errors.


def http_error(client, method, path, body=None, key="default", data=None, headers=None):
    status, value = client.raw(method, path, body, key=key, data=data, headers=headers)
    err = (value or {}).get("error") if isinstance(value, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return status, code, message


def grpc_error(fn):
    try:
        fn()
    except ApiError as e:
        return code_name(e.code), e.message
    return "OK", None


def errors_auth(http, grpcc, env):
    admin = Http(env["VV_HTTP"], env["VV_ADMIN_TOKEN"])
    issued = admin.call("POST", f"/admin/v1/tenants/{env['VV_TENANT_A']}/keys",
                        {"scopes": ["read", "write", "manage"]})
    revoked = issued["key"]
    key_id = issued.get("key_id") or revoked[3:11]
    check_eq("a freshly issued key works", http_error(http, "GET", f"/v1/collections/{COLL_A}",
                                                      key=revoked)[0], 200)
    admin.call("DELETE", f"/admin/v1/tenants/{env['VV_TENANT_A']}/keys/{key_id}")
    key_a = env["VV_KEY_A"]
    candidates = {
        "missing": None,
        "empty": "",
        "malformed": "not-a-key",
        "unknown key id": "vv_ZZZZZZZZ_" + "b" * 32,
        "wrong secret": key_a[:12] + ("A" * 32 if key_a[12:] != "A" * 32 else "B" * 32),
        "revoked": revoked,
        "admin token": env["VV_ADMIN_TOKEN"],
    }
    answers = {}
    for label, key in candidates.items():
        answers[label] = http_error(http, "GET", f"/v1/collections/{COLL_A}", key=key)
        check_eq(f"http 401, key {label}", answers[label][:2], (401, "unauthenticated"))
    check_eq("http: every bad key gets the same answer", len(set(answers.values())), 1)
    # Not `Bearer`: the header is there but carries no bearer credential.
    check_eq("http 401 for Basic auth",
             http_error(http, "GET", f"/v1/collections/{COLL_A}", key=None,
                        headers={"Authorization": "Basic dXNlcjpwYXNz"})[:2],
             (401, "unauthenticated"))
    grpc_answers = {}
    for label, key in candidates.items():
        grpc_answers[label] = grpc_error(
            lambda key=key: grpcc.rpc(grpcc.points.Count, pb.CountRequest(collection=COLL_B),
                                      key=key))
        check_eq(f"grpc UNAUTHENTICATED, key {label}", grpc_answers[label][0],
                 "UNAUTHENTICATED")
    check_eq("grpc: every bad key gets the same answer", len(set(grpc_answers.values())), 1)
    check_eq("http and grpc give the same unauthenticated message",
             grpc_answers["missing"][1], answers["missing"][2])


def errors_scope(http, grpcc, env):
    ro = env["VV_KEY_READONLY"]
    point = {"id": 1, "vector": [0.5] * DIM}
    status, code, _ = http_error(http, "PUT", f"/v1/collections/{COLL_A}/points",
                                 {"points": [point]}, key=ro)
    check_eq("http: read-only key upserting", (status, code), (403, "permission_denied"))
    got = grpc_error(lambda: grpcc.rpc(
        grpcc.points.Upsert,
        pb.UpsertRequest(collection=COLL_A, points=[Grpc.pb_point(point)]), key=ro))
    check_eq("grpc: read-only key upserting", got[0], "PERMISSION_DENIED")
    check_eq("http: the read-only key can count",
             http_error(http, "POST", f"/v1/collections/{COLL_A}/points/count", {}, key=ro)[0],
             200)
    check_eq("grpc: the read-only key can count",
             grpc_error(lambda: grpcc.rpc(grpcc.points.Count,
                                          pb.CountRequest(collection=COLL_A), key=ro))[0],
             "OK")


def errors_invalid(http, grpcc):
    a, b = COLL_A, COLL_B
    good = [0.25] * DIM
    http_cases = {
        "wrong dimension (upsert)": ("PUT", f"/v1/collections/{a}/points",
                                     {"points": [{"id": 1, "vector": [0.5] * (DIM - 1)}]}),
        "wrong dimension (search)": ("POST", f"/v1/collections/{a}/points/search",
                                     {"vector": [0.5] * (DIM + 1), "top_k": 3}),
        "non-finite value 1e39 (upsert)": ("PUT", f"/v1/collections/{a}/points",
                                           {"points": [{"id": 1, "vector": [1e39] + good[1:]}]}),
        "non-finite value 1e39 (search)": ("POST", f"/v1/collections/{a}/points/search",
                                           {"vector": good[:-1] + [-1e39], "top_k": 3}),
        "top_k 0": ("POST", f"/v1/collections/{a}/points/search", {"vector": good, "top_k": 0}),
        "top_k 1001": ("POST", f"/v1/collections/{a}/points/search",
                       {"vector": good, "top_k": 1001}),
        "empty upsert": ("PUT", f"/v1/collections/{a}/points", {"points": []}),
        "unknown field (search)": ("POST", f"/v1/collections/{a}/points/search",
                                   {"vector": good, "top_k": 3, "topk": 3}),
        "unknown field (point)": ("PUT", f"/v1/collections/{a}/points",
                                  {"points": [{"id": 1, "vector": good, "colour": "red"}]}),
        "unknown field (create)": ("POST", "/v1/collections",
                                   {"name": "x", "dim": 2, "metric": "l2", "shards": 2}),
    }
    http_messages, grpc_messages = {}, {}
    for label, (method, path, body) in http_cases.items():
        status, code, message = http_error(http, method, path, body)
        http_messages[label] = message
        check_eq(f"http 400 for {label} ({_show(message, 90)})", (status, code),
                 (400, "invalid_argument"))
    status, code, _ = http_error(http, "POST", f"/v1/collections/{a}/points/search",
                                 data=b"{not json", headers={"Content-Type": "application/json"})
    check_eq("http 400 for a body that is not JSON", (status, code), (400, "invalid_argument"))

    def upsert(vector, points=None):
        pts = points if points is not None else [pb.Point(id=pb_id(1), vector=vector)]
        return lambda: grpcc.rpc(grpcc.points.Upsert, pb.UpsertRequest(collection=b, points=pts))

    def search(vector, top_k):
        return lambda: grpcc.rpc(grpcc.points.Search,
                                 pb.SearchRequest(collection=b, vector=vector, top_k=top_k))

    grpc_cases = {
        "wrong dimension (upsert)": upsert([0.5] * (DIM - 1)),
        "wrong dimension (search)": search([0.5] * (DIM + 1), 3),
        "NaN (upsert)": upsert([float("nan")] + good[1:]),
        "NaN (search)": search(good[:-1] + [float("nan")], 3),
        "infinity (upsert)": upsert(good[:-1] + [float("inf")]),
        "top_k 0": search(good, 0),
        "top_k 1001": search(good, 1001),
        "empty upsert": upsert(None, points=[]),
        "NaN in a payload": upsert(None, points=[pb.Point(id=pb_id(1), vector=good,
                                                          payload=to_struct({"x": float("nan")}))]),
        "infinity in a filter": lambda: grpcc.rpc(grpcc.points.Count, pb.CountRequest(
            collection=b, filter=to_struct({"must": [{"key": "n", "match": {"value": math.inf}}]}))),
    }
    for label, fn in grpc_cases.items():
        code, message = grpc_error(fn)
        check_eq(f"grpc INVALID_ARGUMENT for {label} ({_show(message, 90)})", code,
                 "INVALID_ARGUMENT")
        grpc_messages[label] = message
    # One validation behind both transports: the same case, the same message.
    for http_label, grpc_label in [
        ("wrong dimension (upsert)", "wrong dimension (upsert)"),
        ("wrong dimension (search)", "wrong dimension (search)"),
        ("non-finite value 1e39 (upsert)", "NaN (upsert)"),
        ("non-finite value 1e39 (search)", "NaN (search)"),
        ("top_k 0", "top_k 0"),
        ("top_k 1001", "top_k 1001"),
        ("empty upsert", "empty upsert"),
    ]:
        check_eq(f"same message over http and grpc: {http_label} / {grpc_label}",
                 http_messages[http_label], grpc_messages[grpc_label])
    # Nothing was written by any of them.
    check_eq("http: no bad request changed the collection", http.count(a),
             MODEL_COUNTS["count_after"])
    check_eq("grpc: no bad request changed the collection", grpcc.count(b),
             MODEL_COUNTS["count_after"])


def errors_not_found(http, grpcc):
    def norm(message, name):
        return None if message is None else message.replace(name, "<name>")

    # Tenant A asks for tenant B's collection and for one that exists nowhere, and vice versa.
    for label, (method, suffix, body) in {
        "get collection": ("GET", "", None),
        "count": ("POST", "/points/count", {}),
        "search": ("POST", "/points/search", {"vector": [0.1] * DIM, "top_k": 3}),
        "upsert": ("PUT", "/points", {"points": [{"id": 1, "vector": [0.1] * DIM}]}),
    }.items():
        other = http_error(http, method, f"/v1/collections/{COLL_B}{suffix}", body)
        missing = http_error(http, method, f"/v1/collections/{MISSING}{suffix}", body)
        check_eq(f"http {label}: another tenant's collection", other[:2], (404, "not_found"))
        check_eq(f"http {label}: an unknown collection", missing[:2], (404, "not_found"))
        check_eq(f"http {label}: same message modulo the name", norm(other[2], COLL_B),
                 norm(missing[2], MISSING))
    grpc_msgs = {}
    for label, make in {
        "get collection": lambda n: (grpcc.collections.GetCollection,
                                     pb.GetCollectionRequest(name=n)),
        "count": lambda n: (grpcc.points.Count, pb.CountRequest(collection=n)),
        "search": lambda n: (grpcc.points.Search,
                             pb.SearchRequest(collection=n, vector=[0.1] * DIM, top_k=3)),
        "upsert": lambda n: (grpcc.points.Upsert, pb.UpsertRequest(
            collection=n, points=[pb.Point(id=pb_id(1), vector=[0.1] * DIM)])),
    }.items():
        other = grpc_error(lambda: grpcc.rpc(*make(COLL_A)))
        missing = grpc_error(lambda: grpcc.rpc(*make(MISSING)))
        check_eq(f"grpc {label}: another tenant's collection", other[0], "NOT_FOUND")
        check_eq(f"grpc {label}: an unknown collection", missing[0], "NOT_FOUND")
        check_eq(f"grpc {label}: same message modulo the name", norm(other[1], COLL_A),
                 norm(missing[1], MISSING))
        grpc_msgs[label] = norm(missing[1], MISSING)
    http_msg = norm(http_error(http, "POST", f"/v1/collections/{MISSING}/points/count", {})[2],
                    MISSING)
    check_eq("http and grpc give the same not-found message", grpc_msgs["count"], http_msg)
    # The other tenant's data is untouched by the attempted upserts.
    check_eq("tenant B's collection still has its points", grpcc.count(COLL_B),
             MODEL_COUNTS["count_after"])
    check_eq("tenant A's collection still has its points", http.count(COLL_A),
             MODEL_COUNTS["count_after"])


def errors_garbage_protobuf(grpcc):
    raw = grpcc.channel.unary_unary(
        "/vaultvec.v1.Points/Count",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    garbage = {
        "truncated length-delimited field": b"\x0a\xff\xff\xff\xff\x0f",
        "invalid wire type": b"\x0f\x01\x02\x03",
        "random bytes": bytes(random.Random(7).randrange(256) for _ in range(64)),
    }
    for label, data in garbage.items():
        try:
            raw(data, metadata=grpcc.meta(), timeout=TIMEOUT)
            code, details = grpc.StatusCode.OK, None
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        check_in(f"grpc garbage protobuf ({label}; {_show(details, 80)})", code_name(code),
                 ["INVALID_ARGUMENT"])
    # The same bytes a stub would send work through the raw path, and the server still answers.
    good = pb.CountRequest(collection=COLL_B).SerializeToString()
    reply = pb.CountResponse.FromString(raw(good, metadata=grpcc.meta(), timeout=TIMEOUT))
    check_eq("grpc: a good raw request after the garbage", reply.count,
             MODEL_COUNTS["count_after"])
    check_eq("grpc: a stub request after the garbage", grpcc.count(COLL_B),
             MODEL_COUNTS["count_after"])


def huge_vectors(http, grpcc):
    """[bug: overflowing distance] Finite components whose distance overflows f32."""
    tag = "[bug: overflowing distance]"
    cases = [
        ("l2", [[3e38, -3e38], [1.0, 2.0]], [-3e38, 3e38]),
        ("dot", [[3e38, 3e38], [1.0, 2.0]], [3e38, 3e38]),
    ]
    for client in (http, grpcc):
        t = client.name
        for metric, vectors, query in cases:
            name = f"huge_{metric}"
            client.create(name, dim=2, metric=metric)
            points = [{"id": i, "vector": v} for i, v in enumerate(vectors)]
            try:
                client.upsert(name, points)
            except ApiError as e:
                check_in(f"{tag} {t} {metric}: vectors {vectors} refused ({e.message})",
                         code_name(e.code), [400, "INVALID_ARGUMENT"])
                continue
            _, hits = client.search(name, query, top_k=2)
            distances = [d for _, d, _ in hits]
            check(f"{tag} {t} {metric}: search {query} over {vectors}: distances are finite "
                  "numbers (or the vectors are refused)",
                  len(hits) == 2 and all(isinstance(d, (int, float)) and math.isfinite(d)
                                         for d in distances),
                  f"got distances {distances}")


def health(http, grpcc):
    status, value = http.raw("GET", "/v1/health", key=None)
    check_eq("http health", (status, value), (200, {"ready": True, "workers_connected": 2}))
    r = grpcc.health.Check(pb.HealthCheckRequest(), timeout=TIMEOUT)
    check_eq("grpc health", (r.ready, r.workers_connected), (True, 2))


# ---------------------------------------------------------------------------------------------


def main():
    started = time.monotonic()
    names = ["VV_HTTP", "VV_GRPC", "VV_KEY_A", "VV_KEY_B", "VV_TENANT_A", "VV_KEY_READONLY",
             "VV_ADMIN_TOKEN"]
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        print(f"error: set {', '.join(missing)} (tests/it/python.rs sets them)", file=sys.stderr)
        return 2
    env = {n: os.environ[n] for n in names}
    print(f"grpcio {grpc.__version__}, requests {requests.__version__}, "
          f"python {sys.version.split()[0]}")
    http = Http(env["VV_HTTP"], env["VV_KEY_A"])
    grpcc = Grpc(env["VV_GRPC"], env["VV_KEY_B"])
    try:
        section("health", health, http, grpcc)
        model = the_model()
        MODEL_COUNTS["count_after"] = model["count_after"]
        h = section("scenario over HTTP (tenant A)", scenario, http, COLL_A)
        g = section("scenario over gRPC (tenant B)", scenario, grpcc, COLL_B)
        if h is not None:
            section("HTTP results against brute force", check_against_model, "http", h, model)
        if g is not None:
            section("gRPC results against brute force", check_against_model, "grpc", g, model)
        if h is not None and g is not None:
            section("HTTP and gRPC results are identical", check_transports_equal, h, g)
        section("errors: authentication", errors_auth, http, grpcc, env)
        section("errors: scopes", errors_scope, http, grpcc, env)
        section("errors: invalid arguments", errors_invalid, http, grpcc)
        section("errors: not found, and isolation", errors_not_found, http, grpcc)
        section("errors: garbage protobuf", errors_garbage_protobuf, grpcc)
        section("huge but finite vectors", huge_vectors, http, grpcc)
        section("health after everything", health, http, grpcc)
    finally:
        grpcc.channel.close()
    print(f"\ntook {time.monotonic() - started:.2f}s")
    if FAILED:
        print("failed checks:")
        for name in FAILED:
            print(f"  - {name}")
    print(f"{PASSED} passed, {len(FAILED)} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
