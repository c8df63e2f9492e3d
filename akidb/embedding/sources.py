"""Find a model's files without the network: configured folder, Hugging Face cache, packaged copy."""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

from akidb.embedding.spec import ModelSpec

log = logging.getLogger(__name__)

_REQUIRED_FILES = ("config.json",)


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _REQUIRED_FILES)


def _from_model_dir(spec: ModelSpec, model_dir: str) -> Path | None:
    if not model_dir:
        return None
    root = Path(model_dir).expanduser()
    for candidate in (root / spec.id, root / spec.hf_path, root / spec.hf_path.replace("/", "--"), root):
        if _is_model_dir(candidate):
            return candidate
    return None


def _from_hf_cache(spec: ModelSpec) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        return None
    try:
        path = Path(snapshot_download(spec.hf_path, local_files_only=True))
    except Exception:  # not cached: the hub client raises one of several error types
        return None
    return path if _is_model_dir(path) else None


def _from_package(spec: ModelSpec) -> Path | None:
    if not spec.packaged_module:
        return None
    try:
        module = importlib.import_module(spec.packaged_module)
    except ImportError:
        return None
    path = Path(module.__file__ or "").parent / "model"
    return path if _is_model_dir(path) else None


def _from_local_path(spec: ModelSpec) -> Path | None:
    if not spec.local_path:
        return None
    path = Path(spec.local_path).expanduser()
    return path if _is_model_dir(path) else None


def find_model_files(spec: ModelSpec, model_dir: str = "") -> Path | None:
    """The first folder holding the model's files, or None; never downloads.

    Order: the folder registered for the model, the configured model_dir, the Hugging Face cache
    (local_files_only), the packaged copy."""
    return _from_local_path(spec) or _from_model_dir(spec, model_dir) or _from_hf_cache(spec) or _from_package(spec)


def download_model(spec: ModelSpec, cache_dir: str | None = None) -> Path:
    """Fetch the model into the Hugging Face cache (for users with a network). Honours HF_HUB_OFFLINE."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    return Path(snapshot_download(spec.hf_path, cache_dir=cache_dir, local_files_only=offline))


def max_seq_length_of(model_path: Path, spec: ModelSpec) -> int:
    """The model's own window, as sentence-transformers reads it; the spec's value otherwise."""
    config = model_path / "sentence_bert_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("max_seq_length")
            if isinstance(value, int) and value > 0:
                return value
        except (OSError, ValueError):
            log.warning("unreadable %s; using max_seq_length=%d from the registry", config, spec.max_seq_length)
    return spec.max_seq_length
