"""The breaker engine.

The lock covers counter updates and transitions only, never the guarded call.
The closed-state admission check is a plain attribute read. Transitions are
queued under the lock and published (pybreaker, listeners, log) outside it,
in order, by whichever thread gets there first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import inspect
import logging
import os
import random
import struct
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker

from . import _shared
from ._classify import is_failure, is_misconfiguration
from ._config import BreakerConfig
from ._counter import Counter
from ._errors import BreakerOpenError
from ._events import emit
from ._ledger import FALLBACK_WARN_EVERY, FallbackLedger
from ._probe import PingClient, Probe
from ._publish import Listener, Publisher, add_global_listener, remove_global_listener
from ._redact import describe_error, redact
from ._shared import Record
from ._state import State, StateChange, Stats
from ._window import Window

__all__ = [
    "TRIAL_WAIT_S",
    "Breaker",
    "Listener",
    "Totals",
    "add_global_listener",
    "remove_global_listener",
]

T = TypeVar("T")

_ALL: weakref.WeakSet[Breaker] = weakref.WeakSet()
# ``with breaker:`` blocks open in this thread / task: a linked stack of
# (breaker, ticket, started, the blocks below), or None.
_Block = tuple[Any, int, float, Any]
_BLOCKS: contextvars.ContextVar[_Block | None] = contextvars.ContextVar(
    "redis_breaker_blocks", default=None
)


_THREAD = threading.local()
_running_loop = asyncio._get_running_loop
_get_ident = threading.get_ident

# A call through a breaker can run inside another call through the same breaker:
# a function under ``@guard("default")`` that reads the cache or uses a guarded
# client of that breaker. The inner call counts a Redis failure as it happens;
# the outer one must not count it again when it propagates (the threshold would
# be halved), nor erase it by succeeding when the function caught it and went on
# (the breaker would never trip on consecutive failures). An error a breaker
# counted carries that breaker in this attribute.
_COUNTED_BY = "_redis_breaker_counted_by"


def _counted_by(exc: BaseException | None, breaker: Breaker) -> bool:
    """Whether ``breaker`` counted ``exc`` already, or an error it wraps (``raise ... from``)."""
    for _ in range(8):
        if exc is None:
            return False
        marks = getattr(exc, _COUNTED_BY, None)
        if marks is not None and breaker in marks:  # Breaker compares by identity
            return True
        exc = exc.__cause__
    return False


def _pop_thread_block(blocks: list[tuple[Any, int, float]] | None,
                      breaker: Breaker) -> tuple[int, float] | None:
    for i in range(len(blocks or ()) - 1, -1, -1):
        assert blocks is not None
        if blocks[i][0] is breaker:
            _, ticket, started = blocks.pop(i)
            return ticket, started
    return None


def _pop_block(breaker: Breaker) -> tuple[int, float] | None:
    """Remove ``breaker``'s innermost block when it is not on top (blocks exited out of order)."""
    above: list[_Block] = []
    node = _BLOCKS.get()
    while node is not None and node[0] is not breaker:
        above.append(node)
        node = node[3]
    if node is None:
        return None
    rest = node[3]
    for item in reversed(above):
        rest = (item[0], item[1], item[2], rest)
    _BLOCKS.set(rest)
    return node[1], node[2]
#: How often recovery work looks again for a half-open trial slot taken by another caller.
TRIAL_WAIT_S = 0.02
_CLOSED, _OPEN, _DISABLED, _FORCED_OPEN = State.CLOSED, State.OPEN, State.DISABLED, State.FORCED_OPEN
_HALF_OPEN = State.HALF_OPEN
_PASSING = (State.CLOSED, State.DISABLED)
#: State codes of the shared record.
_CODES = (State.CLOSED, State.OPEN, State.HALF_OPEN, State.FORCED_OPEN, State.DISABLED)
# Keyed by id(): an Enum member's hash runs Python code (it is on every locked path).
_CODE = {id(state): code for code, state in enumerate(_CODES)}
#: How often a process that does not hold the probe lease looks at the shared record.
FOLLOW_EVERY_S = 0.1
#: The probe lease outlives its holder by this much (plus PROBE_TIMEOUT): another
#: process takes the probe over within a second of its holder's death.
LEASE_S = 0.75
#: A half-open trial permit held this long (its process may have died) is given back.
TRIAL_GRACE_S = 5.0
_NAN = float("nan")
_NO_KWARGS: Mapping[str, Any] = {}
_PID_NS = _shared.pid_namespace()
_flock, _LOCK_EX, _LOCK_UN = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_UN
_CONSEC_BITS, _CONSEC_MAX = _shared.CONSEC_BITS, _shared.CONSEC_MAX
# The record's fields every locked section reads and writes, in two runs of slots.
_INTS = struct.Struct("=6q")  # GEN, STATE, CONSEC, TRIALS, TRIAL_OK, STEP
_INTS_AT = _shared.GEN * 8
_FLOATS = struct.Struct("=5d")  # SINCE, OPEN_UNTIL, NEXT_TRIAL_AT, LEFT_CLOSED_AT, CLOSED_AT
_FLOATS_AT = _shared.SINCE * 8
#: How often a breaker makes sure its state file is still the one at its path.
REPLACED_CHECK_EVERY_S = 5.0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_DESCRIBED: dict[tuple[type[BaseException], tuple[Any, ...]], str] = {}


def _describe(exc: BaseException) -> str:
    """``describe_error`` with a small cache: an outage repeats the same few errors."""
    try:
        key = (type(exc), exc.args)
        text = _DESCRIBED.get(key)
    except TypeError:  # unhashable arguments
        return describe_error(exc)
    if text is None:
        text = describe_error(exc)
        if len(_DESCRIBED) >= 256:
            _DESCRIBED.clear()
        _DESCRIBED[key] = text
    return text


class _Guard:
    """The breaker's lock: its thread lock and, when shared, the state file's ``flock``.

    Entering loads the shared record into the breaker's attributes; leaving
    writes them back, the hot word last, releases the locks and delivers the
    transitions queued meanwhile (the breaker's own, or another process's it
    caught up with), so no caller of the lock publishes by itself.
    """

    __slots__ = ("_breaker", "_tlock")

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker
        self._tlock = threading.Lock()

    def __enter__(self) -> None:
        self._tlock.acquire()
        b = self._breaker
        record = b._record
        if record.shared:
            try:
                _flock(record.fd, _LOCK_EX)
            except OSError as exc:
                b._detach(f"cannot lock the state file: {exc.strerror or exc}")
                return
            try:
                b._load()
            except BaseException:
                record.unlock()
                self._tlock.release()
                raise

    def __exit__(self, *exc_info: object) -> None:
        b = self._breaker
        record = b._record
        try:
            b._store()
        finally:
            if record.fd >= 0:
                # Not contextlib.suppress: this runs at every release of the lock.
                try:  # noqa: SIM105
                    _flock(record.fd, _LOCK_UN)
                except OSError:
                    pass
            self._tlock.release()
        if b._replaced:
            b._replaced = False
            b._attach()
        if b._events.pending:
            # A transition made here, or another process's one this section caught up with.
            b._publish()


