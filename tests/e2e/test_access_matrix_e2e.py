"""Access control over HTTP on one real server (auth on, the mock embedding provider): every route of the
application by every kind of caller (no key, a bad key, read, write, admin, and an admin key limited to other
collections), each answer checked against the rules of ../shared/API.md "Access control":

- no key or a bad one: 401 with `WWW-Authenticate: Bearer` on every route but the public ones;
- a valid key below the route's role: 403 `forbidden`; the keys and model load/unload routes need an admin
  key for the whole server;
- a key limited to collections: any other collection does not exist for it (404, the very answer of a
  collection that does not exist, before any role check), and lists show only its own.

The route list is the application's own (`route_keys` of an app built in-process from the server's config):
a route added without a sample request here fails the matrix, and so does a stale entry in RIGHTS. The
expected status of every cell is computed from the rules above, never written out by hand.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import httpx
import pytest

from akidb.config import load_settings
from akidb.gateway.access import RIGHTS, Right, route_keys
from akidb.gateway.app import create_app
from akidb.gateway.runtime import Runtime

from .conftest import AkidbServer, _child_env

pytestmark = pytest.mark.e2e

ADMIN_KEY = "akidb-test-bootstrap-" + secrets.token_urlsafe(32)
CONFIG = f'[auth]\nenabled = true\nadmin_key = "{ADMIN_KEY}"\n\n[embedding]\nprovider = "mock"\n'

# The scoped admin key of the matrix sees only these; the matrix's targets are outside them ("m-...").
SCOPED_GLOB = "other-*"
OUTSIDE = "m-"
INSIDE = "other-"
CREDENTIALS = ("no key", "bad key", "read", "write", "admin", "scoped admin")
ROLE_OF_CREDENTIAL = {"read": "read", "write": "write", "admin": "admin", "scoped admin": "admin"}
RANK = {"read": 0, "write": 1, "admin": 2}
# The role each right asks for (API.md "Roles"); PUBLIC asks for nothing.
ROLE_NEEDED = {
    Right.METRICS: "read",
    Right.READ: "read",
    Right.WRITE: "write",
    Right.ADMIN: "admin",
    Right.SERVER: "admin",
}
# A key of the right shape that the server never made: it is looked up in the database and refused.
BAD_KEY = f"akidb_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def token() -> str:
    return uuid.uuid4().hex[:10]


def not_found_detail(name: str) -> str:
    return f"collection '{name}' does not exist"


# --- the server and its keys -----------------------------------------------------------------------------


class Env:
    """The running server, its keys by credential, and the admin-side helpers that make fresh targets."""

    def __init__(self, server: AkidbServer) -> None:
        self.server = server
        self.keys: dict[str, str | None] = {"no key": None, "bad key": BAD_KEY}
        self.model = ""
        self._shared: dict[str, str] = {}
        self._shared_doc: dict[str, str] = {}

    @property
    def client(self) -> httpx.Client:
        return self.server.client

    def headers(self, credential: str) -> dict[str, str]:
        key = self.keys[credential]
        return {} if key is None else {"Authorization": f"Bearer {key}"}

    def send(
        self, credential: str, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        return self.client.request(method, path, json=json, params=params, headers=self.headers(credential))

    def admin(self, method: str, path: str, json: Any = None, expect: int | None = None) -> httpx.Response:
        """A set-up or check request with the bootstrap admin key; `expect` fails the test on another status."""
        response = self.client.request(method, path, json=json, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        if expect is not None and response.status_code != expect:
            pytest.fail(
                f"set-up request {method} {path} (bootstrap admin key): expected {expect}, "
                f"got {response.status_code}: {response.text[:1000]}\n{self.server.log_tail(2000)}"
            )
        return response

    def make_key(self, name: str, role: str, collections: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        body = {"name": name, "role": role, "collections": collections, **extra}
        created: dict[str, Any] = self.admin("POST", "/api/v1/keys", body, expect=201).json()
        assert created["key"].startswith("akidb_"), created
        assert created["role"] == role, created
        return created

    # fresh and shared targets

    def fresh_collection(self, prefix: str) -> str:
        name = f"{prefix}{token()}"
        self.admin("POST", "/api/v1/collections", {"name": name}, expect=201)
        return name

    def shared_collection(self, prefix: str) -> str:
        """One long-lived collection per prefix, with one document, for the routes that destroy nothing."""
        if prefix not in self._shared:
            name = self.fresh_collection(f"{prefix}shared-")
            self._shared[prefix] = name
            self._shared_doc[prefix] = self.fresh_document(name)
        return self._shared[prefix]

    def shared_document(self, prefix: str) -> str:
        self.shared_collection(prefix)
        return self._shared_doc[prefix]

    def fresh_document(self, collection: str) -> str:
        doc_id = f"doc-{token()}"
        document = {"id": doc_id, "text": f"a document about access control {doc_id}", "metadata": {"n": 1}}
        self.admin("POST", f"/api/v1/collections/{collection}/upsert", {"documents": [document]}, expect=200)
        return doc_id

    def document_exists(self, collection: str, doc_id: str) -> bool:
        status = self.admin("GET", f"/api/v1/collections/{collection}/documents/{doc_id}").status_code
        assert status in (200, 404), f"GET document {collection}/{doc_id}: {status}"
        return status == 200

    def collection_exists(self, name: str) -> bool:
        status = self.admin("GET", f"/api/v1/collections/{name}").status_code
        assert status in (200, 404), f"GET collection {name}: {status}"
        return status == 200

    def model_loaded(self) -> bool:
        return bool(self.admin("GET", f"/api/v1/models/{self.model}", expect=200).json()["loaded"])

    def all_collection_names(self) -> list[str]:
        body = self.admin("GET", "/api/v1/collections", expect=200).json()
        return [collection["name"] for collection in body["collections"]]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    server = AkidbServer(tmp_path_factory.mktemp("akidb-access"), config=CONFIG)
    try:
        server.start()
        env = Env(server)
        models = env.admin("GET", "/api/v1/models", expect=200).json()
        env.model = models["default_model"]
        # The mock provider serves the default model (no model files, no inference): check it really does.
        info = env.admin("GET", f"/api/v1/models/{env.model}", expect=200).json()
        assert info["loaded"], info
        assert info["loaded_provider"] == "mock", info
        embedded = env.admin("POST", "/api/v1/embed", {"inputs": ["hello"]}, expect=200).json()
        assert embedded["dimension"] == info["dimension"] == len(embedded["embeddings"][0]), embedded
        for credential, role in ROLE_OF_CREDENTIAL.items():
            scope = [SCOPED_GLOB] if credential == "scoped admin" else None
            env.keys[credential] = env.make_key(f"matrix {credential}", role, scope)["key"]
        yield env
    finally:
        server.close()


@pytest.fixture(scope="module")
def app_routes(env: Env, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int]]:
    """("METHOD /path/{param}", documented success status) for every route of the app the server runs: the
    same config file, built in-process on a scratch data dir."""
    config = env.server.root / "akidb.toml"
    settings = load_settings(
        config, environ={}, overrides={"storage": {"data_dir": str(tmp_path_factory.mktemp("akidb-routes"))}}
    )
    runtime = Runtime.build(settings)
    try:
        app = create_app(settings, runtime)
        routes = [(key, int(getattr(handler, "status_code", 200))) for key, handler in route_keys(app)]
    finally:
        runtime.close()
    assert len({key for key, _ in routes}) == len(routes), f"a route key appears twice: {routes}"
    return routes


# --- one sample request per route ------------------------------------------------------------------------


@dataclass
class Call:
    """One request to a route, made against fresh targets where the request destroys or creates."""

    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    # The collection named in the path (a key limited to collections may not see it).
    collection: str | None = None
    # A collection named in the body instead (create): a limited key may not make it (403).
    body_collection: str | None = None
    # The status the route answers when allowed, if not the handler's declared one.
    success: int | None = None
    # After the request: assert that its effect happened if it was allowed, and did not if it was refused.
    verify: Callable[[bool], None] | None = None
    # On an allowed request: more checks on the answer, given the credential.
    inspect: Callable[[str, httpx.Response], None] | None = None


def _collection_route(suffix: str, json: Any = None) -> Callable[[Env, str], Call]:
    def build(env: Env, prefix: str) -> Call:
        name = env.shared_collection(prefix)
        return Call(f"/api/v1/collections/{name}{suffix}", json=json, collection=name)

    return build


def _create_collection(env: Env, prefix: str) -> Call:
    name = f"{prefix}{token()}"
    return Call(
        "/api/v1/collections",
        json={"name": name},
        body_collection=name,
        verify=lambda allowed: _assert_effect(allowed, env.collection_exists(name), f"collection {name} created"),
    )


def _list_collections(env: Env, prefix: str) -> Call:
    inside, outside = env.shared_collection(INSIDE), env.shared_collection(OUTSIDE)

    def inspect(credential: str, response: httpx.Response) -> None:
        names = [collection["name"] for collection in response.json()["collections"]]
        if credential == "scoped admin":
            assert all(fnmatchcase(name, SCOPED_GLOB) for name in names), (
                f"a key limited to {SCOPED_GLOB} listed {names}"
            )
            assert inside in names, f"the limited key's own collection {inside} is missing from {names}"
        else:
            assert {inside, outside} <= set(names), f"{credential} key: {names} lacks {inside} or {outside}"

    return Call("/api/v1/collections", inspect=inspect)


def _patch_collection(env: Env, prefix: str) -> Call:
    name, mark = env.shared_collection(prefix), token()

    def verify(allowed: bool) -> None:
        metadata = env.admin("GET", f"/api/v1/collections/{name}", expect=200).json()["metadata"]
        _assert_effect(allowed, metadata.get("mark") == mark, f"metadata of {name} patched")

    return Call(f"/api/v1/collections/{name}", json={"metadata": {"mark": mark}}, collection=name, verify=verify)


def _delete_collection(env: Env, prefix: str) -> Call:
    name = env.fresh_collection(prefix)
    return Call(
        f"/api/v1/collections/{name}",
        collection=name,
        verify=lambda allowed: _assert_effect(allowed, not env.collection_exists(name), f"collection {name} deleted"),
    )


def _upsert(env: Env, prefix: str) -> Call:
    name, doc_id = env.shared_collection(prefix), f"up-{token()}"
    return Call(
        f"/api/v1/collections/{name}/upsert",
        json={"documents": [{"id": doc_id, "text": "upserted through the matrix", "metadata": {"n": 2}}]},
        collection=name,
        verify=lambda allowed: _assert_effect(allowed, env.document_exists(name, doc_id), f"{doc_id} upserted"),
    )


def _get_document(env: Env, prefix: str) -> Call:
    name = env.shared_collection(prefix)
    return Call(f"/api/v1/collections/{name}/documents/{env.shared_document(prefix)}", collection=name)


def _delete_document(env: Env, prefix: str) -> Call:
    name = env.shared_collection(prefix)
    doc_id = env.fresh_document(name)
    return Call(
        f"/api/v1/collections/{name}/documents/{doc_id}",
        collection=name,
        verify=lambda allowed: _assert_effect(allowed, not env.document_exists(name, doc_id), f"{doc_id} deleted"),
    )


def _get_documents(env: Env, prefix: str) -> Call:
    name = env.shared_collection(prefix)
    return Call(f"/api/v1/collections/{name}/get", json={"ids": [env.shared_document(prefix)]}, collection=name)


def _delete_documents(env: Env, prefix: str) -> Call:
    name = env.shared_collection(prefix)
    doc_id = env.fresh_document(name)
    return Call(
        f"/api/v1/collections/{name}/delete",
        json={"ids": [doc_id]},
        collection=name,
        verify=lambda allowed: _assert_effect(allowed, not env.document_exists(name, doc_id), f"{doc_id} deleted"),
    )


def _model_route(action: str) -> Callable[[Env, str], Call]:
    """load: starts unloaded, loaded afterwards if allowed; unload: the other way round."""

    def build(env: Env, prefix: str) -> Call:
        env.admin("POST", f"/api/v1/models/{env.model}/{'unload' if action == 'load' else 'load'}", expect=200)

        def verify(allowed: bool) -> None:
            loaded = env.model_loaded()
            _assert_effect(allowed, loaded if action == "load" else not loaded, f"model {env.model} {action}ed")

        return Call(f"/api/v1/models/{env.model}/{action}", verify=verify)

    return build


def _create_key(env: Env, prefix: str) -> Call:
    name = f"throwaway-{token()}"

    def verify(allowed: bool) -> None:
        keys = env.admin("GET", "/api/v1/keys", expect=200).json()["keys"]
        _assert_effect(allowed, any(key["name"] == name for key in keys), f"key {name} created")

    return Call("/api/v1/keys", json={"name": name, "role": "read"}, verify=verify)


def _revoke_key(env: Env, prefix: str) -> Call:
    key_id = env.make_key(f"throwaway-{token()}", "read")["id"]

    def verify(allowed: bool) -> None:
        keys = env.admin("GET", "/api/v1/keys", expect=200).json()["keys"]
        revoked = next(key["revoked_at"] for key in keys if key["id"] == key_id) is not None
        _assert_effect(allowed, revoked, f"key {key_id} revoked")

    return Call(f"/api/v1/keys/{key_id}", verify=verify)


def _fixed(path: str, json: Any = None, success: int | None = None) -> Callable[[Env, str], Call]:
    return lambda env, prefix: Call(path, json=json, success=success)


def _assert_effect(allowed: bool, happened: bool, what: str) -> None:
    if allowed:
        assert happened, f"allowed, yet not done: {what}"
    else:
        assert not happened, f"refused, yet done: {what}"


_C = "/api/v1/collections/{name}"
# Route key -> a builder of one request to it, given the helpers and the prefix of the collections to target.
SAMPLES: dict[str, Callable[[Env, str], Call]] = {
    "GET /health/live": _fixed("/health/live"),
    "GET /health/ready": _fixed("/health/ready"),
    "GET /metrics": _fixed("/metrics"),
    "GET /schema": _fixed("/schema"),
    "GET /schema/openapi.json": _fixed("/schema/openapi.json"),
    "GET /schema/swagger": _fixed("/schema/swagger"),
    "GET /schema/oauth2-redirect.html": _fixed("/schema/oauth2-redirect.html"),
    # Litestar's catch-all under /schema: its only answer is an HTML "404 Not found" page.
    "GET /schema/{path}": _fixed("/schema/no-such-page", success=404),
    "GET /schema/assets/{file_path}": _fixed("/schema/assets/swagger-ui-bundle.js"),
    "HEAD /schema/assets/{file_path}": _fixed("/schema/assets/swagger-ui.css"),
    "GET /docs": _fixed("/docs"),
    "POST /api/v1/collections": _create_collection,
    "GET /api/v1/collections": _list_collections,
    f"GET {_C}": _collection_route(""),
    f"PATCH {_C}": _patch_collection,
    f"DELETE {_C}": _delete_collection,
    f"POST {_C}/upsert": _upsert,
    f"GET {_C}/documents": _collection_route("/documents"),
    f"GET {_C}/documents/{{doc_id}}": _get_document,
    f"DELETE {_C}/documents/{{doc_id}}": _delete_document,
    f"POST {_C}/get": _get_documents,
    f"POST {_C}/count": _collection_route("/count", json={}),
    f"POST {_C}/delete": _delete_documents,
    f"POST {_C}/search": _collection_route("/search", json={"query": "access control", "top_k": 3}),
    "POST /api/v1/embed": _fixed("/api/v1/embed", json={"inputs": ["access control"]}),
    "POST /v1/embeddings": _fixed("/v1/embeddings", json={"input": "access control"}),
    "GET /api/v1/models": _fixed("/api/v1/models"),
    "GET /api/v1/models/{model_id}": lambda env, prefix: Call(f"/api/v1/models/{env.model}"),
    "POST /api/v1/models/{model_id}/load": _model_route("load"),
    "POST /api/v1/models/{model_id}/unload": _model_route("unload"),
    "GET /api/v1/limits": _fixed("/api/v1/limits"),
    "POST /api/v1/keys": _create_key,
    "GET /api/v1/keys": _fixed("/api/v1/keys"),
    "DELETE /api/v1/keys/{key_id}": _revoke_key,
}


def route_table_problems(routes: list[tuple[str, int]]) -> list[str]:
    keys = {key for key, _ in routes}
    problems = [
        f"route {key} has no sample request in {__name__}.SAMPLES: add one, and make sure its right in "
        f"akidb.gateway.access.RIGHTS is the one it should have"
        for key in sorted(keys - SAMPLES.keys())
    ]
    problems += [
        f"RIGHTS has an entry for {key}, which is no route of the app: remove it"
        for key in sorted(RIGHTS.keys() - keys)
    ]
    problems += [f"route {key} has no entry in RIGHTS: add one" for key in sorted(keys - RIGHTS.keys())]
    problems += [
        f"SAMPLES has an entry for {key}, which is no route of the app" for key in sorted(SAMPLES.keys() - keys)
    ]
    return problems


def right_by_api_md(key: str) -> Right | None:
    """API.md's list of what each role may do, as a rule over method and path, independent of RIGHTS (which
    the expectations below rely on): a wrong entry there would otherwise make the matrix expect the wrong
    answer. None: a route the rules do not cover (a new route: extend them)."""
    method, path = key.split(" ", 1)
    if path.startswith(("/health/", "/schema")) or path == "/docs":
        return Right.PUBLIC
    if path == "/metrics":
        return Right.METRICS
    if path.startswith("/api/v1/keys") or (path.startswith("/api/v1/models/") and path.endswith(("/load", "/unload"))):
        return Right.SERVER
    if path.startswith("/api/v1/models"):
        return Right.READ if method == "GET" else None
    if path in ("/api/v1/embed", "/v1/embeddings", "/api/v1/limits"):
        return Right.READ
    if path in ("/api/v1/collections", _C):
        return Right.READ if method == "GET" else Right.ADMIN
    if path.startswith(f"{_C}/"):
        if method == "DELETE" or path.endswith(("/upsert", "/delete")):
            return Right.WRITE
        return Right.READ if path.endswith(("/search", "/get", "/count")) or method == "GET" else None
    return None


# --- the expected answer, from the rules -----------------------------------------------------------------


def expected(key: str, credential: str, call: Call, success: int) -> tuple[int, str]:
    """(status, why) for one credential on one route, from API.md's rules."""
    right = RIGHTS[key]
    if right is Right.PUBLIC:
        return success, "allowed"
    if credential in ("no key", "bad key"):  # auth.public_metrics is off here, so /metrics too
        return 401, "unauthorized"
    role = ROLE_OF_CREDENTIAL[credential]
    limited = credential == "scoped admin"
    if limited and call.collection is not None and not fnmatchcase(call.collection, SCOPED_GLOB):
        return 404, "hidden"  # before the role: to this key the collection does not exist
    if RANK[role] < RANK[ROLE_NEEDED[right]]:
        return 403, "forbidden"
    if limited and right is Right.SERVER:
        return 403, "forbidden"
    if limited and call.body_collection is not None and not fnmatchcase(call.body_collection, SCOPED_GLOB):
        return 403, "forbidden"
    return success, "allowed"


