"""The cost of auth on the hot path: vector search and single-text embed with auth off and on, same run.

    python -m bench.auth [--quick]      (part of make bench)

Two `akidb serve` processes on 127.0.0.1, up side by side for the whole run, with the same config (onnx fp32,
no fallback, embedding cache off, as bench.serving) except that the second has `[auth] enabled = true` and a
bootstrap admin key. Each gets the same collection of the 10,000 fortunes upserted with their precomputed
vectors (bench.serving's cached vectors), and the auth server a read key made with POST /api/v1/keys. Three
arms: auth off; auth on with that read key (it lives in the database: the guard trusts its in-memory answer
for auth.key_cache_ms, 500 ms, then asks the database again, the realistic case); auth on with the bootstrap
admin key (a hash comparison, no database).

Per scenario (vector search with 16 clients, /api/v1/embed with 16 clients x 1 text): a short warm-up of each
arm, then 6 rounds of one 5 s run per arm, the order rotated each round (off/read/admin, read/admin/off,
admin/off/read, ...), so that each arm runs equally often in each position and drift, or another process
waking up, hits all of them alike. Reported: the median of each arm's runs, its ratio to auth off (and the
ratio of each round, on/off, to show the spread), the median p50 latency and the server's CPU per request,
beside the target (on and off ≤ 3 % apart; reported, never asserted). --quick: one round of 2 s runs, a smoke
test. Writes bench/results/auth.json. About 4 min on 2 cores.

The load generator, the server start-up and the CPU accounting are bench.serving's; the client shares the
machine's cores with both servers (the idle one does nothing). Both servers' index checkpoints are pushed past
the run (storage.index_save_interval_s) so that none lands in a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import secrets
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

from bench.serving import (
    MODEL,
    RESULTS,
    ROOT,
    Bench,
    Connection,
    Plan,
    Request,
    Server,
    Vectors,
    Workload,
    closed_loop,
    corpus_vectors,
    failures,
    git_revision,
    load_corpus,
    process_cpu_s,
    raw_provider,
    running_server,
    server_config,
    versions,
)

BACKEND = "onnx"
QUANTIZATION = "fp32"
CLIENTS = 16
COLLECTION = "fortunes"
TARGET = 0.03  # on and off at most 3 % apart
# Both arms: no index checkpoint during the run (the fill would otherwise trigger one 30 s later).
COMMON_CONFIG = "\n[storage]\nindex_save_interval_s = 3600.0\n"


@dataclass(frozen=True)
class AuthPlan:
    """The full run, or --quick for a smoke test."""

    # A multiple of the number of arms (3), so that each arm runs as often in each position of a round.
    rounds: int = 6
    run_s: float = 5.0
    warmup_s: float = 1.5


QUICK = AuthPlan(rounds=1, run_s=2.0, warmup_s=0.5)


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    server: Server


def auth_config(admin_key: str) -> str:
    return f'\n[auth]\nenabled = true\nadmin_key = "{admin_key}"\n'


def bearer(key: str) -> str:
    return f"authorization: Bearer {key}\r\n"


def fortune_vectors(texts: list[str]) -> Vectors:
    """bench.serving's cached vectors of the fortunes (onnx fp32); embedded once if not cached yet."""
    providers = []

    def embed(batch: Sequence[str], kind: str) -> Any:
        providers.append(raw_provider(BACKEND, QUANTIZATION))
        return providers[-1].embed(batch, kind)  # type: ignore[arg-type]

    try:
        return corpus_vectors(embed, BACKEND, QUANTIZATION, texts)
    finally:
        for provider in providers:
            provider.close()


