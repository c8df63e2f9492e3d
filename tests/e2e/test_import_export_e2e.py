"""`akidb import` and `akidb export` against a real server running the real MiniLM.

The import file is 3,000 fortunes (a third of them without an id: the importer names them by a hash of their
content) with bad lines planted among them. The import is killed with SIGKILL part-way, run again, and must
leave every document in the collection exactly once, the bad lines (and only those) in the rejects file with
their reasons, and exit 2. Then export with vectors, import into a new collection, and compare.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from akidb.client import document_id
from tests.e2e.conftest import AkidbServer, _child_env, fortunes, run_akidb

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GOOD_DOCUMENTS = 3000
# Line number (1-based, in the file) -> (the line, a word its reason must hold).
PLANTED: dict[int, tuple[str, str]] = {
    7: ('{"id": "broken", "text": "no closing brace"', "JSON"),
    400: (json.dumps({"id": "nothing", "metadata": {"a": 1}}), "neither"),
    1201: (json.dumps({"id": "short-vector", "text": "a vector too short", "vector": [0.5, 0.25]}), "384"),
    1777: (json.dumps({"id": "blank", "text": "   "}), "empty"),
    2500: (json.dumps({"id": "bad-metadata", "text": "metadata must be an object", "metadata": [1, 2]}), "object"),
    2998: ("[1, 2, 3]", "JSON object"),
}


def _documents() -> list[dict[str, Any]]:
    """The good documents in file order; every third has no id."""
    documents = []
    for number, fortune in enumerate(fortunes()[:GOOD_DOCUMENTS]):
        document = {"text": fortune["text"], "source": fortune["source"]}
        if number % 3 != 2:
            document = {"id": fortune["id"], **document}
        documents.append(document)
    return documents


def _expected_ids(documents: list[dict[str, Any]]) -> set[str]:
    ids = set()
    for document in documents:
        content = {"text": document["text"], "metadata": {"source": document["source"]}}
        ids.add(document.get("id") or document_id(content))
    return ids


def _write_file(path: Path, documents: list[dict[str, Any]]) -> None:
    lines, good = [], iter(documents)
    total = len(documents) + len(PLANTED)
    for number in range(1, total + 1):
        lines.append(PLANTED[number][0] if number in PLANTED else json.dumps(next(good)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _all_documents(server: AkidbServer, collection: str, *, vectors: bool = False) -> dict[str, dict[str, Any]]:
    include = ["text", "metadata", "vector"] if vectors else ["text", "metadata"]
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        page = server.client.post(
            f"/api/v1/collections/{collection}/get", json={"limit": 1000, "cursor": cursor, "include": include}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        for document in body["documents"]:
            assert document["id"] not in found, f"{document['id']} listed twice"
            found[document["id"]] = document
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def _state(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.with_name(path.name + ".akidb-import.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _kill_part_way(args: list[str], source: Path, cwd: Path, at_least: int) -> dict[str, Any]:
    """Start `akidb import`, SIGKILL it once its state counts `at_least` documents; returns that state."""
    process = subprocess.Popen(
        [sys.executable, "-m", "akidb", *args],
        cwd=cwd,
        env=_child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            state = _state(source)
            if state is not None and state["imported"] >= at_least:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                return state
            assert process.poll() is None, f"import ended before the kill: {process.stdout.read()!r}"  # type: ignore[union-attr]
            time.sleep(0.05)
        pytest.fail("the import did not get far enough to be killed")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def imported(akidb_server: AkidbServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The killed and resumed import; what a test needs to check it."""
    work = tmp_path_factory.mktemp("import")
    source = work / "fortunes.jsonl"
    documents = _documents()
    _write_file(source, documents)
    created = akidb_server.client.post("/api/v1/collections", json={"name": "fortunes"})
    assert created.status_code == 201, created.text
    args = ["import", str(source), "--collection", "fortunes", "--url", akidb_server.base_url, "--batch-size", "50"]
    killed_state = _kill_part_way(args, source, work, at_least=600)
    after_kill = akidb_server.client.post("/api/v1/collections/fortunes/count", json={}).json()["count"]
    rerun = run_akidb(*args, cwd=work)
    again = run_akidb(*args, cwd=work)
    return {
        "work": work,
        "source": source,
        "documents": documents,
        "killed_state": killed_state,
        "after_kill": after_kill,
        "rerun": rerun,
        "again": again,
        "args": args,
    }


