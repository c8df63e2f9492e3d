"""HTTPS from server.tls_cert_file/tls_key_file, and CORS only for server.cors_origins (off by default)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.e2e.conftest import AkidbServer

ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certificate_authority: trustme.CA) -> Iterator[AkidbServer]:
    root = tmp_path_factory.mktemp("tls")
    cert = certificate_authority.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = root / "cert.pem", root / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    config = (
        f'[server]\ntls_cert_file = "{cert_file}"\ntls_key_file = "{key_file}"\ncors_origins = ["{ORIGIN}"]\n'
        '[embedding]\nprovider = "mock"\n'
    )
    server = AkidbServer(root, config=config, scheme="https", verify=str(_ca_file(certificate_authority, root)))
    server.start()
    yield server
    server.close()


def _ca_file(ca: trustme.CA, root: Path) -> Path:
    path = root / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def test_the_server_speaks_https_with_the_configured_certificate(tls_server: AkidbServer) -> None:
    response = tls_server.client.get("/health/live")
    assert response.status_code == 200
    assert str(response.url).startswith("https://")
    # Plain HTTP on the same port is not served.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/health/live", timeout=5.0)
    # And a client that does not trust the certificate refuses it.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{tls_server.port}/health/live", timeout=5.0)


def test_cors_answers_the_configured_origin_only(tls_server: AkidbServer) -> None:
    preflight = tls_server.client.options(
        "/api/v1/collections",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers.get("access-control-allow-origin") == ORIGIN
    assert "POST" in preflight.headers.get("access-control-allow-methods", "")
    plain = tls_server.client.get("/api/v1/collections", headers={"Origin": ORIGIN})
    assert plain.headers.get("access-control-allow-origin") == ORIGIN
    other = tls_server.client.get("/api/v1/collections", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_by_default(tmp_path: Path) -> None:
    server = AkidbServer(tmp_path, config='[embedding]\nprovider = "mock"\n')
    server.start()
    try:
        response = server.client.get("/api/v1/collections", headers={"Origin": ORIGIN})
        assert response.status_code == 200
        assert not any(name.startswith("access-control-") for name in response.headers)
    finally:
        server.close()
