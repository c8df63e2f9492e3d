"""One round of following the database: collections created, changed or deleted by other processes appear,
change and disappear here; every open collection applies the writes after its `applied_seq`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from akidb.errors import NotFound
from akidb.storage.changes import ChangeFeed
from akidb.storage.collection import OpenCollection, Stale
from akidb.storage.open_collections import OpenCollections
from akidb.storage.records import CollectionHead

log = logging.getLogger(__name__)


@dataclass
class Round:
    """What one round did. `started` is wall-clock time before the heads were read: once the round is
    complete, this process reflects every write committed before then."""

    started: float
    complete: bool = True
    applied: int = 0
    opened: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


class Follower:
    def __init__(self, collections: OpenCollections, feed: ChangeFeed) -> None:
        self.collections = collections
        self.feed = feed

    def follow(self) -> Round:
        """Blocking: one round over every collection. A failure on one collection is logged and leaves the
        round incomplete; the others still follow."""
        report = Round(started=time.time())
        heads = {head.name: head for head in self.feed.heads()}
        for collection in self.collections.all():
            head = heads.get(collection.name)
            if head is None or head.id != collection.id:
                self.collections.drop_local(collection)
                report.dropped.append(collection.name)
        for head in heads.values():
            try:
                self._follow_one(head, report)
            except NotFound:
                pass  # deleted while this round ran: the next one drops it here
            except Exception:
                report.complete = False
                log.exception("following collection '%s' failed; retrying next round", head.name)
        return report

    def _follow_one(self, head: CollectionHead, report: Round) -> None:
        try:
            collection: OpenCollection | None = self.collections.get(head.name)
        except NotFound:
            collection = None
        if collection is None or collection.stale or collection.dropped:
            if self._open(head):
                report.opened.append(head.name)
            return
        collection.set_ef_search(head.ef_search)
        if head.last_seq > collection.applied_seq or head.purged_seq > collection.applied_seq:
            try:
                report.applied += collection.catch_up()
            except Stale:
                log.warning("collection '%s' fell behind purged deletions; reopening it", head.name)
                if self._open(head):
                    report.opened.append(head.name)

    def _open(self, head: CollectionHead) -> bool:
        try:
            record = self.collections.store.get_collection(head.name)
        except NotFound:
            return False  # deleted meanwhile
        if record.id != head.id:
            return False  # deleted and created again meanwhile: the next round sees which
        self.collections.open(record)
        return True
