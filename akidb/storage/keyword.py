"""Per-collection keyword index: BM25 over English-stemmed text, in a RAM-only tantivy index.

Like the HNSW graph it is derived: the database rows are the truth, the caller rebuilds it from them on open and
then applies every write right after its database commit (under the collection's write lock). Writes are group
committed: a write only queues its operations in tantivy's writer, and the next search (or flush) commits
whatever is queued, so an import pays one tantivy commit (6-30 ms) per search or checkpoint, not per batch,
and a search still sees every write applied before it. A search takes one tantivy searcher, an immutable
snapshot of a commit, so it never sees half of a write.

BM25 statistics (document frequencies, average length) are tantivy's and include deleted documents until their
segment is merged, so scores drift slightly after updates; both `allowed` strategies share them, so they agree.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import tantivy
from numpy.typing import NDArray

log = logging.getLogger(__name__)

_LABEL, _TEXT, _TOKENIZER = "label", "text", "akidb_en"
# Tantivy's minimum indexing budget per thread; the arena is only filled while a batch is being indexed.
WRITER_HEAP_BYTES = 15_000_000
# Resident size of an idle IndexWriter (its threads and buffers), measured: ~2.6 MB.
WRITER_BYTES = 2_600_000
# Segment-file model (fitted on the fortunes and SciFact corpora, within ~11%): bytes per document and per char.
_BYTES_PER_DOC, _BYTES_PER_CHAR = 41.0, 0.125
# Restricting the query to the allowed labels (one term lookup per label) costs about this many fetched hits of
# post-filtering (one top-k slot plus a fast-field read). Measured on 15k and 150k documents, see choose_restrict.
RESTRICT_COST_RATIO = 8.0
# Largest allowed set restricted by a union of label term queries rather than a term set (measured crossover
# ~1000 labels at 15k documents, 1000-4000 at 150k; a 4000-term union also holds ~2.5 MB while it runs).
RESTRICT_TERMS_MAX = 1024
# Hits fetched beyond k at first, so that a tie at the k-th score is usually seen whole in one round.
_SLACK = 16
_GROWTH = 4


def build_analyzer() -> tantivy.TextAnalyzer:
    """tantivy's `en_stem` (simple tokenizer, drop tokens over 40 bytes, lowercase, Snowball English) plus its
    English stop words (Lucene's 33), removed before stemming: a stop word would otherwise match nearly every
    document, and a query made only of them matches none, as with Lucene's English analyzer."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


class KeywordIndex:
    """Writes are serialised by the caller; searches may run from any thread at any time."""

    def __init__(self, *, restrict_cost_ratio: float = RESTRICT_COST_RATIO) -> None:
        # The query side needs its own analyzer object (tantivy's `analyze` borrows it mutably), and documents go
        # through an identical one registered on the index, so both sides produce the same terms.
        self._analyzer = build_analyzer()
        self._analyzer_lock = threading.Lock()
        builder = tantivy.SchemaBuilder()
        builder.add_integer_field(_LABEL, indexed=True, fast=True)
        # Frequencies without positions: BM25 needs no more, and phrase queries are not offered.
        builder.add_text_field(_TEXT, tokenizer_name=_TOKENIZER, index_option="freq")
        self._schema = builder.build()
        self._index = tantivy.Index(self._schema)
        self._index.register_tokenizer(_TOKENIZER, build_analyzer())
        # Manual: a write becomes visible exactly when it calls reload() after its commit.
        self._index.config_reader("manual")
        self._writer: tantivy.IndexWriter | None = None  # made on the first write: an idle one holds ~2.6 MB
        # Guards the writer and `_pending`: writes come one at a time, but any search may commit.
        self._writer_lock = threading.Lock()
        self._pending = False
        self.restrict_cost_ratio = restrict_cost_ratio
        self._chars_added = 0
        self._docs_added = 0

    # ---- writes ---------------------------------------------------------------------------------------------

    def upsert(self, labels: Sequence[int], texts: Sequence[str | None], *, replaced: Sequence[bool]) -> None:
        """Index `texts` under `labels` in one commit. replaced[i]: the label may hold text already, delete it
        first (if False while it does, the label is indexed twice). A None text is not indexed (any old text of a
        replaced label is still removed)."""
        if not len(labels) == len(texts) == len(replaced):
            raise ValueError("labels, texts and replaced must have the same length")
        if all(text is None for text in texts) and (self._docs_added == 0 or not any(replaced)):
            return  # nothing to index or remove: a collection of bare vectors never starts a writer
        chars = docs = 0
        with self._queue() as writer:
            for label, text, was in zip(labels, texts, replaced, strict=True):
                if was:
                    writer.delete_documents_by_term(_LABEL, int(label))
                if text is not None:
                    doc = tantivy.Document()
                    doc.add_integer(_LABEL, int(label))
                    doc.add_text(_TEXT, text)
                    writer.add_document(doc)
                    chars += len(text)
                    docs += 1
        self._chars_added += chars
        self._docs_added += docs

    def delete(self, labels: Sequence[int]) -> None:
        """Remove these labels' text; labels never indexed are ignored."""
        if not labels or self._docs_added == 0:
            return
        with self._queue() as writer:
            for label in labels:
                writer.delete_documents_by_term(_LABEL, int(label))

    @contextmanager
    def _queue(self) -> Iterator[tantivy.IndexWriter]:
        with self._writer_lock:
            if self._writer is None:
                self._writer = self._index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
            self._pending = True
            yield self._writer

    def flush(self) -> None:
        """Commit what writes have queued and let searches see it. A failed commit drops the queue
        (tantivy's rollback), so the index misses those writes until it is rebuilt: say so loudly."""
        if not self._pending:
            return
        with self._writer_lock:
            if not self._pending or self._writer is None:
                return
            try:
                self._writer.commit()
            except BaseException:
                log.exception("keyword index commit failed; its queued writes are lost until the collection reopens")
                self._writer.rollback()
                raise
            finally:
                self._pending = False
            self._index.reload()

    # ---- search ---------------------------------------------------------------------------------------------

    def analyze(self, text: str) -> list[str]:
        """The distinct terms of `text`, in order of first appearance."""
        with self._analyzer_lock:
            return list(dict.fromkeys(self._analyzer.analyze(text)))

    def search(self, query: str, k: int, allowed: NDArray[np.int64] | None = None) -> tuple[list[int], list[float]]:
        """Up to k labels with their BM25 scores, best first, ties by label ascending. The query is plain text:
        its distinct terms are OR-ed (scores add up). `allowed`: only these labels may be returned; the answer
        is exactly the unrestricted ranking with the other labels dropped, cut to k."""
        terms = self.analyze(query)
        if k <= 0 or not terms:
            return [], []
        self.flush()
        searcher = self._index.searcher()
        live = searcher.num_docs
        dfs = [searcher.doc_freq(_TEXT, t) for t in terms]
        # Terms that no document (live or deleted) holds add nothing to any score.
        terms = [t for t, df in zip(terms, dfs, strict=True) if df]
        # At most this many documents match: the fetch limit never needs to exceed it.
        bound = min(sum(dfs), live)
        if bound == 0:
            return [], []
        text_query = self._text_query(terms)
        if allowed is None:
            return _top(searcher, text_query, k, bound)
        allowed = np.asarray(allowed, dtype=np.int64)
        if allowed.size == 0:
            return [], []
        if self.choose_restrict(k, live, bound, allowed.size):
            return self._restricted(searcher, text_query, k, allowed, bound)
        # Post-filter: fetch enough of the unrestricted ranking to expect k allowed hits, widen if short; once a
        # wider fetch would cost more than restricting, restrict instead (same answer, bounded cost).
        first = math.ceil((k + _SLACK) * live / allowed.size * 1.25)
        budget = self.restrict_cost_ratio * allowed.size
        keep = allowed if allowed.size < 2 or bool(np.all(allowed[1:] >= allowed[:-1])) else np.sort(allowed)
        hits = _collect(searcher, text_query, k, first, bound, keep=keep, budget=budget)
        return hits if hits is not None else self._restricted(searcher, text_query, k, allowed, bound)

    def choose_restrict(self, k: int, live: int, bound: int, n_allowed: int) -> bool:
        """Restrict the query to the allowed labels when that costs less than the hits post-filtering would
        expect to fetch (k / allowed fraction, and never more than the documents that can match)."""
        expected = min(bound, (k + _SLACK) * live / n_allowed * 1.25)
        return self.restrict_cost_ratio * n_allowed < expected

    def _text_query(self, terms: list[str]) -> tantivy.Query:
        queries = [tantivy.Query.term_query(self._schema, _TEXT, t) for t in terms]
        if len(queries) == 1:
            return queries[0]
        return tantivy.Query.boolean_query([(tantivy.Occur.Should, q) for q in queries])

    def _restricted(
        self, searcher: tantivy.Searcher, text_query: tantivy.Query, k: int, allowed: NDArray[np.int64], bound: int
    ) -> tuple[list[int], list[float]]:
        # Up to RESTRICT_TERMS_MAX labels, one term query each (a term lookup apiece) beats term_set_query, whose
        # automaton walks the label dictionary; beyond, a union of that many scorers costs more time and memory.
        # Scored 0, so the BM25 scores are exactly the unrestricted ones.
        values = np.unique(allowed).tolist()
        if len(values) <= RESTRICT_TERMS_MAX:
            terms = [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, _LABEL, v)) for v in values]
            only = tantivy.Query.const_score_query(tantivy.Query.boolean_query(terms), 0.0)
        else:
            only = tantivy.Query.const_score_query(tantivy.Query.term_set_query(self._schema, _LABEL, values), 0.0)
        query = tantivy.Query.boolean_query([(tantivy.Occur.Must, text_query), (tantivy.Occur.Must, only)])
        return _top(searcher, query, k, min(bound, len(values)))

    # ---- accounting -----------------------------------------------------------------------------------------

    @property
    def document_count(self) -> int:
        """Documents with text, as of the last write."""
        self.flush()
        return self._index.searcher().num_docs

    def nbytes(self) -> int:
        """Estimated memory: segment bytes from a size model (tantivy exposes no space usage to Python; deleted
        documents awaiting a merge are not counted) plus the writer, when one is held."""
        live = self.document_count
        avg_chars = self._chars_added / self._docs_added if self._docs_added else 0.0
        segments = live * (_BYTES_PER_DOC + _BYTES_PER_CHAR * avg_chars)
        return int(segments) + (WRITER_BYTES if self._writer is not None else 0)

    def close(self) -> None:
        """Stop the writer's threads (after its merges finish). Searches stay possible; writes reopen a writer."""
        self.flush()
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.wait_merging_threads()


