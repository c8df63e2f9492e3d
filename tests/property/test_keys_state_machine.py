"""Stateful property test of API keys across two processes sharing one database: a model of every key
(its role, scope and when it was revoked), checked against two KeyService instances (each with its own cache,
as two gateway processes have) on one real SQLite file, with a shared fake clock.

The rules: a key that was never revoked is always accepted, with its role and scope; a key revoked through
one process is refused there at once and everywhere once `auth.key_cache_ms` has passed; a key string that
was never issued, or an issued key with one character changed, is always refused."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule

from akidb.auth.keys import Principal
from akidb.auth.service import KeyService
from akidb.errors import Unauthorized
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.keys import KeyStore

CACHE_MS = 500.0
ROLES = ("read", "write", "admin")
SCOPES = (None, ("docs",), ("team-*", "docs"), ("a?c",))


@dataclass
class IssuedKey:
    key: str
    key_id: str
    role: str
    scope: tuple[str, ...] | None
    revoked_at: float | None = None
    revoked_on: int | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _authenticate(service: KeyService, key: str) -> Principal:
    """What the gateway's guard does: the cache, else the database."""
    return service.cached(key) or service.lookup(key)


class TwoProcessesShareKeys(RuleBasedStateMachine):
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory(prefix="akidb-keys-")
        engine = create_db_engine(f"sqlite:///{Path(self.folder.name) / 'keys.sqlite3'}")
        migrate(engine)
        self.engine = engine
        self.clock = Clock()
        self.processes = [
            KeyService(KeyStore(engine), admin_key="", cache_ms=CACHE_MS, clock=self.clock) for _ in range(2)
        ]

    def teardown(self) -> None:
        self.engine.dispose()
        self.folder.cleanup()

    @rule(target=keys, process=st.integers(0, 1), role=st.sampled_from(ROLES), scope=st.sampled_from(SCOPES))
    def create(self, process: int, role: str, scope: tuple[str, ...] | None) -> IssuedKey:
        created = self.processes[process].create(
            name=f"k-{role}", role=role, collections=None if scope is None else list(scope)
        )
        assert created.key.startswith(f"akidb_{created.record.id}_")
        return IssuedKey(key=created.key, key_id=created.record.id, role=role, scope=scope)

    @rule(issued=keys, process=st.integers(0, 1))
    def revoke(self, issued: IssuedKey, process: int) -> None:
        record = self.processes[process].revoke(issued.key_id)
        assert record.revoked_at is not None
        if issued.revoked_at is None:
            issued.revoked_at, issued.revoked_on = self.clock.now, process

    @rule(issued=keys, process=st.integers(0, 1), seconds=st.sampled_from([0.05, 0.3, 0.6, 1.2]))
    def revoke_while_the_other_process_holds_it(self, issued: IssuedKey, process: int, seconds: float) -> None:
        """The case the cache makes delicate: the other process checked the key just before the revocation."""
        other = 1 - process
        self.authenticate(issued, other)
        self.revoke(issued, process)
        self.time_passes(seconds)
        self.authenticate(issued, other)

    @rule(seconds=st.sampled_from([0.05, 0.3, 0.6, 1.2]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(issued=keys, process=st.integers(0, 1))
    def authenticate(self, issued: IssuedKey, process: int) -> None:
        service = self.processes[process]
        if issued.revoked_at is None:
            principal = _authenticate(service, issued.key)
            assert (principal.key_id, principal.role, principal.collections) == (
                issued.key_id,
                issued.role,
                issued.scope,
            )
            return
        must_refuse = issued.revoked_on == process or self.clock.now - issued.revoked_at > CACHE_MS / 1000.0
        refusal = None
        try:
            _authenticate(service, issued.key)
        except Unauthorized as exc:
            refusal = exc.detail
        if refusal is None:
            assert not must_refuse, "a revoked key was accepted after the cache time had passed"
        else:
            assert "revoked" in refusal

    @rule(issued=keys, process=st.integers(0, 1), position=st.integers(0, 200), pick=st.integers(0, 9))
    def a_changed_key_is_refused(self, issued: IssuedKey, process: int, position: int, pick: int) -> None:
        # Keys are random, so the replacement is chosen without drawing on them (hypothesis replays draws).
        position %= len(issued.key)
        replacement = [c for c in "abcXYZ019_-" if c != issued.key[position]][pick]
        forged = issued.key[:position] + replacement + issued.key[position + 1 :]
        try:
            _authenticate(self.processes[process], forged)
        except Unauthorized:
            return
        raise AssertionError(f"a key with character {position} changed was accepted")

    @rule(process=st.integers(0, 1), text=st.text(min_size=1, max_size=80))
    def an_unknown_key_is_refused(self, process: int, text: str) -> None:
        try:
            _authenticate(self.processes[process], text)
        except Unauthorized:
            return
        raise AssertionError(f"{text!r} was accepted")


TwoProcessesShareKeys.TestCase.settings = settings(
    max_examples=100, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_keys_across_two_processes = TwoProcessesShareKeys.TestCase