def test_a_killed_import_resumes_and_every_document_is_in_exactly_once(
    akidb_server: AkidbServer, imported: dict[str, Any]
) -> None:
    rerun = imported["rerun"]
    killed = imported["killed_state"]
    assert 600 <= killed["imported"] < GOOD_DOCUMENTS, killed
    assert killed["imported"] <= imported["after_kill"] < GOOD_DOCUMENTS, "the kill came after the end"
    assert rerun.returncode == 2, f"stdout:\n{rerun.stdout}\nstderr:\n{rerun.stderr}"
    assert f"resumed after line {killed['line']:,}" in rerun.stdout, rerun.stdout
    assert f"imported {GOOD_DOCUMENTS:,} documents" in rerun.stdout, rerun.stdout
    # The rerun did not start over: it inserted only what the first run had not acknowledged.
    inserted = int(rerun.stdout.split("(")[1].split(" new")[0].replace(",", ""))
    assert inserted <= GOOD_DOCUMENTS - killed["imported"], rerun.stdout

    stored = _all_documents(akidb_server, "fortunes")
    assert len(stored) == GOOD_DOCUMENTS
    assert set(stored) == _expected_ids(imported["documents"])
    by_text = {document["text"]: document for document in stored.values()}
    for document in imported["documents"]:
        assert by_text[document["text"]]["metadata"] == {"source": document["source"]}
    count = akidb_server.client.post("/api/v1/collections/fortunes/count", json={}).json()["count"]
    assert count == GOOD_DOCUMENTS


def test_the_rejects_file_holds_the_planted_lines_with_their_reasons(imported: dict[str, Any]) -> None:
    source: Path = imported["source"]
    rejects_file = source.with_name(source.name + ".rejects.jsonl")
    rejects = [json.loads(line) for line in rejects_file.read_text(encoding="utf-8").splitlines()]
    assert [reject["line"] for reject in rejects] == sorted(PLANTED), rejects
    for reject in rejects:
        word = PLANTED[reject["line"]][1]
        assert word in reject["reason"], reject
        assert reject.get("document") or reject.get("raw"), reject
    short = next(reject for reject in rejects if reject["line"] == 1201)
    assert short["document"]["id"] == "short-vector"
    assert short["code"] == "dimension_mismatch"


def test_a_finished_import_run_again_sends_nothing(akidb_server: AkidbServer, imported: dict[str, Any]) -> None:
    again = imported["again"]
    assert again.returncode == 2, again.stderr
    assert "already imported" in again.stdout, again.stdout
    state = _state(imported["source"])
    assert state is not None
    assert state["done"] is True
    assert state["imported"] == GOOD_DOCUMENTS
    assert state["rejected"] == len(PLANTED)


