"""The micro-batcher: one per loaded model, merging the texts of concurrent requests into batches.

Requests wait in two lanes. The interactive lane (search queries, small embeds) is always served before
the bulk lane (large upserts), and while interactive requests are coming in, batches that hold bulk texts
are cut to about `bulk_slice_ms` of inference, so a query waits at most about one slice for the worker.

Each text is tokenized once, on the worker, and the queue alone shapes batches from the token ids (as Text
Embeddings Inference's): a batch is taken at `batch_size` texts or `max_batch_tokens` padded tokens (rows x
longest row), then cut into length-sorted forward passes where padding would cost more than another pass
(`tokens.length_sorted_chunks`; one row each where the provider's `rows_per_pass` says so), and each pass
goes to the provider as one padded batch of token ids.
An idle worker waits `batch_timeout_ms` for company before running a lone text. Each request's rows are
taken shortest first; one request may span several batches. Queries and documents share batches (their
prefixes are already in the ids). Inference runs on the model's own worker thread; each request gets its
rows back in order, as soon as its last pass is done.

Admission: each lane holds at most `max_queued_texts` waiting texts (bulk counts the interactive ones too,
so bulk can never crowd searches out); past that a request gets 429 with a Retry-After computed from the
recent drain rate. A request whose deadline passes, or whose client goes away, is dropped from the queue
without spending compute on its remaining texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from akidb import observability
from akidb.config import EmbeddingSettings
from akidb.embedding.provider import EmbeddingProvider, Vectors
from akidb.embedding.spec import InputKind
from akidb.embedding.tokens import TokenizedText, length_sorted_chunks, pad_batch
from akidb.errors import DeadlineExceeded, ModelUnloading, Overloaded

log = logging.getLogger(__name__)

Lane = Literal["interactive", "bulk"]
LANES: tuple[Lane, ...] = ("interactive", "bulk")

# Bulk batches are sliced for this long after the last interactive request.
INTERACTIVE_MEMORY_S = 10.0
# Weight of the newest measurement in the running averages of drain rate and inference cost.
_EWMA_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class BatchedEmbeddings:
    vectors: Vectors
    tokens: list[int]  # per text, as the model counted them


@dataclass(eq=False)
class _Request:
    texts: list[str]
    kind: InputKind
    lane: Lane
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    enqueued_at: float = field(default_factory=time.monotonic)
    # Set by the worker thread when it first looks at the request.
    encoded: Sequence[TokenizedText] = ()
    tokens: list[int] | None = None
    order: list[int] = field(default_factory=list)  # rows, fewest tokens first
    vectors: Vectors | None = None
    taken: int = 0  # rows handed to batches
    done: int = 0  # rows whose vectors are in
    abandoned: bool = False

    @property
    def untaken(self) -> int:
        return len(self.texts) - self.taken


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class MicroBatcher:
    def __init__(
        self,
        provider: EmbeddingProvider,
        settings: EmbeddingSettings,
        *,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.provider = provider
        self.model = provider.spec.id
        self.batch_size = settings.batch_size
        # Rows per forward pass: a provider that runs each text alone (dynamic INT8) gets one-row passes, each
        # answered as soon as it is done, so that responses go out while the next text runs.
        self.pass_rows = min(self.batch_size, provider.rows_per_pass or self.batch_size)
        self.max_batch_tokens = settings.max_batch_tokens
        self.batch_timeout_s = settings.batch_timeout_ms / 1000.0
        self.bulk_slice_s = settings.bulk_slice_ms / 1000.0
        self.max_queued_texts = settings.max_queued_texts
        self._lanes: dict[Lane, deque[_Request]] = {lane: deque() for lane in LANES}
        self._queued: dict[Lane, int] = dict.fromkeys(LANES, 0)
        self._cond = threading.Condition()
        self._closing = False
        self._on_exit = on_exit
        self._last_interactive = -math.inf
        # Running averages, written by the worker thread only.
        self._seconds_per_token: float | None = None
        self._drain_rate: float | None = None  # texts per second while busy
        self._thread = threading.Thread(target=self._run, name=f"embed-{self.model}", daemon=True)
        self._thread.start()

    # --- the event-loop side ---

    def queued(self, lane: Lane | None = None) -> int:
        return self._queued[lane] if lane else sum(self._queued.values())

    async def embed(
        self, texts: Sequence[str], kind: InputKind, lane: Lane, deadline: float | None = None
    ) -> BatchedEmbeddings:
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= time.monotonic():
            observability.REJECTED.labels(self.model, "deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before its texts reached the model")
        request = _Request(list(texts), kind, lane, deadline, loop, loop.create_future())
        with self._cond:
            if self._closing:
                raise ModelUnloading(f"model '{self.model}' was unloaded while the request arrived; send it again")
            self._admit(request)
            self._lanes[lane].append(request)
            self._queued[lane] += len(request.texts)
            if lane == "interactive":
                self._last_interactive = request.enqueued_at
            self._publish_queue_size(lane)
            self._cond.notify()
        try:
            if deadline is None:
                await request.future
            else:
                await asyncio.wait_for(request.future, deadline - time.monotonic())
        except TimeoutError:
            self._abandon(request, "deadline")
            raise DeadlineExceeded(
                f"the request's deadline passed while {request.untaken} of its {len(request.texts)} texts "
                "were still queued"
            ) from None
        except asyncio.CancelledError:
            self._abandon(request, "disconnected")
            raise
        assert request.vectors is not None
        assert request.tokens is not None
        return BatchedEmbeddings(request.vectors, request.tokens)

    def _admit(self, request: _Request) -> None:
        """Called under the lock. A lane with nothing waiting takes any request, however large."""
        waiting = self._queued["interactive"] if request.lane == "interactive" else self.queued()
        if waiting == 0 or waiting + len(request.texts) <= self.max_queued_texts:
            return
        observability.REJECTED.labels(self.model, "queue_full").inc()
        rate = self._drain_rate or 0.0
        retry_after = max(1.0, math.ceil(self.queued() / rate)) if rate > 0 else 1.0
        raise Overloaded(
            f"model '{self.model}' has {waiting} texts queued (embedding.max_queued_texts = "
            f"{self.max_queued_texts}); retry in {retry_after:.0f} s",
            retry_after_s=retry_after,
        )

    def _abandon(self, request: _Request, reason: str) -> None:
        """Drop a request's untaken texts; rows already in a running batch are discarded on delivery."""
        with self._cond:
            if request.abandoned or request.done == len(request.texts):
                return
            self._abandon_locked(request)
        observability.REJECTED.labels(self.model, reason).inc()

    def _publish_queue_size(self, lane: Lane) -> None:
        observability.QUEUE_SIZE.labels(self.model, lane).set(self._queued[lane])

    def close(self, *, wait: bool) -> None:
        """Stop taking requests; the worker finishes what is queued, then calls `on_exit`."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if wait:
            self._thread.join()

    # --- the worker thread ---

    def _run(self) -> None:
        try:
            while self._next_batch():
                pass
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def _next_batch(self) -> bool:
        """Wait for work, take one batch, run it. False once closing and drained."""
        with self._cond:
            while not self.queued() and not self._closing:
                self._cond.wait()
            if not self.queued():
                return False
            self._wait_for_company()
            self._expire_deadlines()
        # Tokenize outside the lock, so that submitting requests never waits on it; again if more came.
        while True:
            with self._cond:
                uncounted = [r for lane in LANES for r in self._lanes[lane] if r.tokens is None]
            if not uncounted:
                break
            for request in uncounted:
                self._tokenize(request)
        with self._cond:
            batch = self._take()
        if batch:
            self._run_batch(batch)
        return True

    def _wait_for_company(self) -> None:
        """Under the lock: an idle worker with less than a full batch waits a moment for more texts (unless
        each text runs alone anyway)."""
        if self.batch_timeout_s <= 0 or self.pass_rows == 1:
            return
        oldest = min((self._lanes[lane][0].enqueued_at for lane in LANES if self._lanes[lane]), default=None)
        if oldest is None:
            return
        flush_at = oldest + self.batch_timeout_s
        while self.queued() < self.batch_size and not self._closing:
            remaining = flush_at - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)

    def _expire_deadlines(self) -> None:
        """Under the lock: fail requests whose deadline has passed before any compute is spent on them."""
        now = time.monotonic()
        for lane in LANES:
            expired = [r for r in self._lanes[lane] if r.deadline is not None and r.deadline <= now]
            for request in expired:
                self._abandon_locked(request)
                observability.REJECTED.labels(self.model, "deadline").inc()
                error = DeadlineExceeded("the request's deadline passed while its texts were queued")
                self._notify(request, error)
            if expired:
                self._publish_queue_size(lane)

    def _tokenize(self, request: _Request) -> None:
        try:
            encoded = self.provider.tokenize(request.texts, request.kind)
        except Exception as exc:  # a broken tokenizer fails this request, not the worker
            log.exception("tokenizing failed for model %s", self.model)
            with self._cond:
                self._abandon_locked(request)
            self._notify(request, exc)
            return
        tokens = [len(row.ids) for row in encoded]
        request.encoded = encoded
        request.order = sorted(range(len(tokens)), key=tokens.__getitem__)
        request.tokens = tokens

    def _abandon_locked(self, request: _Request) -> None:
        if request.abandoned:
            return
        request.abandoned = True
        self._queued[request.lane] -= request.untaken
        request.taken = len(request.texts)
        with contextlib.suppress(ValueError):
            self._lanes[request.lane].remove(request)
        self._publish_queue_size(request.lane)

    def _bulk_token_cap(self) -> int:
        """Padded tokens a batch holding bulk texts may have: about one slice of inference while
        interactive requests are coming in, else the whole budget."""
        recent = time.monotonic() - self._last_interactive < INTERACTIVE_MEMORY_S
        if not recent or self.bulk_slice_s <= 0 or not self._seconds_per_token:
            return self.max_batch_tokens
        return max(1, min(self.max_batch_tokens, int(self.bulk_slice_s / self._seconds_per_token)))

    def _take(self) -> list[tuple[_Request, list[int]]]:
        """Under the lock: the next batch, interactive texts first."""
        picks: list[tuple[_Request, list[int]]] = []
        count = longest = 0
        cap = self.max_batch_tokens
        full = False
        for lane in LANES:
            if full:
                break
            if lane == "bulk":
                cap = min(cap, self._bulk_token_cap())
            finished: list[_Request] = []
            for request in self._lanes[lane]:
                if request.tokens is None:
                    break  # arrived after this round's tokenizing; it goes in the next batch
                rows: list[int] = []
                while request.taken < len(request.texts):
                    row = request.order[request.taken]
                    widest = max(longest, request.tokens[row])
                    if count >= self.batch_size or (count > 0 and (count + 1) * widest > cap):
                        full = True
                        break
                    rows.append(row)
                    request.taken += 1
                    count += 1
                    longest = widest
                if rows:
                    picks.append((request, rows))
                    self._queued[lane] -= len(rows)
                if request.taken == len(request.texts):
                    finished.append(request)
                if full:
                    break
            for request in finished:
                self._lanes[lane].remove(request)
            self._publish_queue_size(lane)
        return picks

    def _run_batch(self, batch: list[tuple[_Request, list[int]]]) -> None:
        """Run a taken batch as length-sorted forward passes; a request is answered after its last one."""
        started = time.monotonic()
        rows: list[tuple[_Request, int]] = []
        for request, picked in batch:
            if request.done == 0 and request.taken == len(picked):  # the request's first batch
                observability.QUEUE_WAIT.labels(self.model, request.lane).observe(started - request.enqueued_at)
            rows.extend((request, row) for row in picked)
        lengths = [len(request.encoded[row].ids) for request, row in rows]
        for chunk in length_sorted_chunks(lengths, self.pass_rows):
            padded = pad_batch([rows[i][0].encoded[rows[i][1]] for i in chunk], self.provider.pad_id)
            began = time.monotonic()
            try:
                vectors = self.provider.embed_batch(padded)
            except Exception as exc:
                log.exception("inference failed for model %s on a batch of %d texts", self.model, len(chunk))
                with self._cond:
                    for request, _ in batch:
                        self._abandon_locked(request)
                for request, _ in batch:
                    self._notify(request, exc)
                return
            self._learn(len(chunk), int(padded.input_ids.size), time.monotonic() - began)
            for i, vector in zip(chunk, vectors, strict=True):
                request, row = rows[i]
                self._deliver(request, row, vector)

    def _deliver(self, request: _Request, row: int, vector: Vectors) -> None:
        if request.abandoned:
            return
        if request.vectors is None:
            request.vectors = np.empty((len(request.texts), vector.shape[0]), dtype=np.float32)
        request.vectors[row] = vector
        request.done += 1
        if request.done == len(request.texts):
            request.encoded = ()  # the token ids are no longer needed
            self._notify(request, None)

    def _learn(self, texts: int, padded_tokens: int, seconds: float) -> None:
        observability.BATCH_SIZE.labels(self.model).observe(texts)
        observability.BATCH_TOKENS.labels(self.model).observe(padded_tokens)
        observability.INFERENCE_DURATION.labels(self.model).observe(seconds)
        observability.EMBEDDED_TEXTS.labels(self.model).inc(texts)
        if seconds <= 0:
            return
        per_token = seconds / max(padded_tokens, 1)
        rate = texts / seconds
        self._seconds_per_token = (
            per_token
            if self._seconds_per_token is None
            else (1 - _EWMA_WEIGHT) * self._seconds_per_token + _EWMA_WEIGHT * per_token
        )
        self._drain_rate = (
            rate if self._drain_rate is None else (1 - _EWMA_WEIGHT) * self._drain_rate + _EWMA_WEIGHT * rate
        )

    @staticmethod
    def _notify(request: _Request, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the request's loop has closed: nobody is waiting
            request.loop.call_soon_threadsafe(_resolve, request.future, error)
