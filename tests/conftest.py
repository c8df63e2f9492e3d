from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the checkout (SHARED_DATA_DIR overrides)."""
    return Path(os.environ.get("SHARED_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    assert path.is_dir(), f"test data not found at {path}; set SHARED_DATA_DIR"
    return path


# --- PostgreSQL ---------------------------------------------------------------------------------------
# A throwaway cluster for the tests that run on PostgreSQL (integration and e2e): one per session, a fresh
# database per test module. .ci/run installs the server; a machine without it fails these tests, never
# skips them.


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or (
        [shutil.which(name)] if shutil.which(name) else []
    )
    assert found, f"PostgreSQL server binaries ({name}) not found: apt-get install postgresql (.ci/run does)"
    return str(found[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """The base URL (without a database name) of a cluster on a Unix socket, with fsync off."""
    root = Path(tempfile.mkdtemp(prefix="akidb-pg-"))
    root.chmod(0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run(
        [*as_user, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "akidb"], check=True, capture_output=True
    )
    options = f"-c listen_addresses='' -k {root} -p {port} -c fsync=off"
    subprocess.run(
        [*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"host={root}&port={port}"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres_cluster: str) -> str:
    """A new, empty database on the session's cluster."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"dbname=postgres user=akidb {postgres_cluster.replace('&', ' ')}", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://akidb@/{name}?{postgres_cluster}"
