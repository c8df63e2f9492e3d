"""`akidb backup` and `akidb restore` end to end.

- A server under a steady stream of upserts is backed up (the CLI as a subprocess, while the server runs and
  keeps writing); the backup is restored into a new data directory and a second server started on it has
  every document acknowledged before the backup began, vectors included, and is ready.
- Refusals, each exit 2 and one line on stderr: restore into a non-empty data directory; backup of a
  PostgreSQL database (pg_dump's job), before any connection is attempted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import AkidbServer, assert_one_line_refusal, run_akidb

pytestmark = pytest.mark.e2e

CONFIG = '[embedding]\nprovider = "mock"\n'
COLLECTION = "backed"
DIMENSION = 4
BATCH = 25
GET_CHUNK = 100


def vector_of(n: int) -> list[float]:
    # Multiples of 1/8: exact in float32, so what comes back equals what went in.
    return [n / 8.0, (n % 7) / 8.0, -(n % 5) / 8.0, 1.0]


class Writer(threading.Thread):
    """Upserts batches of BATCH documents until stopped; records when each id was acknowledged."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: dict[str, tuple[float, int]] = {}  # id -> (monotonic time of the answer, n)
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            with httpx.Client(base_url=self.base_url, timeout=60.0) as client:
                while not self.stop_event.is_set():
                    numbers = range(n, n + BATCH)
                    documents = [{"id": f"doc-{k}", "vector": vector_of(k), "metadata": {"n": k}} for k in numbers]
                    response = client.post(f"/api/v1/collections/{COLLECTION}/upsert", json={"documents": documents})
                    assert response.status_code == 200, response.text
                    answered = time.monotonic()
                    with self.lock:
                        for k in numbers:
                            self.acknowledged[f"doc-{k}"] = (answered, k)
                    n += BATCH
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def acknowledged_before(self, moment: float) -> dict[str, int]:
        with self.lock:
            return {doc_id: k for doc_id, (at, k) in self.acknowledged.items() if at < moment}

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def test_backup_under_write_load_restores_every_acknowledged_document(tmp_path: Path) -> None:
    source = AkidbServer(tmp_path / "source", config=CONFIG)
    restored = AkidbServer(tmp_path / "restored", config=CONFIG)
    writer: Writer | None = None
    try:
        source.start()
        created = source.client.post(
            "/api/v1/collections",
            json={"name": COLLECTION, "embedding_model": None, "dimension": DIMENSION, "metric": "l2"},
        )
        assert created.status_code in (200, 201), created.text
        writer = Writer(source.base_url)
        writer.start()
        deadline = time.monotonic() + 60
        while writer.count() < 20 * BATCH and writer.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.error is None, f"the writer failed: {writer.error!r}\n{source.log_tail()}"
        assert writer.count() >= 20 * BATCH, "the writer made too little progress before the backup"

        backup_path = tmp_path / "backup.sqlite3"
        began = time.monotonic()
        result = run_akidb("backup", str(backup_path), "--data-dir", str(source.data_dir), cwd=tmp_path)
        ended = time.monotonic()
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert str(backup_path) in result.stdout, result.stdout
        assert "documents" in result.stdout, result.stdout
        written_during_backup = len(writer.acknowledged_before(ended)) - len(writer.acknowledged_before(began))
        time.sleep(0.3)  # writes go on after the backup, too
        writer.stop_event.set()
        writer.join(timeout=60)
        assert writer.error is None, f"the writer failed: {writer.error!r}\n{source.log_tail()}"
        assert written_during_backup > 0, "no write was acknowledged while the backup ran"
        before = writer.acknowledged_before(began)
        total = writer.count()
        assert source.running, source.log_tail()
        assert backup_path.is_file()
        assert not list(tmp_path.glob(".backup.sqlite3.partial-*")), "a temporary file was left behind"

        new_dir = tmp_path / "restored" / "data"
        result = run_akidb("restore", str(backup_path), "--data-dir", str(new_dir), cwd=tmp_path)
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert (new_dir / "akidb.sqlite3").is_file()
        assert not (new_dir / "indexes").exists() or not any((new_dir / "indexes").iterdir())

        restored.start()  # waits for /health/ready
        ready = restored.client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        counted = restored.client.post(f"/api/v1/collections/{COLLECTION}/count", json={})
        assert counted.status_code == 200, counted.text
        count = counted.json()["count"]
        assert len(before) <= count <= total, (len(before), count, total)

        ids = sorted(before)
        found: dict[str, list[float]] = {}
        for start in range(0, len(ids), GET_CHUNK):
            chunk = ids[start : start + GET_CHUNK]
            got = restored.client.post(
                f"/api/v1/collections/{COLLECTION}/get",
                json={"ids": chunk, "limit": len(chunk), "include": ["vector", "metadata"]},
            )
            assert got.status_code == 200, got.text
            for document in got.json()["documents"]:
                found[document["id"]] = document["vector"]
                assert document["metadata"] == {"n": before[document["id"]]}
        missing = [doc_id for doc_id in ids if doc_id not in found]
        assert not missing, f"{len(missing)} acknowledged documents are missing, e.g. {missing[:5]}"
        for doc_id, k in before.items():
            assert found[doc_id] == pytest.approx(vector_of(k)), doc_id

        # The restored server searches too: its index was rebuilt from the database.
        probe = ids[-1]
        hit = restored.client.post(
            f"/api/v1/collections/{COLLECTION}/search", json={"vector": vector_of(before[probe]), "top_k": 1}
        )
        assert hit.status_code == 200, hit.text
        assert hit.json()["results"][0]["id"] == probe
    finally:
        if writer is not None:
            writer.stop_event.set()
            writer.join(timeout=60)
        source.close()
        restored.close()


def test_restore_refuses_a_non_empty_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "d1"
    migrated = run_akidb("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    backup_path = tmp_path / "b.sqlite3"
    result = run_akidb("backup", str(backup_path), "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("x")
    assert_one_line_refusal(
        run_akidb("restore", str(backup_path), "--data-dir", str(target), cwd=tmp_path), "not empty", str(target)
    )
    assert sorted(path.name for path in target.iterdir()) == ["something"]
    # Nor over a database, a server's own data directory included.
    assert_one_line_refusal(
        run_akidb("restore", str(backup_path), "--data-dir", str(data_dir), cwd=tmp_path), "not empty"
    )
    # Nor over an existing backup file.
    assert_one_line_refusal(
        run_akidb("backup", str(backup_path), "--data-dir", str(data_dir), cwd=tmp_path), "already exists"
    )


def test_backup_of_postgresql_points_to_pg_dump(tmp_path: Path) -> None:
    config = tmp_path / "akidb.toml"
    # Nothing listens there: the refusal comes before any connection.
    config.write_text('[storage]\nurl = "postgresql+psycopg://akidb@127.0.0.1:1/akidb"\n', encoding="utf-8")
    result = run_akidb("backup", str(tmp_path / "out.sqlite3"), "--config", str(config), cwd=tmp_path)
    assert_one_line_refusal(result, "pg_dump")
    assert not (tmp_path / "out.sqlite3").exists()
    result = run_akidb("restore", str(tmp_path / "out.sqlite3"), "--config", str(config), cwd=tmp_path)
    assert_one_line_refusal(result, "pg_restore")