def cell_problems(response: httpx.Response, status: int, why: str, call: Call, credential: str) -> list[str]:
    if response.status_code != status:
        return [f"expected {status} ({why}), got {response.status_code}: {response.text[:300]}"]
    problems: list[str] = []
    if why in ("unauthorized", "forbidden", "hidden"):
        body = response.json()
        code = {"unauthorized": "unauthorized", "forbidden": "forbidden", "hidden": "not_found"}[why]
        if set(body) != {"status_code", "detail", "extra"} or body["status_code"] != status:
            problems.append(f"error body not of the usual shape: {body}")
        elif (body["extra"] or {}).get("code") != code:
            problems.append(f"expected extra.code {code!r}: {body}")
        if why == "hidden" and body.get("detail") != not_found_detail(call.collection or ""):
            problems.append(f"expected detail {not_found_detail(call.collection or '')!r}: {body}")
    if why == "unauthorized" and response.headers.get("www-authenticate") != "Bearer":
        problems.append(f"401 without `WWW-Authenticate: Bearer` (headers: {dict(response.headers)})")
    if why == "allowed" and call.inspect is not None:
        try:
            call.inspect(credential, response)
        except AssertionError as exc:
            problems.append(str(exc))
    if call.verify is not None:
        try:
            call.verify(why == "allowed")
        except AssertionError as exc:
            problems.append(str(exc))
    return problems


