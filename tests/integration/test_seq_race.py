"""The seq race (issue 11): processes writing to one collection on one PostgreSQL database never hand out a seq
twice, and each write's seq numbers are one contiguous block. Without the collection row's lock, two
transactions read the same last_seq and the unique (collection_id, seq) constraint fails loudly."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from sqlalchemy.exc import IntegrityError

from akidb.storage.db import create_db_engine, migrate
from akidb.storage.records import HnswParams, NewDocument
from akidb.storage.repositories import Store

PROCESSES = 3
WRITES_PER_PROCESS = 60
ID_POOL = 40  # ids shared by every process: inserts, replacements and deletes collide


def hammer(url: str, collection_id: int, worker: int) -> tuple[list[tuple[int, int]], int]:
    """One process's writes: (first seq, last seq) of each, and how many hit the unique constraint."""
    engine = create_db_engine(url)
    store = Store(engine)
    rng = np.random.default_rng(worker)
    blocks: list[tuple[int, int]] = []
    collisions = 0
    try:
        for _ in range(WRITES_PER_PROCESS):
            ids = [f"d{i}" for i in rng.choice(ID_POOL, size=int(rng.integers(1, 6)), replace=False)]
            try:
                if rng.random() < 0.7:
                    docs = [NewDocument(i, None, {"w": worker}, rng.standard_normal(4).astype(np.float32)) for i in ids]
                    last_seq, written = store.upsert_documents(collection_id, docs).last_seq, len(docs)
                else:
                    deleted = store.delete_documents(collection_id, ids)
                    last_seq, written = deleted.last_seq, len(deleted.labels)
            except IntegrityError:
                collisions += 1
                continue
            if written:
                blocks.append((last_seq - written + 1, last_seq))
    finally:
        engine.dispose()
    return blocks, collisions


def test_writers_in_several_processes_take_disjoint_contiguous_seq_blocks(postgres_url: str) -> None:
    engine = create_db_engine(postgres_url)
    migrate(engine)
    store = Store(engine)
    collection = store.create_collection(
        name="race", embedding_model=None, dimension=4, metric="l2", hnsw=HnswParams(16, 100, 32), metadata={}
    )
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(hammer, [postgres_url] * PROCESSES, [collection.id] * PROCESSES, range(PROCESSES)))
    assert [collisions for _, collisions in results] == [0] * PROCESSES, "a seq was handed out twice"
    blocks = sorted(block for worker_blocks, _ in results for block in worker_blocks)
    last_seq = store.last_seq(collection.id)
    # Every seq from 1 to last_seq belongs to exactly one acknowledged write, in one block.
    covered = [seq for first, last in blocks for seq in range(first, last + 1)]
    assert covered == list(range(1, last_seq + 1))
    for worker_blocks, _ in results:  # each process saw its own writes in increasing seq order
        assert worker_blocks == sorted(worker_blocks)
    engine.dispose()
