"""End-to-end fixtures: a real `akidb serve` subprocess on 127.0.0.1, a free port and a temporary data dir.

The server runs the real default model (all-MiniLM-L6-v2 from the packaged copy, on the backend `auto`
picks: ONNX Runtime on this kind of machine), with
HF_HUB_OFFLINE=1 so that nothing is downloaded. Its stdout and stderr go to a log file next to the data
dir, and the tail of that log is part of every start-up failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 6000


def shared_data_dir() -> Path:
    """The shared data folder: $SHARED_DATA_DIR if set, else ../shared/data next to the repository."""
    override = os.environ.get("SHARED_DATA_DIR")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@cache
def fortunes() -> tuple[dict[str, Any], ...]:
    """Every line of fortunes-corpus.jsonl ({"id", "text", "source"}), in file order."""
    path = shared_data_dir() / "fortunes-corpus.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; set SHARED_DATA_DIR to the folder that holds it")
    with path.open(encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines if line.strip())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    # AKIDB_* variables are settings to the server (an unknown one stops start-up), so none leak in from
    # the test run: the server gets its defaults and the CLI flags only.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AKIDB_")}
    env["HF_HUB_OFFLINE"] = "1"
    # Exported ONNX graphs are shared with the other tests (and kept between local runs), not ~/.cache.
    env["AKIDB_EMBEDDING_CACHE_DIR"] = str(REPO_ROOT / ".cache" / "akidb-tests")
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process_group(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM to a process started with start_new_session=True and its children; SIGKILL after 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class AkidbServer:
    """One `akidb serve` process at a time on a fixed data dir; start() again after stop() or kill9()."""

    def __init__(
        self, root: Path, config: str | None = None, *, scheme: str = "http", verify: str | bool = True
    ) -> None:
        """`config`: the text of an akidb.toml passed with --config (defaults only, if None). `scheme` https
        for a server configured with TLS, `verify` the CA file that signed its certificate."""
        self.root = root
        self.scheme = scheme
        self.verify = verify
        self.config = config
        self.data_dir = root / "data"
        self.log_path = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._client: httpx.Client | None = None
        self.starts = 0

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def base_url(self) -> str:
        assert self.port is not None, "the server has not been started"
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def client(self) -> httpx.Client:
        if self._client is None or not self.running:
            pytest.fail(f"the server is not running\n{self.log_tail()}")
        return self._client

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the server and wait for GET /health/ready to answer 200; fail with the log tail if not."""
        assert not self.running, "the server is already running"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.starts += 1
        config_args: list[str] = []
        if self.config is not None:
            config_path = self.root / "akidb.toml"
            config_path.write_text(self.config, encoding="utf-8")
            config_args = ["--config", str(config_path)]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} on port {self.port} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "akidb",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    *config_args,
                ],
                cwd=self.root,  # no akidb.toml from the working directory is picked up
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(120.0, connect=5.0),
            verify=ssl.create_default_context(cafile=self.verify) if isinstance(self.verify, str) else self.verify,
        )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        assert self._client is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self._close_client()
                pytest.fail(f"akidb serve exited with code {code} before it was ready\n{self.log_tail()}")
            try:
                response = self._client.get("/health/ready", timeout=2.0)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            time.sleep(0.25)
        self.kill9()
        pytest.fail(f"akidb serve was not ready after {timeout_s:.0f} s (last answer: {last})\n{self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Graceful stop: SIGTERM, then wait for the process to exit. Returns its exit code.

        uvicorn runs its shutdown (the app's lifespan end: index checkpoints) and then re-raises the signal,
        so a clean stop usually reads -15 rather than 0.
        """
        assert self.process is not None, "the server has not been started"
        self._close_client()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
                pytest.fail(f"akidb serve did not exit within {timeout_s:.0f} s of SIGTERM\n{self.log_tail()}")
        return int(self.process.returncode)

    def kill9(self) -> int:
        """Crash: SIGKILL, no shutdown hooks. Returns the exit code (-9 when it was still running)."""
        assert self.process is not None, "the server has not been started"
        self._close_client()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)
        return int(self.process.returncode)

    def restart(self) -> int:
        code = self.stop()
        self.start()
        return code

    def close(self) -> None:
        """Always safe: stop if running, killing if SIGTERM is not enough."""
        if self.process is None:
            return
        self._close_client()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- diagnostics ---------------------------------------------------------------------------------

    def log_of_last_start(self) -> str:
        """What the most recent process wrote (the log file holds every start, each after a marker line)."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text.rpartition(f"===== start #{self.starts} ")[2]

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no server log at {self.log_path}: {exc})"
        return f"--- last {min(chars, len(text))} characters of {self.log_path} ---\n{text[-chars:]}"


@pytest.fixture(scope="module")
def akidb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AkidbServer]:
    """A started server shared by a test module; stopped (or killed) at the end whatever happened."""
    server = AkidbServer(tmp_path_factory.mktemp("akidb-e2e"))
    try:
        server.start()
        yield server
    finally:
        server.close()


CLI_TIMEOUT_S = 120.0


def run_akidb(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m akidb ARGS` in `cwd` (no akidb.toml is picked up from elsewhere), with the tests' child
    environment unless `env` is given."""
    return subprocess.run(
        [sys.executable, "-m", "akidb", *args],
        cwd=cwd,
        env=_child_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2 with one line on stderr that holds every word; returns the line."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"stderr is not one line:\n{result.stderr}"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]
