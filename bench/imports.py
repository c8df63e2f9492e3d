"""`akidb import` beside the server's own upsert rate, same server, same documents, same run.

    python -m bench.imports [--quick]      (part of make bench)

One `akidb serve` (onnx fp32, embedding cache off, as bench.serving). Two kinds of documents: fortunes as text
(the server embeds them: the model is the limit) and fortunes with their precomputed vectors (bench.serving's
cache: storage and HTTP are the limit). Two arms for each:
- raw: the server's own upsert rate, the best any client could do: the documents pre-encoded into request bodies
  of the same batch size (256) before the clock starts, sent over keep-alive connections with the same 2
  requests in flight, by the bench's minimal HTTP client;
- import: `akidb import FILE` as a user runs it (a subprocess, its start-up included), from a JSON Lines file.
Each run fills a fresh collection (deleted after). Runs alternate raw, import, import, raw per round so that
drift hits both arms alike. Reported: documents/s of each arm (median of the rounds), the ratio import/raw
beside the target (>= 0.90; reported, never asserted), and the CPU seconds the server and the client spent.
The client shares the machine's 2 cores with the server: the importer's own CPU is part of what it costs.
Writes bench/results/imports.json. About 6 min on 2 cores; --quick: one round on fewer documents.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.auth import fortune_vectors
from bench.serving import (
    RESULTS,
    Connection,
    Server,
    git_revision,
    load_corpus,
    process_cpu_s,
    running_server,
    versions,
)

BACKEND = "onnx"
QUANTIZATION = "fp32"
BATCH = 256
IN_FLIGHT = 2
TARGET = 0.90
CONFIG = "\n[storage]\nindex_save_interval_s = 3600.0\n"
KINDS = ("text", "vectors", "vectors-large")


@dataclass(frozen=True)
class ImportPlan:
    text_documents: int = 4000
    vector_documents: int = 10000
    # The same vectors three times over (new ids): start-up and the first requests weigh less in a longer file.
    large_documents: int = 30000
    rounds: int = 2


def documents(kind: str, plan: ImportPlan) -> list[dict[str, Any]]:
    corpus = load_corpus()
    if kind == "text":
        return [{"id": d["id"], "text": d["text"], "metadata": {"source": d["source"]}} for d in corpus][
            : plan.text_documents
        ]
    vectors = fortune_vectors([d["text"] for d in corpus])
    wanted = plan.vector_documents if kind == "vectors" else plan.large_documents
    chosen = [(n, n % len(corpus)) for n in range(wanted)]
    return [
        {
            "id": f"{corpus[i]['id']}-{n // len(corpus)}",
            "text": corpus[i]["text"],
            "vector": vectors[i].tolist(),
            "metadata": {"source": corpus[i]["source"]},
        }
        for n, i in chosen
    ]


async def call(server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = Connection(server.port)
    try:
        status, payload = await connection.request(method, path, msgspec.json.encode(body) if body is not None else b"")
    finally:
        connection.close()
    return status, (msgspec.json.decode(payload) if payload else None)


async def fresh_collection(server: Server, name: str) -> None:
    await call(server, "DELETE", f"/api/v1/collections/{name}")
    status, body = await call(server, "POST", "/api/v1/collections", {"name": name})
    if status != 201:
        raise SystemExit(f"could not create {name}: {status} {body}")


async def raw_upserts(server: Server, name: str, docs: list[dict[str, Any]]) -> float:
    """Seconds to upsert `docs` in pre-encoded batches with IN_FLIGHT requests at a time."""
    bodies = [msgspec.json.encode({"documents": docs[i : i + BATCH]}) for i in range(0, len(docs), BATCH)]
    pending = iter(bodies)
    path = f"/api/v1/collections/{name}/upsert"

    async def worker() -> None:
        connection = Connection(server.port)
        try:
            for body in pending:
                status, payload = await connection.request("POST", path, body)
                if status != 200:
                    raise SystemExit(f"raw upsert answered {status}: {payload[:300]!r}")
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


def run_import(server: Server, name: str, source: Path) -> tuple[float, float]:
    """Seconds of `akidb import` (wall, start-up included) and the CPU seconds the importer spent."""
    command = [sys.executable, "-m", "akidb", "import", str(source), "--collection", name, "--restart"]
    command += ["--url", f"http://127.0.0.1:{server.port}", "--batch-size", str(BATCH), "--quiet"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"akidb import exited {result.returncode}: {result.stderr[-2000:]}")
    return elapsed, _children_cpu_s()


_last_children = [0.0]


def _children_cpu_s() -> float:
    """CPU seconds of child processes that ended since the last call."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    spent, _last_children[0] = total - _last_children[0], total
    return spent


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def count(server: Server, name: str) -> int:
    status, body = await call(server, "POST", f"/api/v1/collections/{name}/count", {})
    return int(body["count"]) if status == 200 else -1


