"""Everything the sync and async clients share: configuration, the requests each method sends, how answers
decode, and the read-your-writes memory. The two client classes only do the I/O (and the waiting)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import httpx
import msgspec

from akidb.client import _wire as w
from akidb.client import models as m
from akidb.client._documents import batches
from akidb.client._wire import API, OMITTED, Call, Omitted
from akidb.client.errors import AkiDBError, ConnectionFailed, error_from_response
from akidb.client.retry import RetryPolicy, retry_after_error, retry_after_status

T = TypeVar("T")
R = TypeVar("R", bound=msgspec.Struct)


class Core:
    """Configuration, request building and answer handling for Client and AsyncClient."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout: float,
        retry: RetryPolicy | None,
        headers: Mapping[str, str] | None,
        verify: bool | str,
        read_your_writes: bool,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = httpx.Timeout(timeout)
        self.verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self.headers = {"User-Agent": w.USER_AGENT, "Accept": "application/json"}
        if api_key is not None:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.headers.update(headers or {})
        self.read_your_writes = read_your_writes
        self._seqs: dict[str, int] = {}
        self._lock = threading.Lock()

    # --- read-your-writes ---------------------------------------------------------------------------

    def last_seq(self, collection: str) -> int | None:
        """The highest seq a write answer on this collection gave this client, if any."""
        with self._lock:
            return self._seqs.get(collection)

    def remember(self, collection: str, seq: int, *, replace: bool = False) -> None:
        with self._lock:
            if replace or seq > self._seqs.get(collection, -1):
                self._seqs[collection] = seq

    def forget(self, collection: str) -> None:
        with self._lock:
            self._seqs.pop(collection, None)

    def min_seq(self, collection: str, given: int | None) -> int | None:
        if given is not None or not self.read_your_writes:
            return given
        return self.last_seq(collection)

    def _remembering(self, collection: str, kind: type[R], *, replace: bool = False) -> Callable[[httpx.Response], R]:
        decode = w.decoder(kind)

        def finish(response: httpx.Response) -> R:
            result = decode(response)
            seq = getattr(result, "seq", None)
            if isinstance(seq, int) and not getattr(result, "dry_run", False):
                self.remember(collection, seq, replace=replace)
            return result

        return finish

    def _seq_header(self, collection: str) -> Callable[[httpx.Response], None]:
        def finish(response: httpx.Response) -> None:
            value = response.headers.get(w.SEQ_HEADER)
            if value is not None and value.strip().isdigit():
                self.remember(collection, int(value))

        return finish

    # --- answers -----------------------------------------------------------------------------------

    def outcome(self, call: Call[T], response: httpx.Response) -> T:
        """The result of a final answer, or the error it means."""
        if not (response.is_success or response.status_code in call.accept):
            raise error_from_response(response)
        try:
            return call.finish(response)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise AkiDBError(
                f"unexpected answer to {call.method} {call.path}: {exc}",
                status=response.status_code,
                code="invalid_response",
            ) from exc

    def wait_after_status(self, call: Call[Any], attempt: int, response: httpx.Response) -> float | None:
        if response.status_code in call.accept:
            return None
        return retry_after_status(self._policy(call), attempt, response)

    def wait_after_error(self, call: Call[Any], attempt: int, error: httpx.TransportError) -> float | None:
        return retry_after_error(self._policy(call), attempt, error, call.idempotent)

    def connection_failed(self, call: Call[Any], attempt: int, error: httpx.TransportError) -> ConnectionFailed:
        tries = f" after {attempt + 1} tries" if attempt else ""
        reason = str(error) or type(error).__name__
        return ConnectionFailed(f"{call.method} {self.url}{call.path} failed{tries}: {type(error).__name__}: {reason}")

    def _policy(self, call: Call[Any]) -> RetryPolicy:
        if call.attempts is None:
            return self.retry
        return RetryPolicy(
            attempts=call.attempts,
            backoff_base=self.retry.backoff_base,
            backoff_max=self.retry.backoff_max,
            max_retry_after=self.retry.max_retry_after,
        )

    # --- operations ---------------------------------------------------------------------------------

    def limits(self) -> Call[m.Limits]:
        return Call("GET", f"{API}/limits", w.decoder(m.Limits))

    def ready(self) -> Call[bool]:
        # A probe: one try, and any answer is an answer.
        return Call(
            "GET",
            "/health/ready",
            lambda response: response.status_code == 200,
            attempts=1,
            accept=frozenset(range(300, 600)),
        )

    # --- collections --------------------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        *,
        embedding_model: str | Omitted | None,
        dimension: int | None,
        metric: str,
        hnsw: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
    ) -> Call[m.Collection]:
        fields: dict[str, Any] = {"name": name, "metric": metric}
        if embedding_model is not OMITTED:
            fields["embedding_model"] = embedding_model
        if dimension is not None:
            fields["dimension"] = dimension
        if hnsw is not None:
            fields["hnsw"] = hnsw
        if metadata is not None:
            fields["metadata"] = metadata
        # A new collection's seqs start again: what was remembered under this name was another collection's.
        finish = self._remembering(name, m.Collection, replace=True)
        return Call("POST", f"{API}/collections", finish, w.body(fields), idempotent=False)

    def get_collection(self, name: str) -> Call[m.Collection]:
        return Call("GET", f"{API}/collections/{w.path(name)}", w.decoder(m.Collection))

    def list_collections(self) -> Call[list[m.Collection]]:
        decode = w.decoder(m._CollectionList)
        return Call("GET", f"{API}/collections", lambda response: decode(response).collections)

    def update_collection(
        self, name: str, *, metadata: Mapping[str, Any] | None, ef_search: int | None
    ) -> Call[m.Collection]:
        fields: dict[str, Any] = {}
        if metadata is not None:
            fields["metadata"] = metadata
        if ef_search is not None:
            fields["hnsw"] = {"ef_search": ef_search}
        finish = self._remembering(name, m.Collection)
        return Call("PATCH", f"{API}/collections/{w.path(name)}", finish, w.body(fields))

    def delete_collection(self, name: str) -> Call[None]:
        def finish(_: httpx.Response) -> None:
            self.forget(name)

        return Call("DELETE", f"{API}/collections/{w.path(name)}", finish)

    # --- documents ----------------------------------------------------------------------------------

    def upsert_calls(
        self, collection: str, documents: Iterable[Mapping[str, Any]], *, batch_size: int, deterministic_ids: bool
    ) -> Iterable[Call[m.UpsertResult]]:
        """One call per batch, made lazily: a generator of documents is read as the batches go."""
        path = f"{API}/collections/{w.path(collection)}/upsert"
        finish = self._remembering(collection, m.UpsertResult)
        for batch in batches(documents, batch_size, deterministic_ids):
            # Replacing documents by id is idempotent; a document without one gets a new UUID on each try.
            idempotent = all(document.get("id") is not None for document in batch)
            yield Call("POST", path, finish, w.body({"documents": batch}), idempotent=idempotent)

    def get(
        self,
        collection: str,
        ids: Sequence[str] | None,
        *,
        filter: Any,
        include: Sequence[str],
        limit: int,
        cursor: str | None,
        min_seq: int | None,
    ) -> Call[m.DocumentPage]:
        fields: dict[str, Any] = {"include": list(include), "limit": limit}
        for key, value in (
            ("ids", w.ids_list(ids)),
            ("filter", filter),
            ("cursor", cursor),
            ("min_seq", self.min_seq(collection, min_seq)),
        ):
            if value is not None:
                fields[key] = value
        return Call("POST", f"{API}/collections/{w.path(collection)}/get", w.decoder(m.DocumentPage), w.body(fields))

    def get_document(
        self, collection: str, doc_id: str, *, include_vector: bool, min_seq: int | None
    ) -> Call[m.Document]:
        params = w.params(include_vector=include_vector, min_seq=self.min_seq(collection, min_seq))
        path = f"{API}/collections/{w.path(collection)}/documents/{w.path(doc_id)}"
        return Call("GET", path, w.decoder(m.Document), params=params)

    def list_documents(
        self, collection: str, *, limit: int, cursor: str | None, include_vector: bool, min_seq: int | None
    ) -> Call[m.DocumentPage]:
        params = w.params(
            limit=limit, cursor=cursor, include_vector=include_vector, min_seq=self.min_seq(collection, min_seq)
        )
        return Call(
            "GET", f"{API}/collections/{w.path(collection)}/documents", w.decoder(m.DocumentPage), params=params
        )

    def count(self, collection: str, filter: Any, *, min_seq: int | None) -> Call[int]:
        fields: dict[str, Any] = {}
        if filter is not None:
            fields["filter"] = filter
        seq = self.min_seq(collection, min_seq)
        if seq is not None:
            fields["min_seq"] = seq
        decode = w.decoder(m._Count)
        path = f"{API}/collections/{w.path(collection)}/count"
        return Call("POST", path, lambda response: decode(response).count, w.body(fields))

    def delete(self, collection: str, ids: Sequence[str] | None, *, filter: Any, dry_run: bool) -> Call[m.DeleteResult]:
        fields: dict[str, Any] = {"dry_run": dry_run}
        if ids is not None:
            fields["ids"] = w.ids_list(ids)
        if filter is not None:
            fields["filter"] = filter
        finish = self._remembering(collection, m.DeleteResult)
        return Call("POST", f"{API}/collections/{w.path(collection)}/delete", finish, w.body(fields))

    def delete_document(self, collection: str, doc_id: str) -> Call[None]:
        path = f"{API}/collections/{w.path(collection)}/documents/{w.path(doc_id)}"
        return Call("DELETE", path, self._seq_header(collection))

    # --- search and embeddings ----------------------------------------------------------------------

    def search(
        self,
        collection: str,
        query: str | None,
        *,
        vector: Sequence[float] | None,
        top_k: int,
        mode: str,
        filter: Any,
        include: Sequence[str],
        ef_search: int | None,
        fusion: Mapping[str, Any] | None,
        min_seq: int | None,
    ) -> Call[m.SearchResult]:
        fields: dict[str, Any] = {"top_k": top_k, "mode": mode, "include": list(include)}
        for key, value in (
            ("query", query),
            ("vector", vector),
            ("filter", filter),
            ("ef_search", ef_search),
            ("fusion", fusion),
            ("min_seq", self.min_seq(collection, min_seq)),
        ):
            if value is not None:
                fields[key] = value
        return Call("POST", f"{API}/collections/{w.path(collection)}/search", w.decoder(m.SearchResult), w.body(fields))

    def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None,
        normalize: bool,
        input_type: str,
        dimensions: int | None,
    ) -> Call[m.Embeddings]:
        fields: dict[str, Any] = {
            "inputs": [inputs] if isinstance(inputs, str) else list(inputs),
            "normalize": normalize,
            "input_type": input_type,
        }
        if model is not None:
            fields["model"] = model
        if dimensions is not None:
            fields["dimensions"] = dimensions
        return Call("POST", f"{API}/embed", w.decoder(m.Embeddings), w.body(fields))

    def openai_embeddings(
        self, input: str | Sequence[str], *, model: str | None, dimensions: int | None
    ) -> Call[m.OpenAIEmbeddings]:
        fields: dict[str, Any] = {"input": input if isinstance(input, str) else list(input)}
        if model is not None:
            fields["model"] = model
        if dimensions is not None:
            fields["dimensions"] = dimensions
        return Call("POST", "/v1/embeddings", w.decoder(m.OpenAIEmbeddings), w.body(fields))

    # --- models and keys ----------------------------------------------------------------------------

    def models(self) -> Call[m.ModelList]:
        return Call("GET", f"{API}/models", w.decoder(m.ModelList))

    def get_model(self, model_id: str) -> Call[m.Model]:
        return Call("GET", f"{API}/models/{w.path(model_id)}", w.decoder(m.Model))

    def load_model(self, model_id: str) -> Call[m.Model]:
        return Call("POST", f"{API}/models/{w.path(model_id)}/load", w.decoder(m.Model))

    def unload_model(self, model_id: str) -> Call[m.ModelUnloaded]:
        return Call("POST", f"{API}/models/{w.path(model_id)}/unload", w.decoder(m.ModelUnloaded))

    def create_key(
        self, name: str, role: str, *, collections: Sequence[str] | None, expires_at: datetime | None
    ) -> Call[m.ApiKeyCreated]:
        fields: dict[str, Any] = {"name": name, "role": role}
        if collections is not None:
            fields["collections"] = w.ids_list(collections)
        if expires_at is not None:
            fields["expires_at"] = expires_at
        return Call("POST", f"{API}/keys", w.decoder(m.ApiKeyCreated), w.body(fields), idempotent=False)

    def list_keys(self) -> Call[list[m.ApiKey]]:
        decode = w.decoder(m._KeyList)
        return Call("GET", f"{API}/keys", lambda response: decode(response).keys)

    def revoke_key(self, key_id: str) -> Call[None]:
        return Call("DELETE", f"{API}/keys/{w.path(key_id)}", w.none)
