"""This process as one replica of the database: it follows the others' writes every
storage.follow_interval_ms, makes a read wait for the `min_seq` it asks for, and tells the database how far
it has got (heartbeats), so that deletions are purged only once every live process has applied them."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable

import anyio
import anyio.to_thread

from akidb.errors import InvalidRequest, NotCaughtUp, NotFound
from akidb.observability import REPLICA_APPLIED_SEQ, REPLICA_LAG
from akidb.storage.changes import ChangeFeed
from akidb.storage.collection import OpenCollection, Stale
from akidb.storage.follower import Follower
from akidb.storage.open_collections import OpenCollections

log = logging.getLogger(__name__)
# How often a read waiting for its min_seq looks again, when a catch-up did not get there.
_WAIT_POLL_S = 0.02


def make_replica_id() -> str:
    return f"{socket.gethostname()[:60]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Replica:
    def __init__(
        self,
        collections: OpenCollections,
        feed: ChangeFeed,
        *,
        follow_interval_ms: int = 200,
        consistency_wait_ms: int = 2000,
        timeout_s: float = 60.0,
        replica_id: str | None = None,
    ) -> None:
        self.collections = collections
        self.feed = feed
        self.follower = Follower(collections, feed)
        self.replica_id = replica_id or make_replica_id()
        self.follow_interval_s = follow_interval_ms / 1000
        self.consistency_wait_s = consistency_wait_ms / 1000
        self.timeout_s = timeout_s
        # Often enough that a live process never looks gone: six heartbeats per timeout, at most every 10 s.
        self.heartbeat_interval_s = max(self.follow_interval_s, min(10.0, timeout_s / 6))
        # Wall-clock start of the last complete round: everything committed before it is applied here.
        self.caught_up_at: float | None = None
        self._wake: asyncio.Event | None = None
        self._published: set[str] = set()
        REPLICA_LAG.set_function(self.lag_seconds)

    # --- reads ---------------------------------------------------------------------------------------

    async def collection(self, name: str, min_seq: int | None = None) -> OpenCollection:
        """The open collection `name`, once it has applied `min_seq`. One created by another process and
        not followed yet is opened now; NotFound if the database has none of that name."""
        try:
            handle = self.collections.get(name)
        except NotFound:
            handle = await anyio.to_thread.run_sync(self.collections.find, name)
        if min_seq is None:
            return handle
        return await self._wait_for(name, handle, min_seq)

    async def _wait_for(self, name: str, handle: OpenCollection, min_seq: int) -> OpenCollection:
        # Which collection holds this name now: seqs start again at 0 when one is deleted and made again
        # elsewhere, and the copy open here may still be the old one.
        record = await anyio.to_thread.run_sync(self.collections.store.get_collection, name)
        if record.id != handle.id:
            handle = await anyio.to_thread.run_sync(self.collections.open, record)
        if min_seq > record.last_seq:
            # No write answer ever gave this seq (or it was another collection of that name): waiting cannot help.
            raise InvalidRequest(
                f"min_seq {min_seq} is past collection '{name}''s last write (seq {record.last_seq}); pass the seq "
                "a write on this collection returned",
                extra={"field": "min_seq", "seq": record.last_seq},
            )
        if handle.applied_seq >= min_seq:
            return handle
        self.wake()  # a round now, whatever becomes of this request
        with anyio.move_on_after(self.consistency_wait_s):
            while True:
                try:
                    # Catch up at once rather than wait for the next round; abandoned if the wait ends first.
                    await anyio.to_thread.run_sync(handle.catch_up, abandon_on_cancel=True)
                except Stale:
                    self.wake()  # the follower reopens it
                handle = await anyio.to_thread.run_sync(self.collections.find, name)
                if handle.applied_seq >= min_seq:
                    return handle
                await anyio.sleep(_WAIT_POLL_S)
        raise NotCaughtUp(
            f"this process has applied collection '{name}' up to seq {handle.applied_seq}, not min_seq {min_seq}, "
            f"after waiting {self.consistency_wait_s * 1000:.0f} ms (storage.consistency_wait_ms); retry, or ask "
            "another process",
            applied_seq=handle.applied_seq,
            min_seq=min_seq,
            retry_after_s=max(1.0, math.ceil(self.consistency_wait_s)),
        )

    def lag_seconds(self) -> float:
        """An upper bound on how stale this process's view is (0 before it has started)."""
        return 0.0 if self.caught_up_at is None else max(0.0, time.time() - self.caught_up_at)

    # --- following -----------------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = lambda reason: None) -> None:
        """Blocking: open every collection, follow once, and say so to the database."""
        self.collections.open_all(lambda done, total: progress(f"opening collections: {done} of {total}"))
        self.heartbeat()  # as early as possible: from now on, no purge passes this process by
        progress("catching up with the database")
        report = self.follower.follow()
        if report.complete:
            self.caught_up_at = report.started
        self.heartbeat()
        self._publish()

    def heartbeat(self) -> None:
        """Blocking: record this process's progress, then purge what every live process has applied."""
        self.feed.heartbeat(self.replica_id, {c.id: c.applied_seq for c in self.collections.all()})
        self.feed.purge_tombstones(timeout_s=self.timeout_s)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Follow until cancelled: a round every follow interval, a heartbeat every heartbeat interval."""
        self._wake = asyncio.Event()
        last_heartbeat = time.monotonic()
        while True:
            try:
                report = await anyio.to_thread.run_sync(self.follower.follow)
                if report.complete:
                    self.caught_up_at = report.started
                if report.opened or report.dropped:
                    log.info("following: opened %s, dropped %s", report.opened, report.dropped)
                if time.monotonic() - last_heartbeat >= self.heartbeat_interval_s:
                    await anyio.to_thread.run_sync(self.heartbeat)
                    last_heartbeat = time.monotonic()
            except Exception:  # the database may be away for a moment: try again next round
                log.exception("following the database failed")
            self._publish()
            with anyio.move_on_after(self.follow_interval_s):
                await self._wake.wait()
            self._wake.clear()

    def stop(self) -> None:
        """Blocking: a process that stops cleanly holds no tombstones back."""
        try:
            self.feed.forget(self.replica_id)
        except Exception:
            log.exception("could not remove this process's progress rows")

    def _publish(self) -> None:
        names = set()
        for collection in self.collections.all():
            REPLICA_APPLIED_SEQ.labels(collection=collection.name).set(collection.applied_seq)
            names.add(collection.name)
        for gone in self._published - names:
            REPLICA_APPLIED_SEQ.remove(gone)
        self._published = names
