"""The cache journal: which keys Redis may hold a wrong value for.

A key is *covered* from the moment a call that changes it (set, add, delete,
touch, incr, a version bump) is served by the fallback, or fails on Redis in a
way that may still have landed (a timeout), until the key has been deleted
from Redis again. While a key is covered every call for it is served by the
fallback, which holds the last value written for it (or nothing), never by
Redis. That single rule gives the invariant: a read returns the last value
written for its key, or a miss — whatever the breaker's state, and however the
replay races with the probe and with real traffic.

The fallback only ever holds covered keys: a replayed key is deleted from the
fallback too, so a value written during one outage cannot be served in a later
one after Redis changed it in between.

Besides keys, the journal holds ``delete_pattern`` calls made while Redis was
away (a pattern covers every key it matches; the replay runs it on Redis) and
deletes of keys under another prefix (``delete(key, prefix=...)``: replayed,
never covering this cache's keys).

Replay takes the journal out (``inflight``) so new writes journal afresh, and
puts it back on failure. Past ``max_keys`` the journal stops naming keys and
covers *everything*; its replay deletes the cache's own keys from Redis
(``keyspace.clear_own_keys``: SCAN + UNLINK over the cache's key pattern,
never ``FLUSHDB`` of a database that other data may share).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from redis_breaker._background import BackgroundJob
from redis_breaker._errors import BreakerOpenError
from redis_breaker._events import emit
from redis_breaker._redact import describe_error
from redis_breaker._state import State, StateChange

from .keyspace import clear_own_keys

if TYPE_CHECKING:
    from django.core.cache.backends.base import BaseCache

    from redis_breaker._breaker import Breaker

__all__ = ["INTEGRATION", "PASS", "Foreign", "Journal", "journal_for"]

T = TypeVar("T")
Key = tuple[Any, int]
#: (pattern as given, version, prefix) of a ``delete_pattern`` made while Redis was away.
Pattern = tuple[str, int, "str | None"]


@dataclass(frozen=True, slots=True)
class Foreign:
    """A key under another prefix (``delete(key, prefix=...)``): replayed, covers nothing."""

    prefix: str
    key: Any

#: The states whose ``rejects`` is true, for a test without two property calls.
_REJECTING = tuple(state for state in State if state.rejects)
_CLOSED = State.CLOSED

#: What the breaker's fallback counts and warnings call the cache.
INTEGRATION = "cache"
#: ``Journal.read``'s answer for a call that goes to Redis (through the breaker).
PASS: Any = object()
_RETRY_FAILED_S = 0.25  # replay failed while the breaker stayed closed
_RETRY_FAILED_MAX_S = 5.0
# Replay refused by something other than an outage (NOPERM, a script error): tried again
# later and later, and at once after the breaker's next recovery.
_RETRY_REFUSED_S = 1.0
_RETRY_REFUSED_MAX_S = 60.0
_WATCH_S = 0.02  # how often an idle process looks whether the host's breaker lets calls through
_journals: weakref.WeakKeyDictionary[Breaker, dict[Hashable, Journal]] = (
    weakref.WeakKeyDictionary()
)
_journals_lock = threading.Lock()


class Journal:
    """Covered keys of one cache (one primary, one fallback, one breaker)."""

    def __init__(
        self,
        breaker: Breaker,
        name: str,
        fallback: BaseCache | None,
        primary_factory: Callable[[], BaseCache],
        max_keys: int,
    ) -> None:
        self.name = name
        self.max_keys = max_keys
        self._in_replay = False
        self._breaker = weakref.ref(breaker)
        self._fallback = fallback
        self._primary_factory = primary_factory
        self._primary: BaseCache | None = None
        self.lock = threading.RLock()
        self._keys: dict[Key, None] = {}
        self._all = False
        self._inflight: dict[Key, None] = {}
        self._inflight_all = False
        self._patterns: dict[Pattern, re.Pattern[str]] = {}
        self._inflight_patterns: dict[Pattern, re.Pattern[str]] = {}
        #: The primary's ``make_key`` (the Redis key), set by the cache: patterns match it.
        self.make_key: Callable[[Any, int], Any] | None = None
        self._job = BackgroundJob(f"redis-breaker-cache-replay-{name}", self._run)
        #: Set by a recovery (half-open, closed): ends the wait after a refused replay.
        self._recovered = threading.Event()
        #: Fast-path flag, read without the lock: False means nothing is covered.
        self.active = False
        if fallback is not None:
            # The fallback belongs to this journal: whatever it holds from
            # before is not known to be current.
            fallback.clear()
        breaker.add_listener(self._on_change)

    @property
    def fallback(self) -> BaseCache | None:
        """The store that serves covered keys (None: misses, for ``safe_cache_*``)."""
        return self._fallback

    # --------------------------------------------------------------- coverage
    def covers(self, key: Any, version: int) -> bool:
        k = (key, version)
        return bool(self._all or self._inflight_all or k in self._keys or k in self._inflight
                    or ((self._patterns or self._inflight_patterns)
                        and self._pattern_covers(key, version)))

    def _pattern_covers(self, key: Any, version: int) -> bool:
        make_key = self.make_key
        if make_key is None:
            return True
        made = str(make_key(key, version))
        return any(m.fullmatch(made) for m in (*self._patterns.values(),
                                                *self._inflight_patterns.values()))

    def split(self, keys: Iterable[Any], version: int) -> tuple[list[Any], list[Any]]:
        """``(covered, uncovered)`` in the given order."""
        covered: list[Any] = []
        uncovered: list[Any] = []
        for key in keys:
            (covered if self.covers(key, version) else uncovered).append(key)
        return covered, uncovered

    # The two below are the cache's fast path while the journal is ``active``;
    # callers test that flag inline first, so a healthy cache pays one attribute
    # read and no call.
    def diverts(self, key: Any, version: int, *more: int) -> bool:
        """Whether a call for ``key`` (at ``version`` or any of ``more``) goes to the fallback.

        A covered key is served by the fallback and counted as such. Either way the
        replay is started while the breaker lets calls through: covered keys never
        touch Redis, so the replay is what finds out whether Redis is back (or still
        away: its failures count and open the breaker). A ``get`` asks ``read``
        instead, which has the tests written out.
        """
        breaker = self._breaker()
        if self._job.thread is None:
            self._look(breaker)
        if self.covers(key, version) or (more and any(self.covers(key, v) for v in more)):
            if breaker is not None:
                breaker.note_fallback(INTEGRATION)
            return True
        return False

    def read(self, key: Any, version: int, default: Any) -> Any:
        """A ``get`` of ``key`` answered without Redis, or ``PASS`` when it is Redis's to answer.

        A covered key: the fallback's value, as ``diverts`` and the fallback's
        ``get`` would give it. A key not covered while the breaker refuses
        calls without looking further (open, its probe running or its open
        interval not over; forced open): ``default``, counted as refused and
        served by the fallback, which is what the breaker's refusal and
        ``get_uncovered`` give, without going through the breaker. This is
        every ``get`` of an outage once something was written, so ``covers``
        and the fallback count are written out here.
        """
        breaker = self._breaker()
        if self._job.thread is None:
            self._look(breaker)
        k = (key, version)
        if (self._all or self._inflight_all or k in self._keys or k in self._inflight
                or ((self._patterns or self._inflight_patterns)
                    and self._pattern_covers(key, version))):
            if breaker is not None:
                # ``breaker.note_fallback(INTEGRATION)``, its lock-free path while not
                # closed written out (a third of this read's own cost as a call).
                counter = (breaker._ledger._current.get(INTEGRATION)
                           if breaker._state is not _CLOSED else None)
                if counter is not None:
                    counter.step()
                else:
                    breaker.note_fallback(INTEGRATION)
            fallback = self._fallback
            return default if fallback is None else fallback.get(key, default, version)
        if breaker is not None and breaker.refuse(INTEGRATION):
            return default
        return PASS

    def _look(self, breaker: Breaker | None) -> None:
        """Start the replay if ``breaker`` lets calls through.

        A replay job that runs watches the breaker itself (every ``_WATCH_S`` while
        it rejects) and replays as soon as it lets calls through, so the single-key
        paths look only when none runs. None runs in a child forked during an
        outage: then a diverted call looks, and ``state`` catches up with the
        host's record (another process's probe may have closed the breaker), so a
        process whose every call is diverted learns of it.
        """
        if breaker is not None and breaker.state not in _REJECTING:
            self.kick()

    def divert_many(self, keys: Iterable[Any], version: int) -> tuple[list[Any], list[Any]]:
        """``(covered, uncovered)`` as ``split``; the covered ones counted as served by the fallback."""
        self._look(self._breaker())
        covered, uncovered = self.split(keys, version)
        if covered:
            self._note_fallback()
        return covered, uncovered

    def _note_fallback(self) -> None:
        breaker = self._breaker()
        if breaker is not None:
            breaker.note_fallback(INTEGRATION)

    def record(self, keys: Iterable[Any], version: int) -> None:
        """Cover ``keys``; the caller holds ``lock`` together with the fallback write."""
        if self._all:
            return
        for key in keys:
            k = (key, version)
            if k in self._keys:
                continue
            if len(self._keys) + len(self._patterns) >= self.max_keys:
                self._overflow()
                break
            self._keys[k] = None
        self._activate()

    def _activate(self) -> None:
        # The replay is this process's work, whoever notices the recovery and
        # whether or not this process makes another call: it starts now and
        # waits, in the background, for the breaker to let calls through.
        if not self.active or not self._job.running:
            self.active = True
            self.kick()

    def record_pattern(self, pattern: Pattern, matcher: re.Pattern[str]) -> list[Key]:
        """Cover every key ``matcher`` matches (a ``delete_pattern``); the caller holds ``lock``.

        Returns the named keys it covers, whose fallback copies the caller deletes.
        """
        if not self._all:
            if len(self._keys) + len(self._patterns) >= self.max_keys:
                self._overflow()
            else:
                self._patterns[pattern] = matcher
        self._activate()
        return self.named_matching(matcher)

    def named_matching(self, matcher: re.Pattern[str]) -> list[Key]:
        """Named keys (journaled or in flight) whose Redis key ``matcher`` matches."""
        make_key = self.make_key
        if make_key is None:
            return []
        return [k for k in (*self._keys, *self._inflight)
                if not isinstance(k[0], Foreign) and matcher.fullmatch(str(make_key(*k)))]

    def _overflow(self) -> None:
        self._all = True
        self._keys = {}
        self._patterns = {}
        emit(logging.WARNING, "cache_journal_overflow", cache=self.name,
             breaker=self._breaker_name(), max_keys=self.max_keys,
             on_recovery="delete the cache's own keys from Redis")

    def cover_all(self) -> None:
        """Cover every key (``clear()`` during an outage): recovery clears the primary."""
        with self.lock:
            self._all = True
            self._keys = {}
            self._patterns = {}
            self._activate()

    def write(self, keys: Iterable[Any], version: int, fn: Callable[..., T], /,
              *args: Any, **kwargs: Any) -> T:
        """Journal ``keys`` and run the fallback write ``fn``, atomically against replays."""
        with self.lock:
            self.record(keys, version)
            return fn(*args, **kwargs)

    # ----------------------------------------------------------------- replay
    def _breaker_name(self) -> str | None:
        breaker = self._breaker()
        return breaker.name if breaker is not None else None

    def replay(self) -> int:
        """Delete every covered key from the primary, then from the fallback.

        The deletes go through the breaker (in half-open they are trial calls)
        and raise what it raises. Returns how many keys and patterns were
        replayed (-1: every key of the cache was deleted).
        """
        breaker = self._breaker()
        if breaker is None:
            return 0
        with self.lock:
            if (self._inflight or self._inflight_all or self._inflight_patterns
                    or not (self._keys or self._all or self._patterns)):
                return 0
            keys, everything, patterns = self._keys, self._all, self._patterns
            self._inflight, self._inflight_all = keys, everything
            self._inflight_patterns = patterns
            self._keys, self._all, self._patterns = {}, False, {}
        try:
            primary = self._primary or self._primary_factory()
            self._primary = primary
            # In half-open these are trial calls: they wait for a free trial slot.
            if everything:
                clear_own_keys(primary, breaker.call_as_trial, name=self.name,
                               breaker=breaker.name)
            else:
                for pattern, version, prefix in patterns:
                    breaker.call_as_trial(primary.delete_pattern,  # type: ignore[attr-defined]
                                          pattern, version=version, prefix=prefix)
                by_version: dict[int, list[Any]] = {}
                for key, version in keys:
                    if isinstance(key, Foreign):
                        breaker.call_as_trial(primary.delete, key.key,
                                              version=version, prefix=key.prefix)
                    else:
                        by_version.setdefault(version, []).append(key)
                for version, group in by_version.items():
                    breaker.call_as_trial(primary.delete_many, group, version=version)
        except BaseException:
            with self.lock:
                if everything or self._all:
                    self._all, self._keys, self._patterns = True, {}, {}
                else:
                    self._keys = {**keys, **self._keys}
                    self._patterns = {**patterns, **self._patterns}
                self._inflight, self._inflight_all = {}, False
                self._inflight_patterns = {}
            raise
        with self.lock:
            fallback = self._fallback
            if fallback is not None:
                if everything:
                    # Keys journaled since the snapshot lose their fallback value:
                    # a miss, never a wrong value.
                    fallback.clear()
                else:
                    by_version = {}
                    for key, version in keys:
                        if not isinstance(key, Foreign) and (
                                self._all or (key, version) not in self._keys):
                            by_version.setdefault(version, []).append(key)
                    for version, group in by_version.items():
                        fallback.delete_many(group, version=version)
            self._inflight, self._inflight_all = {}, False
            self._inflight_patterns = {}
            self.active = bool(self._keys or self._all or self._patterns)
        replayed = -1 if everything else len(keys) + len(patterns)
        emit(logging.INFO, "cache_journal_replayed", cache=self.name, breaker=breaker.name,
             keys=replayed, action="deleted the cache's own keys from the primary"
             if everything else "deleted from primary")
        return replayed

    def _on_change(self, change: StateChange) -> None:
        # Runs in the thread that caused the transition (often the probe): never block it.
        if change.to_state in (State.HALF_OPEN, State.CLOSED) and self.active:
            self._recovered.set()
            self.kick()

    def kick(self) -> None:
        """Replay in the background (once more after the replay that is running, if one is)."""
        self._job.kick()

    @property
    def replaying(self) -> bool:
        """True while a replay's calls run (not while it waits for the breaker to let them)."""
        return self._job.running and self._in_replay

    def _run(self) -> None:
        pause, refused = _RETRY_FAILED_S, _RETRY_REFUSED_S
        while self.active:
            breaker = self._breaker()
            if breaker is None:
                return
            if breaker.state.rejects:
                # With host-wide state the probe that ends the outage may run in
                # another process: this one hears of it when it reads the state,
                # so an idle process keeps reading it rather than wait for a call.
                del breaker
                time.sleep(_WATCH_S)
                continue
            self._in_replay = True
            self._recovered.clear()
            try:
                self.replay()
                pause, refused = _RETRY_FAILED_S, _RETRY_REFUSED_S
            except BreakerOpenError:
                # No longer half-open: open again (the loop waits), or closed by
                # other trial calls meanwhile (the loop replays again).
                self._in_replay = False
                del breaker
            except Exception as exc:
                self._in_replay = False
                if not breaker.counts(exc):
                    # Redis answered, and refused (a user without DEL, a script error):
                    # the keys stay covered, and this thread tries again, later and
                    # later. (It used to end here, and then every diverted call started
                    # the replay again, each with this ERROR.)
                    emit(logging.ERROR, "cache_journal_replay_failed", cache=self.name,
                         breaker=breaker.name, error=describe_error(exc),
                         retry_in_s=refused)
                    del breaker
                    self._recovered.wait(refused)
                    refused = min(refused * 2, _RETRY_REFUSED_MAX_S)
                    continue
                # A blip too short to open the breaker: nobody else will retry,
                # and until the replay succeeds the covered keys stay off Redis.
                del breaker
                time.sleep(pause)
                pause = min(pause * 2, _RETRY_FAILED_MAX_S)
            finally:
                self._in_replay = False


