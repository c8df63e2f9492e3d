"""One `akidb serve` per SQLite data directory: a second refuses to start with one line, and a crashed first
one (kill -9) leaves nothing behind that stops the next start. On a shared PostgreSQL database, one process
per data directory too: each keeps its own indexes there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import AkidbServer, _child_env, free_port

MOCK = '[embedding]\nprovider = "mock"\n'


def serve_once(data_dir: Path, config_text: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    config = cwd / "akidb.toml"
    config.write_text(config_text)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "akidb",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(data_dir),
            "--config",
            str(config),
        ],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_a_second_process_on_one_sqlite_data_dir_refuses_to_start(tmp_path: Path) -> None:
    first = AkidbServer(tmp_path / "first", config=MOCK)
    first.start()
    try:
        second = serve_once(first.data_dir, MOCK, tmp_path)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert "one akidb serve per data directory" in lines[0]
        assert first.process is not None
        assert f"pid {first.process.pid}" in lines[0]
        # The first one never noticed.
        assert first.client.get("/health/ready").status_code == 200
        # A crash releases the claim: the next start on the same directory is served.
        first.kill9()
        first.start()
        assert first.client.get("/health/ready").status_code == 200
    finally:
        first.close()


def test_processes_sharing_postgresql_need_their_own_data_dirs(tmp_path: Path, postgres_url: str) -> None:
    config = f'[storage]\nurl = "{postgres_url}"\n\n{MOCK}'
    first = AkidbServer(tmp_path / "first", config=config)
    first.start()
    try:
        second = serve_once(first.data_dir, config, tmp_path)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert "each need their own --data-dir" in lines[0]
        assert first.process is not None
        assert f"pid {first.process.pid}" in lines[0]
        assert first.client.get("/health/ready").status_code == 200
    finally:
        first.close()
