"""The torch backend: transformers AutoModel, the fast tokenizer, pooling per the spec, L2 normalisation."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from akidb.embedding.provider import Embeddings
from akidb.embedding.sources import max_seq_length_of
from akidb.embedding.spec import InputKind, ModelSpec
from akidb.errors import ModelUnavailable

log = logging.getLogger(__name__)


def load_tokenizer(model_path: Path, max_length: int) -> tuple[Tokenizer, int]:
    """The fast tokenizer, truncating at the model's window and never padding, plus its pad id.

    Some exported tokenizer.json files pin padding and truncation (all-MiniLM-L6-v2's pads everything
    to 128 and truncates at 128 while the model reads 256); sentence-transformers overrides both, so do we.
    Batches are padded to their own longest row by the caller.
    """
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    pad_id = int(tokenizer.padding["pad_id"]) if tokenizer.padding else 0
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer, pad_id


def length_sorted_chunks(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length, so each batch pads little."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError as exc:
        raise ModelUnavailable(
            f"the torch provider needs torch and transformers: pip install 'akidb[torch]' ({exc})"
        ) from exc
    return torch, AutoModel


class TorchProvider:
    def __init__(
        self,
        spec: ModelSpec,
        model_path: Path,
        *,
        device: str = "auto",
        num_threads: int = 0,
        batch_size: int = 32,
    ) -> None:
        torch, auto_model = _import_torch()
        self._torch = torch
        self._spec = spec
        self.batch_size = batch_size
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.device = self._pick_device(device)
        self.max_length = max_seq_length_of(model_path, spec)
        self._tokenizer, self._pad_id = load_tokenizer(model_path, self.max_length)
        self._model = auto_model.from_pretrained(str(model_path)).to(self.device).eval()
        self._accepts_token_type_ids = "token_type_ids" in inspect.signature(self._model.forward).parameters
        # One inference at a time: torch already uses every core for one batch.
        self._lock = threading.Lock()
        log.info(
            "torch provider: %s from %s on %s (max %d tokens)",
            spec.id,
            model_path,
            self.device,
            self.max_length,
        )

    def _pick_device(self, device: str) -> str:
        torch = self._torch
        if device != "auto":
            return device
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def name(self) -> str:
        return "torch"

    def embed(self, texts: Sequence[str], kind: InputKind) -> Embeddings:
        prefix = self._spec.prefix_for(kind)
        unpadded = self._tokenizer.encode_batch([prefix + text for text in texts])
        vectors = np.empty((len(texts), self._spec.dimension), dtype=np.float32)
        total_tokens = 0
        for rows in length_sorted_chunks([len(e.ids) for e in unpadded], self.batch_size):
            vectors[rows] = self._embed_padded([unpadded[row] for row in rows])
            total_tokens += sum(len(unpadded[row].ids) for row in rows)
        return Embeddings(vectors=vectors, total_tokens=total_tokens)

    def _embed_padded(self, encodings: list[Any]) -> Any:
        torch = self._torch
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        attention_mask = torch.from_numpy(mask).to(self.device)
        inputs = {"input_ids": torch.from_numpy(ids).to(self.device), "attention_mask": attention_mask}
        if self._accepts_token_type_ids:
            inputs["token_type_ids"] = torch.from_numpy(types).to(self.device)
        with self._lock, torch.inference_mode():
            hidden = self._model(**inputs).last_hidden_state
            pooled = self._pool(hidden, attention_mask)
            if self._spec.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled.float().cpu().numpy()

    def _pool(self, hidden: Any, attention_mask: Any) -> Any:
        pooling = self._spec.pooling
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "last_token":
            # Right padding: the last real token sits at (number of real tokens - 1).
            last = attention_mask.sum(dim=1) - 1
            return hidden[self._torch.arange(hidden.shape[0], device=hidden.device), last]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def warmup(self) -> None:
        self.embed(["warm-up"], "document")

    def close(self) -> None:
        self._model = None
