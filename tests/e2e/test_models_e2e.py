"""A real server with several models: MiniLM through ONNX Runtime INT8 as the default, plus two tiny
models registered in its config file (one preloaded). The OpenAI-compatible endpoint, runtime load and
unload, collections bound to different models side by side, and a start-up that must stop."""

from __future__ import annotations

import base64
import concurrent.futures
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.tiny_models import build_tiny_model

from .conftest import REPO_ROOT, AkidbServer, _child_env, fortunes
from .test_server import create_collection, expect, expect_error, search, upsert

CACHE = REPO_ROOT / ".cache" / "akidb-tests"
MODEL = "all-MiniLM-L6-v2"


def model_entry(model_id: str, path: Path, pooling: str, extra: str = "") -> str:
    return (
        f'[[embedding.models]]\nid = "{model_id}"\npath = "{path}"\ndimension = 32\n'
        f'pooling = "{pooling}"\nmax_seq_length = 64\n{extra}'
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AkidbServer]:
    models = tmp_path_factory.mktemp("models")
    qwen3 = build_tiny_model("qwen3", models)
    bert = build_tiny_model("bert", models)
    config = (
        "[embedding]\n"
        'provider = "onnx"\n'
        'quantization = "int8"\n'
        "fallback = false\n"
        f'cache_dir = "{CACHE}"\n'
        'preload_models = ["tiny-qwen3"]\n'
        + model_entry(
            "tiny-qwen3", qwen3.path, "last_token", 'query_prefix = "Query: "\nmatryoshka_dimensions = [16]\n'
        )
        + model_entry("tiny-bert", bert.path, "cls")
    )
    akidb = AkidbServer(tmp_path_factory.mktemp("akidb-models"), config=config)
    try:
        akidb.start(timeout_s=300)  # a first run exports MiniLM to ONNX and quantizes it
        yield akidb
    finally:
        akidb.close()


def models_by_id(server: AkidbServer) -> dict[str, dict[str, Any]]:
    return {model["id"]: model for model in expect(server.client.get("/api/v1/models"), 200)["models"]}


def test_default_and_preloaded_models_are_loaded_before_ready(server: AkidbServer) -> None:
    models = models_by_id(server)
    default = models[MODEL]
    assert default["loaded"] is True
    assert (default["loaded_provider"], default["loaded_quantization"]) == ("onnx", "int8")
    assert default["memory_mb"] > 5
    assert models["tiny-qwen3"]["loaded"] is True
    assert models["tiny-bert"] == {**models["tiny-bert"], "loaded": False, "available": True, "memory_mb": None}
    # Registry entries whose files are not on this machine say so.
    assert models["bge-small-en-v1.5"]["available"] is False
    assert models["qwen3-0.6b-4bit"]["providers"] == ["mlx"]


def test_load_and_unload_at_runtime(server: AkidbServer) -> None:
    api = server.client
    loaded = expect(api.post("/api/v1/models/tiny-bert/load"), 200)
    assert loaded["loaded"] is True
    assert loaded["loaded_provider"] == "onnx"
    assert expect(api.post("/api/v1/models/tiny-bert/unload"), 200) == {"id": "tiny-bert", "unloaded": True}
    assert expect(api.post("/api/v1/models/tiny-bert/unload"), 200)["unloaded"] is False
    assert models_by_id(server)["tiny-bert"]["loaded"] is False
    expect_error(api.post("/api/v1/models/no-such-model/load"), 404, "no-such-model")


def test_a_registry_model_whose_files_are_not_here_is_409_not_a_server_error(server: AkidbServer) -> None:
    """The operator must install the files: a state to change, not an outage, so alerts on 5xx stay quiet."""
    assert models_by_id(server)["bge-small-en-v1.5"]["available"] is False
    response = server.client.post("/api/v1/models/bge-small-en-v1.5/load")
    expect_error(response, 409, "bge-small-en-v1.5")
    assert response.json()["extra"]["code"] == "model_unavailable"


def test_collections_on_different_models_side_by_side(server: AkidbServer) -> None:
    api = server.client
    create_collection(api, "minilm-side")
    create_collection(api, "bert-side", embedding_model="tiny-bert")
    create_collection(api, "qwen-side", embedding_model="tiny-qwen3", dimension=16)
    lines = fortunes()[:200]
    documents = [{"id": line["id"], "text": line["text"]} for line in lines]

    def fill(name: str) -> int:
        total = 0
        for start in range(0, len(documents), 50):
            total += expect(upsert(api, name, documents[start : start + 50]), 200)["inserted"]
        return total

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        counts = list(pool.map(fill, ["minilm-side", "bert-side", "qwen-side"]))
    assert counts == [200, 200, 200]
    for name, dimension in [("minilm-side", 384), ("bert-side", 32), ("qwen-side", 16)]:
        hits = search(api, name, query=lines[3]["text"], top_k=3, include=["vector"])
        assert len(hits) == 3
        assert len(hits[0]["vector"]) == dimension
    # The real model finds a text from its own words; the random ones only need to answer.
    assert search(api, "minilm-side", query=lines[3]["text"], top_k=1)[0]["id"] == lines[3]["id"]
    assert models_by_id(server)["tiny-bert"]["loaded"] is True


