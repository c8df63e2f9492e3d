"""How a provider cuts length-sorted texts into batches: every row once, at most batch_size rows, and no
short text padded to a long one's length just because they came together."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from akidb.embedding.tokens import BATCH_OVERHEAD_TOKENS, length_sorted_chunks


def cost(lengths: list[int], chunks: list[list[int]]) -> int:
    return sum(BATCH_OVERHEAD_TOKENS + len(chunk) * max(lengths[row] for row in chunk) for chunk in chunks)


@given(st.lists(st.integers(1, 256), max_size=80), st.integers(1, 40))
def test_every_row_once_in_sorted_chunks_of_at_most_batch_size(lengths: list[int], batch_size: int) -> None:
    chunks = length_sorted_chunks(lengths, batch_size)
    rows = [row for chunk in chunks for row in chunk]
    assert sorted(rows) == list(range(len(lengths)))
    assert all(1 <= len(chunk) <= batch_size for chunk in chunks)
    in_order = [lengths[row] for row in rows]
    assert in_order == sorted(in_order)
    # Never worse than fixed slices of batch_size over the sorted rows.
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    slices = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    assert cost(lengths, chunks) <= cost(lengths, slices)


def test_short_texts_are_not_padded_to_a_long_ones_length() -> None:
    lengths = [12, 11, 200, 10, 13, 190, 12, 9]
    chunks = length_sorted_chunks(lengths, 32)
    assert [sorted(lengths[row] for row in chunk) for chunk in chunks] == [[9, 10, 11, 12, 12, 13], [190, 200]]


def test_texts_of_one_length_fill_whole_batches() -> None:
    assert [len(chunk) for chunk in length_sorted_chunks([20] * 64, 32)] == [32, 32]
