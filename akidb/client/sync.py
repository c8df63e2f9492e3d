"""The blocking client. Every method builds its request in Core and only sends it here."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from akidb.client import models as m
from akidb.client._core import Core
from akidb.client._documents import merge_upserts
from akidb.client._wire import DEFAULT_INCLUDE, DEFAULT_URL, OMITTED, Call, Omitted
from akidb.client.errors import ConnectionFailed
from akidb.client.retry import RetryPolicy

__all__ = ["Client"]

T = TypeVar("T")
Mode = Literal["dense", "keyword", "hybrid"]


class Client:
    """A blocking AkiDB client; thread-safe like the httpx.Client under it. Use it as a context manager, or
    call close()."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
        read_your_writes: bool = True,
    ) -> None:
        self._core = Core(
            url,
            api_key,
            timeout=timeout,
            retry=retry,
            headers=headers,
            verify=verify,
            read_your_writes=read_your_writes,
        )
        self._http = httpx.Client(
            base_url=self._core.url,
            headers=self._core.headers,
            timeout=self._core.timeout,
            verify=self._core.verify,
            transport=transport,
        )

    @property
    def url(self) -> str:
        return self._core.url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, content=call.body, params=call.params, headers=call.headers
                )
            except httpx.TransportError as exc:
                wait = self._core.wait_after_error(call, attempt, exc)
                if wait is None:
                    raise self._core.connection_failed(call, attempt, exc) from exc
            else:
                wait = self._core.wait_after_status(call, attempt, response)
                if wait is None:
                    return self._core.outcome(call, response)
            time.sleep(wait)
            attempt += 1

    def last_seq(self, collection: str) -> int | None:
        """The highest seq a write answer on `collection` gave this client (what reads send as min_seq)."""
        return self._core.last_seq(collection)

    # --- operations ---

    def limits(self) -> m.Limits:
        return self._run(self._core.limits())

    def ready(self) -> bool:
        """GET /health/ready answered 200; one try, and False when the server cannot be reached."""
        try:
            return self._run(self._core.ready())
        except ConnectionFailed:
            return False

    # --- collections ---

    def create_collection(
        self,
        name: str,
        *,
        embedding_model: str | Omitted | None = OMITTED,
        dimension: int | None = None,
        metric: str = "cosine",
        hnsw: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> m.Collection:
        """`embedding_model` omitted: the server's default model; None: vectors only (give `dimension`)."""
        return self._run(
            self._core.create_collection(
                name, embedding_model=embedding_model, dimension=dimension, metric=metric, hnsw=hnsw, metadata=metadata
            )
        )

    def get_collection(self, name: str) -> m.Collection:
        return self._run(self._core.get_collection(name))

    def list_collections(self) -> list[m.Collection]:
        return self._run(self._core.list_collections())

    def update_collection(
        self, name: str, *, metadata: Mapping[str, Any] | None = None, ef_search: int | None = None
    ) -> m.Collection:
        return self._run(self._core.update_collection(name, metadata=metadata, ef_search=ef_search))

    def delete_collection(self, name: str) -> None:
        self._run(self._core.delete_collection(name))

    # --- documents ---

    def upsert(
        self,
        collection: str,
        documents: Iterable[Mapping[str, Any]],
        *,
        batch_size: int = 500,
        deterministic_ids: bool = True,
    ) -> m.UpsertResult:
        """Send the documents in requests of at most `batch_size`, one after the other. A failure raises with
        the earlier batches written."""
        calls = self._core.upsert_calls(
            collection, documents, batch_size=batch_size, deterministic_ids=deterministic_ids
        )
        return merge_upserts([self._run(call) for call in calls])

    def get(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        filter: Any = None,
        include: Sequence[str] = DEFAULT_INCLUDE,
        limit: int = 100,
        cursor: str | None = None,
        min_seq: int | None = None,
    ) -> m.DocumentPage:
        return self._run(
            self._core.get(collection, ids, filter=filter, include=include, limit=limit, cursor=cursor, min_seq=min_seq)
        )

    def get_document(
        self, collection: str, doc_id: str, *, include_vector: bool = False, min_seq: int | None = None
    ) -> m.Document:
        return self._run(self._core.get_document(collection, doc_id, include_vector=include_vector, min_seq=min_seq))

    def list_documents(
        self,
        collection: str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        include_vector: bool = False,
        min_seq: int | None = None,
    ) -> m.DocumentPage:
        return self._run(
            self._core.list_documents(
                collection, limit=limit, cursor=cursor, include_vector=include_vector, min_seq=min_seq
            )
        )

    def iter_documents(
        self,
        collection: str,
        *,
        filter: Any = None,
        include: Sequence[str] = DEFAULT_INCLUDE,
        page_size: int = 500,
    ) -> Iterator[m.Document]:
        """Every document (passing `filter`), in id order, a page at a time."""
        cursor: str | None = None
        while True:
            page = self._run(
                self._core.get(
                    collection, None, filter=filter, include=include, limit=page_size, cursor=cursor, min_seq=None
                )
            )
            yield from page.documents
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def count(self, collection: str, filter: Any = None, *, min_seq: int | None = None) -> int:
        return self._run(self._core.count(collection, filter, min_seq=min_seq))

    def delete(
        self, collection: str, ids: Sequence[str] | None = None, *, filter: Any = None, dry_run: bool = False
    ) -> m.DeleteResult:
        return self._run(self._core.delete(collection, ids, filter=filter, dry_run=dry_run))

    def delete_document(self, collection: str, doc_id: str) -> None:
        self._run(self._core.delete_document(collection, doc_id))

    # --- search and embeddings ---

    def search(
        self,
        collection: str,
        query: str | None = None,
        *,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        mode: Mode = "dense",
        filter: Any = None,
        include: Sequence[str] = DEFAULT_INCLUDE,
        ef_search: int | None = None,
        fusion: Mapping[str, Any] | None = None,
        min_seq: int | None = None,
    ) -> m.SearchResult:
        return self._run(
            self._core.search(
                collection,
                query,
                vector=vector,
                top_k=top_k,
                mode=mode,
                filter=filter,
                include=include,
                ef_search=ef_search,
                fusion=fusion,
                min_seq=min_seq,
            )
        )

    def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        normalize: bool = True,
        input_type: Literal["query", "document"] = "document",
        dimensions: int | None = None,
    ) -> m.Embeddings:
        return self._run(
            self._core.embed(inputs, model=model, normalize=normalize, input_type=input_type, dimensions=dimensions)
        )

    def openai_embeddings(
        self, input: str | Sequence[str], *, model: str | None = None, dimensions: int | None = None
    ) -> m.OpenAIEmbeddings:
        return self._run(self._core.openai_embeddings(input, model=model, dimensions=dimensions))

    # --- models and keys ---

    def models(self) -> m.ModelList:
        return self._run(self._core.models())

    def get_model(self, model_id: str) -> m.Model:
        return self._run(self._core.get_model(model_id))

    def load_model(self, model_id: str) -> m.Model:
        return self._run(self._core.load_model(model_id))

    def unload_model(self, model_id: str) -> m.ModelUnloaded:
        return self._run(self._core.unload_model(model_id))

    def create_key(
        self,
        name: str,
        role: Literal["read", "write", "admin"],
        *,
        collections: Sequence[str] | None = None,
        expires_at: datetime | None = None,
    ) -> m.ApiKeyCreated:
        return self._run(self._core.create_key(name, role, collections=collections, expires_at=expires_at))

    def list_keys(self) -> list[m.ApiKey]:
        return self._run(self._core.list_keys())

    def revoke_key(self, key_id: str) -> None:
        self._run(self._core.revoke_key(key_id))