def _top(searcher: tantivy.Searcher, query: tantivy.Query, k: int, bound: int) -> tuple[list[int], list[float]]:
    result = _collect(searcher, query, k, k + _SLACK, bound)
    assert result is not None  # no budget, no give-up
    return result


def _collect(
    searcher: tantivy.Searcher,
    query: tantivy.Query,
    k: int,
    limit: int,
    bound: int,
    *,
    keep: NDArray[np.int64] | None = None,
    budget: float | None = None,
) -> tuple[list[int], list[float]] | None:
    """Top k of `query` (only labels in `keep`, sorted, if given), ties by label. tantivy breaks ties at its cut-off by
    document address, so fetch until the k-th kept score is above the lowest fetched one (the whole tie is then
    in hand) or nothing more matches. None when widening would pass `budget` hits."""
    while True:
        limit = max(1, min(limit, bound))
        hits = searcher.search(query, limit, count=False).hits
        scores = np.fromiter((h[0] for h in hits), dtype=np.float64, count=len(hits))
        labels = np.asarray(searcher.fast_field_values(_LABEL, [h[1] for h in hits]), dtype=np.int64)
        if keep is not None:
            # Binary search: np.isin would sort `keep` (possibly large) again on every call.
            mask = keep[np.minimum(np.searchsorted(keep, labels), keep.size - 1)] == labels
            kept_scores, kept_labels = scores[mask], labels[mask]
        else:
            kept_scores, kept_labels = scores, labels
        if len(hits) < limit or limit >= bound or (len(kept_scores) >= k and kept_scores[k - 1] > scores[-1]):
            break
        limit *= _GROWTH
        if budget is not None and min(limit, bound) > budget:
            return None
    order = np.lexsort((kept_labels, -kept_scores))[:k]
    return kept_labels[order].tolist(), kept_scores[order].tolist()
