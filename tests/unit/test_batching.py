"""The micro-batcher: merging, caps, lanes, admission, deadlines, cancellation and failure.

The provider here is the deterministic mock behind a recorder that can hold the worker inside a batch,
so that the queue's state at each step is known, not raced.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from akidb.config import EmbeddingSettings
from akidb.embedding.batching import MicroBatcher
from akidb.embedding.provider import Vectors
from akidb.embedding.providers.mock import MockProvider, mock_vector
from akidb.embedding.registry import default_registry
from akidb.embedding.spec import InputKind, ModelSpec
from akidb.embedding.tokens import PaddedBatch
from akidb.errors import DeadlineExceeded, Overloaded

SPEC = default_registry().get("all-MiniLM-L6-v2")


class RecordingProvider(MockProvider):
    """The mock provider, recording every batch; `hold()` keeps the worker inside its next batch."""

    def __init__(self, spec: ModelSpec = SPEC) -> None:
        super().__init__(spec)
        self.batches: list[list[str]] = []
        self.kinds: list[list[InputKind]] = []  # per batch, per row
        self.entered = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self.fail_on: str | None = None
        self.closed = False

    def hold(self) -> None:
        self._gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self._gate.set()

    def embed_batch(self, batch: PaddedBatch) -> Vectors:
        rows = self.texts_of(batch)
        texts = [text for text, _ in rows]
        self.batches.append(texts)
        self.kinds.append([kind for _, kind in rows])
        self.entered.set()
        self._gate.wait(10)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("the model broke")
        return super().embed_batch(batch)

    def close(self) -> None:
        self.closed = True

    def embedded(self) -> list[str]:
        return [text for batch in self.batches for text in batch]


def settings(**overrides: object) -> EmbeddingSettings:
    values: dict[str, object] = {"batch_timeout_ms": 0.0, "batch_size": 32} | overrides
    return EmbeddingSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def provider() -> RecordingProvider:
    return RecordingProvider()


@pytest.fixture
def make_batcher(provider: RecordingProvider) -> Iterator[object]:
    made: list[MicroBatcher] = []

    def make(**overrides: object) -> MicroBatcher:
        batcher = MicroBatcher(provider, settings(**overrides), on_exit=provider.close)
        made.append(batcher)
        return batcher

    yield make
    provider.release()
    for batcher in made:
        batcher.close(wait=True)


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


async def start_blocker(batcher: MicroBatcher, provider: RecordingProvider) -> asyncio.Task[object]:
    """Occupy the worker with one batch that stays in the provider until `provider.release()`."""
    provider.hold()
    task = asyncio.create_task(batcher.embed(["blocker"], "document", "interactive"))
    await asyncio.to_thread(provider.entered.wait, 5)
    assert provider.entered.is_set()
    return task


def expected(texts: Sequence[str], kind: InputKind = "document") -> np.ndarray:
    return np.stack([mock_vector(SPEC.prefix_for(kind) + text, SPEC.dimension) for text in texts])


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_rows(make_batcher, provider) -> None:
    batcher = make_batcher()

    async def scenario() -> None:
        blocker = await start_blocker(batcher, provider)
        texts = [f"text number {i}" for i in range(10)]
        tasks = [asyncio.create_task(batcher.embed([text], "document", "interactive")) for text in texts]
        await asyncio.sleep(0.05)
        assert batcher.queued() == 10
        provider.release()
        results = await asyncio.gather(*tasks)
        await blocker
        assert sorted(provider.batches[1]) == sorted(texts), "the 10 waiting texts ran as one batch"
        for text, result in zip(texts, results, strict=True):
            np.testing.assert_array_equal(result.vectors, expected([text]))
            assert result.tokens == [len(text.split())]
        assert batcher.queued() == 0

    asyncio.run(scenario())


def test_a_large_request_spans_batches_of_batch_size_and_keeps_its_order(make_batcher, provider) -> None:
    batcher = make_batcher(batch_size=16)
    texts = [words(1 + (i * 7) % 23, tag=f"t{i}_") for i in range(40)]
    result = asyncio.run(batcher.embed(texts, "document", "bulk"))
    # Taken 16 rows at a time, shortest first; each taken batch may run as several forward passes.
    assert all(len(batch) <= 16 for batch in provider.batches)
    assert sorted(provider.embedded()) == sorted(texts)
    np.testing.assert_array_equal(result.vectors, expected(texts))
    assert result.tokens == [len(text.split()) for text in texts]
    # So the passes hold texts of similar length, in rising order.
    lengths = [[len(text.split()) for text in batch] for batch in provider.batches]
    for earlier, later in itertools.pairwise(lengths):
        assert max(earlier) <= min(later)


def test_a_taken_batch_is_cut_where_padding_would_cost_more_than_another_pass(make_batcher, provider) -> None:
    """Fifteen short texts and one long one, taken together, run as two padded passes, not one padded to
    the long text (the cut is the queue's, from the token counts alone)."""
    batcher = make_batcher(batch_size=16, max_batch_tokens=100_000)
    texts = [words(2, tag=f"s{i}_") for i in range(15)] + [words(200, tag="long_")]
    result = asyncio.run(batcher.embed(texts, "document", "bulk"))
    assert sorted(len(batch) for batch in provider.batches) == [1, 15]
    np.testing.assert_array_equal(result.vectors, expected(texts))


def test_batches_stay_within_the_token_budget(make_batcher, provider) -> None:
    batcher = make_batcher(batch_size=64, max_batch_tokens=40)
    texts = [words(n, tag=f"x{n}_") for n in [2, 3, 5, 8, 9, 10, 12, 20, 3, 4, 7, 1]]
    result = asyncio.run(batcher.embed(texts, "document", "bulk"))
    np.testing.assert_array_equal(result.vectors, expected(texts))
    for batch in provider.batches:
        assert len(batch) * max(len(text.split()) for text in batch) <= 40
    assert len(provider.batches) > 1


def test_a_text_longer_than_the_budget_still_runs_alone(make_batcher, provider) -> None:
    batcher = make_batcher(max_batch_tokens=4)
    result = asyncio.run(batcher.embed([words(10)], "document", "bulk"))
    assert provider.batches == [[words(10)]]
    assert result.vectors.shape == (1, SPEC.dimension)


def test_interactive_texts_go_before_bulk_texts_queued_earlier(make_batcher, provider) -> None:
    batcher = make_batcher(batch_size=8)

    async def scenario() -> None:
        blocker = await start_blocker(batcher, provider)
        bulk = asyncio.create_task(batcher.embed([f"bulk {i}" for i in range(40)], "document", "bulk"))
        await asyncio.sleep(0.02)
        query = asyncio.create_task(batcher.embed(["the query"], "query", "interactive"))
        await asyncio.sleep(0.02)
        provider.release()
        await asyncio.gather(bulk, query, blocker)
        assert provider.batches[1] == ["the query"], "the query ran right after the batch in progress"
        assert provider.kinds[1] == ["query"]
        assert sorted(provider.embedded()[2:]) == sorted(f"bulk {i}" for i in range(40))

    asyncio.run(scenario())


def test_bulk_batches_are_sliced_while_interactive_requests_come_in(make_batcher, provider) -> None:
    batcher = make_batcher(batch_size=64, max_batch_tokens=10_000, bulk_slice_ms=10.0)
    texts = [words(5, tag=f"b{i}_") for i in range(60)]

    async def scenario() -> None:
        await batcher.embed(texts[:30], "document", "bulk")
        assert len(provider.batches[-1]) == 30, "no interactive request yet: one whole batch"
        # Pretend inference costs 1 ms per padded token: a 10 ms slice is then 10 tokens, two 5-word texts.
        batcher._seconds_per_token = 0.001
        batcher._learn = lambda *args: None  # type: ignore[method-assign]  # keep the cost fixed
        await batcher.embed(["a query"], "query", "interactive")
        before = len(provider.batches)
        await batcher.embed(texts[30:], "document", "bulk")
        sliced = provider.batches[before:]
        assert all(len(batch) <= 2 for batch in sliced)
        assert sum(len(batch) for batch in sliced) == 30

    asyncio.run(scenario())


def test_a_full_queue_answers_429_with_retry_after_and_searches_still_get_in(make_batcher, provider) -> None:
    batcher = make_batcher(max_queued_texts=10)

    async def scenario() -> None:
        blocker = await start_blocker(batcher, provider)
        first = asyncio.create_task(batcher.embed([f"a{i}" for i in range(8)], "document", "bulk"))
        await asyncio.sleep(0.02)
        with pytest.raises(Overloaded) as refused:
            await batcher.embed([f"b{i}" for i in range(5)], "document", "bulk")
        assert refused.value.retry_after_s >= 1
        assert "max_queued_texts" in refused.value.detail
        query = asyncio.create_task(batcher.embed(["q"], "query", "interactive"))
        await asyncio.sleep(0.02)
        provider.release()
        await asyncio.gather(first, query, blocker)
        assert not {f"b{i}" for i in range(5)} & set(provider.embedded())

    asyncio.run(scenario())


def test_an_empty_queue_admits_a_request_larger_than_the_bound(make_batcher, provider) -> None:
    batcher = make_batcher(max_queued_texts=4)
    result = asyncio.run(batcher.embed([f"t{i}" for i in range(20)], "document", "bulk"))
    assert result.vectors.shape == (20, SPEC.dimension)


def test_a_deadline_that_passes_in_the_queue_gives_503_and_costs_no_compute(make_batcher, provider) -> None:
    batcher = make_batcher()

    async def scenario() -> None:
        blocker = await start_blocker(batcher, provider)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await batcher.embed(["too late"], "document", "interactive", deadline=started + 0.05)
        assert time.monotonic() - started < 2.0
        assert batcher.queued() == 0
        provider.release()
        await blocker
        await batcher.embed(["next one"], "document", "interactive")
        assert "too late" not in provider.embedded()

    asyncio.run(scenario())


def test_a_deadline_already_past_is_refused_at_once(make_batcher, provider) -> None:
    batcher = make_batcher()
    with pytest.raises(DeadlineExceeded):
        asyncio.run(batcher.embed(["x"], "document", "interactive", deadline=time.monotonic() - 1))
    assert provider.batches == []


def test_a_cancelled_request_has_its_queued_texts_dropped(make_batcher, provider) -> None:
    batcher = make_batcher(batch_size=4)

    async def scenario() -> None:
        blocker = await start_blocker(batcher, provider)
        gone = asyncio.create_task(batcher.embed([f"gone {i}" for i in range(50)], "document", "bulk"))
        await asyncio.sleep(0.02)
        assert batcher.queued() == 50
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queued() == 0
        provider.release()
        await blocker
        await batcher.embed(["after"], "document", "interactive")
        assert not any(text.startswith("gone") for text in provider.embedded())

    asyncio.run(scenario())


def test_an_idle_worker_waits_batch_timeout_for_company(make_batcher, provider) -> None:
    batcher = make_batcher(batch_timeout_ms=300.0)

    async def scenario() -> None:
        first = asyncio.create_task(batcher.embed(["one"], "document", "interactive"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.embed(["two"], "document", "interactive"))
        await asyncio.gather(first, second)
        assert provider.batches == [["one", "two"]]

    asyncio.run(scenario())


class OneRowProvider(RecordingProvider):
    """A provider whose passes hold one row each, as ONNX dynamic INT8's do; a pass holding `held` stays
    in the model until `let_go` is set."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.let_go = threading.Event()

    @property
    def rows_per_pass(self) -> int | None:
        return 1

    def embed_batch(self, batch: PaddedBatch) -> Vectors:
        if any(text == self.held for text, _ in self.texts_of(batch)):
            self.let_go.wait(10)
        return super().embed_batch(batch)


def test_a_one_row_provider_gets_one_row_passes_each_answered_as_it_finishes() -> None:
    """No waiting for company (each text runs alone anyway), and a request is answered after its own pass,
    not after the passes of the texts taken with it: the short ones while the longest is still running."""
    longest = words(5, "long")
    provider = OneRowProvider(held=longest)
    batcher = MicroBatcher(provider, settings(batch_timeout_ms=5_000.0), on_exit=provider.close)

    async def scenario() -> None:
        blocker = await start_blocker(batcher, provider)
        held = asyncio.create_task(batcher.embed([longest], "document", "interactive"))
        short = asyncio.create_task(batcher.embed(["short"], "document", "interactive"))
        pair = asyncio.create_task(batcher.embed(["a b", "c d e"], "document", "interactive"))
        await asyncio.sleep(0.05)
        provider.release()  # the blocker finishes; the four texts are taken as one batch
        await blocker
        np.testing.assert_array_equal((await asyncio.wait_for(short, 5)).vectors, expected(["short"]))
        np.testing.assert_array_equal((await asyncio.wait_for(pair, 5)).vectors, expected(["a b", "c d e"]))
        assert not held.done()
        provider.let_go.set()
        np.testing.assert_array_equal((await asyncio.wait_for(held, 5)).vectors, expected([longest]))

    started = time.monotonic()
    try:
        asyncio.run(scenario())
    finally:
        provider.let_go.set()
        provider.release()
        batcher.close(wait=True)
    assert time.monotonic() - started < 4.0  # batch_timeout_ms (5 s) was never waited
    assert provider.batches == [["blocker"], ["short"], ["a b"], ["c d e"], [longest]]


def test_a_full_batch_does_not_wait_for_the_timeout(make_batcher, provider) -> None:
    batcher = make_batcher(batch_timeout_ms=5_000.0, batch_size=4)
    started = time.monotonic()
    asyncio.run(batcher.embed([f"t{i}" for i in range(4)], "document", "bulk"))
    assert time.monotonic() - started < 4.0


def test_queries_and_documents_share_a_batch_each_with_its_own_prefix() -> None:
    """The prefixes are in the token ids, so one forward pass serves both kinds, and each text still gets
    the vector of its own prefix."""
    spec = default_registry().get("e5-small-v2")
    assert spec.query_prefix != spec.document_prefix
    provider = RecordingProvider(spec)
    batcher = MicroBatcher(provider, settings())
    results: list[np.ndarray] = []

    async def scenario() -> None:
        provider.hold()
        blocker = asyncio.create_task(batcher.embed(["blocker"], "document", "interactive"))
        await asyncio.to_thread(provider.entered.wait, 5)
        tasks = [asyncio.create_task(batcher.embed([f"q{i}"], "query", "interactive")) for i in range(3)] + [
            asyncio.create_task(batcher.embed([f"d{i}"], "document", "interactive")) for i in range(3)
        ]
        await asyncio.sleep(0.02)
        provider.release()
        await blocker
        results.extend(result.vectors[0] for result in await asyncio.gather(*tasks))

    try:
        asyncio.run(scenario())
    finally:
        provider.release()
        batcher.close(wait=True)
    assert sorted(provider.batches[1]) == ["d0", "d1", "d2", "q0", "q1", "q2"], "one pass for both kinds"
    assert sorted(provider.kinds[1]) == ["document"] * 3 + ["query"] * 3
    for text, vector in zip([f"q{i}" for i in range(3)] + [f"d{i}" for i in range(3)], results, strict=True):
        kind: InputKind = "query" if text[0] == "q" else "document"
        np.testing.assert_array_equal(vector, mock_vector(spec.prefix_for(kind) + text, spec.dimension))


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on(make_batcher, provider) -> None:
    batcher = make_batcher()
    provider.fail_on = "poison"
    with pytest.raises(RuntimeError, match="the model broke"):
        asyncio.run(batcher.embed(["poison", "fine"], "document", "bulk"))
    provider.fail_on = None
    result = asyncio.run(batcher.embed(["fine"], "document", "interactive"))
    np.testing.assert_array_equal(result.vectors, expected(["fine"]))
    assert batcher.queued() == 0


def test_close_drains_the_queue_then_closes_the_provider(provider) -> None:
    batcher = MicroBatcher(provider, settings(batch_size=2), on_exit=provider.close)

    async def scenario() -> list[object]:
        provider.hold()
        tasks = [asyncio.create_task(batcher.embed([f"t{i}"], "document", "interactive")) for i in range(6)]
        await asyncio.to_thread(provider.entered.wait, 5)
        batcher.close(wait=False)
        provider.release()
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(scenario())
    batcher.close(wait=True)
    assert len(results) == 6
    assert provider.closed