async def prepare(off: Server, on_admin: Server, work: Workload) -> dict[str, Any]:
    """Fill both servers, make the read key, and check that the auth server refuses a request without one."""
    plan = Plan()  # only for Bench's constructor: fill and call use no figure of it
    plain, admin = Bench(off, work, plan), Bench(on_admin, work, plan)
    await plain.fill(COLLECTION)
    await admin.fill(COLLECTION)
    created = await admin.call("POST", "/api/v1/keys", {"name": "bench-auth-read", "role": "read"})
    plain.admin.close()
    admin.admin.close()
    anonymous = Connection(on_admin.port)
    path, body, _ = work.search_vector(COLLECTION)(0)
    status, _ = await anonymous.request("POST", path, body)
    anonymous.close()
    if status != 401:
        raise SystemExit(f"the auth server answered a search without a key with {status}, not 401: is auth on?")
    return {"read_key": created["key"], "read_key_id": created["id"], "search_without_key_status": status}


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every process), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        ticks = [int(value) for value in handle.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def accounted_run(arm: Arm, pids: list[int], plan: AuthPlan, next_request: Callable[[int], Request]) -> Any:
    """One closed-loop run of an arm, with the CPU that processes other than this one and the two servers
    spent meanwhile (another job on the machine skews a run; this says by how much)."""
    busy, servers = machine_busy_s(), sum(process_cpu_s(pid) for pid in pids)
    run = await closed_loop(arm.server, CLIENTS, plan.run_s, next_request)
    servers = sum(process_cpu_s(pid) for pid in pids) - servers
    run.extra["other_cpu_s"] = max(0.0, machine_busy_s() - busy - servers - run.client_cpu_s)
    return run


def run_summary(run: Any) -> dict[str, Any]:
    summary: dict[str, Any] = run.summary()
    requests = summary["requests"] or 1
    summary["server_cpu_ms_per_request"] = summary["server_cpu_s"] * 1000 / requests
    summary["client_cpu_ms_per_request"] = summary["client_cpu_s"] * 1000 / requests
    return summary


async def measure(arms: list[Arm], work: Workload, plan: AuthPlan) -> dict[str, Any]:
    """Each scenario: a warm-up of every arm, then `rounds` rounds of one run per arm, the order rotated."""
    scenarios: list[tuple[str, str, str, Callable[[int], Request]]] = [
        ("search_vector_16", f"search by vector, {CLIENTS} clients", "q/s", work.search_vector(COLLECTION)),
        ("embed_16x1", f"embed {CLIENTS} clients x 1 text", "texts/s", work.embed_single),
    ]
    results: dict[str, Any] = {}
    pids = sorted({arm.server.pid for arm in arms})
    for key, label, unit, next_request in scenarios:
        for arm in arms:
            await closed_loop(arm.server, CLIENTS, plan.warmup_s, next_request)
        runs: dict[str, list[dict[str, Any]]] = {arm.key: [] for arm in arms}
        for number in range(plan.rounds):
            shift = number % len(arms)
            for position, arm in enumerate(arms[shift:] + arms[:shift]):
                summary = run_summary(await accounted_run(arm, pids, plan, next_request))
                summary |= {"round": number, "position": position}
                runs[arm.key].append(summary)
                print(
                    f"{key} round {number + 1} {arm.key:<9} {summary['items_per_s']:8.1f} {unit} "
                    f"p50 {summary['p50_ms']:6.2f} ms  server cpu {summary['server_cpu_ms_per_request']:.2f} "
                    f"ms/req  other processes {summary['other_cpu_s']:.1f} cpu s  {summary['statuses']}",
                    flush=True,
                )
        results[key] = {"label": label, "unit": unit, "arms": summarize(arms, runs)}
    return results


def summarize(arms: list[Arm], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of each arm's runs, and for the auth arms the ratio to auth off: of the medians, and per round."""
    off = runs[arms[0].key]
    off_rate = statistics.median(run["items_per_s"] for run in off)
    off_p50 = statistics.median(run["p50_ms"] for run in off)
    out: dict[str, Any] = {}
    for arm in arms:
        own = runs[arm.key]
        rate = statistics.median(run["items_per_s"] for run in own)
        p50 = statistics.median(run["p50_ms"] for run in own)
        entry: dict[str, Any] = {
            "label": arm.label,
            "items_per_s": rate,
            "p50_ms": p50,
            "p95_ms": statistics.median(run["p95_ms"] for run in own),
            "server_cpu_ms_per_request": statistics.median(run["server_cpu_ms_per_request"] for run in own),
            "client_cpu_ms_per_request": statistics.median(run["client_cpu_ms_per_request"] for run in own),
            "other_cpu_s": [run["other_cpu_s"] for run in own],
            "failures": sum(failures(run["statuses"]) for run in own),
            "non_200": sum(n for run in own for status, n in run["statuses"].items() if status != "200"),
            "runs": own,
        }
        if arm is not arms[0]:
            ratio = rate / off_rate
            entry |= {
                "ratio_to_off": ratio,
                "round_ratios_to_off": [
                    on["items_per_s"] / base["items_per_s"] for on, base in zip(own, off, strict=True)
                ],
                "p50_ratio_to_off": p50 / off_p50,
                "within_target": abs(ratio - 1) <= TARGET,
            }
        out[arm.key] = entry
    return out


def guard_cost(admin_key: str, calls: int = 50_000) -> dict[str, float]:
    """In process, free of the HTTP noise: microseconds of CPU per request that the access guard adds, for a
    database key in the cache, the bootstrap key, and auth off (each including the Litestar connection the
    guard reads, whose construction alone is measured too)."""
    import tempfile
    from types import SimpleNamespace

    from litestar.connection import ASGIConnection

    from akidb.auth.service import KeyService
    from akidb.config import AuthSettings
    from akidb.gateway.access import AccessGuard, Right
    from akidb.storage.db import create_db_engine, migrate
    from akidb.storage.keys import KeyStore

    with tempfile.TemporaryDirectory() as folder:
        engine = create_db_engine(f"sqlite:///{folder}/keys.sqlite3")
        migrate(engine)
        keys = KeyService(KeyStore(engine), admin_key=admin_key, cache_ms=1e9)
        read_key = keys.create(name="bench", role="read").key
        keys.lookup(read_key)
        handler: Any = SimpleNamespace(opt={"akidb_right": Right.READ})
        guards = {
            "on": AccessGuard(AuthSettings(enabled=True, admin_key=admin_key), keys),
            "off": AccessGuard(AuthSettings(), keys),
        }

        def scope(key: str) -> Any:
            return {
                "type": "http",
                "method": "POST",
                "path": "/api/v1/collections/c/search",
                "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {key}".encode())],
                "path_params": {"name": "c"},
                "query_string": b"",
                "state": {},
            }

        async def timed(guard: AccessGuard | None, key: str) -> float:
            started = time.process_time()
            for _ in range(calls):
                connection: Any = ASGIConnection(scope(key))
                if guard is not None:
                    await guard(connection, handler)
            return (time.process_time() - started) / calls * 1e6

        async def all_arms() -> dict[str, float]:
            base = await timed(None, read_key)
            return {
                "connection_only_us": base,
                "off_us": await timed(guards["off"], read_key) - base,
                "read_key_us": await timed(guards["on"], read_key) - base,
                "bootstrap_key_us": await timed(guards["on"], admin_key) - base,
            }

        try:
            return asyncio.run(all_arms())
        finally:
            engine.dispose()


