"""A real server under load: the embedding cache, the bounded queue (429 with Retry-After), request
deadlines (503 without compute), clients that leave, the interactive lane, and the metrics that show it.

Each test that loads the queue sends one bulk request of real fortunes in a background thread, waits until
/metrics shows texts queued in the bulk lane, and then sends what it is testing. MiniLM on two cores
embeds a few hundred texts a second at most, so a few hundred queued texts keep the worker busy for
seconds; the assertions are about counts, never about speed.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import AkidbServer, fortunes
from .test_server import create_collection, expect, expect_error, search, upsert

MODEL = "all-MiniLM-L6-v2"
MAX_QUEUED = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AkidbServer]:
    config = f"[embedding]\nmax_queued_texts = {MAX_QUEUED}\n"
    akidb = AkidbServer(tmp_path_factory.mktemp("akidb-throughput"), config=config)
    try:
        akidb.start(timeout_s=300)
        yield akidb
    finally:
        akidb.close()


def metric(api: httpx.Client, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def texts(start: int, count: int) -> list[str]:
    return [line["text"] for line in fortunes()[start : start + count]]


def wait_for(predicate: object, timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def bulk_queued(api: httpx.Client) -> float:
    return metric(api, "akidb_embed_queue_size", model=MODEL, lane="bulk")


def drained(api: httpx.Client) -> bool:
    return metric(api, "akidb_embed_queue_size", model=MODEL) == 0


def start_bulk_embed(server: AkidbServer, pool: concurrent.futures.Executor, inputs: list[str]) -> object:
    """POST /api/v1/embed with `inputs` from another thread, on its own connection; returns the future."""

    def send() -> httpx.Response:
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            return client.post("/api/v1/embed", json={"inputs": inputs})

    future = pool.submit(send)
    wait_for(lambda: bulk_queued(server.client) > 0 or future.done(), what="the bulk texts to be queued")
    assert not future.done(), "the bulk request finished before the test could use the busy queue"
    return future


def test_the_pipeline_metrics_are_exported(server: AkidbServer) -> None:
    api = server.client
    expect(api.post("/api/v1/embed", json={"inputs": ["metrics, please"]}), 200)
    text = api.get("/metrics").text
    for name in (
        "akidb_embed_queue_size",
        "akidb_embed_queue_duration_seconds_bucket",
        "akidb_embed_batch_size_bucket",
        "akidb_embed_batch_tokens_bucket",
        "akidb_embed_inference_duration_seconds_bucket",
        "akidb_embed_cache_misses_total",
        "akidb_embed_texts_total",
    ):
        assert name in text, f"{name} is missing from /metrics"
    assert metric(api, "akidb_requests_total", path="/api/v1/embed", status_code="200") >= 1


def test_unchanged_texts_and_repeated_queries_never_reach_the_model(server: AkidbServer) -> None:
    api = server.client
    create_collection(api, "cached")
    lines = fortunes()[2000:2050]
    documents = [{"id": line["id"], "text": line["text"]} for line in lines]
    expect(upsert(api, "cached", documents), 200)
    embedded = metric(api, "akidb_embed_texts_total", model=MODEL)
    hits = metric(api, "akidb_embed_cache_hits_total", model=MODEL)
    again = expect(upsert(api, "cached", documents), 200)
    assert again["updated"] == 50
    assert metric(api, "akidb_embed_texts_total", model=MODEL) == embedded, "re-upserting ran the model"
    assert metric(api, "akidb_embed_cache_hits_total", model=MODEL) - hits == 50
    first = search(api, "cached", query="a saying about love", top_k=3)
    embedded = metric(api, "akidb_embed_texts_total", model=MODEL)
    second = search(api, "cached", query="a saying about love", top_k=3)
    assert metric(api, "akidb_embed_texts_total", model=MODEL) == embedded, "the repeated query ran the model"
    assert [hit["id"] for hit in second] == [hit["id"] for hit in first]


def test_a_full_queue_answers_429_with_retry_after_while_small_requests_get_through(server: AkidbServer) -> None:
    api = server.client
    refused_before = metric(api, "akidb_embed_rejected_total", model=MODEL, reason="queue_full")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        bulk = start_bulk_embed(server, pool, texts(3000, 600))
        response = api.post("/api/v1/embed", json={"inputs": texts(4000, 100)})
        detail = expect_error(response, 429, "max_queued_texts")
        assert int(response.headers["Retry-After"]) >= 1
        # The interactive lane has its own room: a single text and a text search still answer.
        assert len(expect(api.post("/api/v1/embed", json={"inputs": ["still served"]}), 200)["embeddings"]) == 1
        assert bulk_queued(api) > 0, "the queue drained before the interactive request was checked"
        result = bulk.result()  # type: ignore[attr-defined]
    assert len(expect(result, 200)["embeddings"]) == 600
    assert metric(api, "akidb_embed_rejected_total", model=MODEL, reason="queue_full") - refused_before >= 1
    assert str(MAX_QUEUED) in detail


def test_a_deadline_that_passes_in_the_queue_gives_503_and_costs_no_compute(server: AkidbServer) -> None:
    api = server.client
    wait_for(lambda: drained(api), what="an empty queue")
    embedded = metric(api, "akidb_embed_texts_total", model=MODEL)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        bulk = start_bulk_embed(server, pool, texts(5000, 150))
        late = texts(6000, 30)
        started = time.monotonic()
        response = api.post("/api/v1/embed", json={"inputs": late}, headers={"X-Request-Timeout-Ms": "150"})
        expect_error(response, 503, "deadline")
        assert response.json()["extra"]["code"] == "deadline_exceeded"
        assert time.monotonic() - started < 10.0
        expect(bulk.result(), 200)  # type: ignore[attr-defined]
    wait_for(lambda: drained(api), what="an empty queue")
    assert metric(api, "akidb_embed_texts_total", model=MODEL) - embedded == 150, "the late texts were embedded"


def test_a_bad_deadline_header_is_a_400_naming_it(server: AkidbServer) -> None:
    for value in ("soon", "-5", "0", "nan"):
        response = server.client.post("/api/v1/embed", json={"inputs": ["x"]}, headers={"X-Request-Timeout-Ms": value})
        expect_error(response, 400, "X-Request-Timeout-Ms", value)


def test_a_client_that_leaves_has_its_queued_texts_dropped(server: AkidbServer) -> None:
    api = server.client
    wait_for(lambda: drained(api), what="an empty queue")
    embedded = metric(api, "akidb_embed_texts_total", model=MODEL)
    left = metric(api, "akidb_embed_rejected_total", model=MODEL, reason="disconnected")
    count = 800
    with httpx.Client(base_url=server.base_url, timeout=1.0) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/api/v1/embed", json={"inputs": texts(7000, count)})
    wait_for(
        lambda: metric(api, "akidb_embed_rejected_total", model=MODEL, reason="disconnected") > left,
        what="the server to notice the client left",
    )
    wait_for(lambda: drained(api), what="an empty queue")
    spent = metric(api, "akidb_embed_texts_total", model=MODEL) - embedded
    assert spent < count, f"all {count} texts were embedded for a client that had gone"
    expect(api.get("/health/ready"), 200)