# --- tests -----------------------------------------------------------------------------------------------


def test_every_route_has_a_sample_and_a_right(env: Env, app_routes: list[tuple[str, int]]) -> None:
    problems = route_table_problems(app_routes)
    problems += [
        f"RIGHTS gives {key} the right {RIGHTS.get(key)}, API.md's roles say {right_by_api_md(key)}"
        for key, _ in app_routes
        if RIGHTS.get(key) != right_by_api_md(key)
    ]
    assert not problems, "\n".join(problems)
    # The running server documents no route that the in-process app lacks, and every route it leaves out
    # of its OpenAPI document is a public one (or /metrics).
    schema = env.send("no key", "GET", "/schema/openapi.json").json()
    documented = {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item}
    keys = {key for key, _ in app_routes}
    assert documented <= keys, f"the server documents routes the app does not have: {sorted(documented - keys)}"
    undocumented = sorted(key for key in keys - documented if RIGHTS[key] not in (Right.PUBLIC, Right.METRICS))
    assert not undocumented, f"protected routes missing from the OpenAPI document: {undocumented}"


def test_every_route_by_every_credential(env: Env, app_routes: list[tuple[str, int]]) -> None:
    problems = route_table_problems(app_routes)
    assert not problems, "\n".join(problems)
    failures: list[str] = []
    tally: dict[int, int] = {}
    cells = 0
    for key, declared in app_routes:
        method = key.split(" ", 1)[0]
        for credential in CREDENTIALS:
            call = SAMPLES[key](env, OUTSIDE)
            status, why = expected(key, credential, call, call.success or declared)
            response = env.send(credential, method, call.path, json=call.json, params=call.params)
            cells += 1
            tally[response.status_code] = tally.get(response.status_code, 0) + 1
            for problem in cell_problems(response, status, why, call, credential):
                failures.append(f"{key} [{RIGHTS[key]}] with {credential} ({method} {call.path}): {problem}")
    size = f"{len(app_routes)} routes x {len(CREDENTIALS)} credentials = {cells} requests"
    print(f"\naccess matrix: {size}; statuses {dict(sorted(tally.items()))}")
    assert cells == len(app_routes) * len(CREDENTIALS)
    assert not failures, f"access matrix ({size}): {len(failures)} wrong answers\n" + "\n".join(failures)


