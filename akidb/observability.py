"""Prometheus metrics of the embedding pipeline (request count and duration by route and status come from
Litestar's Prometheus middleware). Names follow Text Embeddings Inference's where they mean the same."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets from 1 ms to 30 s; batch buckets in powers of two.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TEXTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

QUEUE_SIZE = Gauge("akidb_embed_queue_size", "Texts waiting for the model's worker", ["model", "lane"])
QUEUE_WAIT = Histogram(
    "akidb_embed_queue_duration_seconds",
    "Time a text waited in the queue before its batch started",
    ["model", "lane"],
    buckets=_SECONDS,
)
BATCH_SIZE = Histogram("akidb_embed_batch_size", "Texts per inference batch", ["model"], buckets=_TEXTS)
BATCH_TOKENS = Histogram(
    "akidb_embed_batch_tokens", "Padded tokens per inference batch (rows x longest row)", ["model"], buckets=_TOKENS
)
INFERENCE_DURATION = Histogram(
    "akidb_embed_inference_duration_seconds", "Time of one inference batch", ["model"], buckets=_SECONDS
)
EMBEDDED_TEXTS = Counter("akidb_embed_texts_total", "Texts run through a model", ["model"])
CACHE_HITS = Counter("akidb_embed_cache_hits_total", "Texts answered from the embedding cache", ["model"])
CACHE_MISSES = Counter("akidb_embed_cache_misses_total", "Texts the embedding cache did not hold", ["model"])
CACHE_ENTRIES = Gauge("akidb_embed_cache_entries", "Vectors held by the embedding cache")
CACHE_BYTES = Gauge("akidb_embed_cache_bytes", "Bytes of vectors held by the embedding cache")
REJECTED = Counter(
    "akidb_embed_rejected_total",
    "Requests turned away: queue_full (429), deadline (503), disconnected (client left while queued)",
    ["model", "reason"],
)
SEARCH_PLANS = Counter(
    "akidb_search_plan_total",
    "Dense searches by the plan that served them: exact (every vector), graph (HNSW), exact_filtered (every "
    "vector that passes the filter), graph_filtered (HNSW with hnswlib's filter callable), graph_oversampled "
    "(HNSW, then the filter over a wider top k)",
    ["plan"],
)
REPLICA_APPLIED_SEQ = Gauge(
    "akidb_replica_applied_seq", "The highest seq of each collection that this process has applied", ["collection"]
)
REPLICA_LAG = Gauge(
    "akidb_replica_lag_seconds",
    "Upper bound on how stale this process's view of the database is: seconds since the start of its last "
    "complete round of following (0 to about storage.follow_interval_ms when it keeps up)",
)
MODEL_MEMORY = Gauge(
    "akidb_model_memory_bytes",
    "What each loaded model costs in memory: the larger of the growth in resident memory over its load and "
    "the bytes of its weights (as GET /api/v1/models reports); the series goes when the model is unloaded",
    ["model"],
)
MODEL_LOAD_FAILURES = Counter(
    "akidb_model_load_failures_total", "Model loads (build and warm-up) that raised", ["model"]
)
INDEX_CHECKPOINTS = Counter(
    "akidb_index_checkpoints_total", "Periodic rounds of saving index checkpoints that completed"
)
INDEX_CHECKPOINT_FAILURES = Counter(
    "akidb_index_checkpoint_failures_total",
    "Periodic rounds of saving index checkpoints that failed (retried next round; the database still holds "
    "everything, but a restart rebuilds more from it)",
)
INDEX_DELETED_RATIO = Gauge(
    "akidb_index_deleted_ratio",
    "Share of each collection's HNSW slots that hold deleted points (searches still walk through them); past "
    "storage.rebuild_deleted_ratio the graph is rebuilt from the live rows",
    ["collection"],
)
INDEX_UNREACHABLE = Gauge(
    "akidb_index_unreachable_points",
    "Live points of the last sampled reachability check that a search by their own vector did not find, even "
    "at a wide ef (the graph is then rebuilt)",
    ["collection"],
)
INDEX_REBUILDS = Counter(
    "akidb_index_rebuilds_total",
    "HNSW graphs rebuilt in the background and swapped in, by reason: deleted_ratio, unreachable",
    ["collection", "reason"],
)
INDEX_REBUILD_IN_PROGRESS = Gauge(
    "akidb_index_rebuild_in_progress", "1 while a collection's graph is being rebuilt in the background", ["collection"]
)
INDEX_REBUILD_DURATION = Histogram(
    "akidb_index_rebuild_duration_seconds",
    "Time of a background graph rebuild, from the snapshot to the swap",
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
RECALL_ESTIMATE = Gauge(
    "akidb_index_recall_estimate",
    "Mean recall@k of the last sampled dense searches the HNSW graph served at the collection's ef_search, each "
    "re-run exactly off the hot path (storage.recall_sample_rate of them)",
    ["collection"],
)
RECALL_SAMPLES_DROPPED = Counter(
    "akidb_index_recall_samples_dropped_total",
    "Sampled searches not re-run because the recall worker's queue was full",
)
REJECT_REASONS = ("queue_full", "deadline", "disconnected")


def init_model_series(model: str) -> None:
    """Create a model's counters at 0, so that rate() and alerts see them before the first event."""
    for reason in REJECT_REASONS:
        REJECTED.labels(model, reason)
    MODEL_LOAD_FAILURES.labels(model)
