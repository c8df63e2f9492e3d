"""KeywordIndex: BM25 over English-stemmed text in a RAM tantivy index, kept in step with writes."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from itertools import product

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akidb.storage import keyword
from akidb.storage.keyword import KeywordIndex


@pytest.fixture
def index() -> Iterator[KeywordIndex]:
    ix = KeywordIndex()
    yield ix
    ix.close()


def labels_of(ix: KeywordIndex, query: str, k: int = 100) -> list[int]:
    return ix.search(query, k)[0]


def test_stemming_matches_other_forms_of_a_word(index: KeywordIndex) -> None:
    index.upsert(
        [1, 2, 3, 4], ["She runs every day", "a run in the park", "nothing here", "RUNNING late"], replaced=[False] * 4
    )
    assert sorted(labels_of(index, "running")) == [1, 2, 4]
    assert sorted(labels_of(index, "Runs")) == [1, 2, 4]
    assert index.analyze("Running THE runs, run!") == ["run"]


def test_rare_term_outranks_common_term_and_more_occurrences_rank_higher(index: KeywordIndex) -> None:
    common = [f"cat filler{i}" for i in range(10)]
    index.upsert(list(range(10)), common, replaced=[False] * 10)
    index.upsert([10, 20, 21], ["dog filler", "fish fish fish", "fish bird bird"], replaced=[False] * 3)
    labels, scores = index.search("cat dog", 20)
    assert labels[0] == 10
    assert scores[0] > scores[1]
    assert sorted(labels) == list(range(11))
    assert index.search("fish", 5)[0] == [20, 21]


def test_replacement_and_none_text_remove_the_old_text(index: KeywordIndex) -> None:
    index.upsert([1, 2], ["apple pie", "apple tart"], replaced=[False, False])
    index.upsert([1], ["banana split"], replaced=[True])
    assert labels_of(index, "apple") == [2]
    assert labels_of(index, "banana") == [1]
    assert index.document_count == 2
    index.upsert([1, 2], [None, "apple tart"], replaced=[True, True])
    assert labels_of(index, "banana") == []
    assert labels_of(index, "apple") == [2]
    assert index.document_count == 1


def test_delete_removes_and_ignores_unknown_labels(index: KeywordIndex) -> None:
    big = 2**40
    index.upsert([1, 2, big], ["red fox", "red hen", "red ant"], replaced=[False] * 3)
    assert sorted(labels_of(index, "red")) == [1, 2, big]
    index.delete([2, 99, -5])
    assert sorted(labels_of(index, "red")) == [1, big]
    index.delete([])
    assert index.document_count == 2


def test_documents_without_text_never_match(index: KeywordIndex) -> None:
    index.upsert([1, 2, 3], ["the quick fox", None, ""], replaced=[False] * 3)
    assert labels_of(index, "quick fox") == [1]
    assert index.search("quick", 10, np.array([2, 3], dtype=np.int64)) == ([], [])
    assert index.document_count == 2  # "" is indexed but has no terms, so it matches nothing


@pytest.mark.parametrize(
    "query",
    ['AND "foo', "title:x", "(", ")", "*", "-", '"', "a:b:c", "[1 TO 2]", "~2", "^3", "\\", "NOT", "+-!", "\x00",
     "emoji 🦀 ünïcödé", "x" * 10_000, " OR ".join(["fox"] * 200)],
)  # fmt: skip
def test_query_syntax_is_plain_text(index: KeywordIndex, query: str) -> None:
    index.upsert([1, 2], ["title: the fox", "x marks the spot"], replaced=[False, False])
    labels, scores = index.search(query, 5)
    assert len(labels) == len(scores) <= 2
    assert index.search(query, 5, np.array([1], dtype=np.int64))[0] in ([], [1])


def test_query_syntax_characters_are_separators(index: KeywordIndex) -> None:
    index.upsert([1, 2], ["apple orchard", "pear tree"], replaced=[False, False])
    assert labels_of(index, "title:apple") == [1]
    assert sorted(labels_of(index, '(apple AND "pear')) == [1, 2]


@pytest.mark.parametrize("query", ["", "   ", "the and of", "!!! ???", "a an to"])
def test_query_without_terms_has_no_hits(index: KeywordIndex, query: str) -> None:
    index.upsert([1], ["the and of a an to it"], replaced=[False])
    assert index.search(query, 10) == ([], [])


def test_ties_are_broken_by_label_across_segments(index: KeywordIndex) -> None:
    order = [50, 3, 41, 7, 12, 1, 33]
    for label in order:  # one commit each: the tied documents sit in different segments
        index.upsert([label], ["same words exactly"], replaced=[False])
    for k in (1, 3, len(order)):
        labels, scores = index.search("words", k)
        assert labels == sorted(order)[:k]
        assert len(set(scores)) == 1
    allowed = np.array([41, 12, 33, 999], dtype=np.int64)
    for ratio in (0.0, math.inf):
        index.restrict_cost_ratio = ratio
        assert index.search("words", 2, allowed)[0] == [12, 33]


def test_k_zero_empty_index_and_empty_allowed(index: KeywordIndex) -> None:
    assert index.search("anything", 5) == ([], [])
    index.upsert([1], ["anything"], replaced=[False])
    assert index.search("anything", 0) == ([], [])
    assert index.search("anything", 5, np.array([], dtype=np.int64)) == ([], [])


def test_nbytes_document_count_and_close(index: KeywordIndex) -> None:
    empty = index.nbytes()
    index.upsert(list(range(100)), [f"document number {i} about cats" for i in range(100)], replaced=[False] * 100)
    assert index.document_count == 100
    assert index.nbytes() > empty
    index.close()
    assert len(labels_of(index, "cats")) == 100  # searches outlive the writer
    index.upsert([100], ["one more cat"], replaced=[False])  # and a write brings one back
    assert len(labels_of(index, "cats", 1000)) == 101


def test_threshold_picks_restriction_only_for_small_allowed_sets() -> None:
    ix = KeywordIndex()
    live = 15_000
    assert ix.choose_restrict(10, live, live, 15)  # 0.1%
    assert not ix.choose_restrict(10, live, live, 1_500)  # 10%
    assert not ix.choose_restrict(10, live, 5, 15)  # few matches: post-filtering reads them all anyway


VOCAB = ["apple", "apples", "banana", "cherry", "run", "running", "runs", "zebra", "the", "and", "quick", "fox"]
words = st.lists(st.sampled_from(VOCAB), min_size=0, max_size=8).map(" ".join)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(st.one_of(st.none(), words), min_size=1, max_size=30),
    rewrites=st.lists(st.tuples(st.integers(0, 29), st.one_of(st.none(), words)), max_size=8),
    deletes=st.lists(st.integers(0, 35), max_size=5),
    queries=st.lists(
        st.tuples(words, st.integers(1, 12), st.lists(st.integers(-2, 35), max_size=25)), min_size=1, max_size=6
    ),
)
def test_allowed_equals_filtered_full_ranking_on_both_sides_of_the_threshold(
    docs: list[str | None],
    rewrites: list[tuple[int, str | None]],
    deletes: list[int],
    queries: list[tuple[str, int, list[int]]],
) -> None:
    """Restricting the query and post-filtering (and the default mix of both) give exactly the unrestricted
    ranking with the non-allowed labels dropped, after replacements and deletes left deleted docs in segments."""
    ix = KeywordIndex()
    terms_max_default = keyword.RESTRICT_TERMS_MAX
    try:
        ix.upsert(list(range(len(docs))), docs, replaced=[False] * len(docs))
        texts = dict(enumerate(docs))
        for label, text in rewrites:
            ix.upsert([label], [text], replaced=[label in texts])
            texts[label] = text
        ix.delete(deletes)
        for label in deletes:
            texts.pop(label, None)
        live = {label: text for label, text in texts.items() if text is not None}
        assert ix.document_count == len(live)
        for query, k, allowed_list in queries:
            full_labels, full_scores = ix.search(query, len(live) + 1)
            terms = set(ix.analyze(query))
            assert sorted(full_labels) == sorted(lb for lb, t in live.items() if terms & set(ix.analyze(t)))
            keys = [(-s, lb) for lb, s in zip(full_labels, full_scores, strict=True)]
            assert keys == sorted(keys)
            allowed = np.array(allowed_list, dtype=np.int64)
            keep = set(allowed_list)
            expected = [(lb, s) for lb, s in zip(full_labels, full_scores, strict=True) if lb in keep][:k]
            for ratio, terms_max in product((0.0, keyword.RESTRICT_COST_RATIO, 1.0, math.inf), (1024, 0)):
                ix.restrict_cost_ratio = ratio
                keyword.RESTRICT_TERMS_MAX = terms_max  # 0: restrict with a term set instead of label terms
                got_labels, got_scores = ix.search(query, k, allowed)
                assert list(zip(got_labels, got_scores, strict=True)) == expected, (ratio, terms_max)
            ix.restrict_cost_ratio = keyword.RESTRICT_COST_RATIO
    finally:
        keyword.RESTRICT_TERMS_MAX = terms_max_default
        ix.close()


def test_post_filter_falls_back_to_restriction_when_widening_gets_dear(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allowed labels all at the bottom of a long ranking: post-filtering gives up and restricts, same answer."""
    ix = KeywordIndex()
    n = 2000
    ix.upsert(list(range(n)), ["apple " + "pad " * (i % 50) for i in range(n)], replaced=[False] * n)
    full_labels, full_scores = ix.search("apple", n)
    allowed = np.array(sorted(full_labels[-100:]), dtype=np.int64)
    assert not ix.choose_restrict(3, n, n, allowed.size)
    calls: list[int] = []
    original = KeywordIndex._restricted

    def spy(self: KeywordIndex, *args: object) -> tuple[list[int], list[float]]:
        calls.append(1)
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(KeywordIndex, "_restricted", spy)
    got = ix.search("apple", 3, allowed[::-1].copy())
    assert calls == [1]
    keep = set(allowed.tolist())
    expected = [(lb, s) for lb, s in zip(full_labels, full_scores, strict=True) if lb in keep][:3]
    assert list(zip(*got, strict=True)) == expected
    ix.close()


