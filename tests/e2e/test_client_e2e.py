"""akidb.client end to end: Client and AsyncClient against one real `akidb serve` (the real MiniLM, auth on,
small limits), plus small scripted HTTP servers (http.server, real sockets) for the retry rules.

Every test that takes `client` runs twice: once with Client, once with AsyncClient behind a thin adapter that
runs each coroutine on its own event loop. A recording transport (httpx's real one, subclassed) keeps what
each request carried, to check batches and the read-your-writes min_seq.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from akidb.client import (
    AkiDBError,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotCaughtUp,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RetryPolicy,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    document_id,
)
from tests.e2e.conftest import REPO_ROOT, AkidbServer, free_port

pytestmark = pytest.mark.e2e

ADMIN_KEY = "client-e2e-admin-key-3f9a1c"
MAX_DOCS = 40
CONFIG = (
    f'[auth]\nenabled = true\nadmin_key = "{ADMIN_KEY}"\nkey_cache_ms = 50\n\n'
    f"[limits]\nmax_documents_per_upsert = {MAX_DOCS}\nmax_top_k = 50\n"
)
FAST = RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.05)


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AkidbServer]:
    server = AkidbServer(tmp_path_factory.mktemp("akidb-client"), config=CONFIG)
    try:
        server.start()
        yield server
    finally:
        server.close()


class Recorder:
    """What each request carried: (method, path, JSON body or None, query parameters)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any, dict[str, list[str]]]] = []

    def record(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body, parse_qs(request.url.query.decode())))

    def last(self, suffix: str) -> tuple[str, str, Any, dict[str, list[str]]]:
        return next(r for r in reversed(self.requests) if r[1].endswith(suffix))


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.recorder.record(request)
        return super().handle_request(request)


class RecordingAsyncTransport(httpx.AsyncHTTPTransport):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.recorder.record(request)
        return await super().handle_async_request(request)


