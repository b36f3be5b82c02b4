"""The breaker engine.

The lock covers counter updates and transitions only, never the guarded call.
The closed-state admission check is a plain attribute read. Transitions are
queued under the lock and published (pybreaker, listeners, log) outside it,
in order, by whichever thread gets there first.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker

from ._classify import is_failure, is_misconfiguration
from ._config import BreakerConfig
from ._counter import Counter
from ._errors import BreakerOpenError
from ._events import emit
from ._ledger import FALLBACK_WARN_EVERY, FallbackLedger
from ._probe import Probe, ping_url
from ._publish import Listener, Publisher, add_global_listener, remove_global_listener
from ._redact import describe_error, redact
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
# Stack of (breaker, ticket, started) for ``with breaker:`` blocks, per thread / task.
_BLOCKS: contextvars.ContextVar[tuple[tuple[Breaker, int, float], ...]] = contextvars.ContextVar(
    "redis_breaker_blocks", default=()
)
#: How often recovery work looks again for a half-open trial slot taken by another caller.
TRIAL_WAIT_S = 0.02
_CLOSED, _OPEN, _DISABLED, _FORCED_OPEN = State.CLOSED, State.OPEN, State.DISABLED, State.FORCED_OPEN


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
        self._random = rng or random.random
        self._probe_fn = probe
        self._adopted_url: str | None = None
        self._events = Publisher(name)
        self._init_runtime()
        self._state = State.CLOSED
        self._generation = 0
        self._since = self._now()
        self._consecutive = 0
        self._window = Window(self._config.window)
        self._trials = 0
        self._trial_successes = 0
        self._next_trial_at = 0.0
        self._open_until = 0.0
        self._backoff_step = 0
        self._left_closed_at: float | None = None
        # Stepped without a lock on the hot paths; read under the lock.
        self._rejected = Counter()
        self._successes = Counter()
        self._failures_total = 0
        self._ledger = FallbackLedger()
        self._transitions: dict[tuple[str, str], int] = {}
        self._last_error: str | None = None
        self._last_change: StateChange | None = None
        self._misconfig_logged_at = float("-inf")
        _ALL.add(self)

    def _init_runtime(self) -> None:
        """Locks, queues and threads: everything that must be fresh after ``fork``."""
        self._lock = threading.Lock()
        self._events.init_runtime()
        self._probe: Probe | None = None
        #: True while a probe thread is running: rejections then need no lock.
        self._probe_running = False

    # ----------------------------------------------------------------- config
    @property
    def config(self) -> BreakerConfig:
        return self._config

    def configure(self, config: BreakerConfig) -> None:
        """Replace the configuration, keeping the current state."""
        with self._lock:
            if config.window != self._config.window:
                self._window = Window(config.window)
            self._config = config
            self._slow_threshold = config.slow_call_threshold
        self._wake_probe()

    @property
    def url(self) -> str | None:
        """The URL the probe PINGs: the configured one, else one an integration adopted."""
        return self._config.url or self._adopted_url

    def adopt_url(self, url: str | None) -> None:
        """Use ``url`` for the probe when the configuration names none."""
        if url and not self._adopted_url:
            self._adopted_url = url

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
        return self._state

    @property
    def last_change(self) -> StateChange | None:
        """The most recent transition, or None if the breaker never left closed."""
        return self._last_change

    @property
    def is_open(self) -> bool:
        """True while calls skip Redis (open or forced open)."""
        return self._state.rejects

    def force_open(self, reason: str = "forced open") -> None:
        """Reject every call until ``reset()``; no probe runs."""
        self._manual(State.FORCED_OPEN, reason)

    def disable(self, reason: str = "disabled") -> None:
        """Let every call through and never trip; outcomes are still counted."""
        self._manual(State.DISABLED, reason)

    def reset(self, reason: str = "reset") -> None:
        """Back to closed with every counter cleared."""
        self._manual(State.CLOSED, reason)

    def _manual(self, to: State, reason: str) -> None:
        with self._lock:
            now = self._now()
            self._transition(to, reason, now)
            if to is State.CLOSED:
                self._last_error = None
        self._publish()

    def stats(self) -> Stats:
        with self._lock:
            now = self._now()
            calls, failures = self._window.totals(now)
            retry_in = max(0.0, self._open_until - now) if self._state is State.OPEN else None
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
                last_error=self._last_error,
                retry_in_s=retry_in,
                url=redact(self.url) if self.url else None,
            )

    # -------------------------------------------------------------- admission
    def _admit(self) -> int:
        """Return a ticket, or raise ``BreakerOpenError`` without touching Redis."""
        ticket = self._try_admit()
        if ticket < 0:
            raise self._rejection()
        return ticket

    def _try_admit(self) -> int:
        """A ticket, or -1 when the call is rejected. Closed: one attribute read, no lock."""
        state = self._state
        if state is _CLOSED or state is _DISABLED:
            return self._generation << 1
        if state is _FORCED_OPEN or (state is _OPEN and self._probe_running):
            self._rejected.step()
            return -1
        return self._admit_slow()

    def _admit_slow(self) -> int:
        with self._lock:
            state = self._state
            if state is State.CLOSED or state is State.DISABLED:
                return self._generation << 1
            if state is State.OPEN:
                now = self._now()
                if self._probing():
                    self._start_probe()
                    self._rejected.step()
                    return -1
                if now < self._open_until:
                    self._rejected.step()
                    return -1
                self._transition(State.HALF_OPEN, "open interval elapsed", now)
                state = State.HALF_OPEN
            if state is State.HALF_OPEN and self._trials < self._config.half_open_max_calls:
                self._trials += 1
                ticket = (self._generation << 1) | 1
            else:
                self._rejected.step()
                ticket = -1
        if self._events.pending:
            self._publish()
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
            if ticket == self._generation << 1 and started < window.bucket_end:
                # A normal call while closed, in the window's live bucket: record it
                # without the lock (each step is atomic), as ``call`` does inline.
                window.current.step()
                self._successes.step()
                if self._consecutive:
                    self._consecutive = 0
                return
        else:
            now = self._now()
            if now - started >= threshold:
                self._on_failure(ticket, SlowCallError(
                    f"call took {now - started:.3f}s (slow-call threshold {threshold:g}s)"
                ))
                return
        self._successes.step()
        with self._lock:
            if ticket >> 1 != self._generation:
                return
            if ticket & 1:
                self._trials -= 1
                self._trial_successes += 1
                if self._trial_successes >= self._config.success_threshold:
                    self._transition(
                        State.CLOSED, f"{self._trial_successes} trial calls succeeded", self._now()
                    )
            else:
                self._consecutive = 0
                self._window.success(started)
        if self._events.pending:
            self._publish()

    def _on_error(self, ticket: int, started: float, exc: BaseException) -> bool:
        """Record ``exc``; return True when it counts as a failure."""
        if not self.counts(exc):
            if ticket & 1:
                with self._lock:
                    if ticket >> 1 == self._generation:
                        self._trials -= 1
            return False
        self._on_failure(ticket, exc)
        return True

    def _on_failure(self, ticket: int, exc: BaseException) -> None:
        error = describe_error(exc)
        misconfigured = is_misconfiguration(exc)
        loud = False
        with self._lock:
            self._last_error = error
            self._failures_total += 1
            now = self._now()
            if misconfigured and now - self._misconfig_logged_at >= FALLBACK_WARN_EVERY:
                self._misconfig_logged_at = now
                loud = True
            if ticket >> 1 == self._generation:
                state = self._state
                if ticket & 1:
                    self._trials -= 1
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
        if self._events.pending:
            self._publish()

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
        # Jitter spreads the probes of many processes that tripped together.
        return float(delay * (0.8 + 0.2 * self._random()))

    # ------------------------------------------------------------ transitions
    def _transition(self, to: State, reason: str, now: float) -> None:
        """Move to ``to``; caller holds the lock. Publishing happens after it is released."""
        previous = self._state
        if previous is State.OPEN and to is State.OPEN:
            return
        open_for = None
        if to is State.OPEN:
            if previous is State.HALF_OPEN:
                self._backoff_step += 1
            elif previous is not State.OPEN:
                self._backoff_step = 0
            self._open_until = now + self._backoff(self._backoff_step)
        if previous in (State.CLOSED, State.DISABLED) and to not in (State.CLOSED, State.DISABLED):
            self._left_closed_at = now
            self._ledger.start_outage()
        if to is State.HALF_OPEN:
            self._trials = 0
            self._trial_successes = 0
            self._next_trial_at = now
        if to in (State.CLOSED, State.DISABLED):
            if self._left_closed_at is not None:
                open_for = now - self._left_closed_at
            self._left_closed_at = None
            self._consecutive = 0
            self._window.clear()
            self._backoff_step = 0
        change = StateChange(
            breaker=self.name,
            from_state=previous,
            to_state=to,
            reason=reason,
            at=now,
            failures=self._consecutive,
            last_error=self._last_error,
            open_for_s=open_for,
            fallback_calls=self._ledger.current_total(),
        )
        key = (previous.value, to.value)
        self._transitions[key] = self._transitions.get(key, 0) + 1
        self._state = to
        self._since = now
        self._generation += 1
        self._events.pending.append(change)
        self._last_change = change
        if to in (State.CLOSED, State.DISABLED):
            summary = self._ledger.end_outage(open_for)
            if summary is not None:
                self._events.pending.append(summary)

    def _publish(self) -> None:
        """Deliver queued transitions (pybreaker, log, probe, listeners) outside the lock."""
        self._events.publish(self, self._after_transition)

    def _after_transition(self, change: StateChange) -> None:
        if change.to_state is State.OPEN:
            with self._lock:
                self._start_probe()
        else:
            self._wake_probe()

    def counts(self, exc: BaseException) -> bool:
        """True when ``exc`` is the kind of error this breaker counts (Redis unavailable)."""
        return is_failure(exc, self._config.counted, self._config.excluded)

    # -------------------------------------------------------------- fallbacks
    def note_fallback(self, integration: str, error: BaseException | None = None) -> None:
        """Count one call served by a fallback; warn once per outage per integration."""
        if self._state is not _CLOSED and self._ledger.step(integration):
            return
        with self._lock:
            warn = self._ledger.count(integration, self._now())
            state = self._state
        if warn:
            emit(logging.WARNING, "fallback_used", breaker=self.name, integration=integration,
                 state=state.value,
                 last_error=describe_error(error) if error is not None else self._last_error)

    def totals(self) -> Totals:
        """Counters since the breaker was created, for metrics (they never go down)."""
        with self._lock:
            return Totals(
                successes=self._successes.value,
                failures=self._failures_total,
                rejected=self._rejected.value,
                fallbacks=self._ledger.totals(),
                transitions=dict(self._transitions),
            )

    # ------------------------------------------------------------------ probe
    def _probing(self) -> bool:
        return self._config.probe and (self._probe_fn is not None or self.url is not None)

    def _start_probe(self) -> None:
        """Start (or wake) the probe thread; caller holds the lock."""
        if not self._probing() or self._state is not State.OPEN:
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
        ping_url(url, self._config.probe_timeout)

    def probe_now(self) -> bool:
        """Run one probe step now, as the probe thread would; return True if Redis answered.

        Open: a successful PING moves the breaker to half-open, a failed one
        pushes the next attempt back. Half-open: the PING is a trial call.
        """
        state = self._state
        if state is State.HALF_OPEN:
            ticket = self._try_admit()
            if ticket < 0 or not ticket & 1:
                return False
            started = self._now()
            with self._lock:
                # Space the probe's trials: a few answers in a row, not one burst.
                self._next_trial_at = started + min(self._config.reset_timeout, 0.25)
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
            with self._lock:
                if self._generation == generation and self._state is State.OPEN:
                    self._last_error = describe_error(exc)
                    self._backoff_step += 1
                    self._open_until = self._now() + self._backoff(self._backoff_step)
            return False
        with self._lock:
            if self._generation == generation and self._state is State.OPEN:
                self._transition(State.HALF_OPEN, "probe ok", self._now())
        self._publish()
        return True

    def probe_plan(self) -> float | None:
        """Seconds until the probe should act (0: now), or None when it should stop.

        Called by the probe thread between steps; a None ends the thread and
        lets the next trip start a fresh one.
        """
        with self._lock:
            state = self._state
            if state is State.OPEN:
                return max(0.0, self._open_until - self._now())
            if state is State.HALF_OPEN:
                now = self._now()
                if self._trials >= self._config.half_open_max_calls:
                    # Trials of real traffic are running; look again shortly.
                    self._next_trial_at = max(self._next_trial_at, now + 0.05)
                return max(0.0, self._next_trial_at - now)
            # Decided under the lock, so a trip right after starts a fresh probe.
            self._probe_running = False
            return None

    def probe_ended(self, probe: Probe) -> None:
        """The probe thread ``probe`` has stopped (called from it as it exits)."""
        with self._lock:
            if self._probe is probe:
                self._probe_running = False

    # ------------------------------------------------------------ call paths
    # Every entry point is admit -> run -> record: ``_try_admit``/``_admit``,
    # then ``_run``/``_arun`` (which record the outcome), and for ``with``
    # blocks ``__enter__``/``__exit__``. Only ``call`` inlines its closed path.
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
        if self._state is not _CLOSED:
            return self._run(self._admit(), fn, args, kwargs)
        # The hot path, inlined: admission is one attribute read, a success one
        # atomic counter step (the window's current bucket), no lock.
        ticket = self._generation << 1
        clock = self._clock
        started = clock() if clock is not None else time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(ticket, started, exc)
            raise
        window = self._window
        if self._slow_threshold is None and started < window.bucket_end:
            window.current.step()
            self._successes.step()
            if self._consecutive:
                self._consecutive = 0
        else:
            self._on_success(ticket, started)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` through the breaker."""
        return await self._arun(self._admit(), fn, args, kwargs)

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
        kwargs = kwargs or {}
        ticket = self._try_admit()
        if ticket < 0:
            self.note_fallback(integration)
            return fallback(*args, **kwargs)
        try:
            return self._run(ticket, fn, args, kwargs)
        except BaseException as exc:
            if not self.counts(exc):
                raise
            self.note_fallback(integration, exc)
        return fallback(*args, **kwargs)

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
        kwargs = kwargs or {}
        ticket = self._try_admit()
        if ticket < 0:
            self.note_fallback(integration)
        else:
            try:
                return await self._arun(ticket, fn, args, kwargs)
            except BaseException as exc:
                if not self.counts(exc):
                    raise
                self.note_fallback(integration, exc)
        fallen: T = await _maybe_await(fallback(*args, **kwargs))
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
        ticket = self._admit()
        _BLOCKS.set((*_BLOCKS.get(), (self, ticket, self._now())))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        blocks = _BLOCKS.get()
        for i in range(len(blocks) - 1, -1, -1):
            if blocks[i][0] is self:
                _, ticket, started = blocks[i]
                _BLOCKS.set(blocks[:i] + blocks[i + 1:])
                break
        else:  # pragma: no cover - __exit__ without __enter__
            return
        if exc is None:
            self._on_success(ticket, started)
        else:
            self._on_error(ticket, started, exc)

    async def __aenter__(self) -> Breaker:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Breaker {self.name!r} {self._state.value}>"


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
