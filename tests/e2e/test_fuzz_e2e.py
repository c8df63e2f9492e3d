"""Fuzzing the HTTP API from its own OpenAPI document: Schemathesis over a real server with auth on.

The document is loaded from the running server's /schema/openapi.json and every operation in it is tested
(nothing is filtered out) with Schemathesis' phases: the documented examples, the coverage phase (boundary
values, missing and wrong-typed fields, each constraint just broken), property-based fuzzing, and stateful
sequences along the links it infers (create a collection, then upsert into it, search it, delete it...).
Every request carries the admin key. The checks: no 5xx, and every answer is one the document lists for
that operation, with the documented content type and a body that matches the documented schema.

A failure is a bug in the server or in the document (akidb/gateway/openapi.py); the report names each
failing case with its response and a curl command that reproduces it.

Two choices keep the run meaningful rather than trivially green:
- Half of the generated collection names and document ids are ones that exist (seeded below): a random
  valid name is almost always 404, which would leave search, upsert and the document routes untested.
- X-Request-Timeout-Ms is fixed at 60 s. Any positive number is valid, and a tiny one (1e-300 ms) is
  answered 503 deadline_exceeded, by design and as documented; not_a_server_error counts every 5xx, so a
  generated deadline would only report the design. tests/e2e/test_throughput_e2e.py covers the deadline and
  the header's 400; every other parameter is generated.

Budget: MAX_EXAMPLES per operation and phase, derandomized (the same cases on every run of the same document),
about 1,900 cases in about 30 s on two cores. CONFIG is Schemathesis' own configuration: the same settings in a
schemathesis.toml reproduce the run with `st run <server>/schema/openapi.json`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import events

from akidb.gateway.schemas import MAX_METADATA_DEPTH
from tests.e2e.conftest import AkidbServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ADMIN_KEY = "fuzz-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"
SERVER_CONFIG = f'[embedding]\nprovider = "mock"\n\n[auth]\nenabled = true\nadmin_key = "{ADMIN_KEY}"\n'
MAX_EXAMPLES = 25
# Wall-clock bound for the whole run (typically ~30 s); past it the test fails rather than hangs.
RUN_LIMIT_S = 240.0
MAX_ERRORS_SHOWN = 20
TEXT_COLLECTION = "fuzz-docs"
VECTOR_COLLECTION = "fuzz-vectors"
DOC_IDS = ["d0", "d1", "d2"]
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"]
CONFIG: dict[str, Any] = {
    # No state kept between runs (and nothing written under the repository).
    "cache": {"enabled": False},
    "headers": {"Authorization": f"Bearer {ADMIN_KEY}"},
    # The key is a throwaway of this test: the curl commands in a report carry it, so they run as printed.
    "output": {"sanitization": {"enabled": False}},
    "workers": 1,
    # Derandomized, and no Hypothesis example database: the same cases on every run, none replayed from .hypothesis/.
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    "dictionaries": {
        "collections": {"values": [TEXT_COLLECTION, VECTOR_COLLECTION]},
        "documents": {"values": DOC_IDS},
        "scratch": {"values": ["fuzz-scratch"]},
    },
    "parameters": {
        "path.name": {"dictionary": "collections", "probability": 0.5},
        "path.doc_id": {"dictionary": "documents", "probability": 0.5},
        # See the module docstring: a generated deadline is a documented 503, not a fault.
        "header.X-Request-Timeout-Ms": "60000",
    },
    "operations": [
        # Deleting a seeded collection early would turn the rest of the run into 404s; the collections the
        # run creates itself are deleted along the stateful links.
        {"include-operation-id": "deleteCollection", "parameters": {"path.name": {"dictionary": "scratch"}}},
    ],
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AkidbServer]:
    """One server per database: PostgreSQL refuses what SQLite takes (NUL characters), so both are fuzzed."""
    config = SERVER_CONFIG
    if request.param == "postgresql":
        config += f'\n[storage]\nurl = "{request.getfixturevalue("postgres_url")}"\n'
    server = AkidbServer(tmp_path_factory.mktemp(f"akidb-fuzz-{request.param}"), config=config)
    try:
        server.start()
        client = server.client
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        seed = [
            (
                {"name": TEXT_COLLECTION},
                [
                    {"id": doc_id, "text": f"document {doc_id} about vectors", "metadata": {"n": n}}
                    for n, doc_id in enumerate(DOC_IDS)
                ],
            ),
            (
                {"name": VECTOR_COLLECTION, "embedding_model": None, "dimension": 3, "metric": "l2"},
                [
                    {"id": doc_id, "vector": [1.0, float(n), 0.5], "text": f"vector {doc_id}"}
                    for n, doc_id in enumerate(DOC_IDS)
                ],
            ),
        ]
        for collection, documents in seed:
            response = client.post("/api/v1/collections", json=collection)
            assert response.status_code == 201, response.text
            response = client.post(f"/api/v1/collections/{collection['name']}/upsert", json={"documents": documents})
            assert response.status_code == 200, response.text
        yield server
    finally:
        server.close()


@dataclass
class Problem:
    """One kind of failure on one operation: the first case that showed it, and how often it was seen."""

    operation: str
    title: str
    message: str
    reproduce: str
    response: str
    count: int = 1


@dataclass
class Run:
    cases: int = 0
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    problems: dict[tuple[str, str, str], Problem] = field(default_factory=dict)
    # Errors of the run itself (a check that raised, a network error, a schema Schemathesis cannot use),
    # each with how often it was seen.
    errors: Counter[str] = field(default_factory=Counter)
    stop_reason: str = ""
    seconds: float = 0.0

    def record(self, recorder: Any) -> None:
        self.cases += len(recorder.cases)
        for case_id, interaction in recorder.interactions.items():
            response = interaction.response
            if response is not None:
                case = recorder.cases[case_id].value
                self.statuses.setdefault(case.operation.label, Counter())[response.status_code] += 1
        for case_id, checks in recorder.checks.items():
            for check in checks:
                info = check.failure_info
                if info is None:
                    if str(check.status) == "error":
                        self.errors[f"{recorder.label}: the check {check.name} raised an error"] += 1
                    continue
                failure = info.failure
                operation = failure.operation or recorder.label
                key = (operation, check.name, failure.title)
                if key in self.problems:
                    self.problems[key].count += 1
                    continue
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction is not None else None
                answer = "(no response)"
                if response is not None:
                    answer = f"{response.status_code}: {response.content[:600].decode('utf-8', 'replace')}"
                self.problems[key] = Problem(operation, failure.title, failure.message, info.code_sample, answer)

    def report(self) -> str:
        lines = [f"{self.cases} cases in {self.seconds:.1f} s (stopped: {self.stop_reason})"]
        for problem in self.problems.values():
            lines += [
                "",
                f"=== {problem.operation}: {problem.title} (seen in {problem.count} case(s))",
                problem.message.strip(),
                f"response: {problem.response}",
                "reproduce:",
                problem.reproduce.strip(),
            ]
        if self.errors:
            lines += ["", "=== errors of the run"]
            lines += [f"{error} ({count}×)" for error, count in self.errors.most_common(MAX_ERRORS_SHOWN)]
        return "\n".join(lines)

    def coverage(self) -> str:
        return "\n".join(
            f"  {label}: " + ", ".join(f"{status}×{count}" for status, count in sorted(counter.items()))
            for label, counter in sorted(self.statuses.items())
        )


def fuzz(base_url: str) -> Run:
    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json", config=config)
    run = Run()
    started = time.monotonic()
    stream = schemathesis.engine.from_schema(schema).execute()
    for event in stream:
        if time.monotonic() - started > RUN_LIMIT_S:
            stream.stop()
            run.errors[f"the run passed {RUN_LIMIT_S:.0f} s and was stopped"] += 1
            break
        if isinstance(event, events.ScenarioFinished):
            run.record(event.recorder)
        elif isinstance(event, events.NonFatalError):
            run.errors[f"{event.label}: {event.info.title}: {str(event.info).splitlines()[0]}"] += 1
        elif isinstance(event, events.FatalError):
            run.errors[f"Schemathesis stopped: {event.exception!r}"] += 1
        elif isinstance(event, events.EngineFinished):
            run.stop_reason = str(event.stop_reason)
            for failure in event.failures:
                run.errors[f"{failure.operation}: {failure.title}: {failure.message}"] += 1
    run.seconds = time.monotonic() - started
    return run


def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(server: AkidbServer) -> None:
    run = fuzz(server.base_url)
    print(f"\n{run.cases} generated cases in {run.seconds:.1f} s; statuses per operation:\n{run.coverage()}")
    assert not run.problems, run.report() + "\n\n" + server.log_tail()
    assert not run.errors, run.report() + "\n\n" + server.log_tail()
    assert run.cases > 0, "Schemathesis generated no case"
    tested = {label for label, counter in run.statuses.items() if counter}
    documented = {
        f"{method.upper()} {path}"
        for path, item in server.client.get("/schema/openapi.json").json()["paths"].items()
        for method in item
    }
    assert tested == documented, f"operations never called: {sorted(documented - tested)}"


def nested(template: str, depth: int) -> str:
    """`template` with `@` replaced by JSON objects nested `depth` levels, as text: no JSON encoder goes ~1,000
    levels deep."""
    return template.replace("@", '{"b":' * depth + "1" + "}" * depth)


UPSERT = f"/api/v1/collections/{TEXT_COLLECTION}/upsert"
DOCUMENT = '{"documents":[{"text":"x","metadata":@}]}'


@pytest.mark.parametrize(
    ("path", "template", "depth"),
    [
        (f"/api/v1/collections/{TEXT_COLLECTION}/count", '{"filter":@}', 5000),
        (UPSERT, DOCUMENT, 5000),
        (UPSERT, DOCUMENT, 960),
        (UPSERT, DOCUMENT, MAX_METADATA_DEPTH + 1),
        ("/api/v1/collections", '{"name":"deep","metadata":@}', 960),
        (f"/api/v1/collections/{TEXT_COLLECTION}", '{"metadata":@}', MAX_METADATA_DEPTH + 1),
    ],
    ids=["filter-5000", "metadata-5000", "metadata-960", "metadata-limit+1", "create-960", "patch-limit+1"],
)
def test_json_nested_too_deep_is_the_clients_400(server: AkidbServer, path: str, template: str, depth: int) -> None:
    """Found by hand, past what the generator builds: a body nested deeper than msgspec decodes was a 500, and
    metadata nested ~950 levels was stored, after which every list that held it was a 500."""
    client = server.client
    method = "PATCH" if template == '{"metadata":@}' else "POST"
    body = nested(template, depth)
    response = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["extra"]["code"] == "invalid_body"
    assert client.get("/api/v1/collections").status_code == 200


def test_metadata_at_the_nesting_limit_is_stored_and_listed(server: AkidbServer) -> None:
    client = server.client
    body = nested('{"name":"fuzz-nested","metadata":@}', MAX_METADATA_DEPTH)
    response = client.post("/api/v1/collections", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    assert client.get("/api/v1/collections").status_code == 200
    assert client.delete("/api/v1/collections/fuzz-nested").status_code == 204


def test_a_collection_name_with_a_trailing_newline_is_refused(server: AkidbServer) -> None:
    """`re.match` with `$` accepted 'abc\\n' (the name pattern in the document, an ECMA regex, does not)."""
    response = server.client.post("/api/v1/collections", json={"name": "abc\n"})
    assert response.status_code == 422, response.text
