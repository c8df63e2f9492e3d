"""The wire: one request as data (Call), JSON encoding, paths and query parameters."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec

T = TypeVar("T")
R = TypeVar("R", bound=msgspec.Struct)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_INCLUDE = ("text", "metadata")
SEQ_HEADER = "X-AkiDB-Seq"
API = "/api/v1"


class Omitted(enum.Enum):
    """The type of OMITTED: create_collection tells "not given" (the server's default model) from None."""

    TOKEN = "omitted"


OMITTED = Omitted.TOKEN


def _version() -> str:
    try:
        return importlib_metadata.version("akidb")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


USER_AGENT = f"akidb-client/{_version()}"


def _enc_hook(value: Any) -> Any:
    # Mappings that are not dicts, and array-likes (numpy arrays and scalars have tolist), without importing them.
    if isinstance(value, Mapping):
        return dict(value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return list(value)
    raise NotImplementedError(f"cannot send a {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and how to turn its 2xx answer into a result."""

    method: str
    path: str
    finish: Callable[[httpx.Response], T]
    body: bytes | None = None
    params: dict[str, str] | None = None
    # Whether sending it twice does no harm: only such requests are sent again after a read timeout or a
    # dropped connection (the server may have done the first).
    idempotent: bool = True
    attempts: int | None = None  # None: the policy's
    # Non-2xx statuses handed to finish rather than raised (ready(): 503 means "no").
    accept: frozenset[int] = frozenset()

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json"} if self.body is not None else {}


def decoder(kind: type[R]) -> Callable[[httpx.Response], R]:
    decoder = msgspec.json.Decoder(kind)

    def finish(response: httpx.Response) -> R:
        return decoder.decode(response.content)

    return finish


def none(_: httpx.Response) -> None:
    return None


def path(*segments: str) -> str:
    # Ids may hold any character: each path segment is percent-encoded whole ("/" included).
    return "/".join(quote(segment, safe="") for segment in segments)


def body(fields: dict[str, Any]) -> bytes:
    return _encoder.encode(fields)


def ids_list(ids: Sequence[str] | str | None) -> list[str] | None:
    if ids is None:
        return None
    return [ids] if isinstance(ids, str) else list(ids)


def params(**values: str | int | bool | None) -> dict[str, str]:
    params = {}
    for key, value in values.items():
        if value is None or value is False:
            continue
        params[key] = "true" if value is True else str(value)
    return params
