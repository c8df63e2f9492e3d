"""Settings: a frozen tree read from akidb.toml / akidb.yaml, then AKIDB_<SECTION>_<KEY>, then CLI flags."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from akidb.errors import ConfigError

# auto: MLX on Apple silicon, torch where CUDA is, ONNX Runtime on other CPUs (see loader.detect_backends).
ProviderName = Literal["auto", "torch", "onnx", "mlx", "mock", "user_provided"]
Quantization = Literal["fp32", "fp16", "int8", "int4"]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # One log line per request; off by default, since /metrics counts requests by route and status.
    access_log: bool = False
    # HTTPS: both files (PEM) given, uvicorn serves TLS; neither, plain HTTP.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Origins a browser may call the API from (CORS); empty: no CORS headers at all. ["*"] allows any.
    cors_origins: list[str] = msgspec.field(default_factory=list)


class LimitsSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What one request may ask for; each is checked before any embedding work, with a 413 or 422 that
    names the limit."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_documents_per_upsert: int = 1000
    max_inputs_per_embed: int = 2048
    # Per text (documents, queries, embed inputs): tokenizing a 50 MB string would pin a worker. Texts under
    # the cap but longer than the model's window are still truncated to it, as before.
    max_text_chars: int = 100_000
    max_top_k: int = 1000
    # ids per get and delete request.
    max_ids_per_request: int = 10_000
    # The filter language: nesting depth, nodes in all, values in all its $in / $nin lists together.
    max_filter_depth: int = 10
    max_filter_nodes: int = 1000
    max_filter_values: int = 10_000


class AuthSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    # The bootstrap admin key: the key itself, or "sha256:<hex>" of it so that a secrets file need not
    # hold the key. Keys made with POST /api/v1/keys or `akidb keys create` live in the database.
    admin_key: str = ""
    # Serving on a non-loopback address with auth off refuses to start unless this accepts the risk.
    allow_anonymous: bool = False
    # /metrics without a key (Prometheus can also send one: `authorization: {credentials_file: ...}`).
    public_metrics: bool = False
    # How long a checked key is trusted before the database is asked again: a revocation made by any
    # process takes effect everywhere within this time.
    key_cache_ms: float = 500.0


class StorageSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = "./data"
    # SQLAlchemy URL; empty means SQLite at <data_dir>/akidb.sqlite3.
    url: str = ""
    sqlite_busy_timeout_ms: int = 10_000
    # FULL survives power loss as well as a crash of the process; NORMAL only the latter.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    index_save_interval_s: float = 30.0
    # Collections of up to this many vectors are searched exactly; larger ones through the HNSW graph.
    exact_search_max_vectors: int = 5000
    # Several processes on one PostgreSQL database: how often each applies the others' writes, how long a
    # read with min_seq waits for it, and how long a silent process still holds deleted rows' tombstones.
    follow_interval_ms: int = 200
    consistency_wait_ms: int = 2000
    replica_timeout_s: float = 60.0
    # Graph health, checked every health_check_interval_s (0: never): past this share of deleted slots (0:
    # never) the HNSW graph is rebuilt in the background from the live rows and swapped in; and this many live
    # points (0: none) are searched by their own vectors, the graph rebuilt if one is unreachable.
    rebuild_deleted_ratio: float = 0.2
    health_check_interval_s: float = 60.0
    health_check_sample: int = 256
    # Live recall: this share of the dense searches the graph serves is re-run exactly in the background; below
    # recall_target, GET /api/v1/collections/{name} advises a higher ef_search.
    recall_sample_rate: float = 0.01
    recall_target: float = 0.95

    @property
    def resolved_url(self) -> str:
        if self.url:
            return self.url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'akidb.sqlite3'}"

    @property
    def index_dir(self) -> Path:
        return Path(self.data_dir).resolve() / "indexes"


class CustomModel(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A model the user registers in the config file: a local folder or a hub id, and how to pool it."""

    id: str
    dimension: int
    # A local folder with config.json, the weights and tokenizer.json ...
    path: str = ""
    # ... or a Hugging Face repo id, found in the HF cache (or downloaded by `akidb models pull`).
    hf_path: str = ""
    pooling: Literal["mean", "cls", "last_token"] = "mean"
    max_seq_length: int = 512
    normalize: bool = True
    query_prefix: str = ""
    document_prefix: str = ""
    matryoshka_dimensions: list[int] = msgspec.field(default_factory=list)
    description: str = ""


class EmbeddingSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    provider: ProviderName = "auto"
    model: str = "all-MiniLM-L6-v2"
    device: str = "auto"
    quantization: Quantization = "fp32"
    # When the provider cannot run here (no MLX, no CUDA, missing library), try these next, in order.
    fallback: bool = True
    fallback_order: list[ProviderName] = msgspec.field(default_factory=lambda: ["onnx", "torch"])
    # The micro-batcher (one per loaded model) merges the texts of concurrent requests into batches of at
    # most batch_size texts and max_batch_tokens padded tokens. An idle worker waits batch_timeout_ms for
    # company before it runs a lone text.
    batch_size: int = 32
    max_batch_tokens: int = 16384
    batch_timeout_ms: float = 2.0
    # A batch that holds bulk texts is cut to about this much inference time, so an interactive request
    # (a search query, a small embed) waits at most about this long for the worker.
    bulk_slice_ms: float = 25.0
    # Requests of up to this many texts go in the interactive lane, served before the bulk lane.
    interactive_max_texts: int = 8
    # Admission: texts waiting per model and lane; past it a request gets 429 with Retry-After.
    max_queued_texts: int = 4096
    # A deadline for requests that send no X-Request-Timeout-Ms header; 0 means none.
    request_timeout_ms: float = 0.0
    # The embedding cache (an LRU of vectors by model, revision, prefix and text); 0 entries turns it off.
    cache_entries: int = 100_000
    cache_mb: float = 256.0
    # Where generated artefacts (exported ONNX graphs) go; empty means $XDG_CACHE_HOME/akidb or ~/.cache/akidb.
    cache_dir: str = ""
    # A folder holding model folders, searched before the Hugging Face cache and the packaged copy.
    model_dir: str = ""
    num_threads: int = 0
    # Load and warm the default model (and `preload_models`) before /health/ready says 200.
    preload: bool = True
    preload_models: list[str] = msgspec.field(default_factory=list)
    # Least recently used models are unloaded past either limit; 0 means no memory limit.
    max_loaded_models: int = 3
    max_model_memory_mb: int = 0
    models: list[CustomModel] = msgspec.field(default_factory=list)

    @property
    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "akidb"

    def provider_order(self) -> list[ProviderName]:
        """The provider asked for, then (if fallback is on) the fallback order without repeats."""
        order: list[ProviderName] = [self.provider]
        if self.fallback:
            order += [name for name in self.fallback_order if name not in order]
        return order


class Settings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    embedding: EmbeddingSettings = msgspec.field(default_factory=EmbeddingSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)


_SECTIONS: dict[str, type[_Section]] = {
    "server": ServerSettings,
    "storage": StorageSettings,
    "embedding": EmbeddingSettings,
    "limits": LimitsSettings,
    "auth": AuthSettings,
}
_ENV_PREFIX = "AKIDB_"
# Environment variables with the prefix that are not settings keys.
# AKIDB_URL and AKIDB_API_KEY are for akidb import/export, the server's clients.
_ENV_NOT_SETTINGS = {"AKIDB_CONFIG", "AKIDB_URL", "AKIDB_API_KEY"}
_ENV_SYNONYMS = {("embedding", "mode"): ("embedding", "provider")}
_PATH_RE = re.compile(r"`\$\.?([^`]*)`")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from exc
    try:
        if path.suffix == ".toml":
            data = msgspec.toml.decode(raw)
        elif path.suffix in {".yaml", ".yml"}:
            data = msgspec.yaml.decode(raw)
        else:
            raise ConfigError(f"config file {path}: use a .toml, .yaml or .yml file")
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table of sections")
    return data


def _is_list_setting(section: str, key: str) -> bool:
    fields = {field.name: field.type for field in msgspec.structs.fields(_SECTIONS[section])}
    return getattr(fields.get(key), "__origin__", None) is list


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """AKIDB_<SECTION>_<KEY> values; a list setting takes comma-separated items (or a JSON array)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(_ENV_PREFIX) or name in _ENV_NOT_SETTINGS:
            continue
        rest = name[len(_ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"{name}: unknown setting (sections are {', '.join(_SECTIONS)})")
        section, key = _ENV_SYNONYMS.get((section, key), (section, key))
        parsed: Any = value
        if _is_list_setting(section, key):
            try:
                parsed = msgspec.json.decode(value) if value.lstrip().startswith("[") else None
            except msgspec.DecodeError as exc:
                raise ConfigError(f"{name}: not a JSON array ({exc})") from exc
            if parsed is None:
                parsed = [item.strip() for item in value.split(",") if item.strip()]
        out.setdefault(section, {})[key] = parsed
    return out


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _explain(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's `$.server.port` paths into `server.port` so the key is named plainly."""
    message = str(exc)
    return _PATH_RE.sub(lambda m: f"`{m.group(1)}`", message)


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if environ.get("AKIDB_CONFIG"):
        return Path(environ["AKIDB_CONFIG"])
    for candidate in ("akidb.toml", "akidb.yaml", "akidb.yml"):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """File, then environment, then explicit overrides (CLI flags); the last one wins."""
    env = os.environ if environ is None else environ
    path = find_config_file(str(config_file) if config_file else None, env)
    data: dict[str, Any] = _read_file(path) if path else {}
    for section in data:
        if section not in _SECTIONS:
            raise ConfigError(f"config: unknown section `{section}` (sections are {', '.join(_SECTIONS)})")
    for section, key in _ENV_SYNONYMS:
        section_data = data.get(section)
        if isinstance(section_data, dict) and key in section_data:
            _, target_key = _ENV_SYNONYMS[(section, key)]
            section_data[target_key] = section_data.pop(key)
    # File values must have the right types; environment strings are converted leniently.
    try:
        msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {_explain(exc)}") from exc
    merged = _merge(data, _env_overrides(env))
    merged = _merge(
        merged, {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in (overrides or {}).items()}
    )
    try:
        settings = msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {_explain(exc)}") from exc
    _check_semantics(settings)
    return settings


