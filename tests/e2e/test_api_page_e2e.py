"""The interactive API page (/docs and /schema/swagger) works with no internet.

Swagger UI's files come from the swagger-ui-py package, served under /schema/assets/: the page names no
CDN, and a real headless Chromium, its host resolver refusing every name but 127.0.0.1, renders the
operations. Auth is on: the page and its files are public, like /schema.

The browser test needs Chromium (Debian's `chromium`; .ci/run installs it) and is skipped, saying so, where
there is none.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import AkidbServer

ADMIN_KEY = "api-page-admin-key-0123456789abcdef"
CONFIG = f'[embedding]\nprovider = "mock"\n\n[auth]\nenabled = true\nadmin_key = "{ADMIN_KEY}"\n'
PAGES = ("/docs", "/schema/swagger")
ASSETS = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "favicon-32x32.png")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_TIMEOUT_S = 120
# Operations that must show in the rendered page (Swagger UI writes the path of each into an opblock).
OPERATIONS = ("/api/v1/collections/{name}/search", "/api/v1/collections/{name}/upsert", "/api/v1/keys")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AkidbServer]:
    server = AkidbServer(tmp_path_factory.mktemp("akidb-api-page"), config=CONFIG)
    try:
        server.start()
        yield server
    finally:
        server.close()


def _plain(server: AkidbServer) -> httpx.Client:
    """A client with no key at all (auth is on)."""
    return httpx.Client(base_url=server.base_url, timeout=30.0)


@pytest.mark.parametrize("page", PAGES)
def test_page_names_no_cdn_and_needs_no_key(server: AkidbServer, page: str) -> None:
    with _plain(server) as client:
        response = client.get(page)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    remote = re.findall(r"""(?:src|href)\s*=\s*["']((?:https?:)?//[^"']*)""", html)
    assert not remote, f"{page} loads files from elsewhere: {remote}"
    for name in ("cdn.jsdelivr", "unpkg.com", "cdnjs"):
        assert name not in html, f"{page} names a CDN ({name})"
    for asset in ASSETS:
        assert f"/schema/assets/{asset}" in html, f"{page} does not load {asset} from /schema/assets/"


def test_assets_are_served_without_a_key(server: AkidbServer) -> None:
    with _plain(server) as client:
        for asset in ASSETS:
            response = client.get(f"/schema/assets/{asset}")
            assert response.status_code == 200, f"{asset}: {response.status_code} {response.text[:300]}"
            assert len(response.content) > 500, f"{asset} is suspiciously small"
        assert "javascript" in client.get("/schema/assets/swagger-ui-bundle.js").headers["content-type"]
        assert client.head("/schema/assets/swagger-ui.css").status_code == 200
        assert client.get("/schema/assets/no-such-file.js").status_code == 404
        # The API itself still wants a key: only the page is public.
        assert client.get("/api/v1/collections").status_code == 401


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        f"no headless Chromium here (looked for {', '.join(BROWSERS)} on PATH): install Debian's `chromium` "
        "(`apt-get install chromium`, as .ci/run does) to check that the API page renders offline"
    )


@pytest.mark.parametrize("page", PAGES)
def test_chromium_renders_the_operations_offline(server: AkidbServer, page: str) -> None:
    browser = _browser()
    profile = server.root / f"chromium-profile{page.replace('/', '-')}"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # No name resolves but 127.0.0.1: a file fetched from a CDN would fail, as it would offline.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=15000",
        "--dump-dom",
        f"{server.base_url}{page}",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{browser} did not finish within {BROWSER_TIMEOUT_S}s: {exc.stderr!r}")
    dom = done.stdout
    context = f"exit {done.returncode}; stderr tail:\n{done.stderr[-3000:]}\nDOM head:\n{dom[:2000]}"
    assert done.returncode == 0, context
    assert "swagger-ui" in dom, f"Swagger UI did not start\n{context}"
    opblocks = re.findall(r'class="opblock opblock-(?:get|post|put|patch|delete)[^"]*"', dom)
    assert len(opblocks) >= 10, f"Swagger UI rendered {len(opblocks)} operations\n{context}"
    missing = [path for path in OPERATIONS if f'data-path="{path}"' not in dom]
    assert not missing, f"operations missing from the rendered page: {missing}\n{context}"
