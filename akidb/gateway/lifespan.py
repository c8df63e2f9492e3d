"""Start-up and shut-down: migrate the database; open the collections, follow the database and load the
default model in the background; save index checkpoints periodically; on exit, save and close everything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import anyio.to_thread
from litestar import Litestar

from akidb import observability
from akidb.collections.recall import RecallEstimator
from akidb.errors import AkidbError
from akidb.gateway.runtime import Runtime
from akidb.storage.graph_health import GraphHealth

log = logging.getLogger("akidb")


async def _save_periodically(runtime: Runtime) -> None:
    interval = runtime.settings.storage.index_save_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(runtime.open_collections.save_all)
        except Exception:  # a failed checkpoint is retried; the database still holds everything
            observability.INDEX_CHECKPOINT_FAILURES.inc()
            log.exception("saving index checkpoints failed")
        else:
            observability.INDEX_CHECKPOINTS.inc()


async def _check_graphs_periodically(runtime: Runtime, health: GraphHealth) -> None:
    """Each open collection's graph: rebuilt in a thread when too many of its points are deleted or one is
    unreachable (storage/graph_health.py); searches go on meanwhile."""
    interval = runtime.settings.storage.health_check_interval_s
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        if not runtime.readiness.database:
            continue
        try:
            await anyio.to_thread.run_sync(health.check_all)
        except Exception:  # the next round tries again; the old graph keeps serving
            log.exception("checking the index graphs failed")


def _stop(runtime: Runtime, reason: str, exc: Exception) -> None:
    """Start-up cannot complete: a server that would never become ready stops, saying why."""
    runtime.readiness.fatal = reason
    log.error("stopping: %s", reason, exc_info=not isinstance(exc, AkidbError))
    if runtime.readiness.stop_server is not None:
        runtime.readiness.stop_server()
    else:
        signal.raise_signal(signal.SIGTERM)


async def _load_model(runtime: Runtime) -> None:
    runtime.readiness.model_reason = "loading the default model"
    try:
        await anyio.to_thread.run_sync(runtime.load_default_model)
    except Exception as exc:
        detail = exc.detail if isinstance(exc, AkidbError) else repr(exc)
        _stop(runtime, f"the default model failed to load: {detail}", exc)


async def _follow(runtime: Runtime) -> None:
    """Open every collection and catch up (readiness waits for it), then follow the database."""
    try:
        await anyio.to_thread.run_sync(runtime.open_storage)
    except Exception as exc:
        _stop(runtime, f"opening the collections failed: {exc!r}", exc)
        return
    await runtime.replica.run()


def lifespan(runtime: Runtime) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def run(_: Litestar) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(runtime.migrate)
        storage = runtime.settings.storage
        health = GraphHealth(
            runtime.open_collections,
            rebuild_deleted_ratio=storage.rebuild_deleted_ratio,
            sample=storage.health_check_sample,
        )
        # Live recall: sampled searches re-run exactly on a worker thread (collections/recall.py).
        recall = RecallEstimator(sample_rate=storage.recall_sample_rate, target=storage.recall_target)
        runtime.search.recall = runtime.collections.recall = recall
        recall.start()
        # Collections open and the model loads in the background: /health/live answers at once,
        # /health/ready once both are done. A request meanwhile opens the collection it names itself.
        tasks = [
            asyncio.create_task(_follow(runtime)),
            asyncio.create_task(_load_model(runtime)),
            asyncio.create_task(_save_periodically(runtime)),
            asyncio.create_task(_check_graphs_periodically(runtime, health)),
        ]
        try:
            yield
        finally:
            health.stop()  # a rebuild in progress gives up at its next batch, so the task ends soon
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(recall.stop)
            await anyio.to_thread.run_sync(runtime.close)

    return run