def print_table(results: dict[str, Any], run_s: float) -> None:
    header = ("scenario", "arm", "median rate", "runs", "on/off", "rounds on/off", "p50 ms", "server cpu/req", "≤ 3 %?")
    table: list[tuple[str, ...]] = [header]
    for scenario in results.values():
        for number, entry in enumerate(scenario["arms"].values()):
            ratio = entry.get("ratio_to_off")
            rounds = entry.get("round_ratios_to_off")
            table.append(
                (
                    scenario["label"] if number == 0 else "",
                    entry["label"],
                    f"{entry['items_per_s']:.1f} {scenario['unit']}",
                    " ".join(f"{run['items_per_s']:.0f}" for run in entry["runs"]),
                    "-" if ratio is None else f"{ratio:.3f}",
                    "-" if rounds is None else " ".join(f"{r:.3f}" for r in rounds),
                    f"{entry['p50_ms']:.2f}",
                    f"{entry['server_cpu_ms_per_request']:.2f} ms",
                    "-" if ratio is None else ("yes" if entry["within_target"] else "NO"),
                )
            )
    widths = [max(len(cells[column]) for cells in table) for column in range(len(header))]
    for cells in table:
        print(" | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    for scenario in results.values():
        others = [cpu for entry in scenario["arms"].values() for cpu in entry["other_cpu_s"]]
        print(
            f"{scenario['label']}: CPU other processes spent during a run: median {statistics.median(others):.1f} s, "
            f"max {max(others):.1f} s (runs of {run_s:g} s on {os.cpu_count()} cores)"
        )
    for scenario in results.values():
        for entry in scenario["arms"].values():
            if entry["non_200"]:
                errors = {status: text for run in entry["runs"] for status, text in run["first_errors"].items()}
                print(f"{scenario['label']}, {entry['label']}: {entry['non_200']} responses not 200: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of 2 s runs: a smoke test of the bench")
    args = parser.parse_args()
    plan = QUICK if args.quick else AuthPlan()
    started = time.perf_counter()
    load_start = os.getloadavg()
    corpus = load_corpus()
    work = Workload(corpus, fortune_vectors([doc["text"] for doc in corpus]))
    admin_key = secrets.token_urlsafe(32)
    with ExitStack() as stack:
        off = stack.enter_context(running_server(BACKEND, QUANTIZATION, COMMON_CONFIG))
        on = stack.enter_context(running_server(BACKEND, QUANTIZATION, COMMON_CONFIG + auth_config(admin_key)))
        on_admin = dataclasses.replace(on, headers=bearer(admin_key))
        prepared = asyncio.run(prepare(off, on_admin, work))
        arms = [
            Arm("off", "auth off", off),
            Arm(
                "on_read", "auth on, read key (database)", dataclasses.replace(on, headers=bearer(prepared["read_key"]))
            ),
            Arm("on_admin", "auth on, bootstrap admin key", on_admin),
        ]
        print(f"both servers ready and filled in {time.perf_counter() - started:.0f} s", flush=True)
        results = asyncio.run(measure(arms, work, plan))
    runtime_s = time.perf_counter() - started
    for server in (off, on):
        if server.log_errors:
            print(f"a server log has {len(server.log_errors)} error lines; the first: {server.log_errors[0]}")

    print(
        f"\nauth on the hot path: akidb serve, {MODEL}, {BACKEND} {QUANTIZATION}, {os.cpu_count()} CPUs, "
        f"{plan.rounds} round(s) of {plan.run_s:g} s runs per arm, medians; target: on and off ≤ 3 % apart"
        f"{' (--quick)' if args.quick else ''}"
    )
    print_table(results, plan.run_s)
    guard = guard_cost(admin_key)
    print(
        f"\nthe guard in process, CPU per request: read key (cached) {guard['read_key_us']:.1f} µs, bootstrap key "
        f"{guard['bootstrap_key_us']:.1f} µs, auth off {guard['off_us']:.1f} µs"
    )
    for scenario in results.values():
        server_us = scenario["arms"]["off"]["server_cpu_ms_per_request"] * 1000
        print(
            f"  = {guard['read_key_us'] / server_us:.2%} (read key) and {guard['bootstrap_key_us'] / server_us:.2%} "
            f"(bootstrap) of the server's CPU per request with auth off in '{scenario['label']}' ({server_us:.0f} µs)"
        )
    print(f"\nruntime {runtime_s:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "auth.json"
    redacted = auth_config("<random per run>")
    out.write_text(
        json.dumps(
            {
                "backend": BACKEND,
                "quantization": QUANTIZATION,
                "quick": args.quick,
                "plan": asdict(plan),
                "clients": CLIENTS,
                "target_max_apart": TARGET,
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "platform": platform.platform(),
                    "load_average_start": load_start,
                    "load_average_end": os.getloadavg(),
                },
                "versions": versions(),
                "git": git_revision(),
                "server_config_off": server_config(BACKEND, QUANTIZATION) + COMMON_CONFIG,
                "server_config_on": server_config(BACKEND, QUANTIZATION) + COMMON_CONFIG + redacted,
                "read_key_id": prepared["read_key_id"],
                "search_without_key_status": prepared["search_without_key_status"],
                "scenarios": results,
                "guard_cpu_us_per_request": guard,
                "runtime_s": runtime_s,
                "server_log_errors": {"off": off.log_errors[:50], "on": on.log_errors[:50]},
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