def test_searches_during_writes_see_whole_commits() -> None:
    """One thread moves a marker word from group to group (one commit replaces the old group's text and writes
    the new one's) and sometimes deletes the marked group; searchers must always see zero or one whole group."""
    groups, size = 6, 25
    ix = KeywordIndex()
    group_of = {g: set(range(g * size, (g + 1) * size)) for g in range(groups)}
    all_labels = list(range(groups * size))
    ix.upsert(all_labels, ["plain words here"] * len(all_labels), replaced=[False] * len(all_labels))
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def write() -> None:
        try:
            for i in range(1, 80):
                new, old = sorted(group_of[i % groups]), sorted(group_of[(i - 1) % groups])
                if i % 7 == 0:
                    ix.delete(old)
                else:
                    texts = ["marker words here"] * size + ["plain words here"] * size
                    ix.upsert(new + old, texts, replaced=[True] * (2 * size))
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    def search(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                allowed = None
                if rng.random() < 0.5:
                    allowed = np.array(rng.sample(all_labels, rng.choice([3, 60])), dtype=np.int64)
                labels, scores = ix.search("marker", 1000, allowed)
                got = set(labels)
                assert labels == sorted(labels)
                assert len(set(scores)) <= 1
                keep = set(all_labels) if allowed is None else set(allowed.tolist())
                assert got == set() or any(got == group & keep for group in group_of.values()), labels
                assert groups * size - size <= ix.document_count <= groups * size
                seen.append(len(got))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=search, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=write))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert time.monotonic() - started < 60
    assert any(seen), "searches never saw a marked group"
    ix.close()