def journal_for(
    breaker: Breaker,
    identity: Hashable,
    name: str,
    fallback: BaseCache | None,
    primary_factory: Callable[[], BaseCache],
    max_keys: int,
) -> Journal:
    """The process-wide journal for ``identity`` (where the data lives) on ``breaker``."""
    per_breaker = _journals.get(breaker)
    journal = per_breaker.get(identity) if per_breaker is not None else None
    if journal is not None:
        return journal
    with _journals_lock:
        per_breaker = _journals.setdefault(breaker, {})
        journal = per_breaker.get(identity)
        if journal is None:
            journal = Journal(breaker, name, fallback, primary_factory, max_keys)
            per_breaker[identity] = journal
        return journal


def _after_fork_in_child() -> None:
    """Fresh locks in a forked child: a thread of the parent may have held one.

    A cache write during an outage holds the journal's lock across the fallback's
    write, and Django's LocMemCache holds its own (a plain Lock shared by every
    instance of one name) inside it: a child forked meanwhile would wait for them
    forever. The journals stay, with the keys they cover; their replay job is
    renewed by ``_background``.
    """
    global _journals_lock
    _journals_lock = threading.Lock()
    for per_breaker in list(_journals.values()):
        for journal in list(per_breaker.values()):
            journal.lock = threading.RLock()
            journal._recovered = threading.Event()
            lock = getattr(journal.fallback, "_lock", None)
            if lock is not None and getattr(lock, "locked", lambda: False)():
                # Held by a thread that does not exist here; other instances share it.
                with contextlib.suppress(RuntimeError):
                    lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
