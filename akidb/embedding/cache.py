"""An in-memory LRU of embeddings, so re-upserting unchanged text or repeating a query skips the model."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from akidb import observability

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class CachedEmbedding:
    vector: Vector  # read-only
    tokens: int


def text_key(namespace: str, prefix: str, text: str) -> bytes:
    """The key of one text: the model's namespace (id, revision, backend, quantization), the prefix the
    model puts before it, and the text, hashed so that long texts cost no more memory than short ones."""
    digest = hashlib.blake2b(digest_size=20)
    for part in (namespace, prefix, text):
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.digest()


# What one entry costs besides its vector: the key, the OrderedDict node, the dataclass, the array header.
_ENTRY_OVERHEAD_BYTES = 300


class EmbeddingCache:
    """Bounded both in entries and in bytes; the least recently used entries go first. Thread-safe."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, CachedEmbedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get_many(self, keys: list[bytes]) -> list[CachedEmbedding | None]:
        if not self.enabled:
            return [None] * len(keys)
        found: list[CachedEmbedding | None] = []
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                found.append(entry)
        return found

    def put_many(self, items: list[tuple[bytes, Vector, int]]) -> None:
        if not self.enabled:
            return
        with self._lock:
            for key, vector, tokens in items:
                stored = np.array(vector, dtype=np.float32)  # a copy: the caller's array may change
                stored.flags.writeable = False
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.vector.nbytes + _ENTRY_OVERHEAD_BYTES
                self._entries[key] = CachedEmbedding(stored, tokens)
                self._bytes += stored.nbytes + _ENTRY_OVERHEAD_BYTES
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.vector.nbytes + _ENTRY_OVERHEAD_BYTES
            observability.CACHE_ENTRIES.set(len(self._entries))
            observability.CACHE_BYTES.set(self._bytes)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            observability.CACHE_ENTRIES.set(0)
            observability.CACHE_BYTES.set(0)
