"""The periodic health check of every open collection's HNSW graph, and its repair by rebuild.

Two things go wrong with an hnswlib graph under churn. Deleted points are only marked: they stay in the graph
and searches walk through them, so past `storage.rebuild_deleted_ratio` of the slots the graph is rebuilt from
the live rows. And a point can be left with no links that reach it (measured in 3 % of churn runs): no search
finds it at any ef. A sample of live points is searched by their own vectors; a point missed at the default ef
and again at a wide one is unreachable, and the graph is rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import numpy as np

from akidb import observability
from akidb.storage.collection import OpenCollection
from akidb.storage.open_collections import OpenCollections
from akidb.storage.rebuild import RebuildReport, rebuild_graph

log = logging.getLogger(__name__)

# A sampled point counts as found when it is among the k nearest of its own vector...
SELF_QUERY_K = 10
# ... or when all k are at distance ~0 (duplicates of it, which may crowd it out).
_SAME_POINT = 1e-5
# The ef of the second look at a point missed at the default ef: a point merely hard to find is found there.
WIDE_EF = 1024


def _reaches(label: int, found: tuple[list[int], list[float]] | None) -> bool:
    if found is None:
        return False
    labels, distances = found
    return label in labels or (len(distances) >= SELF_QUERY_K and distances[-1] <= _SAME_POINT)


def find_unreachable(
    collection: OpenCollection, sample: int, rng: np.random.Generator, labels: list[int] | None = None
) -> list[int]:
    """Live labels among a random sample of `sample` (or among `labels`) that the graph does not find by their
    own vectors, at the default ef nor at WIDE_EF."""
    graph = collection.graph
    if labels is None:
        known = np.fromiter(graph.known_labels(), dtype=np.int64)
        # Twice the sample, since some of the graph's labels are deleted ones.
        picked = rng.choice(known, size=min(len(known), 2 * sample), replace=False).tolist() if len(known) else []
        labels = [label for label, ok in zip(picked, collection.exact.contains(picked), strict=True) if ok][:sample]
    found, vectors = graph.vectors_of(labels)
    unreachable = []
    for label, vector in zip(found, vectors, strict=True):
        if _reaches(label, graph.search(vector, SELF_QUERY_K)):
            continue
        wide = max(WIDE_EF, graph.params.ef_search)
        if not _reaches(label, graph.search(vector, SELF_QUERY_K, ef=wide)):
            unreachable.append(label)
    return unreachable


class GraphHealth:
    """Checks every open collection's graph and repairs it by rebuild; one check at a time (a thread)."""

    def __init__(
        self, collections: OpenCollections, *, rebuild_deleted_ratio: float, sample: int, seed: int | None = None
    ) -> None:
        self.collections = collections
        self.rebuild_deleted_ratio = rebuild_deleted_ratio
        self.sample = sample
        self._rng = np.random.default_rng(seed)
        self._stopping = threading.Event()
        self._published: set[str] = set()

    def stop(self) -> None:
        """A rebuild in progress gives up at its next batch (the server is shutting down)."""
        self._stopping.set()

    def check_all(self) -> list[RebuildReport]:
        """Blocking: check every open collection, rebuilding where needed; returns the rebuilds."""
        reports = []
        names = set()
        for collection in self.collections.all():
            if self._stopping.is_set():
                break
            names.add(collection.name)
            report = self.check(collection)
            if report is not None:
                reports.append(report)
        for gone in self._published - names:
            for gauge in (observability.INDEX_DELETED_RATIO, observability.INDEX_UNREACHABLE):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        self._published = names
        return reports

    def check(self, collection: OpenCollection) -> RebuildReport | None:
        """Blocking: check one graph; rebuild it if too many of its slots are deleted or a point is unreachable."""
        name = collection.name
        ratio = collection.graph.deleted_ratio
        observability.INDEX_DELETED_RATIO.labels(name).set(ratio)
        if 0 < self.rebuild_deleted_ratio < ratio:
            reason = "deleted_ratio"
        elif self.sample > 0:
            unreachable = find_unreachable(collection, self.sample, self._rng)
            observability.INDEX_UNREACHABLE.labels(name).set(len(unreachable))
            if not unreachable:
                return None
            log.warning(
                "collection '%s': %d of %d sampled points unreachable in the graph (labels %s); rebuilding it",
                name,
                len(unreachable),
                self.sample,
                unreachable[:10],
            )
            reason = "unreachable"
        else:
            return None
        report = rebuild_graph(collection, reason=reason, should_stop=self._stopping.is_set)
        observability.INDEX_DELETED_RATIO.labels(name).set(collection.graph.deleted_ratio)
        if report.swapped and reason == "unreachable":
            observability.INDEX_UNREACHABLE.labels(name).set(0)
        return report
