"""Start-up and shut-down: open the database and indexes, load the default model in the background, save
index checkpoints periodically; on exit, save and close everything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import anyio.to_thread
from litestar import Litestar

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
            log.exception("saving index checkpoints failed")


async def _load_model(runtime: Runtime) -> None:
    runtime.readiness.reason = "loading the default model"
    try:
        await anyio.to_thread.run_sync(runtime.load_default_model)
        runtime.readiness.reason = "ready"
    except Exception as exc:
        # A server whose default model cannot run here would never become ready: stop, saying why.
        detail = exc.detail if isinstance(exc, AkidbError) else repr(exc)
        runtime.readiness.reason = f"the default model failed to load: {detail}"
        runtime.readiness.fatal = runtime.readiness.reason
        log.error("stopping: %s", runtime.readiness.reason, exc_info=not isinstance(exc, AkidbError))
        if runtime.readiness.stop_server is not None:
            runtime.readiness.stop_server()
        else:
            signal.raise_signal(signal.SIGTERM)


def lifespan(runtime: Runtime) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def run(_: Litestar) -> AsyncIterator[None]:
        runtime.readiness.reason = "opening the database and indexes"
        await anyio.to_thread.run_sync(runtime.open_storage)
        # The model loads in the background: /health/live answers at once, /health/ready once it is warm.
        loader = asyncio.create_task(_load_model(runtime))
        saver = asyncio.create_task(_save_periodically(runtime))
        try:
            yield
        finally:
            for task in (loader, saver):
                task.cancel()
            for task in (loader, saver):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(runtime.close)

    return run