def test_export_then_import_round_trips_ids_texts_metadata_and_vectors(
    akidb_server: AkidbServer, imported: dict[str, Any]
) -> None:
    work: Path = imported["work"]
    exported = work / "export.jsonl"
    result = run_akidb(
        "export", "fortunes", "--url", akidb_server.base_url, "--include-vectors", "--output", str(exported), cwd=work
    )
    assert result.returncode == 0, result.stderr
    assert f"exported {GOOD_DOCUMENTS:,} documents" in result.stdout
    assert len(exported.read_text(encoding="utf-8").splitlines()) == GOOD_DOCUMENTS
    created = akidb_server.client.post("/api/v1/collections", json={"name": "fortunes-copy"})
    assert created.status_code == 201, created.text
    loaded = run_akidb(
        "import", str(exported), "--collection", "fortunes-copy", "--url", akidb_server.base_url, cwd=work
    )
    assert loaded.returncode == 0, f"stdout:\n{loaded.stdout}\nstderr:\n{loaded.stderr}"
    original = _all_documents(akidb_server, "fortunes", vectors=True)
    copy = _all_documents(akidb_server, "fortunes-copy", vectors=True)
    assert copy == original
    # The copy was not re-embedded: its vectors are the exported ones, bit for bit (compared above), and a
    # search over each finds the same neighbours.
    query = {"query": "the meaning of life", "top_k": 5, "include": []}
    hits = [
        [
            hit["id"]
            for hit in akidb_server.client.post(f"/api/v1/collections/{name}/search", json=query).json()["results"]
        ]
        for name in ("fortunes", "fortunes-copy")
    ]
    assert hits[0] == hits[1]


def test_export_with_a_filter_writes_only_the_matching_documents(
    akidb_server: AkidbServer, imported: dict[str, Any]
) -> None:
    work: Path = imported["work"]
    result = run_akidb(
        "export", "fortunes", "--url", akidb_server.base_url, "--filter", '{"source": "science"}', cwd=work
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = sum(1 for document in imported["documents"] if document["source"] == "science")
    assert expected > 0
    assert len(lines) == expected
    assert all(line["metadata"] == {"source": "science"} and "vector" not in line for line in lines)


def test_a_csv_file_with_a_quoted_multi_line_field_imports(akidb_server: AkidbServer, tmp_path: Path) -> None:
    source = tmp_path / "notes.csv"
    source.write_text(
        "id,text,team,vector\n"
        'n1,"first note, with a comma",search,\n'
        'n2,"second note\nover two lines",ops,\n'
        'n3,,ops,"[0.1, 0.2]"\n'
        "n4,fourth note,search,\n",
        encoding="utf-8",
    )
    result = run_akidb(
        "import", str(source), "--collection", "notes", "--create", "--metadata-fields", "team",
        "--url", akidb_server.base_url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    stored = _all_documents(akidb_server, "notes")
    assert stored["n2"]["text"] == "second note\nover two lines"
    assert stored["n1"]["metadata"] == {"team": "search"}
    assert set(stored) == {"n1", "n2", "n4"}
    rejects = source.with_name("notes.csv.rejects.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rejects) == 1
    assert json.loads(rejects[0])["line"] == 5


def test_a_fatal_error_exits_1_and_names_it(akidb_server: AkidbServer, tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"id": "x", "text": "hello"}) + "\n", encoding="utf-8")
    result = run_akidb("import", str(source), "--collection", "no-such", "--url", akidb_server.base_url, cwd=tmp_path)
    assert result.returncode == 1
    assert "'no-such' does not exist" in result.stderr


def test_on_a_terminal_the_import_draws_a_progress_bar(akidb_server: AkidbServer, tmp_path: Path) -> None:

    source = tmp_path / "bar.jsonl"
    lines = [json.dumps({"id": f"bar-{n}", "text": fortune["text"]}) for n, fortune in enumerate(fortunes()[:300])]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    leader, follower = pty.openpty()
    try:
        args = ["import", str(source), "--collection", "bar", "--create", "--url", akidb_server.base_url]
        result = subprocess.run(
            [sys.executable, "-m", "akidb", *args],
            cwd=tmp_path,
            env=_child_env() | {"COLUMNS": "160", "TERM": "xterm"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
            check=False,
        )
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end is closed and everything has been read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    assert result.returncode == 0, drawn.decode(errors="replace")
    screen = drawn.decode(errors="replace")
    assert "docs/s" in screen
    assert "ETA" in screen
    assert "100%" in screen
    assert "300 docs" in screen


def test_a_usage_mistake_exits_1_not_2_which_means_rejected_documents(tmp_path: Path) -> None:
    result = run_akidb("import", str(tmp_path / "any.jsonl"), "--batch-size", "many", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "--batch-size" in result.stderr
