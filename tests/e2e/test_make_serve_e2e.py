"""`make serve`, as the README tells a new user to run it, honours AKIDB_* settings and make's HOST/PORT."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO_ROOT, _child_env, free_port, stop_process_group

START_TIMEOUT_S = 90.0


def _serve_until_live(env: dict[str, str], make_args: list[str], port: int, log: Path) -> str:
    """Run `make serve`, wait until /health/live answers on `port`, stop it; returns the log."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "serve", *make_args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"make serve exited with {process.returncode}\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1.0).status_code == 200:
                    return log.read_text()
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"nothing answered on port {port} within {START_TIMEOUT_S:.0f} s\n{log.read_text()[-3000:]}")
    finally:
        stop_process_group(process)


def _env(tmp_path: Path) -> dict[str, str]:
    env = _child_env()
    env.pop("HOST", None)
    env.pop("PORT", None)
    env["AKIDB_STORAGE_DATA_DIR"] = str(tmp_path / "data")
    env["AKIDB_EMBEDDING_PROVIDER"] = "mock"
    return env


def test_an_akidb_setting_given_to_make_serve_takes_effect(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path)
    env["AKIDB_SERVER_PORT"] = str(port)
    log = _serve_until_live(env, [], port, tmp_path / "serve.log")
    assert "--port" not in log.splitlines()[0], "make passed a --port flag that would override AKIDB_SERVER_PORT"
    assert (tmp_path / "data" / "akidb.sqlite3").is_file(), "AKIDB_STORAGE_DATA_DIR was not used"


def test_port_given_to_make_still_wins(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path)
    env["AKIDB_SERVER_PORT"] = str(free_port())
    _serve_until_live(env, [f"PORT={port}"], port, tmp_path / "serve.log")
