"""Several `akidb serve` processes on one PostgreSQL database: what sharing a collection costs writers, and how
long a write takes to show on another process.

    python -m bench.replicas [--quick]      (part of make bench)

A throwaway PostgreSQL cluster (tests/conftest.py's `postgres_cluster`: initdb and pg_ctl from the Debian
install, a Unix socket, fsync off, as the postgres user when run as root) and two `akidb serve` processes, A and
B, on 127.0.0.1, both on that database (mock embedding provider; index checkpoints pushed past the run;
storage.follow_interval_ms = 200, the default). Every collection is user-provided (`"embedding_model": null`,
dimension 384) and every upsert a batch of 100 documents with explicit random vectors (bodies built before the
clock starts).

Write throughput, documents/s acknowledged by 2 clients (one keep-alive connection each, closed loop), in three
arms: (a) both clients through A into one collection; (b) one client through A and one through B, into the same
collection: the two processes' transactions queue on the collection row's lock (SELECT ... FOR UPDATE), and each
write first applies what the other process committed before it; (c) the raw limit: one client through A and one
through B into two different collections, so that no write waits for the other process's. Both processes follow
every collection in every arm, so each indexes every document once in each arm: the arms differ only in who
writes what where. A short warm-up of each arm, then `rounds` rounds of one run per arm into fresh collections,
the order rotated each round; each run's acknowledged documents are checked against the database's count and
against B's count read with `min_seq`. Reported: each arm's median rate, (b)/(a) and (b)/(c) of the medians and
per round, the CPU that the servers and the PostgreSQL cluster spent per 100 documents, and the CPU that other
processes on the machine spent meanwhile (another job skews a run; this says by how much).

Visibility, in a collection of 1,000 documents that both processes hold, each probe at a random moment of B's
follow cycle: `probes` times, one document written through A, then B searched for its vector without min_seq
every 2 ms until it is the top hit (the lag, from A's acknowledgement to B's answer that has it), beside the
configured follow interval (200 ms) as the raw figure; then `probes` times, one document written through A and
searched for on B at once with the write's `seq` as `min_seq` (the cost of read-your-writes on another process),
beside the same search on B without min_seq right after as the raw figure. This part runs first, on a fresh
database.

--quick: one round of 2 s runs and 10 probes, a smoke test. Writes bench/results/replicas.json. About 2 min on
2 cores.

The clients share the machine's cores with both servers and PostgreSQL; the table says how much CPU each spent.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from bench.auth import machine_busy_s
from bench.serving import (
    RESULTS,
    ROOT,
    Connection,
    Request,
    Run,
    Server,
    closed_loop,
    failures,
    git_revision,
    percentile,
    process_cpu_s,
    running_server,
    server_config,
    versions,
)
from tests.conftest import postgres_cluster

BACKEND = "mock"
QUANTIZATION = "fp32"
DIMENSION = 384
BATCH = 100
CLIENTS = 2
FOLLOW_INTERVAL_MS = 200  # the default, written out so that the raw figure and the config agree
LAG_COLLECTION_DOCS = 1000
POLL_S = 0.002
VISIBLE_TIMEOUT_S = 10.0
VECTOR_POOL = 2000


@dataclass(frozen=True)
class ReplicaPlan:
    """The full run, or --quick for a smoke test."""

    # A multiple of the number of arms (3), so that each arm runs as often in each position of a round.
    rounds: int = 3
    run_s: float = 8.0
    warmup_s: float = 2.0
    probes: int = 50


QUICK = ReplicaPlan(rounds=1, run_s=2.0, warmup_s=0.5, probes=10)


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    # Per client: which server, and which of the round's collections (0 or 1).
    clients: tuple[tuple[str, int], ...]


ARMS = (
    Arm("one_process", "(a) 2 clients -> A, one collection", (("A", 0), ("A", 0))),
    Arm("two_processes", "(b) 1 client -> A + 1 -> B, one collection", (("A", 0), ("B", 0))),
    Arm("two_collections", "(c) raw: 1 -> A + 1 -> B, two collections", (("A", 0), ("B", 1))),
)


@dataclass(frozen=True)
class Database:
    url: str
    postmaster_pid: int


@contextmanager
def postgres_database() -> Iterator[Database]:
    """A fresh database on a throwaway cluster (the test suite's fixture, as a context manager)."""
    import psycopg

    with contextmanager(inspect.unwrap(postgres_cluster))() as cluster:
        params = dict(part.split("=", 1) for part in cluster.split("&"))
        with psycopg.connect(f"dbname=postgres user=akidb {cluster.replace('&', ' ')}", autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        pid = int((Path(params["host"]) / "data" / "postmaster.pid").read_text().split()[0])
        yield Database(f"postgresql+psycopg://akidb@/bench?{cluster}", pid)


def postgres_cpu_s(postmaster: int) -> float:
    """CPU seconds of the cluster: the postmaster, its live children (backends, autovacuum, writers) and the
    children it has reaped."""
    with open(f"/proc/{postmaster}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    total = sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def replica_config(url: str) -> str:
    return (
        f'\n[storage]\nurl = "{url}"\nfollow_interval_ms = {FOLLOW_INTERVAL_MS}\n'
        "# No index checkpoint during the run.\nindex_save_interval_s = 3600.0\n"
    )


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


class Vectors:
    """Random unit vectors, each also pre-encoded as JSON, so that a batch body is a join of bytes."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        raw = rng.standard_normal((VECTOR_POOL, DIMENSION)).astype(np.float32)
        self.values = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        self.json = [encode(row.tolist()) for row in self.values]

    def documents(self, ids: list[str], start: int) -> bytes:
        docs = [
            b'{"id":"%s","vector":%s}' % (doc_id.encode(), self.json[(start + n) % VECTOR_POOL])
            for n, doc_id in enumerate(ids)
        ]
        return b'{"documents":[' + b",".join(docs) + b"]}"


class Api:
    """Admin calls on one server over one connection."""

    def __init__(self, server: Server) -> None:
        self.connection = Connection(server.port)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        raw = body if isinstance(body, bytes) else (b"" if body is None else encode(body))
        status, payload = await self.connection.request(method, path, raw)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
        return msgspec.json.decode(payload) if payload else None

    async def create(self, name: str) -> None:
        await self.call("POST", "/api/v1/collections", {"name": name, "embedding_model": None, "dimension": DIMENSION})

    def close(self) -> None:
        self.connection.close()


def upserts(collection: str, vectors: Vectors, prefix: str) -> Callable[[int], Request]:
    """Batches of BATCH new documents, ids unique to this client; vectors cycle through the pool."""
    path = f"/api/v1/collections/{collection}/upsert"
    return lambda i: (path, vectors.documents([f"{prefix}-{i}-{n}" for n in range(BATCH)], i * BATCH), BATCH)


# --- write throughput ---------------------------------------------------------------------------------


async def arm_run(
    arm: Arm, servers: dict[str, Server], postgres: int, apis: dict[str, Api], vectors: Vectors, tag: str, run_s: float
) -> dict[str, Any]:
    """One run of an arm into fresh collections; checks what was acknowledged against the database and B."""
    collections = [f"w-{tag}-{n}" for n in range(len({c for _, c in arm.clients}))]
    for name in collections:
        await apis["A"].create(name)
        await apis["B"].call("POST", f"/api/v1/collections/{name}/count", {})  # B opens it now, not mid-run
    pids = [servers[key].pid for key in ("A", "B")]
    busy, server_cpu, started = machine_busy_s(), [process_cpu_s(pid) for pid in pids], time.perf_counter()
    client_cpu, postgres_cpu = time.process_time(), postgres_cpu_s(postgres)
    runs: list[Run] = await asyncio.gather(
        *(
            closed_loop(servers[key], 1, run_s, upserts(collections[c], vectors, f"{tag}-{n}"))
            for n, (key, c) in enumerate(arm.clients)
        )
    )
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    server_cpu = [process_cpu_s(pid) - before for pid, before in zip(pids, server_cpu, strict=True)]
    postgres_cpu = postgres_cpu_s(postgres) - postgres_cpu
    # Processes other than the bench, the servers and PostgreSQL: another job on the machine skews a run.
    other_cpu = max(0.0, machine_busy_s() - busy - sum(server_cpu) - client_cpu - postgres_cpu)
    acknowledged = sum(run.items for run in runs)
    # Everything acknowledged is in the database, and B reads it all once it has applied the last seq.
    stored, on_b = 0, 0
    for name in collections:
        info = await apis["A"].call("GET", f"/api/v1/collections/{name}")
        stored += info["document_count"]
        on_b += (await apis["B"].call("POST", f"/api/v1/collections/{name}/count", {"min_seq": info["seq"]}))["count"]
    for name in collections:
        await apis["A"].call("DELETE", f"/api/v1/collections/{name}")
    latencies = [ms for run in runs for ms in run.latencies_ms]
    statuses: dict[str, int] = {}
    errors: dict[str, str] = {}
    for run in runs:
        for status, n in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
        errors |= run.first_errors
    per_100 = 100 / acknowledged if acknowledged else float("nan")
    return {
        "docs_per_s": acknowledged / wall,
        "wall_s": wall,
        "acknowledged": acknowledged,
        "stored": stored,
        "count_on_b_with_min_seq": on_b,
        "per_client_docs": [run.items for run in runs],
        "batch_p50_ms": percentile(latencies, 50),
        "batch_p95_ms": percentile(latencies, 95),
        "statuses": statuses,
        "first_errors": errors,
        "server_cpu_s": {"A": server_cpu[0], "B": server_cpu[1]},
        "client_cpu_s": client_cpu,
        "postgres_cpu_s": postgres_cpu,
        "other_cpu_s": other_cpu,
        "server_cpu_s_per_100_docs": sum(server_cpu) * per_100,
        "postgres_cpu_s_per_100_docs": postgres_cpu * per_100,
    }


async def throughput(servers: dict[str, Server], postgres: int, vectors: Vectors, plan: ReplicaPlan) -> dict[str, Any]:
    apis = {key: Api(server) for key, server in servers.items()}
    try:
        for arm in ARMS:
            await arm_run(arm, servers, postgres, apis, vectors, f"warm-{arm.key}", plan.warmup_s)
        runs: dict[str, list[dict[str, Any]]] = {arm.key: [] for arm in ARMS}
        for number in range(plan.rounds):
            shift = number % len(ARMS)
            for position, arm in enumerate(ARMS[shift:] + ARMS[:shift]):
                run = await arm_run(arm, servers, postgres, apis, vectors, f"{number}-{arm.key}", plan.run_s)
                run |= {"round": number, "position": position}
                runs[arm.key].append(run)
                print(
                    f"round {number + 1} {arm.key:<15} {run['docs_per_s']:7.0f} docs/s  batch p50 "
                    f"{run['batch_p50_ms']:6.1f} ms  cpu/100 docs: servers {run['server_cpu_s_per_100_docs']:.3f} s, "
                    f"postgres {run['postgres_cpu_s_per_100_docs']:.3f} s; other processes {run['other_cpu_s']:.1f} "
                    f"cpu s  {run['statuses']}",
                    flush=True,
                )
    finally:
        for api in apis.values():
            api.close()
    return summarize(runs)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for arm in ARMS:
        own = runs[arm.key]
        arms[arm.key] = {
            "label": arm.label,
            "docs_per_s": statistics.median(run["docs_per_s"] for run in own),
            "batch_p50_ms": statistics.median(run["batch_p50_ms"] for run in own),
            "batch_p95_ms": statistics.median(run["batch_p95_ms"] for run in own),
            "server_cpu_s_per_100_docs": statistics.median(run["server_cpu_s_per_100_docs"] for run in own),
            "postgres_cpu_s_per_100_docs": statistics.median(run["postgres_cpu_s_per_100_docs"] for run in own),
            "other_cpu_s": [run["other_cpu_s"] for run in own],
            "failures": sum(failures(run["statuses"]) for run in own),
            "lost": sum(run["acknowledged"] - run["stored"] for run in own),
            "missing_on_b": sum(run["acknowledged"] - run["count_on_b_with_min_seq"] for run in own),
            "runs": own,
        }

    def ratio(top: str, bottom: str) -> dict[str, Any]:
        return {
            "of_medians": arms[top]["docs_per_s"] / arms[bottom]["docs_per_s"],
            "per_round": [a["docs_per_s"] / b["docs_per_s"] for a, b in zip(runs[top], runs[bottom], strict=True)],
        }

    return {
        "arms": arms,
        "ratios": {
            "b_over_a": ratio("two_processes", "one_process"),
            "b_over_c": ratio("two_processes", "two_collections"),
            "a_over_c": ratio("one_process", "two_collections"),
        },
    }


# --- visibility ---------------------------------------------------------------------------------------


async def timed(connection: Connection, path: str, body: bytes) -> tuple[float, int, Any]:
    started = time.perf_counter()
    status, payload = await connection.request("POST", path, body)
    return (time.perf_counter() - started) * 1000, status, msgspec.json.decode(payload) if payload else None


def top_id(answer: Any) -> str | None:
    results = answer.get("results") if isinstance(answer, dict) else None
    return results[0]["id"] if results else None


async def visibility(servers: dict[str, Server], vectors: Vectors, plan: ReplicaPlan) -> dict[str, Any]:
    name = "lag"
    apis = {key: Api(server) for key, server in servers.items()}
    a, b = Connection(servers["A"].port), Connection(servers["B"].port)
    upsert, search = f"/api/v1/collections/{name}/upsert", f"/api/v1/collections/{name}/search"
    chooser = random.Random(11)
    lags: list[float] = []
    polls: list[int] = []
    min_seq_ms: list[float] = []
    plain_ms: list[float] = []
    write_ms: list[float] = []
    problems: list[str] = []
    try:
        await apis["A"].create(name)
        for n in range(LAG_COLLECTION_DOCS // BATCH):
            written = await apis["A"].call(
                "POST", upsert, vectors.documents([f"fill-{n}-{k}" for k in range(BATCH)], n * BATCH)
            )
        await apis["B"].call("POST", f"/api/v1/collections/{name}/count", {"min_seq": written["seq"]})
        pool = iter(range(LAG_COLLECTION_DOCS, VECTOR_POOL))

        async def write_one(doc_id: str) -> tuple[list[float], int]:
            index = next(pool)
            ms, status, answer = await timed(a, upsert, vectors.documents([doc_id], index))
            if status != 200:
                raise RuntimeError(f"upsert on A: {status} {answer}")
            write_ms.append(ms)
            return vectors.values[index].tolist(), int(answer["seq"])

        # Each probe starts after one sleep of a random part of the follow interval, right after an event that
        # puts B's cycle at a known point: a lag probe ends just after one of B's rounds, and a read with
        # min_seq that has to wait wakes B's follower for a round at once. So the two kinds run in two loops:
        # one after the other within a loop would start each read with min_seq just after a round (or each
        # lag probe just after a wake), and a sum of two sleeps would not be a uniform moment of the cycle.
        for probe in range(plan.probes):
            await asyncio.sleep(chooser.uniform(0, FOLLOW_INTERVAL_MS / 1000))
            doc_id = f"lag-{probe}"
            vector, _ = await write_one(doc_id)
            acknowledged = time.perf_counter()
            query, count = encode({"vector": vector, "top_k": 1}), 0
            while True:
                _, status, answer = await timed(b, search, query)
                count += 1
                if status == 200 and top_id(answer) == doc_id:
                    lags.append((time.perf_counter() - acknowledged) * 1000)
                    polls.append(count)
                    break
                if status != 200:
                    problems.append(f"lag probe {probe}: search on B answered {status} {answer}")
                if time.perf_counter() - acknowledged > VISIBLE_TIMEOUT_S:
                    problems.append(f"lag probe {probe}: not visible on B after {VISIBLE_TIMEOUT_S:g} s")
                    break
                await asyncio.sleep(POLL_S)
        for probe in range(plan.probes):
            await asyncio.sleep(chooser.uniform(0, FOLLOW_INTERVAL_MS / 1000))
            doc_id = f"seq-{probe}"
            vector, seq = await write_one(doc_id)
            ms, status, answer = await timed(b, search, encode({"vector": vector, "top_k": 1, "min_seq": seq}))
            if status == 200 and top_id(answer) == doc_id:
                min_seq_ms.append(ms)
            else:
                problems.append(f"min_seq probe {probe}: B answered {status}, top hit {top_id(answer)}")
            ms, status, answer = await timed(b, search, encode({"vector": vector, "top_k": 1}))
            if status == 200 and top_id(answer) == doc_id:
                plain_ms.append(ms)
            else:
                problems.append(f"plain search {probe}: B answered {status}, top hit {top_id(answer)}")
        await apis["A"].call("DELETE", f"/api/v1/collections/{name}")
    finally:
        for connection in (a, b, *(api.connection for api in apis.values())):
            connection.close()

    def stats(values: list[float]) -> dict[str, Any]:
        return {
            "n": len(values),
            "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95),
            "max_ms": max(values, default=float("nan")),
        }

    return {
        "collection_docs": LAG_COLLECTION_DOCS,
        "poll_interval_ms": POLL_S * 1000,
        "follow_interval_ms": FOLLOW_INTERVAL_MS,
        "lag_without_min_seq": stats(lags)
        | {"polls_median": statistics.median(polls) if polls else None, "all_ms": lags},
        "search_with_min_seq": stats(min_seq_ms) | {"all_ms": min_seq_ms},
        "search_without_min_seq": stats(plain_ms),
        "write_on_a": stats(write_ms),
        "problems": problems,
    }


# --- report -------------------------------------------------------------------------------------------


def print_table(writes: dict[str, Any], seen: dict[str, Any]) -> None:
    arms, ratios = writes["arms"], writes["ratios"]
    table: list[tuple[str, ...]] = [
        ("arm", "median docs/s", "runs", "batch p50/p95 ms", "cpu s/100 docs: servers, postgres")
    ]
    for entry in arms.values():
        table.append(
            (
                entry["label"],
                f"{entry['docs_per_s']:.0f}",
                " ".join(f"{run['docs_per_s']:.0f}" for run in entry["runs"]),
                f"{entry['batch_p50_ms']:.1f} / {entry['batch_p95_ms']:.1f}",
                f"{entry['server_cpu_s_per_100_docs']:.3f}, {entry['postgres_cpu_s_per_100_docs']:.3f}",
            )
        )
    widths = [max(len(cells[column]) for cells in table) for column in range(len(table[0]))]
    for cells in table:
        print(" | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    for key, label in (
        ("b_over_a", "(b)/(a) shared collection, 2 processes vs 1"),
        ("b_over_c", "(b)/(c) shared collection vs raw (no lock contention)"),
        ("a_over_c", "(a)/(c)"),
    ):
        entry = ratios[key]
        print(f"{label}: {entry['of_medians']:.3f}  (rounds: {' '.join(f'{r:.3f}' for r in entry['per_round'])})")
    others = [cpu for entry in arms.values() for cpu in entry["other_cpu_s"]]
    print(
        f"CPU that processes other than the bench, the servers and PostgreSQL spent during a run: median "
        f"{statistics.median(others):.1f} s, max {max(others):.1f} s (a quiet machine: ~0)"
    )
    for entry in arms.values():
        if entry["failures"] or entry["lost"] or entry["missing_on_b"]:
            errors = {s: t for run in entry["runs"] for s, t in run["first_errors"].items()}
            print(
                f"{entry['label']}: {entry['failures']} failures, {entry['lost']} acknowledged but not stored, "
                f"{entry['missing_on_b']} missing on B with min_seq: {errors}"
            )

    lag, with_seq, plain = seen["lag_without_min_seq"], seen["search_with_min_seq"], seen["search_without_min_seq"]
    interval = seen["follow_interval_ms"]
    print(
        f"\nvisible on B without min_seq after an acknowledged write on A ({lag['n']} probes, polled every "
        f"{seen['poll_interval_ms']:g} ms): p50 {lag['p50_ms']:.0f} ms, p95 {lag['p95_ms']:.0f} ms, max "
        f"{lag['max_ms']:.0f} ms | raw: follow interval {interval} ms | p50/interval {lag['p50_ms'] / interval:.2f}, "
        f"p95/interval {lag['p95_ms'] / interval:.2f}"
    )
    print(
        f"search on B with min_seq right after the write ({with_seq['n']} probes): p50 {with_seq['p50_ms']:.1f} ms, "
        f"p95 {with_seq['p95_ms']:.1f} ms | raw: the same search without min_seq, p50 {plain['p50_ms']:.1f} ms, "
        f"p95 {plain['p95_ms']:.1f} ms | ratio p50 {with_seq['p50_ms'] / plain['p50_ms']:.2f}, "
        f"p95 {with_seq['p95_ms'] / plain['p95_ms']:.2f}"
    )
    print(
        f"(the write on A itself: p50 {seen['write_on_a']['p50_ms']:.1f} ms, p95 {seen['write_on_a']['p95_ms']:.1f} ms)"
    )
    for problem in seen["problems"][:10]:
        print(f"problem: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of 2 s runs and 10 probes: a smoke test")
    args = parser.parse_args()
    plan = QUICK if args.quick else ReplicaPlan()
    started = time.perf_counter()
    load_start = os.getloadavg()
    vectors = Vectors(seed=5)
    with ExitStack() as stack:
        database = stack.enter_context(postgres_database())
        extra = replica_config(database.url)
        servers = {
            "A": stack.enter_context(running_server(BACKEND, QUANTIZATION, extra)),
            "B": stack.enter_context(running_server(BACKEND, QUANTIZATION, extra)),
        }
        print(f"PostgreSQL and both servers ready in {time.perf_counter() - started:.0f} s", flush=True)
        seen = asyncio.run(visibility(servers, vectors, plan))
        writes = asyncio.run(throughput(servers, database.postmaster_pid, vectors, plan))
    runtime_s = time.perf_counter() - started
    for key, server in servers.items():
        if server.log_errors:
            print(f"server {key}'s log has {len(server.log_errors)} error lines; the first: {server.log_errors[0]}")

    print(
        f"\nreplicas on PostgreSQL (fsync off): 2 akidb serve processes, mock provider, {DIMENSION}-d vectors, batches "
        f"of {BATCH}, {CLIENTS} clients, {os.cpu_count()} CPUs, {plan.rounds} round(s) of {plan.run_s:g} s runs per "
        f"arm, medians{' (--quick)' if args.quick else ''}"
    )
    print_table(writes, seen)
    print(f"\nruntime {runtime_s:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "replicas.json"
    out.write_text(
        json.dumps(
            {
                "quick": args.quick,
                "plan": asdict(plan),
                "clients": CLIENTS,
                "batch": BATCH,
                "dimension": DIMENSION,
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "platform": platform.platform(),
                    "load_average_start": load_start,
                    "load_average_end": os.getloadavg(),
                },
                "versions": versions(),
                "git": git_revision(),
                "server_config": server_config(BACKEND, QUANTIZATION) + replica_config("<throwaway cluster>"),
                "postgres": "throwaway cluster from tests/conftest.py postgres_cluster (Unix socket, fsync off)",
                "writes": writes,
                "visibility": seen,
                "runtime_s": runtime_s,
                "server_log_errors": {key: server.log_errors[:50] for key, server in servers.items()},
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