def openai(server: AkidbServer, **body: Any) -> Any:
    return server.client.post("/v1/embeddings", json=body)


def test_openai_embeddings_floats_and_base64(server: AkidbServer) -> None:
    texts = ["A journey of a thousand miles begins with a single step.", "short"]
    floats = expect(openai(server, input=texts, model=MODEL), 200)
    assert floats["object"] == "list"
    assert floats["model"] == MODEL
    assert [item["index"] for item in floats["data"]] == [0, 1]
    assert all(item["object"] == "embedding" for item in floats["data"])
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] > 4
    vectors = np.array([item["embedding"] for item in floats["data"]], dtype=np.float32)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    encoded = expect(openai(server, input=texts, model=MODEL, encoding_format="base64"), 200)
    decoded = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in encoded["data"]])
    # JSON floats are float32's shortest form: read back as float32 they are the very bytes base64 carries.
    np.testing.assert_array_equal(decoded, vectors)
    native = expect(server.client.post("/api/v1/embed", json={"inputs": texts, "model": MODEL}), 200)
    np.testing.assert_array_equal(np.array(native["embeddings"], dtype=np.float32), decoded)
    # One string is one embedding; no model means the default.
    single = expect(openai(server, input=texts[0]), 200)
    assert len(single["data"]) == 1
    assert single["model"] == MODEL
    np.testing.assert_allclose(single["data"][0]["embedding"], vectors[0], atol=1e-5)


def test_openai_dimensions_cut_matryoshka_models(server: AkidbServer) -> None:
    body = expect(openai(server, input=["some text"], model="tiny-qwen3", dimensions=16), 200)
    vector = body["data"][0]["embedding"]
    assert len(vector) == 16
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-4)
    expect_error(openai(server, input=["x"], model=MODEL, dimensions=100), 422, "dimensions", "384")


def test_a_collection_at_a_matryoshka_size_stores_and_searches_cut_vectors(server: AkidbServer) -> None:
    """A collection of 16 dimensions over tiny-qwen3 (32, trained at 16 too): documents and queries are cut
    and re-normalised the same way as /v1/embeddings with dimensions=16."""
    api = server.client
    create_collection(api, "qwen16", embedding_model="tiny-qwen3", dimension=16)
    texts = ["the cat sat on the mat", "stocks fell sharply today", "a recipe for lemon cake"]
    expect(upsert(api, "qwen16", [{"id": str(i), "text": t} for i, t in enumerate(texts)]), 200)
    stored = expect(api.get("/api/v1/collections/qwen16/documents/1", params={"include_vector": "true"}), 200)
    expected = openai(server, input=[texts[1]], model="tiny-qwen3", dimensions=16).json()["data"][0]["embedding"]
    assert len(stored["vector"]) == 16
    np.testing.assert_allclose(stored["vector"], expected, atol=1e-5)
    hits = search(api, "qwen16", query=texts[2], top_k=3)
    assert len(hits) == 3
    assert all(-1.0001 <= hit["score"] <= 1.0001 for hit in hits)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"input": [], "model": MODEL}, 422, "input"),
        ({"input": ["ok", "  "], "model": MODEL}, 422, "input[1]"),
        ({"input": "x", "model": "no-such-model"}, 404, "no-such-model"),
        ({"input": [[101, 102]], "model": MODEL}, 400, "input"),
        ({"input": "x", "model": MODEL, "encoding_format": "hex"}, 400, "encoding_format"),
        ({"input": "x", "model": MODEL, "unknown": 1}, 400, "unknown"),
    ],
)
def test_openai_errors_name_the_field(server: AkidbServer, body: dict[str, Any], status: int, fragment: str) -> None:
    expect_error(openai(server, **body), status, fragment)


def test_start_up_stops_when_no_backend_can_run_and_fallback_is_off(tmp_path: Path) -> None:
    config = tmp_path / "akidb.toml"
    config.write_text('[embedding]\nprovider = "torch"\ndevice = "cuda"\nfallback = false\n')
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "akidb",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--config",
            str(config),
        ],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 1, process.stderr[-3000:]
    last_line = process.stderr.strip().splitlines()[-1]
    assert last_line.startswith("akidb: the default model failed to load"), last_line
    assert "cuda" in last_line
    assert "fallback is off" in last_line
