"""Every domain error, walked through the HTTP layer: its status, Litestar's body shape, never internals."""

from __future__ import annotations

import logging

import pytest
from litestar import Litestar, get
from litestar.params import FromPath
from litestar.testing import TestClient

from akidb import errors
from akidb.gateway.errors import EXCEPTION_HANDLERS


def _all_error_classes() -> list[type[errors.AkidbError]]:
    found: list[type[errors.AkidbError]] = []
    pending: list[type[errors.AkidbError]] = [errors.AkidbError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


ERRORS = {cls.__name__: cls for cls in _all_error_classes()}


@get("/raise/{name:str}")
async def raise_error(name: FromPath[str]) -> None:
    cls = ERRORS[name]
    if cls is errors.Overloaded:
        raise errors.Overloaded("queue is full", retry_after_s=2.5)
    if cls is errors.NotCaughtUp:
        raise errors.NotCaughtUp(f"{name} happened", applied_seq=3, min_seq=5, retry_after_s=2.0)
    raise cls(f"{name} happened")


@get("/crash")
async def crash() -> None:
    raise RuntimeError("secret internal state")


@pytest.fixture(scope="module")
def client() -> TestClient[Litestar]:
    app = Litestar([raise_error, crash], exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as test_client:
        yield test_client


def test_the_walk_covers_the_errors_module() -> None:
    assert {"NotFound", "AlreadyExists", "DimensionMismatch", "InvalidDocument", "Overloaded"} <= set(ERRORS)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_domain_error_maps_to_its_status(client: TestClient[Litestar], name: str) -> None:
    cls = ERRORS[name]
    response = client.get(f"/raise/{name}")
    assert response.status_code == cls.status_code
    body = response.json()
    assert body["status_code"] == cls.status_code
    assert body["extra"]["code"] == cls.code
    if cls is errors.Overloaded:
        assert response.headers["retry-after"] == "3"
    else:
        assert body["detail"] == f"{name} happened"


def test_unexpected_exception_is_a_generic_logged_500(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="akidb.gateway"):
        response = client.get("/crash")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["detail"].startswith("internal server error")
    assert any("secret internal state" in str(record.exc_info) for record in caplog.records)


def test_unknown_route_keeps_its_404(client: TestClient[Litestar]) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["status_code"] == 404


def test_not_caught_up_says_when_to_retry_and_how_far_it_got(client: TestClient[Litestar]) -> None:
    response = client.get("/raise/NotCaughtUp")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    extra = response.json()["extra"]
    assert (extra["applied_seq"], extra["min_seq"], extra["field"]) == (3, 5, "min_seq")