def _check_semantics(settings: Settings) -> None:
    """Rules on single values; which model ids exist is the registry's to say
    (akidb.embedding.registry.registry_from_settings)."""
    if settings.server.port < 0 or settings.server.port > 65535:
        raise ConfigError("config: `server.port` must be between 0 and 65535")
    for limit in msgspec.structs.fields(LimitsSettings):
        if getattr(settings.limits, limit.name) < 1:
            raise ConfigError(f"config: `limits.{limit.name}` must be at least 1")
    if bool(settings.server.tls_cert_file) != bool(settings.server.tls_key_file):
        raise ConfigError("config: `server.tls_cert_file` and `server.tls_key_file` go together: give both or neither")
    storage = settings.storage
    for key in ("follow_interval_ms", "replica_timeout_s", "index_save_interval_s"):
        if getattr(storage, key) <= 0:
            raise ConfigError(f"config: `storage.{key}` must be more than 0")
    if not 0 <= storage.rebuild_deleted_ratio < 1:
        raise ConfigError("config: `storage.rebuild_deleted_ratio` must be at least 0 (never) and less than 1")
    if storage.health_check_interval_s < 0 or storage.health_check_sample < 0:
        raise ConfigError(
            "config: `storage.health_check_interval_s` and `storage.health_check_sample` must be 0 or more"
        )
    if not (0 <= storage.recall_sample_rate <= 1 and 0 < storage.recall_target <= 1):
        raise ConfigError(
            "config: `storage.recall_sample_rate` must be in [0, 1] and `storage.recall_target` in (0, 1]"
        )
    if storage.consistency_wait_ms < 0:
        raise ConfigError("config: `storage.consistency_wait_ms` must be 0 or more")
    if storage.replica_timeout_s * 1000 < 5 * storage.follow_interval_ms:
        raise ConfigError("config: `storage.replica_timeout_s` must be at least 5 follow intervals")
    if settings.auth.key_cache_ms < 0:
        raise ConfigError("config: `auth.key_cache_ms` must be 0 or more")
    if settings.embedding.batch_size < 1:
        raise ConfigError("config: `embedding.batch_size` must be at least 1")
    embedding = settings.embedding
    if embedding.max_loaded_models < 1:
        raise ConfigError("config: `embedding.max_loaded_models` must be at least 1")
    if embedding.max_model_memory_mb < 0:
        raise ConfigError("config: `embedding.max_model_memory_mb` must be 0 (no limit) or more")
    for key in ("max_batch_tokens", "max_queued_texts", "interactive_max_texts"):
        if getattr(embedding, key) < 1:
            raise ConfigError(f"config: `embedding.{key}` must be at least 1")
    for key in ("batch_timeout_ms", "bulk_slice_ms", "request_timeout_ms", "cache_entries", "cache_mb"):
        if getattr(embedding, key) < 0:
            raise ConfigError(f"config: `embedding.{key}` must be 0 or more")
    for name in embedding.fallback_order:
        if name in {"mock", "user_provided", "auto"}:
            raise ConfigError(f"config: `embedding.fallback_order` may name onnx, torch or mlx, not '{name}'")
    for position, custom in enumerate(embedding.models):
        where = f"`embedding.models[{position}]`"
        if not (custom.path or custom.hf_path):
            raise ConfigError(f"config: {where} ('{custom.id}') needs `path` (a local folder) or `hf_path`")
        if custom.dimension < 1:
            raise ConfigError(f"config: {where} ('{custom.id}') needs a positive `dimension`")