def test_a_limited_admin_key_has_every_right_within_its_collections(
    env: Env, app_routes: list[tuple[str, int]]
) -> None:
    """The other half of the matrix's last column: on its own collections the limited admin key is admin."""
    failures: list[str] = []
    checked = 0
    for key, declared in app_routes:
        if "{name}" not in key and key != "POST /api/v1/collections":
            continue
        call = SAMPLES[key](env, INSIDE)
        status, why = expected(key, "scoped admin", call, call.success or declared)
        assert why == "allowed", f"{key}: the rules refuse the limited key on its own collection ({status})"
        response = env.send("scoped admin", key.split(" ", 1)[0], call.path, json=call.json, params=call.params)
        checked += 1
        failures += [f"{key} ({call.path}): {p}" for p in cell_problems(response, status, why, call, "scoped admin")]
    assert checked >= 12, checked
    assert not failures, "\n".join(failures)


# --- a key limited to team-* -----------------------------------------------------------------------------

MISC = "misc-not-team"
# Routes that name a collection: (method, suffix after /api/v1/collections/{name}, body).
COLLECTION_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("PATCH", "", {"metadata": {"a": 1}}),
    ("DELETE", "", None),
    ("POST", "/search", {"query": "access control"}),
    ("POST", "/upsert", {"documents": [{"id": "new", "text": "new document"}]}),
    ("POST", "/get", {"ids": ["d1"]}),
    ("POST", "/count", {}),
    ("POST", "/delete", {"ids": ["d1"]}),
    ("GET", "/documents", None),
    ("GET", "/documents/d1", None),
    ("DELETE", "/documents/d1", None),
]
WRITE_ROUTES = {("PATCH", ""), ("DELETE", ""), ("POST", "/upsert"), ("POST", "/delete"), ("DELETE", "/documents/d1")}