async def measure(
    server: Server, kind: str, docs: list[dict[str, Any]], plan: ImportPlan, work: Path
) -> dict[str, Any]:
    source = work / f"{kind}.jsonl"
    source.write_bytes(b"".join(msgspec.json.encode(d) + b"\n" for d in docs))
    runs: dict[str, list[dict[str, float]]] = {"raw": [], "import": []}
    _children_cpu_s()
    for round_number in range(plan.rounds):
        for arm in ("raw", "import", "import", "raw")[: 4 if plan.rounds > 1 else 2]:
            name = f"bench-{kind}-{arm}-{round_number}"
            await fresh_collection(server, name)
            server_cpu, client_cpu = process_cpu_s(server.pid), self_cpu_s()
            if arm == "raw":
                seconds = await raw_upserts(server, name, docs)
                client = self_cpu_s() - client_cpu
            else:
                seconds, client = await asyncio.to_thread(run_import, server, name, source)
            stored = await count(server, name)
            if stored != len(docs):
                raise SystemExit(f"{arm} run stored {stored} of {len(docs)} documents")
            run = {
                "seconds": seconds,
                "docs_per_s": len(docs) / seconds,
                "server_cpu_s": process_cpu_s(server.pid) - server_cpu,
                "client_cpu_s": client,
            }
            runs[arm].append(run)
            print(f"  {kind:6} {arm:6} {run['docs_per_s']:8.1f} docs/s  server {run['server_cpu_s']:.1f} CPU-s  "
                  f"client {run['client_cpu_s']:.1f} CPU-s", flush=True)  # fmt: skip
            await call(server, "DELETE", f"/api/v1/collections/{name}")
    raw = statistics.median(r["docs_per_s"] for r in runs["raw"])
    imported = statistics.median(r["docs_per_s"] for r in runs["import"])
    return {
        "documents": len(docs),
        "file_bytes": source.stat().st_size,
        "raw_docs_per_s": raw,
        "import_docs_per_s": imported,
        "ratio": imported / raw,
        "target": TARGET,
        "runs": runs,
    }


async def startup(server: Server, document: dict[str, Any], work: Path) -> float:
    """The fixed cost of one `akidb import` run: the median of 3 imports of a 1-document file."""
    source = work / "one.jsonl"
    source.write_bytes(msgspec.json.encode(document) + b"\n")
    await fresh_collection(server, "bench-startup")
    seconds = [(await asyncio.to_thread(run_import, server, "bench-startup", source))[0] for _ in range(3)]
    await call(server, "DELETE", "/api/v1/collections/bench-startup")
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round on 1,000 texts and 3,000 vectors")
    args = parser.parse_args()
    plan = ImportPlan(1000, 3000, 6000, 1) if args.quick else ImportPlan()
    prepared = {kind: documents(kind, plan) for kind in KINDS}
    results: dict[str, Any] = {"batch": BATCH, "in_flight": IN_FLIGHT, "backend": BACKEND, "quantization": QUANTIZATION}
    with running_server(BACKEND, QUANTIZATION, CONFIG) as server, tempfile.TemporaryDirectory() as scratch:
        results["startup_s"] = asyncio.run(startup(server, prepared["text"][0], Path(scratch)))
        for kind, docs in prepared.items():
            results[kind] = asyncio.run(measure(server, kind, docs, plan, Path(scratch)))
    results |= {"machine": platform.machine(), "cpus": len(os.sched_getaffinity(0))}
    results |= {"versions": versions(), "git": git_revision(), "quick": args.quick}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "imports.json").write_text(json.dumps(results, indent=2))
    print(f"\n| documents | server's own upsert rate (raw, {IN_FLIGHT} in flight) | akidb import | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for kind in KINDS:
        r = results[kind]
        print(f"| {r['documents']:,} {kind} | {r['raw_docs_per_s']:,.1f} docs/s | {r['import_docs_per_s']:,.1f} docs/s "
              f"| **{r['ratio']:.3f}** | >= {TARGET} |")  # fmt: skip
    print(f"\nakidb import of a 1-document file (start-up, GET limits and collection, one upsert): "
          f"{results['startup_s']:.2f} s, median of 3")  # fmt: skip


if __name__ == "__main__":
    main()
