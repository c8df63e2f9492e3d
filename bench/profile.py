"""Where a request's CPU goes: a real `akidb serve` sampled by py-spy under the two hot scenarios.

    python -m bench.profile [--seconds 20] [--quantization int8]     (not part of make bench: a diagnosis)

The server runs under `py-spy record --native` (py-spy cannot attach to a running process on these machines,
but it can start one), with the bench.serving config (cache off). Scenarios, one server each:
- embed: 16 clients x 1 text on POST /api/v1/embed (the fortunes, one at a time);
- search: 16 clients of vector search (top 10) over the 10,000 fortunes, upserted with their vectors first;
- upsert: 2 importers upserting the 10,000 fortunes with their vectors (batches of 100) into a new collection,
  again and again (a new collection each time) until the time is up.
py-spy samples every thread 100 times a second; here it cannot tell idle threads, so samples whose innermost
native frames wait (a lock, a condition, epoll; or the GIL) are counted apart. Each working sample is put in
the first category, from the innermost frame outwards, whose module matches (CATEGORIES); the table gives each
category's share of the samples and, from the server's measured CPU seconds over the run, its CPU milliseconds
per request. Sampling native stacks costs CPU on the same cores: rates here are lower than bench.serving's.
py-spy samples Python threads only: the native threads hnswlib starts for add_items (upsert) are not sampled, so
their CPU is in the measured total but in no category, and the other shares are overstated by as much.
Writes bench/results/profile-<scenario>.txt (the folded stacks) and bench/results/profile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.auth import fortune_vectors
from bench.memory import free_port, wait_ready
from bench.serving import (
    CACHE,
    IMPORTERS,
    MODEL,
    RESULTS,
    Bench,
    Plan,
    Request,
    Run,
    Server,
    Workload,
    closed_loop,
    load_corpus,
    process_cpu_s,
    server_config,
)

CLIENTS = 16
SCENARIOS = ["embed", "search", "upsert"]
COLLECTION = "fortunes"
# (category, pattern over "function (file:line)"); the first match from the innermost frame outwards wins.
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        ("model forward pass (ORT / torch)", r"onnxruntime|torch/|_run_batch \(|\brun \(.*onnx"),
        ("tokenization", r"tokenizers|tokenization\.py"),
        ("pooling, normalisation, heads", r"pooling\.py|heads\.py|akidb/vectors\.py|fit_dimension"),
        ("hnswlib / exact scan", r"knn_query|storage/index\.py|storage/exact\.py|planner\.py"),
        ("SQL (SQLAlchemy, sqlite3)", r"sqlalchemy|sqlite3|repositories\.py|storage/db\.py"),
        ("micro-batcher", r"embedding/batching\.py"),
        ("JSON / msgspec (de)serialisation", r"msgspec|serialization|_encode|_decode|json"),
        ("HTTP server (uvicorn, httptools)", r"uvicorn|httptools|h11"),
        ("Litestar (routing, DI, middleware, guards)", r"litestar/"),
        ("prometheus metrics", r"prometheus_client|observability\.py"),
        ("thread hops and the event loop (anyio, asyncio, threading)", r"anyio|asyncio|threading\.py|concurrent/"),
        ("akidb services and controllers", r"akidb/"),
    ]
]


# Samples outside the measured scenario: imports, migrations, loading and warming the model, opening
# collections, and the search scenario's fill (upserts). They are counted apart and left out of the table.
_SETUP = r"_find_and_load|\bmigrate|load_model|\bwarmup \(|_export_graph|InferenceSession|open_collection|open_storage"
SETUP = re.compile(_SETUP + r"|\bupsert \(|\bfill \(")
SETUP_WITHOUT_UPSERTS = re.compile(_SETUP)  # for the upsert scenario, where upserts are the measured work
SETUP_CATEGORY = "set-up (imports, model load, migrations, fill)"
# py-spy cannot tell idle threads here (it samples every thread), so with --native the innermost frames say
# it: a thread blocked on a lock, a condition, or the event loop's epoll is waiting, not working; one in
# take_gil is waiting for the GIL. Both are counted apart and left out of the CPU shares.
IDLE = re.compile(r"epoll_p?wait|lock_PyThread_acquire_lock|PyThread_acquire_lock_timed|\bselect \(|sem_timedwait")
GIL = re.compile(r"take_gil|drop_gil")
IDLE_CATEGORY = "idle (waiting on a lock, a condition or epoll)"
GIL_CATEGORY = "waiting for the GIL"
APART = (SETUP_CATEGORY, IDLE_CATEGORY, GIL_CATEGORY)


def categorize(stack: str, setup: re.Pattern[str] = SETUP) -> str:
    if setup.search(stack):
        return SETUP_CATEGORY
    innermost = ";".join(stack.split(";")[-6:])
    if GIL.search(innermost):
        return GIL_CATEGORY
    if IDLE.search(innermost) or re.search(r"pthread_cond_(timed)?wait", innermost):
        return IDLE_CATEGORY
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return "other"


def read_folded(path: Path, setup: re.Pattern[str] = SETUP) -> Counter[str]:
    """py-spy's raw output: one line per distinct stack, `frame;frame;... count`."""
    samples: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[categorize(stack, setup)] += int(count)
    return samples


