"""Live recall telemetry: a small share of the real dense searches that the HNSW graph served at the collection's
ef_search is run again exactly (a scan of the exact mirror), off the hot path, and each collection's recall@k
is estimated from the last of them.

The hot path only draws a random number and, for a sampled search, puts it in a bounded queue (dropped when
full); one worker thread does the exact scans. A write between the search and its re-run can move the truth a
little: the estimate is a health signal, not a measurement to the last hit.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from akidb import observability
from akidb.collections.validation import MAX_EF
from akidb.storage.collection import OpenCollection

log = logging.getLogger(__name__)

# Searches per collection that the estimate averages over, and how many it needs before it advises.
WINDOW = 200
MIN_SAMPLES = 20
QUEUE_SIZE = 256
# The worker's share of one core at most: after an exact scan of t seconds it rests t x (1/share - 1), so that
# on a large collection (a million vectors: ~0.1 s a scan) telemetry never competes with serving; samples
# that arrive meanwhile wait in the queue or are dropped (akidb_index_recall_samples_dropped_total).
MAX_CPU_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class RecallEstimate:
    recall: float  # mean recall@k of the sampled searches
    samples: int
    ef_search: int  # the ef they ran at
    target: float
    advice: int | None  # an ef_search to try, when the recall is below the target


@dataclass(frozen=True, slots=True)
class _Sample:
    collection: OpenCollection
    query: npt.NDArray[np.float32]
    k: int
    found: tuple[int, ...]
    ef_search: int


class RecallEstimator:
    """Thread-safe. `offer` runs on the search path; `start` runs the worker until `stop`."""

    def __init__(self, *, sample_rate: float, target: float, seed: int | None = None) -> None:
        self.sample_rate = sample_rate
        self.target = target
        self._random = random.Random(seed)
        self._queue: queue.Queue[_Sample | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._windows: dict[int, deque[float]] = {}
        self._ef: dict[int, int] = {}
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    # --- the hot path --------------------------------------------------------------------------------

    def offer(self, collection: OpenCollection, query: npt.NDArray[np.float32], k: int, found: Sequence[int]) -> bool:
        """A search the graph served at the collection's ef_search: maybe queue it for an exact re-run. Never
        blocks; returns whether it was queued."""
        if self.sample_rate <= 0 or self._random.random() >= self.sample_rate:
            return False
        sample = _Sample(
            collection, np.array(query, dtype=np.float32), k, tuple(found), collection.graph.params.ef_search
        )
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            observability.RECALL_SAMPLES_DROPPED.inc()
            return False
        return True

    # --- the worker ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None and self.sample_rate > 0:
            self._worker = threading.Thread(target=self._run, name="akidb-recall", daemon=True)
            self._worker.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._worker is None:
            return
        with contextlib.suppress(queue.Full):  # a daemon thread: if it cannot be told, it goes with the process
            self._queue.put(None, timeout=timeout_s)
        self._worker.join(timeout_s)
        self._worker = None

    def _run(self) -> None:
        while (sample := self._queue.get()) is not None:
            started = time.monotonic()
            try:
                self.measure(sample)
            except Exception:  # one bad sample must not end the telemetry
                log.exception("re-running a sampled search exactly failed")
            finally:
                self._queue.task_done()
            time.sleep((time.monotonic() - started) * (1 / MAX_CPU_SHARE - 1))

    def measure(self, sample: _Sample) -> float | None:
        """Blocking: re-run one sampled search exactly and fold its recall into the collection's estimate."""
        collection = sample.collection
        if collection.dropped:
            return None
        truth = collection.exact.search(sample.query, sample.k)[0]
        recall = len(set(truth) & set(sample.found)) / len(truth) if truth else 1.0
        with self._lock:
            if self._ef.get(collection.id) != sample.ef_search:  # ef_search changed: start again
                self._windows[collection.id] = deque(maxlen=WINDOW)
                self._ef[collection.id] = sample.ef_search
            window = self._windows[collection.id]
            window.append(recall)
            mean = sum(window) / len(window)
        observability.RECALL_ESTIMATE.labels(collection.name).set(mean)
        return recall

    # --- reads ---------------------------------------------------------------------------------------

    def estimate(self, collection_id: int) -> RecallEstimate | None:
        """The collection's estimate; None before any sampled search."""
        with self._lock:
            window = self._windows.get(collection_id)
            if not window:
                return None
            recall, samples, ef = sum(window) / len(window), len(window), self._ef[collection_id]
        advice = None
        if samples >= MIN_SAMPLES and recall < self.target and ef < MAX_EF:
            # Recall grows with ef about logarithmically: doubling is a step that shows in the next estimate.
            advice = min(MAX_EF, 2 * ef)
        return RecallEstimate(recall, samples, ef, self.target, advice)
