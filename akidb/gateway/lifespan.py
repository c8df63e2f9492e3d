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
from akidb.errors import AkidbError
from akidb.gateway.runtime import Runtime

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
        # Collections open and the model loads in the background: /health/live answers at once,
        # /health/ready once both are done. A request meanwhile opens the collection it names itself.
        tasks = [
            asyncio.create_task(_follow(runtime)),
            asyncio.create_task(_load_model(runtime)),
            asyncio.create_task(_save_periodically(runtime)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(runtime.close)

    return run