def child_of(pid: int, timeout_s: float = 30.0) -> int:
    """The process py-spy started (its only child)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.05)
    raise SystemExit("py-spy did not start the server")


@contextmanager
def profiled_server(quantization: str, folded: Path) -> Iterator[Server]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "akidb.toml").write_text(server_config("onnx", quantization) + "\n")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
        env |= {"HF_HUB_OFFLINE": "1", "AKIDB_EMBEDDING_CACHE_DIR": str(CACHE)}
        log_path = Path(scratch) / "server.log"
        command = [py_spy, "record", "--format", "raw", "--rate", "100", "--native", "--output", str(folded), "--"]
        command += [sys.executable, "-m", "akidb", "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--data-dir", str(Path(scratch) / "data"), "--config", "akidb.toml"]
        with open(log_path, "wb") as log:
            spy = subprocess.Popen(command, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT)
            server_pid = child_of(spy.pid)
            server = Server(spy, port)
            server.process = spy
            try:
                failure = wait_ready(spy, port, log_path)
                if failure is not None:
                    raise SystemExit(failure)
                yield _WithPid(server, server_pid)
            finally:
                os.kill(server_pid, signal.SIGTERM)  # py-spy writes its output once the server has exited
                try:
                    spy.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    # py-spy can outlive a server with many threads; SIGINT stops it and it writes what it has.
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=300)


class _WithPid(Server):
    """A Server whose pid is the akidb process under py-spy, not py-spy itself."""

    def __init__(self, server: Server, pid: int) -> None:
        super().__init__(server.process, server.port)
        self._pid = pid

    @property
    def pid(self) -> int:
        return self._pid


async def run_scenario(server: Server, scenario: str, seconds: float) -> dict[str, Any]:
    corpus = load_corpus()
    vectors = fortune_vectors([doc["text"] for doc in corpus])
    work = Workload(corpus, vectors)
    next_request: Callable[[int], Request]
    if scenario == "upsert":
        return await upsert_scenario(server, work, seconds)
    if scenario == "search":
        bench = Bench(server, work, Plan())
        await bench.fill(COLLECTION)
        bench.admin.close()
        next_request = work.search_vector(COLLECTION)
    else:
        next_request = work.embed_single
    await closed_loop(server, CLIENTS, 3.0, next_request)  # warm-up, not counted
    started_cpu = process_cpu_s(server.pid)
    run = await closed_loop(server, CLIENTS, seconds, next_request)
    run.server_cpu_s = process_cpu_s(server.pid) - started_cpu
    return run.summary()


async def upsert_scenario(server: Server, work: Workload, seconds: float) -> dict[str, Any]:
    """IMPORTERS importers over the fortunes with their vectors, a new collection per pass."""
    bench = Bench(server, work, Plan())
    total, started_cpu, deadline, number = Run(), process_cpu_s(server.pid), time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        collection = f"upsert-{number}"
        number += 1
        await bench.call("POST", "/api/v1/collections", {"name": collection, "embedding_model": MODEL})
        run = await closed_loop(server, IMPORTERS, float("inf"), work.upsert(collection, work.vector_batches))
        total.wall_s += run.wall_s
        total.items += run.items
        total.latencies_ms += run.latencies_ms
        total.statuses += run.statuses
    total.server_cpu_s = process_cpu_s(server.pid) - started_cpu
    bench.admin.close()
    return total.summary()


def table(scenario: str, samples: Counter[str], run: dict[str, Any]) -> dict[str, Any]:
    apart = {name: samples.pop(name, 0) for name in APART}
    setup = apart[SETUP_CATEGORY]
    total = sum(samples.values())
    requests = run["requests"]
    cpu_ms_per_request = 1000 * run["server_cpu_s"] / requests if requests else 0.0
    rows = [
        {"category": name, "share": count / total, "cpu_ms_per_request": count / total * cpu_ms_per_request}
        for name, count in samples.most_common()
    ]
    print(f"\n## {scenario}: {run['items_per_s']:,.1f}/s, {requests:,} requests, "
          f"server {run['server_cpu_s']:.1f} CPU-s "
          f"({cpu_ms_per_request:.2f} CPU-ms per request), {total:,} working samples; left out: "
          f"{setup:,} in set-up, {apart[IDLE_CATEGORY]:,} idle, "
          f"{apart[GIL_CATEGORY]:,} waiting for the GIL\n")  # fmt: skip
    print("| where | share of samples | CPU ms per request |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['category']} | {100 * row['share']:.1f} % | {row['cpu_ms_per_request']:.3f} |")
    return {
        "run": run,
        "rows": rows,
        "samples": total,
        "setup_samples": setup,
        "cpu_ms_per_request": cpu_ms_per_request,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--quantization", default="int8", help="onnx quantization (fp32 or int8)")
    parser.add_argument("--only", choices=SCENARIOS)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"quantization": args.quantization, "seconds": args.seconds, "clients": CLIENTS}
    for scenario in [args.only] if args.only else SCENARIOS:
        folded = RESULTS / f"profile-{scenario}.txt"
        with profiled_server(args.quantization, folded) as server:
            run = asyncio.run(run_scenario(server, scenario, args.seconds))
        # The 3 s warm-up is sampled too; it runs the same requests, so it shifts no share.
        setup = SETUP_WITHOUT_UPSERTS if scenario == "upsert" else SETUP
        results[scenario] = table(scenario, read_folded(folded, setup), run)
    (RESULTS / "profile.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