@dataclass(frozen=True, slots=True)
class Totals:
    """Monotonic counters of one breaker (``Breaker.totals()``)."""

    successes: int
    failures: int
    rejected: int
    #: Calls served by a fallback, per integration.
    fallbacks: dict[str, int]
    #: Transitions, per (from_state, to_state).
    transitions: dict[tuple[str, str], int]


class SlowCallError(Exception):
    """Stands for a call that succeeded but took longer than the slow-call threshold."""


class Breaker:
    """One circuit breaker, usually one per Redis endpoint and shared by name.

    Tickets: ``_admit`` returns ``generation * 2`` for a normal call and
    ``generation * 2 + 1`` for a half-open trial. The generation changes on
    every transition, so an outcome that arrives after the breaker moved on
    (a slow call admitted while closed that fails once it is already open)
    changes nothing.
    """

    def __init__(
        self,
        name: str = "default",
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        rng: Callable[[], float] | None = None,
        probe: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self._config = config or BreakerConfig()
        self._slow_threshold = self._config.slow_call_threshold
        self._clock = clock
        self._rng = rng
        self._probe_fn = probe
        self._adopted_url: str | None = None
        self._events = Publisher(name)
        self._state = State.CLOSED
        self._generation = 0
        self._since = self._now()
        self._consecutive = 0
        self._window = Window(self._config.window)
        self._trials = 0
        self._trial_successes = 0
        self._trial_started_at = 0.0
        self._next_trial_at = 0.0
        self._next_ping_at = 0.0
        self._open_until = 0.0
        self._backoff_step = 0
        self._left_closed_at: float | None = None
        self._closed_at: float | None = None
        self._detached_warned = False
        self._replaced = False
        self._replaced_check_at = 0.0
        #: The generation a section of the lock loaded from the hot word alone (see _load).
        self._quick_generation = -1
        self._record: Record = _shared.local_record(self._since)
        # Stepped without a lock on the hot paths; read under the lock.
        self._rejected = Counter()
        #: Successes the window does not hold (trials, outcomes of an older generation).
        self._successes = Counter()
        self._failures_total = 0
        self._ledger = FallbackLedger()
        self._transitions: dict[tuple[str, str], int] = {}
        self._last_error: str | None = None
        self._last_change: StateChange | None = None
        self._misconfig_logged_at = float("-inf")
        # When this process last counted a failure, and in which thread (see _on_success).
        self._failed_at = float("-inf")
        self._failed_in = 0
        self._init_runtime()
        self._attach()
        _ALL.add(self)

    def _init_runtime(self) -> None:
        """Locks, queues and threads: everything that must be fresh after ``fork``."""
        self._lock = _Guard(self)
        self._events.init_runtime()
        self._probe: Probe | None = None
        #: The probe's PING client (a parent's, inherited across fork, is not used).
        self._ping_client: PingClient | None = None
        #: True while a probe thread is running: rejections then need no lock.
        self._probe_running = False
        # A generator of its own, seeded afresh in every process (a forked child must
        # not draw its parent's jitter), never the random module's shared one.
        generator = random.Random()
        self._random = self._rng or generator.random
        #: Who holds the probe lease in the shared record (this object, this process).
        self._token = generator.getrandbits(62) | 1
        if self._record.shared and not self._record.reopen():
            self._detach("the state file was removed or replaced")
        self._sync_hot()

    # ------------------------------------------------------------ the record
    def _attach(self) -> None:
        """Use the host-wide record for this name and URL (or one in memory).

        The new record is opened with no lock held, and swapped in under the
        thread lock only: holding the old record's ``flock`` while taking the new
        one's would deadlock when both are the same file.
        """
        config = self._config
        if config.host_shared and self._clock is None:
            record = _shared.attach(self.name, self.url, config.state_dir, self._now())
        else:
            record = _shared.local_record(self._now())
        tlock = self._lock._tlock
        with tlock:
            old = self._record
            self._record = record
            if record.shared:
                try:
                    record.lock()
                except OSError as exc:
                    self._detach(f"cannot lock the state file: {exc.strerror or exc}")
                else:
                    try:
                        if (old is not record and self._state not in _PASSING
                                and record.ints[_shared.STATE] == _CODE[id(State.CLOSED)]):
                            # The same breaker under the key of the URL it just adopted:
                            # a state set before (forced open, or open) carries over.
                            self._generation = record.ints[_shared.GEN] + 1
                            self._carry_over(record)
                        else:
                            self._load(whole=True)
                        self._store()
                    finally:
                        record.unlock()
            else:
                self._store()
        if old.shared and old is not record:
            old.close()
        if self._events.pending:
            self._publish()

    def _carry_over(self, record: Record) -> None:
        """Write this breaker's last transition into ``record`` (its lock held)."""
        change = self._last_change
        if change is None:
            return
        ints, floats = record.ints, record.floats
        ints[_shared.LAST_FROM] = _CODE[id(change.from_state)]
        ints[_shared.LAST_TO] = _CODE[id(change.to_state)]
        ints[_shared.LAST_FAILURES] = change.failures
        ints[_shared.LAST_FALLBACKS] = change.fallback_calls
        floats[_shared.LAST_AT] = change.at
        floats[_shared.LAST_OPEN_FOR] = _NAN if change.open_for_s is None else change.open_for_s
        record.set_text(_shared.REASON_TEXT, _shared.REASON_LEN, change.reason)
        record.set_text(_shared.ERROR_TEXT, _shared.ERR_LEN, self._last_error)

    def _detach(self, why: str) -> None:
        """Stop sharing (the state file became unusable); keep the current state. Lock held."""
        old = self._record
        self._record = _shared.local_record(self._since)
        # Unlock before closing: the mapping holds a descriptor of its own on the
        # same file description, which would keep the lock held.
        with contextlib.suppress(OSError):
            old.unlock()
        with contextlib.suppress(OSError, BufferError, ValueError):
            old.release()
        old.close()
        if not self._detached_warned:
            self._detached_warned = True
            emit(logging.WARNING, "host_state_unavailable", breaker=self.name, error=why,
                 hint="This process keeps the breaker's state to itself from now on.")

    @property
    def host_shared(self) -> bool:
        """True while the state is shared with the host's other processes."""
        return self._record.shared

    @property
    def state_file(self) -> str | None:
        """The host-wide state file, or None when the state lives in this process."""
        return self._record.path if self._record.shared else None

    def _sync_hot(self, publish: bool = False) -> None:
        """Derive what the lock-free paths compare with (lock held, or no other thread).

        The hot word goes to the record when it is this process's own, or when
        ``publish`` (``_store``, the shared record's lock held, its other slots
        written already: the hot word last).
        """
        generation, consecutive = self._generation, self._consecutive
        word = (generation << _CONSEC_BITS) | (
            consecutive if consecutive < _CONSEC_MAX else _CONSEC_MAX)
        self._seen_word = word
        state = self._state
        if state is _CLOSED or state is _DISABLED:
            self._pass_word = generation << _CONSEC_BITS
            self._pass_ticket = generation << 1
        else:
            self._pass_word = -1
            self._pass_ticket = -2
        record = self._record
        self._hot = hot = record.hot
        if publish or not record.shared:
            hot[0] = word

    def _load(self, whole: bool = False) -> None:
        """Read the shared record into the attributes (lock held).

        A transition another process made shows up as a newer generation: this
        process's listeners hear of it (a ``remote`` change, logged by the process
        that made it), and its local bookkeeping follows.

        Closed (or disabled) with no transition since this process last looked,
        only the consecutive failures can have changed (the trial and backoff
        fields change in half-open and open, or with a transition): the section
        reads the hot word, and the state's code to catch a stray writer's damage
        as the whole read does, and writes back only the count and the hot word
        (``_store``), unless it makes a transition itself. ``whole``: read
        everything (a record just attached).
        """
        record = self._record
        word = record.hot[0]
        state = self._state
        if (not whole and word >> _CONSEC_BITS == self._generation
                and (state is _CLOSED or state is _DISABLED)
                and word & _CONSEC_MAX != _CONSEC_MAX
                and record.ints[_shared.STATE] == _CODE[id(state)]):
            self._consecutive = word & _CONSEC_MAX
            self._quick_generation = self._generation
            self._check_replaced(record)
            return
        self._quick_generation = -1
        buffer = record.buffer
        generation, code, consecutive, trials, trial_ok, step = _INTS.unpack_from(buffer, _INTS_AT)
        if not 0 <= code < len(_CODES) or trials < 0 or consecutive < 0:
            self._detach(record.problem() or "corrupt state file")
            return
        (self._since, self._open_until, self._next_trial_at, left, closed,
         ) = _FLOATS.unpack_from(buffer, _FLOATS_AT)
        self._trial_started_at = record.floats[_shared.TRIAL_STARTED_AT]
        self._consecutive = consecutive
        self._trials = trials
        self._trial_successes = trial_ok
        self._backoff_step = step
        self._left_closed_at = None if left != left else left
        self._closed_at = None if closed != closed else closed
        self._check_replaced(record)
        state = _CODES[code]
        previous = self._state
        self._state = state
        if generation == self._generation:
            return
        self._generation = generation
        if state is previous:
            if state in _PASSING:
                self._window.clear()
            return
        ints, floats = record.ints, record.floats
        open_for = floats[_shared.LAST_OPEN_FOR]
        change = StateChange(
            breaker=self.name,
            from_state=previous,
            to_state=state,
            reason=record.text(_shared.REASON_TEXT, _shared.REASON_LEN) or "",
            at=floats[_shared.LAST_AT],
            failures=ints[_shared.LAST_FAILURES],
            last_error=record.text(_shared.ERROR_TEXT, _shared.ERR_LEN),
            open_for_s=None if open_for != open_for else open_for,
            fallback_calls=self._ledger.current_total(),
            remote=True,
        )
        self._local_effects(previous, state, change)

    def _check_replaced(self, record: Record) -> None:
        """Whether the state file was removed or replaced, looked at once a second (lock held)."""
        now = time.monotonic()
        if now >= self._replaced_check_at:
            # Rare (the window's buckets send a success here once a second at most).
            self._replaced_check_at = now + REPLACED_CHECK_EVERY_S
            self._replaced = record.replaced()

    def _store(self) -> None:
        """Write the attributes back to the shared record, the hot word last (lock held)."""
        record = self._record
        if record.shared:
            quick, self._quick_generation = self._quick_generation == self._generation, -1
            if quick:
                # Loaded from the hot word and no transition since (see _load).
                record.ints[_shared.CONSEC] = self._consecutive
                self._sync_hot(publish=True)
                return
            buffer = record.buffer
            _INTS.pack_into(buffer, _INTS_AT, self._generation, _CODE[id(self._state)],
                            self._consecutive, self._trials, self._trial_successes,
                            self._backoff_step)
            left, closed = self._left_closed_at, self._closed_at
            _FLOATS.pack_into(buffer, _FLOATS_AT, self._since, self._open_until,
                              self._next_trial_at, _NAN if left is None else left,
                              _NAN if closed is None else closed)
            record.floats[_shared.TRIAL_STARTED_AT] = self._trial_started_at
        self._sync_hot(publish=True)  # the hot word last

    # ----------------------------------------------------------------- config
    @property
    def config(self) -> BreakerConfig:
        return self._config

    def configure(self, config: BreakerConfig) -> None:
        """Replace the configuration, keeping the current state."""
        old = self._config
        with self._lock:
            if config.window != self._config.window:
                window = Window(config.window)
                window.retired = self._window.successes()
                self._window = window
            self._config = config
            self._slow_threshold = config.slow_call_threshold
        if (config.host_shared, config.state_dir, config.url) != (
                old.host_shared, old.state_dir, old.url) or (
                config.host_shared != self._record.shared and self._clock is None):
            self._attach()
        self._wake_probe()

    @property
    def url(self) -> str | None:
        """The URL the probe PINGs: the configured one, else one an integration adopted."""
        return self._config.url or self._adopted_url

    def adopt_url(self, url: str | None) -> None:
        """Use ``url`` for the probe when the configuration names none.

        The host-wide state is keyed by name and URL: a breaker that adopts its
        URL moves to the state shared by the processes using that Redis.
        """
        if url and not self._adopted_url:
            self._adopted_url = url
            if not self._config.url and self._config.host_shared and self._clock is None:
                self._attach()

    def set_probe(self, probe: Callable[[], object] | None) -> None:
        """Use ``probe()`` (raises when Redis is down) instead of a PING of ``url``."""
        self._probe_fn = probe

    def add_listener(self, listener: Listener | pybreaker.CircuitBreakerListener) -> None:
        """Call ``listener(StateChange)`` on every transition; pybreaker listeners work too."""
        self._events.add_listener(listener)

    def remove_listener(self, listener: Listener | pybreaker.CircuitBreakerListener) -> None:
        self._events.remove_listener(listener)

    @property
    def pybreaker(self) -> pybreaker.CircuitBreaker:
        """The ``pybreaker.CircuitBreaker`` this engine drives (state holder, event bus)."""
        return self._events.pybreaker

    # ------------------------------------------------------------------ state
    def _now(self) -> float:
        clock = self._clock
        return clock() if clock is not None else time.monotonic()

    @property
    def state(self) -> State:
        """The state, as the host sees it.

        When another process changed the shared record since this one last
        looked, it catches up first, so this process's listeners hear of the
        transition before anyone acts on the new state.
        """
        if self._hot[0] != self._seen_word:
            self._catch_up()
        return self._state

    def _catch_up(self) -> None:
        with self._lock:
            pass  # entering loads the shared record; leaving delivers what it caught up with

    @property
    def last_change(self) -> StateChange | None:
        """The most recent transition (on the host), or None if the breaker never left closed."""
        if not self._record.shared:
            return self._last_change
        with self._lock:
            return self._recorded_change()

    def _recorded_change(self) -> StateChange | None:
        record = self._record
        if not record.shared:
            return self._last_change
        ints, floats = record.ints, record.floats
        if not 0 <= ints[_shared.LAST_TO] < len(_CODES) or not (
                0 <= ints[_shared.LAST_FROM] < len(_CODES)):
            return None
        open_for = floats[_shared.LAST_OPEN_FOR]
        mine = self._last_change
        if (mine is not None and mine.at == floats[_shared.LAST_AT]
                and mine.to_state is _CODES[ints[_shared.LAST_TO]]
                and mine.from_state is _CODES[ints[_shared.LAST_FROM]]):
            return mine
        return StateChange(
            breaker=self.name,
            from_state=_CODES[ints[_shared.LAST_FROM]],
            to_state=_CODES[ints[_shared.LAST_TO]],
            reason=record.text(_shared.REASON_TEXT, _shared.REASON_LEN) or "",
            at=floats[_shared.LAST_AT],
            failures=ints[_shared.LAST_FAILURES],
            last_error=record.text(_shared.ERROR_TEXT, _shared.ERR_LEN),
            open_for_s=None if open_for != open_for else open_for,
            fallback_calls=ints[_shared.LAST_FALLBACKS],
            remote=True,
        )

    @property
    def is_open(self) -> bool:
        """True while calls skip Redis (open or forced open)."""
        return self.state.rejects

    def force_open(self, reason: str = "forced open") -> None:
        """Reject every call until ``reset()``; no probe runs."""
        self._manual(State.FORCED_OPEN, reason)

    def disable(self, reason: str = "disabled") -> None:
        """Let every call through and never trip; outcomes are still counted."""
        self._manual(State.DISABLED, reason)

    def reset(self, reason: str = "reset") -> None:
        """Back to closed with every counter cleared (for every process of the host)."""
        self._manual(State.CLOSED, reason)

    def _manual(self, to: State, reason: str) -> None:
        with self._lock:
            now = self._now()
            self._transition(to, reason, now)
            if to is State.CLOSED:
                self._set_error(None)
                self._backoff_step = 0
                self._closed_at = None
                self._trials = 0

    def _error(self) -> str | None:
        """The last counted failure's description (lock held)."""
        record = self._record
        if record.shared:
            return record.text(_shared.ERROR_TEXT, _shared.ERR_LEN)
        return self._last_error

    def _set_error(self, text: str | None) -> None:
        record = self._record
        if record.shared and (text is not self._last_error or record.ints[_shared.ERR_LEN] < 0):
            record.set_text(_shared.ERROR_TEXT, _shared.ERR_LEN, text)
        self._last_error = text

    def stats(self) -> Stats:
        with self._lock:
            now = self._now()
            calls, failures = self._window.totals(now)
            retry_in = max(0.0, self._open_until - now) if self._state is State.OPEN else None
            record = self._record
            probe_pid: int | None = None
            if record.shared:
                if record.floats[_shared.LEASE_UNTIL] > now and _alive(
                        record.ints[_shared.LEASE_PID]):
                    probe_pid = record.ints[_shared.LEASE_PID]
            elif self._probe_running:
                probe_pid = os.getpid()
            return Stats(
                name=self.name,
                state=self._state,
                since=self._since,
                in_state_for_s=max(0.0, now - self._since),
                consecutive_failures=self._consecutive,
                window_calls=calls,
                window_failures=failures,
                rejected=self._rejected.value,
                fallback_calls=self._ledger.current_total(),
                last_error=self._error(),
                retry_in_s=retry_in,
                url=redact(self.url) if self.url else None,
                host_shared=record.shared,
                probe_pid=probe_pid,
            )

    # -------------------------------------------------------------- admission
    def _admit(self) -> int:
        """Return a ticket, or raise ``BreakerOpenError`` without touching Redis."""
        ticket = self._try_admit()
        if ticket < 0:
            raise self._rejection()
        return ticket

    def _try_admit(self) -> int:
        """A ticket, or -1 when the call is rejected.

        Closed: one read of the hot word, no lock. Open, with nothing changed
        since this process last looked: no lock either.
        """
        word = self._hot[0]
        if word == self._pass_word:
            return self._pass_ticket
        if word == self._seen_word:
            state = self._state
            if state is _CLOSED or state is _DISABLED:
                return self._generation << 1
            if state is _FORCED_OPEN or (state is _OPEN and (
                    self._probe_running or self._now() < self._open_until)):
                self._rejected.step()
                return -1
        return self._admit_slow()

    def _admit_slow(self) -> int:
        with self._lock:
            state = self._state
            if state is State.CLOSED or state is State.DISABLED:
                ticket = self._generation << 1
            else:
                ticket = -1
                if state is State.OPEN:
                    now = self._now()
                    if self._probing():
                        self._start_probe()
                    elif now >= self._open_until:
                        self._transition(State.HALF_OPEN, "open interval elapsed", now)
                        state = State.HALF_OPEN
                if state is State.HALF_OPEN and self._trials < self._config.half_open_max_calls:
                    self._trials += 1
                    self._trial_started_at = self._now()
                    ticket = (self._generation << 1) | 1
            if ticket < 0:
                self._rejected.step()
        return ticket

    def _rejection(self) -> BreakerOpenError:
        state = self._state
        retry_in: float | None = None
        if state is State.OPEN:
            retry_in = max(0.0, self._open_until - self._now())
        elif state is State.HALF_OPEN:
            retry_in = 0.0
        return BreakerOpenError(self.name, retry_in, state.value)

    # --------------------------------------------------------------- outcomes
    def _on_success(self, ticket: int, started: float) -> None:
        threshold = self._slow_threshold
        if threshold is None:
            window = self._window
            if ticket == self._pass_ticket and self._hot[0] == self._pass_word and (
                    started < window.bucket_end):
                # A normal call while closed, in the window's live bucket: record it
                # without the lock (each step is atomic), as ``call`` does inline.
                window.current.step()
                return
        else:
            now = self._now()
            if now - started >= threshold:
                self._on_failure(ticket, SlowCallError(
                    f"call took {now - started:.3f}s (slow-call threshold {threshold:g}s)"
                ))
                return
        with self._lock:
            if ticket >> 1 != self._generation:
                self._successes.step()  # not for the window: the breaker moved on
                return
            if ticket & 1:
                self._successes.step()
                self._trials = max(0, self._trials - 1)
                self._trial_successes += 1
                if self._trial_successes >= self._config.success_threshold:
                    self._transition(
                        State.CLOSED, f"{self._trial_successes} trial calls succeeded", self._now()
                    )
            else:
                if started < self._failed_at and self._failed_in == _get_ident():
                    # A failure was counted in this thread while this call ran: a call
                    # through this breaker inside it failed and this one caught the
                    # error. The inner call spoke for Redis; this success does not
                    # erase its failure.
                    return
                self._consecutive = 0
                self._window.success(started)

    def _on_error(self, ticket: int, started: float, exc: BaseException) -> bool:
        """Record ``exc``; return True when it counts as a failure."""
        if not self.counts(exc):
            if ticket & 1:
                self._end_trial(ticket)
            return False
        # Inline for a fresh error (the usual case): no mark, no cause.
        if ((marks := getattr(exc, _COUNTED_BY, None)) is not None and self in marks) or (
                exc.__cause__ is not None and _counted_by(exc.__cause__, self)):
            # Counted already, by a call through this breaker inside this one.
            if ticket & 1:
                self._end_trial(ticket)
            return True
        self._on_failure(ticket, exc)
        return True

    def _end_trial(self, ticket: int) -> None:
        """Give back a trial permit whose call ended with no outcome of its own."""
        with self._lock:
            if ticket >> 1 == self._generation:
                self._trials = max(0, self._trials - 1)

    def _on_failure(self, ticket: int, exc: BaseException) -> None:
        error = _describe(exc)
        misconfigured = is_misconfiguration(exc)
        try:  # noqa: SIM105 - contextlib.suppress costs a context manager per failure
            setattr(exc, _COUNTED_BY, (*getattr(exc, _COUNTED_BY, ()), self))
        except (AttributeError, TypeError):  # pragma: no cover - an exception without a __dict__
            pass
        loud = False
        with self._lock:
            self._set_error(error)
            self._failures_total += 1
            now = self._now()
            self._failed_at = now
            self._failed_in = _get_ident()
            if misconfigured and now - self._misconfig_logged_at >= FALLBACK_WARN_EVERY:
                self._misconfig_logged_at = now
                loud = True
            if ticket >> 1 == self._generation:
                state = self._state
                if ticket & 1:
                    self._trials = max(0, self._trials - 1)
                    self._transition(State.OPEN, f"trial call failed: {error}", now)
                elif state is State.CLOSED or state is State.DISABLED:
                    self._consecutive += 1
                    self._window.failure(now)
                    if state is State.CLOSED:
                        reason = self._trip_reason(now)
                        if reason:
                            if misconfigured:
                                reason += " (authentication failed: a configuration error)"
                            self._transition(State.OPEN, reason, now)
        if loud:
            # Not an outage Redis will recover from by itself: say so, at most once a minute.
            emit(logging.ERROR, "redis_misconfigured", breaker=self.name, error=error,
                 hint="Redis refused the credentials: check the password (or ACL user) in "
                      "the URL or client options. Fallbacks serve until it is fixed.")

    def _trip_reason(self, now: float) -> str | None:
        config = self._config
        if self._consecutive >= config.failure_threshold:
            return f"{self._consecutive} consecutive failures"
        if config.failure_rate is not None:
            calls, failures = self._window.totals(now)
            if calls >= config.minimum_calls and failures / calls >= config.failure_rate:
                return (
                    f"failure rate {failures / calls:.0%} over {config.window:g}s (n={calls})"
                )
        return None

    def _backoff(self, step: int) -> float:
        config = self._config
        delay = min(config.max_reset_timeout, config.reset_timeout * (2 ** min(step, 62)))
        # Jitter spreads the trials of many processes and hosts that tripped together.
        return float(delay * (0.8 + 0.2 * self._random()))

    def _jittered_interval(self) -> float:
        return float(self._config.probe_interval * (0.8 + 0.4 * self._random()))

    # ------------------------------------------------------------ transitions
    def _transition(self, to: State, reason: str, now: float) -> None:
        """Move to ``to``; caller holds the lock. Publishing happens after it is released.

        Backoff: a trip from closed starts at step 0, unless the breaker closed
        less than ``WINDOW`` seconds ago (Redis flapping), and every failed
        half-open adds a step. Each step doubles the time before trial traffic
        is let through again; the probe keeps PINGing at its short interval.
        """
        previous = self._state
        if previous is State.OPEN and to is State.OPEN:
            return
        open_for = None
        if to is State.OPEN:
            if previous is State.HALF_OPEN:
                self._backoff_step += 1
            elif previous is not State.OPEN:
                closed_at = self._closed_at
                recently = (closed_at is not None
                            and now - closed_at < self._config.window)
                self._backoff_step = self._backoff_step + 1 if recently else 0
            self._open_until = now + self._backoff(self._backoff_step)
        if previous in _PASSING and to not in _PASSING:
            self._left_closed_at = now
        if to is State.HALF_OPEN:
            self._trials = 0
            self._trial_successes = 0
            self._next_trial_at = now
        if to in _PASSING:
            if self._left_closed_at is not None:
                open_for = now - self._left_closed_at
            self._left_closed_at = None
            self._consecutive = 0
            self._closed_at = now
        error = self._error()
        change = StateChange(
            breaker=self.name,
            from_state=previous,
            to_state=to,
            reason=reason,
            at=now,
            failures=self._consecutive,
            last_error=error,
            open_for_s=open_for,
            fallback_calls=self._ledger.current_total(),
        )
        self._state = to
        self._since = now
        self._generation += 1
        record = self._record
        if record.shared:
            ints, floats = record.ints, record.floats
            ints[_shared.LAST_FROM] = _CODE[id(previous)]
            ints[_shared.LAST_TO] = _CODE[id(to)]
            ints[_shared.LAST_FAILURES] = change.failures
            ints[_shared.LAST_FALLBACKS] = change.fallback_calls
            floats[_shared.LAST_AT] = now
            floats[_shared.LAST_OPEN_FOR] = _NAN if open_for is None else open_for
            record.set_text(_shared.REASON_TEXT, _shared.REASON_LEN, reason)
        self._local_effects(previous, to, change)

    def _local_effects(self, previous: State, to: State, change: StateChange) -> None:
        """This process's side of a transition, its own or another process's (lock held)."""
        if previous in _PASSING and to not in _PASSING:
            self._ledger.start_outage()
        if to in _PASSING:
            self._window.clear()
        key = (previous.value, to.value)
        self._transitions[key] = self._transitions.get(key, 0) + 1
        self._events.pending.append(change)
        self._last_change = change
        if to in _PASSING and previous not in _PASSING:
            summary = self._ledger.end_outage(change.open_for_s)
            if summary is not None:
                self._events.pending.append(summary)

    def _publish(self) -> None:
        """Deliver queued transitions (pybreaker, log, probe, listeners) outside the lock."""
        self._events.publish(self, self._after_transition)

    def _after_transition(self, change: StateChange) -> None:
        if change.to_state is State.OPEN or change.to_state is State.HALF_OPEN:
            with self._lock:
                self._start_probe()
        self._wake_probe()

    def counts(self, exc: BaseException) -> bool:
        """True when ``exc`` is the kind of error this breaker counts (Redis unavailable)."""
        return is_failure(exc, self._config.counted, self._config.excluded)

    # -------------------------------------------------------------- fallbacks
    def refuse(self, integration: str) -> bool:
        """Refuse a call now if the breaker can without its lock (as ``_try_admit`` would).

        True: the call was counted as refused and as served by ``integration``'s
        fallback, which the caller now serves. False: nothing was counted, and
        the call is admitted as usual (it may be a trial, or the breaker may
        have changed). The entry points with a fallback ask this first: an open
        breaker's refusal is then one call, not an admission and a count. The
        cache's journal asks it too, for a read it would answer with a miss.
        """
        if self._hot[0] == self._seen_word:
            state = self._state
            if state is _FORCED_OPEN or (state is _OPEN and (
                    self._probe_running or self._now() < self._open_until)):
                self._rejected.step()
                # ``note_fallback``'s path while not closed, inline.
                counter = self._ledger._current.get(integration)
                if counter is not None:
                    counter.step()
                else:
                    self.note_fallback(integration)
                return True
        return False

    def note_fallback(self, integration: str, error: BaseException | None = None) -> None:
        """Count one call served by a fallback; warn once per outage per integration."""
        ledger = self._ledger
        if self._state is not _CLOSED:
            # ``ledger.step``, inline: this is every call an outage serves from a fallback.
            counter = ledger._current.get(integration)
            if counter is not None:
                counter.step()
                return
        elif ledger.step_quiet(integration, self._now()):
            # Closed (failures below the threshold): warned less than a minute ago.
            return
        with self._lock:
            warn = self._ledger.count(integration, self._now())
            state = self._state
            last_error = self._error()
        if warn:
            emit(logging.WARNING, "fallback_used", breaker=self.name, integration=integration,
                 state=state.value,
                 last_error=_describe(error) if error is not None else last_error)

    def totals(self) -> Totals:
        """Counters since the breaker was created, for metrics (they never go down)."""
        with self._lock:
            return Totals(
                successes=self._successes.value + self._window.successes(),
                failures=self._failures_total,
                rejected=self._rejected.value,
                fallbacks=self._ledger.totals(),
                transitions=dict(self._transitions),
            )

    # ------------------------------------------------------------------ probe
    # One probe thread per process while the breaker is not closed. With a
    # shared record, the thread that holds the record's lease PINGs Redis and
    # makes the probe's trial calls; the others only follow the record, so their
    # process's listeners hear of every transition without any traffic.
    def _probing(self) -> bool:
        return self._config.probe and (self._probe_fn is not None or self.url is not None)

    def _start_probe(self) -> None:
        """Start (or wake) the probe thread; caller holds the lock."""
        if not self._probing() or self._state not in (State.OPEN, State.HALF_OPEN):
            return
        probe = self._probe
        if self._probe_running and probe is not None and probe.is_alive():
            probe.wake()
            return
        self._probe = Probe(self)
        self._probe_running = True
        self._probe.start()

    def _wake_probe(self) -> None:
        probe = self._probe
        if probe is not None:
            probe.wake()

    def _ping(self) -> None:
        if self._probe_fn is not None:
            self._probe_fn()
            return
        url = self.url
        if url is None:
            raise RuntimeError("no URL to probe")
        client = self._ping_client
        if client is None or client.key != (url, self._config.probe_timeout):
            if client is not None:
                client.close()
            client = self._ping_client = PingClient(url, self._config.probe_timeout)
        client.ping()

    def _lease(self, now: float) -> bool:
        """Hold (take, renew) the host's probe lease; False when another process holds it."""
        record = self._record
        if not record.shared:
            return True
        ints, floats = record.ints, record.floats
        if ints[_shared.LEASE_TOKEN] != self._token:
            # Taken over when it lapsed, or at once when its holder is dead (only
            # knowable in the holder's PID namespace: containers may share STATE_DIR).
            if floats[_shared.LEASE_UNTIL] > now and (
                    ints[_shared.LEASE_NS] != _PID_NS or _alive(ints[_shared.LEASE_PID])):
                return False
            ints[_shared.LEASE_TOKEN] = self._token
            ints[_shared.LEASE_PID] = os.getpid()
            ints[_shared.LEASE_NS] = _PID_NS
            self._next_ping_at = now  # new holder: PING at once
        floats[_shared.LEASE_UNTIL] = now + LEASE_S + self._config.probe_timeout
        return True

    def _release_lease(self) -> None:
        record = self._record
        if record.shared and record.ints[_shared.LEASE_TOKEN] == self._token:
            record.ints[_shared.LEASE_TOKEN] = 0
            record.floats[_shared.LEASE_UNTIL] = 0.0

    def probe_now(self) -> bool:
        """Run one probe step now, as the probe thread would; return True if Redis answered.

        Open: a PING. When Redis answers and the open interval (the backoff) has
        elapsed, the breaker moves to half-open; when it does not, the next PING
        comes after ``PROBE_INTERVAL``, whatever the outage's length. Half-open:
        the PING is a trial call.
        """
        state = self.state
        if state is State.HALF_OPEN:
            ticket = self._try_admit()
            if ticket < 0 or not ticket & 1:
                return False
            started = self._now()
            with self._lock:
                # Space the probe's trials: a few answers in a row, not one burst.
                self._next_trial_at = started + min(self._config.reset_timeout,
                                                    self._config.probe_interval)
            try:
                self._ping()
            except Exception as exc:
                self._on_failure(ticket, exc)
                return False
            self._on_success(ticket, started)
            return True
        if state is not State.OPEN:
            return False
        with self._lock:
            generation = self._generation
        try:
            self._ping()
        except Exception as exc:
            error = _describe(exc)
            with self._lock:
                if self._generation == generation and self._state is State.OPEN:
                    self._set_error(error)
                    self._next_ping_at = self._now() + self._jittered_interval()
            return False
        with self._lock:
            if self._generation == generation and self._state is State.OPEN:
                now = self._now()
                if now >= self._open_until:
                    self._transition(State.HALF_OPEN, "probe ok", now)
                else:
                    # Redis answers, but it failed a trial (or flapped) lately: the
                    # backoff holds trial traffic back until the open interval ends.
                    self._next_ping_at = self._open_until
        return True

    def probe_plan(self) -> float | None:
        """Seconds until the probe should act (0: now), or None when it should stop.

        Called by the probe thread between steps; a None ends the thread and
        lets the next trip start a fresh one. With a shared record, a process
        that does not hold the probe lease follows the record every
        ``FOLLOW_EVERY_S`` (its listeners hear of transitions made elsewhere).
        """
        delay: float | None
        with self._lock:
            state = self._state
            now = self._now()
            if state is State.OPEN or state is State.HALF_OPEN:
                if not self._lease(now):
                    delay = FOLLOW_EVERY_S
                elif state is State.OPEN:
                    delay = max(0.0, self._next_ping_at - now)
                else:
                    if self._trials >= self._config.half_open_max_calls:
                        if (self._record.shared
                                and now - self._trial_started_at > TRIAL_GRACE_S):
                            self._trials = 0  # a permit whose process died
                        # Trials of real traffic are running; look again shortly.
                        self._next_trial_at = max(self._next_trial_at, now + 0.05)
                    delay = max(0.0, self._next_trial_at - now)
                if self._record.shared:
                    delay = min(delay, FOLLOW_EVERY_S)
            else:
                # Decided under the lock, so a trip right after starts a fresh probe.
                self._probe_running = False
                self._release_lease()
                delay = None
        return delay

    def probe_ended(self, probe: Probe) -> None:
        """The probe thread ``probe`` has stopped (called from it as it exits)."""
        with self._lock:
            if self._probe is probe:
                self._probe_running = False
                self._release_lease()

    # ------------------------------------------------------------ call paths
    # Every entry point is admit -> run -> record: ``_try_admit``/``_admit``,
    # then ``_run``/``_arun`` (which record the outcome), and for ``with``
    # blocks ``__enter__``/``__exit__``. Each entry point inlines the closed
    # path (compare the hot word, run, step the window's live bucket): the same
    # few lines in each, on purpose, because a shared helper costs a Python call
    # (60-100 ns, a third of the budget) on every call; everything else goes
    # through ``_admit``, ``_on_success`` and ``_on_error``.
    def _run(self, ticket: int, fn: Callable[..., T], args: tuple[Any, ...],
             kwargs: Mapping[str, Any]) -> T:
        started = self._now()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(ticket, started, exc)
            raise
        self._on_success(ticket, started)
        return result

    async def _arun(self, ticket: int, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                    kwargs: Mapping[str, Any]) -> T:
        started = self._now()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(ticket, started, exc)
            raise
        self._on_success(ticket, started)
        return result

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker; raise ``BreakerOpenError`` when open."""
        hot = self._hot
        if hot[0] != self._pass_word:
            return self._run(self._admit(), fn, args, kwargs)
        # The hot path, inlined: admission is one read of the hot word (shared
        # memory when the state is host-wide), a success one atomic counter step
        # (the window's current bucket), no lock.
        ticket = self._pass_ticket
        clock = self._clock
        started = clock() if clock is not None else time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(ticket, started, exc)
            raise
        window = self._window
        if (self._slow_threshold is None and started < window.bucket_end
                and hot[0] == self._pass_word and ticket == self._pass_ticket):
            window.current.step()
        else:
            self._on_success(ticket, started)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` through the breaker."""
        hot = self._hot
        if hot[0] != self._pass_word:
            return await self._arun(self._admit(), fn, args, kwargs)
        ticket = self._pass_ticket
        clock = self._clock
        started = clock() if clock is not None else time.monotonic()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(ticket, started, exc)
            raise
        window = self._window
        if (self._slow_threshold is None and started < window.bucket_end
                and hot[0] == self._pass_word and ticket == self._pass_ticket):
            window.current.step()
        else:
            self._on_success(ticket, started)
        return result

    def call_with_fallback(
        self,
        fn: Callable[..., T],
        fallback: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        integration: str = "guard",
    ) -> T:
        """Run ``fn``; when rejected or on a counted failure, return ``fallback(*args, **kwargs)``."""
        if kwargs is None:
            kwargs = _NO_KWARGS
        hot = self._hot
        if hot[0] == self._pass_word:
            # The closed hot path, as in ``call``.
            ticket = self._pass_ticket
            clock = self._clock
            started = clock() if clock is not None else time.monotonic()
        else:
            if self.refuse(integration):
                return fallback(*args, **kwargs)
            ticket = self._try_admit()
            if ticket < 0:
                self.note_fallback(integration)
                return fallback(*args, **kwargs)
            started = self._now()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if not self._on_error(ticket, started, exc):
                raise
            self.note_fallback(integration, exc)
            return fallback(*args, **kwargs)
        window = self._window
        if (self._slow_threshold is None and started < window.bucket_end
                and hot[0] == self._pass_word and ticket == self._pass_ticket):
            window.current.step()
        else:
            self._on_success(ticket, started)
        return result

    async def acall_with_fallback(
        self,
        fn: Callable[..., Awaitable[T]],
        fallback: Callable[..., Awaitable[T] | T],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        integration: str = "guard",
    ) -> T:
        """Async form of ``call_with_fallback``; ``fallback`` may be sync or async."""
        if kwargs is None:
            kwargs = _NO_KWARGS
        hot = self._hot
        if hot[0] == self._pass_word:
            ticket = self._pass_ticket
            clock = self._clock
            started = clock() if clock is not None else time.monotonic()
        elif self.refuse(integration):
            ticket = -1  # counted
        else:
            ticket = self._try_admit()
            started = self._now()
            if ticket < 0:
                self.note_fallback(integration)
        if ticket >= 0:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if not self._on_error(ticket, started, exc):
                    raise
                self.note_fallback(integration, exc)
            else:
                window = self._window
                if (self._slow_threshold is None and started < window.bucket_end
                        and hot[0] == self._pass_word and ticket == self._pass_ticket):
                    window.current.step()
                else:
                    self._on_success(ticket, started)
                return result
        fallen = fallback(*args, **kwargs)
        if inspect.isawaitable(fallen):
            fallen = await fallen
        return fallen

    def call_as_trial(self, fn: Callable[..., T], /, *args: Any, deadline: float | None = None,
                      **kwargs: Any) -> T:
        """Like ``call``, but wait for a half-open trial slot instead of being rejected.

        Recovery work (the journal replay, the outbox relay) runs while the
        breaker is half-open, where every trial slot may be taken by another
        caller: it tries again every ``TRIAL_WAIT_S`` until ``deadline``
        (``time.monotonic()``). Raises ``BreakerOpenError`` at once when the
        breaker is open, and once the deadline has passed.
        """
        while True:
            try:
                return self.call(fn, *args, **kwargs)
            except BreakerOpenError:
                if not self._waits_for_trial(deadline):
                    raise
            time.sleep(TRIAL_WAIT_S)

    async def acall_as_trial(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                             deadline: float | None = None, **kwargs: Any) -> T:
        """Async form of ``call_as_trial``."""
        while True:
            try:
                return await self.acall(fn, *args, **kwargs)
            except BreakerOpenError:
                if not self._waits_for_trial(deadline):
                    raise
            await asyncio.sleep(TRIAL_WAIT_S)

    def _waits_for_trial(self, deadline: float | None) -> bool:
        return self._state is State.HALF_OPEN and (deadline is None or time.monotonic() < deadline)

    def __enter__(self) -> Breaker:
        ticket = self._pass_ticket if self._hot[0] == self._pass_word else self._admit()
        clock = self._clock
        block = (self, ticket, clock() if clock is not None else time.monotonic())
        if _running_loop() is None:
            # No event loop in this thread: nothing can interleave with this block
            # but the thread itself, so a per-thread list is enough.
            try:
                _THREAD.blocks.append(block)
            except AttributeError:
                _THREAD.blocks = [block]
        else:
            # Coroutines of this thread can interleave: a stack per task (context).
            _BLOCKS.set((*block, _BLOCKS.get()))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if _running_loop() is None:
            try:
                block = _THREAD.blocks.pop()
            except (AttributeError, IndexError):  # pragma: no cover - __exit__ without __enter__
                return
            owner, ticket, started = block
            if owner is not self:  # blocks of several breakers exited out of order
                blocks = _THREAD.blocks
                blocks.append(block)
                found = _pop_thread_block(blocks, self)
                if found is None:  # pragma: no cover - __exit__ without __enter__
                    return
                ticket, started = found
        else:
            top = _BLOCKS.get()
            if top is not None and top[0] is self:
                _BLOCKS.set(top[3])
                ticket, started = top[1], top[2]
            else:
                found = _pop_block(self)
                if found is None:  # pragma: no cover - __exit__ without __enter__
                    return
                ticket, started = found
        if exc is None:
            window = self._window
            if (ticket == self._pass_ticket and self._slow_threshold is None
                    and started < window.bucket_end and self._hot[0] == self._pass_word):
                window.current.step()
            else:
                self._on_success(ticket, started)
        else:
            self._on_error(ticket, started, exc)

    # Coroutine methods on purpose. Plain methods returning an already-completed
    # future were measured: they save the coroutines on Python 3.10/3.11 (about
    # 0.07x of pybreaker's overhead) but an empty block costs more on 3.12 and
    # 3.13 (about 690 ns against 450), and a future made on a loop of its own
    # breaks gather()/shield() on what ``__aenter__`` returns.
    async def __aenter__(self) -> Breaker:
        # Always a stack per task (context): coroutines of one thread interleave.
        ticket = self._pass_ticket if self._hot[0] == self._pass_word else self._admit()
        clock = self._clock
        _BLOCKS.set((self, ticket, clock() if clock is not None else time.monotonic(),
                     _BLOCKS.get()))
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        top = _BLOCKS.get()
        if top is not None and top[0] is self:
            _BLOCKS.set(top[3])
            ticket, started = top[1], top[2]
        else:
            found = _pop_block(self)
            if found is None:  # pragma: no cover - __aexit__ without __aenter__
                return
            ticket, started = found
        if exc is None:
            window = self._window
            if (ticket == self._pass_ticket and self._slow_threshold is None
                    and started < window.bucket_end and self._hot[0] == self._pass_word):
                window.current.step()
            else:
                self._on_success(ticket, started)
        else:
            self._on_error(ticket, started, exc)

    def __repr__(self) -> str:
        return f"<Breaker {self.name!r} {self._state.value}>"


def guarded_function(fn: Callable[..., T], *, breaker: Breaker | None = None,
                     breakers: Mapping[str, Breaker] | None = None, key: str = "",
                     lookup: Callable[[str], Breaker] | None = None,
                     fallback: Callable[..., T] | None = None,
                     integration: str = "guard",
                     unwrap: type[BaseException] | None = None) -> Callable[..., T]:
    """``fn`` wrapped so that each call goes through a breaker (what ``guard`` returns).

    The breaker is ``breaker``, or ``breakers[key]`` looked up on every call
    (``lookup(key)`` when it is not there). The closed path is inlined here too
    (see *call paths* above): a wrapper that called ``Breaker.call`` would pay
    a second Python call on every call; the rest goes through the breaker's
    own methods, as ``call`` and ``call_with_fallback`` do.

    ``unwrap``: an exception type ``fn`` raises around the real error (its
    ``__cause__``), as django-redis's clients raise ``ConnectionInterrupted``:
    the cause is what the breaker judges and what the caller gets, as the
    wrapping layer ``fn`` stands in for would have raised it.
    """
    monotonic = time.monotonic
    slow_fn = fn if unwrap is None else _raising_cause(fn, unwrap)

    def guarded(*args: Any, **kwargs: Any) -> T:
        b = breaker
        if b is None:
            b = breakers.get(key) if breakers is not None else None
            if b is None:
                b = lookup(key) if lookup is not None else None
                if b is None:  # pragma: no cover - guard() always gives one or the other
                    raise TypeError("guarded_function() needs a breaker or a lookup")
        hot = b._hot
        if hot[0] == b._pass_word:
            ticket = b._pass_ticket
            clock = b._clock
            started = clock() if clock is not None else monotonic()
        elif fallback is None:
            return b._run(b._admit(), slow_fn, args, kwargs)
        elif b.refuse(integration):
            return fallback(*args, **kwargs)
        else:
            ticket = b._try_admit()
            if ticket < 0:
                b.note_fallback(integration)
                return fallback(*args, **kwargs)
            started = b._now()
        try:
            result = fn(*args, **kwargs)
        except BaseException as caught:
            exc = caught
            if unwrap is not None and isinstance(caught, unwrap) and caught.__cause__ is not None:
                exc = caught.__cause__  # what the wrapping layer ``fn`` stands in for raises
            if not b._on_error(ticket, started, exc) or fallback is None:
                if exc is caught:
                    raise
                raise exc  # noqa: B904
            b.note_fallback(integration, exc)
            return fallback(*args, **kwargs)
        window = b._window
        if (b._slow_threshold is None and started < window.bucket_end
                and hot[0] == b._pass_word and ticket == b._pass_ticket):
            window.current.step()
        else:
            b._on_success(ticket, started)
        return result

    return guarded


def _raising_cause(fn: Callable[..., T], unwrap: type[BaseException]) -> Callable[..., T]:
    """``fn``, raising the ``__cause__`` of an ``unwrap`` error instead of the error itself."""

    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except unwrap as exc:
            if exc.__cause__ is None:
                raise
            raise exc.__cause__  # noqa: B904 - what the wrapping layer raises

    return call


def aguarded_function(fn: Callable[..., Awaitable[T]], *, breaker: Breaker | None = None,
                      breakers: Mapping[str, Breaker] | None = None, key: str = "",
                      lookup: Callable[[str], Breaker] | None = None,
                      fallback: Callable[..., Awaitable[T] | T] | None = None,
                      integration: str = "guard") -> Callable[..., Awaitable[T]]:
    """The coroutine-function form of ``guarded_function``; ``fallback`` may be sync or async."""
    monotonic = time.monotonic

    async def guarded(*args: Any, **kwargs: Any) -> T:
        b = breaker
        if b is None:
            b = breakers.get(key) if breakers is not None else None
            if b is None:
                b = lookup(key) if lookup is not None else None
                if b is None:  # pragma: no cover - guard() always gives one or the other
                    raise TypeError("aguarded_function() needs a breaker or a lookup")
        hot = b._hot
        if hot[0] == b._pass_word:
            ticket = b._pass_ticket
            clock = b._clock
            started = clock() if clock is not None else monotonic()
        elif fallback is None:
            return await b._arun(b._admit(), fn, args, kwargs)
        elif b.refuse(integration):
            ticket = -1  # counted
        else:
            ticket = b._try_admit()
            started = b._now()
            if ticket < 0:
                b.note_fallback(integration)
        if ticket >= 0:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if not b._on_error(ticket, started, exc) or fallback is None:
                    raise
                b.note_fallback(integration, exc)
            else:
                window = b._window
                if (b._slow_threshold is None and started < window.bucket_end
                        and hot[0] == b._pass_word and ticket == b._pass_ticket):
                    window.current.step()
                else:
                    b._on_success(ticket, started)
                return result
        assert fallback is not None
        fallen = fallback(*args, **kwargs)
        if inspect.isawaitable(fallen):
            fallen = await fallen
        return fallen

    return guarded


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _after_fork_in_child() -> None:
    for breaker in list(_ALL):
        breaker._init_runtime()


def all_instances() -> list[Breaker]:
    return list(_ALL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