class Blocking:
    """AsyncClient with Client's face: each coroutine runs to the end on this adapter's own loop."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if inspect.isasyncgenfunction(attr):
            return lambda *args, **kwargs: iter(self._loop.run_until_complete(_collect(attr(*args, **kwargs))))
        if inspect.iscoroutinefunction(attr):
            return lambda *args, **kwargs: self._loop.run_until_complete(attr(*args, **kwargs))
        return attr

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


async def _collect(items: Any) -> list[Any]:
    return [item async for item in items]


Make = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(flavor: str) -> Iterator[Make]:
    """make(url, api_key=..., recorder=..., **options): a Client, or an AsyncClient behind Blocking."""
    made: list[Any] = []

    def build(url: str, api_key: str | None = None, *, recorder: Recorder | None = None, **options: Any) -> Any:
        if flavor == "sync":
            transport = RecordingTransport(recorder) if recorder else None
            client: Any = Client(url, api_key, transport=transport, **options)
        else:
            async_transport = RecordingAsyncTransport(recorder) if recorder else None
            client = Blocking(AsyncClient(url, api_key, transport=async_transport, **options))
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(server: AkidbServer, make: Make, recorder: Recorder) -> Any:
    return make(server.base_url, ADMIN_KEY, recorder=recorder)


@pytest.fixture
def name(flavor: str, request: pytest.FixtureRequest) -> str:
    """A collection name of its own for each test and flavor."""
    return f"{request.node.originalname.removeprefix('test_')[:40]}-{flavor}".replace("_", "-")


def texts(n: int, prefix: str = "note") -> list[dict[str, Any]]:
    return [
        {"text": f"{prefix} number {i} about topic {i % 3}", "metadata": {"n": i, "even": i % 2 == 0}} for i in range(n)
    ]


# --- the real server ------------------------------------------------------------------------------------


def test_ready_and_limits(client: Any) -> None:
    assert client.ready() is True
    limits = client.limits()
    assert limits.max_documents_per_upsert == MAX_DOCS
    assert limits.max_top_k == 50
    assert limits.max_page_size >= 100


def test_collection_lifecycle(client: Any, name: str) -> None:
    created = client.create_collection(name, hnsw={"m": 8, "ef_search": 40}, metadata={"team": "search"})
    assert (created.name, created.embedding_model, created.dimension, created.metric) == (
        name,
        "all-MiniLM-L6-v2",
        384,
        "cosine",
    )
    assert (created.hnsw.m, created.hnsw.ef_search, created.metadata) == (8, 40, {"team": "search"})
    assert created.created_at is not None
    assert created.seq == 0
    assert client.get_collection(name).metadata == {"team": "search"}
    assert name in [collection.name for collection in client.list_collections()]

    updated = client.update_collection(name, metadata={"team": "ranking"}, ef_search=99)
    assert (updated.metadata, updated.hnsw.ef_search, updated.hnsw.m) == ({"team": "ranking"}, 99, 8)

    with pytest.raises(Conflict) as duplicate:
        client.create_collection(name)
    assert (duplicate.value.status, duplicate.value.code) == (409, "already_exists")

    client.upsert(name, texts(3))
    assert client.last_seq(name) is not None
    client.delete_collection(name)
    assert client.last_seq(name) is None, "a deleted collection's seq is forgotten"
    with pytest.raises(NotFound) as missing:
        client.get_collection(name)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert name in str(missing.value)
    assert "404" in str(missing.value)

    # The same name again starts at seq 0: the client must not send the old collection's seq as min_seq.
    client.create_collection(name)
    assert client.count(name) == 0
    client.delete_collection(name)


def test_user_provided_vectors(client: Any, name: str) -> None:
    client.create_collection(name, embedding_model=None, dimension=3, metric="l2")
    result = client.upsert(
        name,
        [
            {"id": "x", "vector": (1, 0, 0), "text": "east", "metadata": {"axis": "x"}},
            {"id": "y", "vector": [0.0, 1.0, 0.0], "metadata": {"axis": "y"}},
            {"id": "z", "vector": [0.0, 0.0, 1.0]},
        ],
    )
    assert (result.ids, result.inserted, result.updated, result.embeddings_generated) == (["x", "y", "z"], 3, 0, False)
    document = client.get_document(name, "x", include_vector=True)
    assert (document.text, document.metadata, document.vector) == ("east", {"axis": "x"}, [1.0, 0.0, 0.0])
    assert client.get_document(name, "y").vector is None

    hits = client.search(name, vector=[0.9, 0.1, 0.0], top_k=2, include=["metadata", "vector"])
    assert [hit.id for hit in hits.results] == ["x", "y"]
    assert hits.results[0].distance == pytest.approx(0.02, abs=1e-5)
    assert hits.results[0].score == pytest.approx(-0.02, abs=1e-5)
    assert hits.results[0].vector == [1.0, 0.0, 0.0]
    assert hits.results[0].text is None

    with pytest.raises(ValidationFailed) as wrong:
        client.upsert(name, [{"id": "w", "vector": [1.0, 2.0]}])
    assert wrong.value.status == 422
    assert wrong.value.field is not None
    assert "vector" in wrong.value.field
    assert "3" in wrong.value.detail
    assert client.count(name) == 3, "a rejected request writes nothing"


def test_upsert_batches_and_deterministic_ids(client: Any, name: str, recorder: Recorder) -> None:
    client.create_collection(name)
    documents = texts(25)
    first = client.upsert(name, iter(documents), batch_size=10)
    upserts = [r for r in recorder.requests if r[1].endswith("/upsert")]
    assert [len(body["documents"]) for _, _, body, _ in upserts] == [10, 10, 5]
    assert first.ids == [document_id(document) for document in documents]
    assert (first.inserted, first.updated, first.embeddings_generated) == (25, 0, True)
    assert first.usage.total_tokens > 0
    assert first.model == "all-MiniLM-L6-v2"
    assert first.seq == client.last_seq(name)
    assert first.seq > 0

    again = client.upsert(name, documents, batch_size=10)
    assert again.ids == first.ids
    assert (again.inserted, again.updated) == (0, 25), "the same content is the same documents"
    assert again.seq > first.seq
    assert client.count(name) == 25

    # Without deterministic ids the server makes one per document and try.
    fresh = client.upsert(name, documents[:2], deterministic_ids=False)
    assert fresh.inserted == 2
    assert not set(fresh.ids) & set(first.ids)
    assert client.count(name) == 27


def test_documents_get_list_iter_count_delete(client: Any, name: str) -> None:
    client.create_collection(name)
    client.upsert(name, [{"id": f"d{i:02d}", **document} for i, document in enumerate(texts(12))])

    page = client.get(name, ["d05", "d01", "nope"])
    assert [document.id for document in page.documents] == ["d01", "d05"]
    assert page.documents[0].text == "note number 1 about topic 1"
    assert page.documents[0].vector is None
    with_vectors = client.get(name, "d02", include=["vector"])
    assert len(with_vectors.documents[0].vector) == 384
    assert with_vectors.documents[0].text is None
    evens = client.get(name, filter={"even": True}, limit=4)
    assert [document.id for document in evens.documents] == ["d00", "d02", "d04", "d06"]
    assert evens.next_cursor is not None
    rest = client.get(name, filter={"even": True}, limit=4, cursor=evens.next_cursor)
    assert [document.id for document in rest.documents] == ["d08", "d10"]
    assert rest.next_cursor is None

    listed = client.list_documents(name, limit=5)
    assert [document.id for document in listed.documents] == [f"d{i:02d}" for i in range(5)]
    second = client.list_documents(name, limit=5, cursor=listed.next_cursor, include_vector=True)
    assert second.documents[0].id == "d05"
    assert len(second.documents[0].vector) == 384

    assert [document.id for document in client.iter_documents(name, page_size=5)] == [f"d{i:02d}" for i in range(12)]
    odd = list(client.iter_documents(name, filter={"n": {"$gte": 9}}, page_size=2))
    assert [(document.id, document.metadata["n"]) for document in odd] == [("d09", 9), ("d10", 10), ("d11", 11)]

    assert client.count(name) == 12
    assert client.count(name, {"even": False}) == 6

    dry = client.delete(name, filter={"n": {"$lt": 3}}, dry_run=True)
    assert (dry.deleted, dry.dry_run) == (3, True)
    assert client.count(name) == 12
    gone = client.delete(name, filter={"n": {"$lt": 3}})
    assert (gone.deleted, gone.dry_run) == (3, False)
    assert gone.seq == client.last_seq(name)
    assert client.delete(name, ["d03", "d04", "nope"]).deleted == 2
    before = client.last_seq(name)
    client.delete_document(name, "d05")
    assert client.last_seq(name) > before, "the 204's X-AkiDB-Seq is remembered"
    with pytest.raises(NotFound):
        client.get_document(name, "d05")
    with pytest.raises(NotFound):
        client.delete_document(name, "d05")
    with pytest.raises(ValidationFailed):
        client.delete(name)  # neither ids nor a filter: never the whole collection
    assert client.count(name) == 6


def test_search_modes(client: Any, name: str) -> None:
    client.create_collection(name)
    client.upsert(
        name,
        [
            {"id": "cat", "text": "The cat sleeps on the warm windowsill", "metadata": {"kind": "pet"}},
            {"id": "dog", "text": "A dog fetches the ball in the park", "metadata": {"kind": "pet"}},
            {"id": "db", "text": "AkiDB stores vectors in RAM for fast search", "metadata": {"kind": "tech"}},
            {"id": "gpu", "text": "Zyphrax accelerators run matrix multiplications", "metadata": {"kind": "tech"}},
        ],
    )
    dense = client.search(name, "a kitten napping in the sun", top_k=2)
    assert dense.results[0].id == "cat"
    assert len(dense) == 2
    assert dense.results[0].text.startswith("The cat")
    assert dense.results[0].metadata == {"kind": "pet"}
    assert dense.model == "all-MiniLM-L6-v2"
    assert dense.usage.total_tokens > 0

    keyword = client.search(name, "zyphrax", mode="keyword", top_k=3, include=[])
    assert [hit.id for hit in keyword.results] == ["gpu"]
    assert keyword.results[0].distance is None
    assert keyword.results[0].text is None

    hybrid = client.search(
        name, "zyphrax", mode="hybrid", top_k=4, filter={"kind": "tech"}, fusion={"k": 10, "keyword_weight": 2.0}
    )
    assert {hit.id for hit in hybrid} == {"db", "gpu"}
    assert hybrid.results[0].id == "gpu"
    filtered = client.search(name, "an animal", top_k=4, filter={"kind": {"$ne": "pet"}}, ef_search=80)
    assert {hit.id for hit in filtered} == {"db", "gpu"}


def test_read_your_writes_sends_min_seq(
    client: Any, make: Make, server: AkidbServer, name: str, recorder: Recorder
) -> None:
    client.create_collection(name)
    written = client.upsert(name, texts(5))
    assert client.last_seq(name) == written.seq
    assert client.count(name) == 5
    assert recorder.last("/count")[2] == {"min_seq": written.seq}
    client.search(name, "note")
    assert recorder.last("/search")[2]["min_seq"] == written.seq
    client.get(name, ["x"])
    assert recorder.last("/get")[2]["min_seq"] == written.seq
    client.get_document(name, written.ids[0])
    assert recorder.last(written.ids[0])[3] == {"min_seq": [str(written.seq)]}
    client.list_documents(name, limit=2)
    assert recorder.last("/documents")[3] == {"limit": ["2"], "min_seq": [str(written.seq)]}
    list(client.iter_documents(name))
    assert recorder.last("/get")[2]["min_seq"] == written.seq
    # A caller's own min_seq wins.
    client.count(name, min_seq=0)
    assert recorder.last("/count")[2] == {"min_seq": 0}

    # A seq past the collection's last write is the server's 422, naming the field.
    with pytest.raises(ValidationFailed) as ahead:
        client.count(name, min_seq=written.seq + 1000)
    assert ahead.value.field == "min_seq"

    # Off: nothing is sent, and another collection's memory is separate.
    other = Recorder()
    plain = make(server.base_url, ADMIN_KEY, recorder=other, read_your_writes=False)
    assert plain.count(name) == 5
    assert other.last("/count")[2] == {}
    assert plain.last_seq(name) is None
    plain.upsert(name, texts(1, "other"))
    assert plain.count(name) == 6
    assert other.last("/count")[2] == {}


def test_embeddings(client: Any) -> None:
    one = client.embed("hello world")
    assert (len(one.embeddings), one.dimension, one.model) == (1, 384, "all-MiniLM-L6-v2")
    assert math.isclose(math.fsum(x * x for x in one.embeddings[0]), 1.0, rel_tol=1e-3)
    two = client.embed(["a query", "another"], input_type="query", normalize=False)
    assert len(two.embeddings) == 2
    assert two.usage.total_tokens > 0

    openai = client.openai_embeddings(["hello world", "second"])
    assert [item.index for item in openai.data] == [0, 1]
    assert openai.object == "list"
    assert openai.model == "all-MiniLM-L6-v2"
    assert openai.data[0].embedding == pytest.approx(one.embeddings[0], abs=1e-4)
    assert openai.usage.prompt_tokens > 0
    assert len(client.openai_embeddings("single").data) == 1

    with pytest.raises(NotFound) as unknown:
        client.embed("x", model="no-such-model")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(ValidationFailed):
        client.embed("   ")


def test_models(client: Any) -> None:
    listing = client.models()
    assert listing.default_model == "all-MiniLM-L6-v2"
    default = next(model for model in listing.models if model.id == listing.default_model)
    assert default.is_default
    assert default.loaded
    assert default.dimension == 384
    assert client.get_model("all-MiniLM-L6-v2").max_seq_length > 0
    loaded = client.load_model("all-MiniLM-L6-v2")  # already loaded: a no-op that answers the model
    assert (loaded.id, loaded.loaded) == ("all-MiniLM-L6-v2", True)
    other = next(model.id for model in listing.models if not model.loaded)
    unloaded = client.unload_model(other)
    assert (unloaded.id, unloaded.unloaded) == (other, False)
    with pytest.raises(NotFound) as missing:
        client.get_model("no-such-model")
    assert missing.value.code == "model_not_found"


def test_keys_and_roles(client: Any, make: Make, server: AkidbServer, name: str) -> None:
    client.create_collection(name)
    client.upsert(name, texts(2))
    created = client.create_key(f"reader-{name}", "read", collections=[name])
    assert created.role == "read"
    assert created.collections == [name]
    assert created.key
    assert created.id in [key.id for key in client.list_keys()]

    reader = make(server.base_url, created.key)
    assert reader.count(name) == 2
    assert [collection.name for collection in reader.list_collections()] == [name]
    with pytest.raises(Forbidden) as forbidden:
        reader.upsert(name, texts(1))
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")

    client.revoke_key(created.id)
    revoked = next(key for key in client.list_keys() if key.id == created.id)
    assert revoked.revoked_at is not None
    deadline = time.monotonic() + 10
    refused: Unauthorized | None = None
    while refused is None:  # every process refuses it within auth.key_cache_ms (50 ms here)
        try:
            reader.count(name)
        except Unauthorized as exc:
            refused = exc
        else:
            assert time.monotonic() < deadline, "a revoked key still works"
            time.sleep(0.05)
    assert (refused.status, refused.code) == (401, "unauthorized")
    with pytest.raises(Unauthorized):
        make(server.base_url).list_collections()


def test_error_mapping(client: Any, name: str) -> None:
    client.create_collection(name)
    with pytest.raises(BadRequest) as bad:
        client.create_collection(f"{name}-2", hnsw={"bogus": 1})
    assert (bad.value.status, bad.value.code) == (400, "invalid_body")
    assert bad.value.field == "hnsw"
    assert "bogus" in bad.value.detail
    with pytest.raises(PayloadTooLarge) as large:
        client.upsert(name, texts(MAX_DOCS + 1), batch_size=MAX_DOCS + 1)
    assert large.value.status == 413
    assert str(MAX_DOCS) in large.value.detail
    assert client.count(name) == 0
    # The same documents in batches under the limit go in.
    assert client.upsert(name, texts(MAX_DOCS + 1), batch_size=MAX_DOCS).inserted == MAX_DOCS + 1
    with pytest.raises(ValidationFailed) as bad_filter:
        client.count(name, {"n": {"$in": 3}})
    assert "$in" in bad_filter.value.detail
    with pytest.raises(AkiDBError) as any_error:
        client.search(name, "x", top_k=51)
    assert any_error.value.status in (413, 422)
    assert "top_k" in str(any_error.value)


def test_connection_failed_on_a_closed_port(make: Make) -> None:
    client = make(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=2, backoff_base=0.01))
    with pytest.raises(ConnectionFailed) as failed:
        client.limits()
    assert failed.value.status is None
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
    assert "2 tries" in str(failed.value)
    assert client.ready() is False


def test_import_pulls_in_no_server_dependency() -> None:
    heavy = ["numpy", "litestar", "sqlalchemy", "torch", "tantivy", "hnswlib", "onnxruntime", "yaml"]
    heavy += ["akidb.gateway", "akidb.collections", "akidb.storage", "akidb.embedding", "akidb.config", "akidb.cli"]
    code = (
        "import sys, json, akidb.client\n"
        f"print(json.dumps([name for name in {heavy!r} if name in sys.modules]))\n"
        "print(json.dumps(sorted(name for name in sys.modules if name.startswith('akidb'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded, akidb_modules = (json.loads(line) for line in result.stdout.splitlines())
    assert loaded == []
    assert all(module == "akidb" or module.startswith("akidb.client") for module in akidb_modules), akidb_modules


# --- retries, against scripted servers -----------------------------------------------------------------

LIMITS_BODY = json.dumps(
    {
        "max_body_bytes": 1,
        "max_documents_per_upsert": 2,
        "max_inputs_per_embed": 3,
        "max_text_chars": 4,
        "max_top_k": 5,
        "max_ids_per_request": 6,
        "max_page_size": 7,
        "max_filter_depth": 8,
        "max_filter_nodes": 9,
        "max_filter_values": 10,
        "a_field_from_a_newer_server": True,
    }
)
DROP = "drop"


def answer(status: int, body: str = "", **headers: str) -> tuple[int, str, dict[str, str]]:
    return status, body, {key.replace("_", "-"): value for key, value in headers.items()}


def error_body(status: int, code: str, detail: str = "try later") -> str:
    return json.dumps({"status_code": status, "detail": detail, "extra": {"code": code}})


class Scripted:
    """A real HTTP server on 127.0.0.1 that plays its script, one entry per request (the last repeats):
    an answer, or DROP (close the connection without one)."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.requests: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _play(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with lock:
                    step = outer.script[min(len(outer.requests), len(outer.script) - 1)]
                    outer.requests.append(f"{self.command} {self.path}")
                if step == DROP:
                    self.close_connection = True
                    self.connection.close()
                    return
                status, body, headers = step
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/plain")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _play

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(*script: Any) -> Scripted:
        servers.append(Scripted(*script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_429_is_retried_after_retry_after(make: Make, scripted: Callable[..., Scripted]) -> None:
    server = scripted(answer(429, error_body(429, "overloaded"), Retry_After="1"), answer(200, LIMITS_BODY))
    started = time.monotonic()
    limits = make(server.url, retry=RetryPolicy(attempts=3, backoff_base=0.0)).limits()
    assert limits.max_filter_values == 10
    assert len(server.requests) == 2
    assert time.monotonic() - started >= 0.9, "Retry-After: 1 was waited"


def test_503_is_retried_with_backoff(make: Make, scripted: Callable[..., Scripted]) -> None:
    server = scripted(answer(503, error_body(503, "model_unloading")), answer(200, LIMITS_BODY))
    assert make(server.url, retry=FAST).limits().max_top_k == 5
    assert server.requests == ["GET /api/v1/limits"] * 2


def test_other_errors_are_not_retried(make: Make, scripted: Callable[..., Scripted]) -> None:
    server = scripted(answer(400, error_body(400, "invalid_body", "bad")), answer(200, LIMITS_BODY))
    with pytest.raises(BadRequest) as bad:
        make(server.url, retry=FAST).limits()
    assert len(server.requests) == 1
    assert bad.value.detail == "bad"

    plain = scripted(answer(500, "boom: the proxy broke"))
    with pytest.raises(ServerError) as broken:
        make(plain.url, retry=FAST).limits()
    assert len(plain.requests) == 1
    assert broken.value.status == 500
    assert "boom: the proxy broke" in broken.value.detail
    assert broken.value.code is None

    teapot = scripted(answer(418, ""))
    with pytest.raises(AkiDBError) as other:
        make(teapot.url, retry=FAST).limits()
    assert type(other.value) is AkiDBError
    assert other.value.status == 418
    assert other.value.detail


def test_attempts_bound_the_retries(make: Make, scripted: Callable[..., Scripted]) -> None:
    server = scripted(answer(429, error_body(429, "overloaded"), Retry_After="0"))
    with pytest.raises(RateLimited) as limited:
        make(server.url, retry=RetryPolicy(attempts=4, backoff_base=0.0)).limits()
    assert len(server.requests) == 4
    assert limited.value.code == "overloaded"

    behind = scripted(answer(503, error_body(503, "not_caught_up"), Retry_After="0"))
    with pytest.raises(NotCaughtUp) as not_caught_up:
        make(behind.url, retry=RetryPolicy(attempts=2)).count("docs", min_seq=3)
    assert isinstance(not_caught_up.value, Unavailable)
    assert len(behind.requests) == 2


def test_dropped_connections(make: Make, scripted: Callable[..., Scripted]) -> None:
    # An idempotent request is sent again when the connection drops without an answer...
    server = scripted(DROP, answer(200, LIMITS_BODY))
    assert make(server.url, retry=FAST).limits().max_body_bytes == 1
    assert len(server.requests) == 2
    # ...a collection create is not (the first one may have happened)...
    created = json.dumps({"name": "c", "embedding_model": None, "dimension": 2, "metric": "l2"})
    create = scripted(DROP, answer(201, created))
    with pytest.raises(ConnectionFailed):
        make(create.url, retry=FAST).create_collection("c")
    assert len(create.requests) == 1
    # ...nor an upsert where the server makes the ids; with ids (deterministic by default) it is.
    upsert_answer = json.dumps({"seq": 1, "ids": ["a"], "inserted": 1, "updated": 0, "embeddings_generated": True})
    anonymous = scripted(DROP, answer(200, upsert_answer))
    with pytest.raises(ConnectionFailed):
        make(anonymous.url, retry=FAST).upsert("c", [{"text": "t"}], deterministic_ids=False)
    assert len(anonymous.requests) == 1
    with_ids = scripted(DROP, answer(200, upsert_answer))
    assert make(with_ids.url, retry=FAST).upsert("c", [{"text": "t"}]).seq == 1
    assert len(with_ids.requests) == 2


def test_connection_refused_is_retried_until_the_server_listens(make: Make) -> None:
    port = free_port()
    holder: list[ThreadingHTTPServer] = []

    def listen_later() -> None:
        time.sleep(0.3)
        probe = Scripted(answer(200, LIMITS_BODY))
        probe.close()  # only to reuse its handler class on a fixed port
        httpd = ThreadingHTTPServer(("127.0.0.1", port), probe.httpd.RequestHandlerClass)
        holder.append(httpd)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        client = make(f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=40, backoff_base=0.05, backoff_max=0.1))
        assert client.limits().max_page_size == 7
    finally:
        thread.join()
        for httpd in holder:
            httpd.shutdown()
            httpd.server_close()
