"""Resident memory of a real `akidb serve` serving MiniLM with each backend and quantization.

    python -m bench.memory [--backends torch,onnx,mlx]      (part of make bench)

Each configuration gets its own server process on 127.0.0.1 (fallback off, so it really runs on the
backend named). After /health/ready, 200 fortunes are embedded through /api/v1/embed (so every
vocabulary page the texts use is touched), then VmRSS and VmHWM are read from /proc. The row
`user_provided (no model)` is the gateway alone; "model" is the difference to it. Writes
bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHARED_DATA_DIR") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / ".cache" / "akidb-bench"

CONFIGS = [
    ("user_provided", "fp32"),
    ("torch", "fp32"),
    ("torch", "int8"),
    ("onnx", "fp32"),
    ("onnx", "int8"),
    ("mlx", "fp32"),
    ("mlx", "fp16"),
    ("mlx", "int8"),
    ("mlx", "int4"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in {"VmRSS", "VmHWM"}:
                values[key] = int(rest.split()[0]) * 1024
    return values


def wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path, timeout_s: float = 300.0) -> str | None:
    """Wait until GET /health/ready answers 200: None then, else why not (with the server log's tail)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-1500:]
                return f"the server exited during start-up:\n{tail}"
            try:
                if client.get("/health/ready").status_code == 200:
                    return None
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                return f"the server was not ready in {timeout_s:.0f} s"
            time.sleep(0.5)


def fortunes(limit: int) -> list[str]:
    with open(DATA / "fortunes-corpus.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()][:limit]


def measure(provider: str, quantization: str, texts: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "akidb.toml"
        config.write_text(
            f'[embedding]\nprovider = "{provider}"\nquantization = "{quantization}"\nfallback = false\n'
            f'cache_dir = "{CACHE}"\n'
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AKIDB_")}
        env["HF_HUB_OFFLINE"] = "1"
        log = open(Path(scratch) / "server.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "akidb",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                scratch,
                "--config",
                str(config),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            failure = wait_ready(process, port, Path(scratch) / "server.log")
            if failure is not None:
                return {"config": f"{provider} {quantization}", "failed": failure}
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
            if provider != "user_provided":
                for start in range(0, len(texts), 50):
                    client.post("/api/v1/embed", json={"inputs": texts[start : start + 50]}).raise_for_status()
            status = proc_status(process.pid)
            loaded = [m for m in client.get("/api/v1/models").json()["models"] if m["loaded"]]
            return {
                "config": f"{provider} {quantization}",
                "rss_mb": status["VmRSS"] / 2**20,
                "peak_mb": status["VmHWM"] / 2**20,
                "model_memory_mb": loaded[0]["memory_mb"] if loaded else 0.0,
            }
        finally:
            process.terminate()
            process.wait(timeout=60)
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,onnx,mlx")
    args = parser.parse_args()
    backends = set(args.backends.split(",")) | {"user_provided"}
    texts = fortunes(200)
    rows = []
    for provider, quant in CONFIGS:
        if provider in backends:
            rows.append(measure(provider, quant, texts))
            print(f"measured {rows[-1]}", flush=True)
    base = next((r["rss_mb"] for r in rows if r["config"].startswith("user_provided") and "rss_mb" in r), 0.0)
    print("akidb serve, all-MiniLM-L6-v2, RSS after embedding 200 fortunes (MiB)")
    print(f"{'config':<24} {'RSS':>8} {'peak':>8} {'RSS - gateway alone':>20} {'manager measured':>17}")
    for row in rows:
        if "failed" in row:
            print(f"{row['config']:<24} failed to start:\n{row['failed']}")
            continue
        print(
            f"{row['config']:<24} {row['rss_mb']:8.0f} {row['peak_mb']:8.0f} {row['rss_mb'] - base:20.0f} "
            f"{row['model_memory_mb']:17.0f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