@pytest.fixture(scope="module")
def team(env: Env) -> dict[str, Any]:
    """team-a and team-b (one document d1 each), MISC (the same), and a read key limited to team-*. The 404
    bodies of every collection route on MISC are recorded before MISC exists, as the admin sees them."""
    absent = {
        (method, suffix): env.admin(method, f"/api/v1/collections/{MISC}{suffix}", body)
        for method, suffix, body in COLLECTION_ROUTES
    }
    for name in ("team-a", "team-b", MISC):
        env.admin("POST", "/api/v1/collections", {"name": name}, expect=201)
        env.admin(
            "POST",
            f"/api/v1/collections/{name}/upsert",
            {"documents": [{"id": "d1", "text": f"the first document of {name}"}]},
            expect=200,
        )
    key = env.make_key("team reader", "read", ["team-*"])
    return {"absent": absent, "key": key["key"]}


def test_a_limited_key_sees_only_its_collections(env: Env, team: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {team['key']}"}
    listed = env.client.get("/api/v1/collections", headers=headers)
    assert listed.status_code == 200, listed.text
    names = sorted(collection["name"] for collection in listed.json()["collections"])
    everything = env.all_collection_names()
    assert names == sorted(name for name in everything if fnmatchcase(name, "team-*")) == ["team-a", "team-b"], (
        names,
        everything,
    )

    for method, suffix, body in COLLECTION_ROUTES:
        # Outside its scope: exactly the answer the admin got before MISC existed, whatever the role needs.
        response = env.client.request(method, f"/api/v1/collections/{MISC}{suffix}", json=body, headers=headers)
        before = team["absent"][(method, suffix)]
        assert before.status_code == 404, f"{method} {suffix} on a missing collection: {before.text}"
        assert before.json()["detail"] == not_found_detail(MISC), before.text
        assert (response.status_code, response.json()) == (404, before.json()), (
            f"{method} {MISC}{suffix}: {response.status_code} {response.text} vs. absent {before.text}"
        )
        # In its scope: reads pass, writes need the write role.
        response = env.client.request(method, f"/api/v1/collections/team-a{suffix}", json=body, headers=headers)
        want = 403 if (method, suffix) in WRITE_ROUTES else 200
        assert response.status_code == want, f"{method} team-a{suffix}: {response.status_code} {response.text}"
        if want == 403:
            assert response.json()["extra"]["code"] == "forbidden", response.text
        # In its scope but missing: the collection's own 404.
        response = env.client.request(method, f"/api/v1/collections/team-ghost{suffix}", json=body, headers=headers)
        if (method, suffix) not in WRITE_ROUTES:
            assert response.status_code == 404, f"{method} team-ghost{suffix}: {response.text}"
            assert response.json()["detail"] == not_found_detail("team-ghost"), response.text

    # Nothing the limited key asked for changed MISC or team-a.
    for name in (MISC, "team-a"):
        count = env.admin("POST", f"/api/v1/collections/{name}/count", {}, expect=200).json()["count"]
        assert count == 1, (name, count)
        assert env.document_exists(name, "d1")
    search = env.client.post("/api/v1/collections/team-b/search", json={"query": "first"}, headers=headers)
    assert search.status_code == 200, search.text
    assert search.json()["results"][0]["id"] == "d1", search.text
    # A read key makes no collection, in its scope or not.
    for name in ("team-new", "elsewhere"):
        response = env.client.post("/api/v1/collections", json={"name": name}, headers=headers)
        assert response.status_code == 403, response.text
        assert not env.collection_exists(name)


# --- how a key is sent, and keys that stop working -------------------------------------------------------


def test_bearer_and_x_api_key_both_work(env: Env) -> None:
    read, write = env.keys["read"], env.keys["write"]
    assert read is not None
    assert write is not None
    for headers in ({"Authorization": f"Bearer {read}"}, {"X-API-Key": read}, {"authorization": f"bearer {read}"}):
        response = env.client.get("/api/v1/collections", headers=headers)
        assert response.status_code == 200, (headers.keys(), response.text)
    # The role comes with the key whichever header carries it.
    name = env.shared_collection(OUTSIDE)
    upsert = {"documents": [{"id": f"x-{token()}", "text": "sent with X-API-Key"}]}
    response = env.client.post(f"/api/v1/collections/{name}/upsert", json=upsert, headers={"X-API-Key": read})
    assert response.status_code == 403, response.text
    response = env.client.post(f"/api/v1/collections/{name}/upsert", json=upsert, headers={"X-API-Key": write})
    assert response.status_code == 200, response.text
    # Not a key: another scheme, an empty bearer, garbage, a bad key in either header.
    for headers in (
        {"Authorization": f"Basic {read}"},
        {"Authorization": "Bearer"},
        {"X-API-Key": "not-a-key"},
        {"X-API-Key": BAD_KEY},
        {"Authorization": f"Bearer {read}x"},
    ):
        response = env.client.get("/api/v1/collections", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers.get("www-authenticate") == "Bearer"
        assert response.json()["extra"]["code"] == "unauthorized", response.text


def test_openai_embeddings_with_a_bearer_key(env: Env) -> None:
    """What the OpenAI client sends: POST /v1/embeddings, `Authorization: Bearer <api key>`."""
    body = {"input": ["first text", "second text"], "model": env.model, "encoding_format": "float"}
    headers = {"Authorization": f"Bearer {env.keys['read']}", "User-Agent": "OpenAI/Python 1.0", "Accept": "*/*"}
    response = env.client.post("/v1/embeddings", json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "list", answer
    assert answer["model"] == env.model, answer
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert all(item["object"] == "embedding" and len(item["embedding"]) > 0 for item in answer["data"])
    # What an OpenAI client turns into AuthenticationError.
    response = env.client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {BAD_KEY}"})
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate") == "Bearer", response.headers


def test_revoked_and_expired_keys_are_refused(env: Env) -> None:
    revoked = env.make_key(f"to-revoke-{token()}", "read")
    expiring = env.make_key(
        f"to-expire-{token()}", "read", expires_at=(datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    )
    for key in (revoked, expiring):
        response = env.client.get("/api/v1/models", headers={"X-API-Key": key["key"]})
        assert response.status_code == 200, response.text
    env.admin("DELETE", f"/api/v1/keys/{revoked['id']}", expect=204)
    time.sleep(max(0.0, (datetime.fromisoformat(expiring["expires_at"]) - datetime.now(UTC)).total_seconds()) + 0.3)
    for key in (revoked, expiring):
        response = env.client.get("/api/v1/models", headers={"X-API-Key": key["key"]})
        assert response.status_code == 401, (key["name"], response.text)
        assert response.headers.get("www-authenticate") == "Bearer"
        assert response.json()["extra"]["code"] == "unauthorized", response.text


def test_a_key_made_with_the_cli_works_on_the_running_server(env: Env, team: dict[str, Any]) -> None:
    """`akidb keys create` writes to the database the server reads: the key works at once, with its role and
    collections; `akidb keys revoke` in another process stops it within auth.key_cache_ms."""

    def cli(*args: str) -> str:
        config = env.server.root / "akidb.toml"
        command = [sys.executable, "-m", "akidb", "keys", *args, "--config", str(config)]
        command += ["--data-dir", str(env.server.data_dir)]
        done = subprocess.run(
            command, cwd=Path(env.server.root), env=_child_env(), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{command}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    out = cli("create", "--name", "cli writer", "--role", "write", "--collections", "team-*", "--expires-in", "1h")
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    key_id, key = lines["id"], lines["key"]
    headers = {"Authorization": f"Bearer {key}"}
    listed = env.client.get("/api/v1/collections", headers=headers)
    assert listed.status_code == 200, listed.text
    assert sorted(c["name"] for c in listed.json()["collections"]) == ["team-a", "team-b"], listed.text
    upsert = {"documents": [{"id": f"cli-{token()}", "text": "written with a key from the CLI"}]}
    assert env.client.post("/api/v1/collections/team-a/upsert", json=upsert, headers=headers).status_code == 200
    assert env.client.post(f"/api/v1/collections/{MISC}/upsert", json=upsert, headers=headers).status_code == 404
    assert env.client.get("/api/v1/keys", headers=headers).status_code == 403

    cli("revoke", key_id)
    deadline = time.monotonic() + 5.0
    while (status := env.client.get("/api/v1/collections", headers=headers).status_code) == 200:
        assert time.monotonic() < deadline, "a key revoked with the CLI still works after 5 s"
        time.sleep(0.1)
    assert status == 401
