"""Publishing transitions: pybreaker, the log event, listeners; in order, outside the lock.

The breaker queues a ``StateChange`` (or an outage's fallback ``Summary``)
under its lock and publishes after releasing it. Whichever thread gets to
``publish`` first delivers everything queued, in order; a thread that finds
another one delivering leaves the queue to it, so a listener that causes a
transition of its own never deadlocks or reorders events.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import pybreaker

from ._events import emit
from ._ledger import Summary
from ._redact import describe_error
from ._state import State, StateChange

if TYPE_CHECKING:
    from ._breaker import Breaker

__all__ = ["GlobalListener", "Listener", "Publisher", "add_global_listener",
           "remove_global_listener"]

Listener = Callable[[StateChange], object]
GlobalListener = Callable[["Breaker", StateChange], object]

# Listeners of every breaker (the Django signal, metrics).
_GLOBAL_LISTENERS: list[GlobalListener] = []

# pybreaker is the state holder and event bus: it is driven, never called through.
_PB_DRIVE = {
    State.OPEN: "open",
    State.FORCED_OPEN: "open",
    State.HALF_OPEN: "half_open",
    State.CLOSED: "close",
    State.DISABLED: "close",
}
_LEVEL = {
    State.OPEN: logging.ERROR,
    State.FORCED_OPEN: logging.ERROR,
    State.HALF_OPEN: logging.INFO,
    State.CLOSED: logging.INFO,
    State.DISABLED: logging.WARNING,
}


def add_global_listener(listener: GlobalListener) -> None:
    """Call ``listener(breaker, StateChange)`` on every transition of every breaker."""
    if listener not in _GLOBAL_LISTENERS:
        _GLOBAL_LISTENERS.append(listener)


def remove_global_listener(listener: GlobalListener) -> None:
    if listener in _GLOBAL_LISTENERS:
        _GLOBAL_LISTENERS.remove(listener)


class Publisher:
    """The queue of one breaker's transitions, and who hears about them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pybreaker = pybreaker.CircuitBreaker(name=name)
        self._listeners: list[Listener] = []
        self.init_runtime()

    def init_runtime(self) -> None:
        """Fresh lock and queue (after ``fork``)."""
        self._lock = threading.Lock()
        self.pending: deque[StateChange | Summary] = deque()

    def add_listener(self, listener: Listener | pybreaker.CircuitBreakerListener) -> None:
        if isinstance(listener, pybreaker.CircuitBreakerListener):
            self.pybreaker.add_listener(listener)
        else:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener | pybreaker.CircuitBreakerListener) -> None:
        if isinstance(listener, pybreaker.CircuitBreakerListener):
            self.pybreaker.remove_listener(listener)
        else:
            self._listeners.remove(listener)

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The breaker's own listeners (not pybreaker's, not the global ones)."""
        return tuple(self._listeners)

    def publish(self, breaker: Breaker, after_log: Callable[[StateChange], object]) -> None:
        """Deliver what is queued, in order; ``after_log(change)`` runs before the listeners."""
        pending = self.pending
        while pending:
            if not self._lock.acquire(blocking=False):
                return
            try:
                while pending:
                    try:
                        item = pending.popleft()
                    except IndexError:
                        break
                    if isinstance(item, Summary):
                        item.log(self.name)
                    else:
                        self._deliver(breaker, item, after_log)
            finally:
                self._lock.release()

    def _deliver(self, breaker: Breaker, change: StateChange,
                 after_log: Callable[[StateChange], object]) -> None:
        getattr(self.pybreaker, _PB_DRIVE[change.to_state])()
        if not change.remote:  # the process that made it logged it: once per host
            emit(_LEVEL[change.to_state], "breaker_state_changed", breaker=change.breaker,
                 from_state=change.from_state.value, to_state=change.to_state.value,
                 reason=change.reason, failures=change.failures, last_error=change.last_error,
                 open_for_s=None if change.open_for_s is None else round(change.open_for_s, 3),
                 fallback_calls=change.fallback_calls)
        after_log(change)
        listeners: list[Listener] = [*self._listeners,
                                     *(partial(g, breaker) for g in _GLOBAL_LISTENERS)]
        for listener in listeners:
            try:
                listener(change)
            except Exception as exc:
                emit(logging.ERROR, "listener_failed", breaker=self.name,
                     listener=getattr(listener, "__qualname__", repr(listener)),
                     error=describe_error(exc))
