"""akidb.client's retry policy and deterministic ids, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from akidb.client import RetryPolicy, document_id
from akidb.client.retry import retry_after_error


def test_retry_after_seconds_are_followed() -> None:
    policy = RetryPolicy()
    assert policy.delay(0, "3") == 3.0
    assert policy.delay(4, " 0 ") == 0.0
    assert policy.delay(0, "1.5") == 1.5


def test_retry_after_is_capped() -> None:
    assert RetryPolicy(max_retry_after=60.0).delay(0, "3600") == 60.0
    assert RetryPolicy(max_retry_after=2.0).delay(0, "5") == 2.0


def test_retry_after_http_date() -> None:
    policy = RetryPolicy()
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    assert 15.0 <= policy.delay(0, later) <= 20.5
    earlier = format_datetime(datetime.now(UTC) - timedelta(seconds=20), usegmt=True)
    assert policy.delay(0, earlier) == 0.0
    far = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    assert policy.delay(0, far) == policy.max_retry_after


@pytest.mark.parametrize("attempt", [0, 1, 3, 10, 200])
def test_backoff_has_full_jitter_within_bounds(attempt: int) -> None:
    policy = RetryPolicy(backoff_base=0.25, backoff_max=8.0)
    ceiling = min(8.0, 0.25 * 2**attempt)
    delays = [policy.delay(attempt, None) for _ in range(300)]
    assert all(0.0 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 1, "full jitter: the waits differ"
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(delays) < ceiling / 4
    assert max(delays) > ceiling * 3 / 4


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=8.0)
    assert all(0.0 <= policy.delay(1, "soon") <= 1.0 for _ in range(50))
    assert all(0.0 <= policy.delay(0, "nan") <= 0.5 for _ in range(50))


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_transport_errors_retry_by_idempotence() -> None:
    policy = RetryPolicy(attempts=3, backoff_base=0.0)
    refused = httpx.ConnectError("refused")
    timed_out = httpx.ReadTimeout("slow")
    # Never reached the server: always again, until the attempts are spent.
    assert retry_after_error(policy, 0, refused, idempotent=False) == 0.0
    assert retry_after_error(policy, 2, refused, idempotent=False) is None
    # May have reached it: again only when doing it twice is harmless.
    assert retry_after_error(policy, 0, timed_out, idempotent=True) == 0.0
    assert retry_after_error(policy, 0, timed_out, idempotent=False) is None
    assert retry_after_error(policy, 0, httpx.RemoteProtocolError("dropped"), idempotent=False) is None


def test_document_id_is_the_content_hash() -> None:
    document = {"text": "hello", "metadata": {"b": 1, "a": [1, 2]}, "vector": [1, 2.5]}
    same = {"metadata": {"a": [1, 2], "b": 1}, "vector": [1.0, 2.5], "text": "hello", "id": "ignored"}
    assert document_id(document) == document_id(same)
    assert len(document_id(document)) == 32
    assert int(document_id(document), 16) >= 0
    assert document_id({"text": "hello"}) == document_id({"text": "hello", "metadata": {}, "vector": None})
    assert document_id({"text": "hello"}) != document_id({"text": "hello!"})
    assert document_id({"text": "x", "metadata": {"n": 1}}) != document_id({"text": "x", "metadata": {"n": "1"}})


def test_document_id_is_stable_across_processes() -> None:
    # A pinned value: the id must never depend on the process (no hash(), no dict order), nor change between
    # versions, or a re-run import would duplicate what it sent before.
    assert document_id({"text": "AkiDB", "metadata": {"source": "docs"}}) == "3b6287b884bfff9bc8cd382369eb2642"
