"""What ``BreakerChannelLayer`` keeps per event loop, and which loop is its home.

channels_redis pools are per loop, and so is the layer's own work: the Redis
receives carried over between ``receive`` calls, the resync, and the event
that wakes them on a breaker transition. A transition fires in whatever thread
made it; the layer hands it to every live loop with ``call_soon_threadsafe``.
Recovery runs on one loop only, the home loop, where consumers receive.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .layer import Message
    from .remote import PopWatch

__all__ = ["LoopState", "LoopStates", "cancel_and_wait", "wait"]

T = TypeVar("T")


@dataclass(eq=False)
class LoopState:
    """What the layer keeps on one event loop."""

    #: Set, then replaced, on every breaker transition: wakes waiters on this loop.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Redis receives carried over between ``receive`` calls, by channel.
    pending: dict[str, asyncio.Task[Message]] = field(default_factory=dict)
    #: The pop watch of each pending receive task, by channel.
    watches: dict[str, PopWatch] = field(default_factory=dict)
    resync: asyncio.Task[None] | None = None
    #: Every task the layer started on this loop and that has not finished; a
    #: Redis receive whose consumer gave up waiting for it is no longer pending.
    running: set[asyncio.Task[Any]] = field(default_factory=set)

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task

    def wake(self) -> None:
        """Wake everything waiting on ``changed``; later waiters wait for the next transition."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    async def stop(self) -> None:
        """Cancel every task started here and wait until they have finished."""
        tasks = list(self.running)
        self.pending.clear()
        self.watches.clear()
        await cancel_and_wait(tasks)


#: Every LoopStates of the process, for their locks to be renewed after fork.
_ALL: weakref.WeakSet[LoopStates] = weakref.WeakSet()


class LoopStates:
    """A ``LoopState`` per event loop, held no longer than the loop, and the home loop."""

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
            weakref.WeakKeyDictionary()
        )
        # The listener reads the states from the thread that made the transition.
        self._lock = threading.Lock()
        _ALL.add(self)
        self._home: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def of(self, loop: asyncio.AbstractEventLoop, *, home: bool = False) -> LoopState:
        """The state of ``loop``, made on first use; ``home``: consumers live there."""
        if home and (self._home is None or self._home() is not loop):
            self._home = weakref.ref(loop)
        state = self._states.get(loop)
        if state is None:
            with self._lock:
                state = self._states[loop] = LoopState()
        return state

    def get(self, loop: asyncio.AbstractEventLoop) -> LoopState | None:
        return self._states.get(loop)

    def values(self) -> list[LoopState]:
        with self._lock:
            return list(self._states.values())

    def live(self) -> list[tuple[asyncio.AbstractEventLoop, LoopState, bool]]:
        """Every loop not closed, its state, and whether recovery runs there."""
        with self._lock:
            loops = [(loop, state) for loop, state in self._states.items() if not loop.is_closed()]
        home = self._home() if self._home is not None else None
        if home is None or home.is_closed():
            # Sync code (async_to_sync) leaves short-lived loops behind: any live one will do.
            home = loops[0][0] if loops else None
        return [(loop, state, loop is home) for loop, state in loops]


async def wait(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passes, whichever comes first.

    Not ``asyncio.wait_for``: before Python 3.12 it returns normally when it is
    cancelled just as the event is set, and a receive whose Redis side lost its
    cancellation that way was awaited forever by ``receive`` and ``close``.
    """
    if event.is_set():
        return
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()


#: How long a cancelled task may take to end before it is cancelled again.
RECANCEL_S = 1.0


async def cancel_and_wait(tasks: Any) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    A task is cancelled again while it runs on: before Python 3.11 a
    cancellation that lands in the loop iteration where one of redis-py's read
    timeouts fires (``async_timeout``) becomes that timeout, and a loop that
    takes a read timeout for "nothing yet" (``get_message(timeout=...)``)
    carries on as if never cancelled. Waiting for it once waited forever.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)


def _after_fork_in_child() -> None:
    for states in list(_ALL):
        states._lock = threading.Lock()  # a thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
