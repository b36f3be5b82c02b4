"""The in-process side of ``BreakerChannelLayer``: local queues and the group mirror.

While the breaker is open, messages for channels of this process are queued
here instead of in Redis, and group memberships made in this process are kept
here so they can be served locally and re-applied to Redis on recovery.
Consumers' loop is the usual caller; sync code (``async_to_sync`` in another
thread) may put too, so waking a waiter goes through its own loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from channels.exceptions import ChannelFull

__all__ = ["GroupMirror", "LocalQueues"]

Message = dict[str, Any]


def drop_waiter(waiters: dict[str, list[asyncio.Future[None]]], channel: str,
                waiter: asyncio.Future[None]) -> None:
    """Remove ``waiter`` from ``channel``'s waiters, and the channel once it has none."""
    found = waiters.get(channel)
    if found is not None:
        if waiter in found:
            found.remove(waiter)
        if not found:
            del waiters[channel]


class LocalQueues:
    """Bounded, expiring FIFO queues per channel, with waiters that do not consume.

    ``wait()`` only says "something arrived": the caller pops it synchronously,
    so a waiter cancelled at the wrong moment never loses a message.
    """

    def __init__(self, expiry: float, capacity_for: Callable[[str], int],
                 on_expired: Callable[[str], object] | None = None) -> None:
        self.expiry = float(expiry)
        self._capacity_for = capacity_for
        self._on_expired = on_expired
        self._queues: dict[str, deque[tuple[float, Message]]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def put(self, channel: str, message: Message, *, drop_if_full: bool = False) -> bool:
        """Queue ``message``; when full raise ``ChannelFull``, or return False with ``drop_if_full``."""
        now = time.monotonic()
        self._sweep(now)
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = deque()
        else:
            self._drop_expired(channel, queue, now)
        if len(queue) >= self._capacity_for(channel):
            if drop_if_full:
                return False
            raise ChannelFull(channel)
        queue.append((now + self.expiry, message))
        waiters = self._waiters.pop(channel, ())
        if waiters:
            _wake(waiters)
        return True

    def pop(self, channel: str) -> Message | None:
        """The oldest unexpired message for ``channel``, or None."""
        queue = self._queues.get(channel)
        if queue is None:
            return None
        self._drop_expired(channel, queue, time.monotonic())
        message = queue.popleft()[1] if queue else None
        if not queue:
            del self._queues[channel]
        return message

    def wait(self, channel: str) -> asyncio.Future[None]:
        """A future that completes when a message for ``channel`` is queued."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        return waiter

    def forget_waiter(self, channel: str, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        drop_waiter(self._waiters, channel, waiter)

    def clear(self) -> None:
        self._queues.clear()

    def _drop_expired(self, channel: str, queue: deque[tuple[float, Message]], now: float) -> None:
        expired = False
        while queue and queue[0][0] <= now:
            queue.popleft()
            expired = True
        # An undelivered message that expired means nobody reads the channel any more.
        if expired and self._on_expired is not None:
            self._on_expired(channel)

    def _sweep(self, now: float) -> None:
        """Drop expired messages of channels nobody reads, at most twice per expiry period."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + max(self.expiry / 2, 0.5)
        for channel, queue in list(self._queues.items()):
            self._drop_expired(channel, queue, now)
            if not queue:
                del self._queues[channel]


class GroupMirror:
    """Group memberships made in this process, and discards Redis has not seen yet.

    Join times use the wall clock, as channels_redis does, so re-applied
    memberships expire in Redis when they would have anyway.
    """

    def __init__(self, group_expiry: float) -> None:
        self.group_expiry = group_expiry
        self.groups: dict[str, dict[str, float]] = {}
        #: (group, channel) pairs discarded here whose removal may not have reached Redis.
        self.unsent_discards: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return sum(len(members) for members in self.groups.values())

    def add(self, group: str, channel: str) -> None:
        self.groups.setdefault(group, {})[channel] = time.time()
        self.unsent_discards.discard((group, channel))

    def discard(self, group: str, channel: str) -> None:
        members = self.groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self.groups[group]

    def drop_channel(self, channel: str) -> None:
        for group in [g for g, members in self.groups.items() if channel in members]:
            self.discard(group, channel)

    def members(self, group: str) -> list[str]:
        """Unexpired members of ``group``."""
        members = self.groups.get(group)
        if not members:
            return []
        oldest = time.time() - self.group_expiry
        expired = [c for c, joined in members.items() if joined < oldest]
        for channel in expired:
            del members[channel]
        if not members:
            del self.groups[group]
        return list(members)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Unexpired memberships, copied (the resync awaits between groups)."""
        snapshot: dict[str, dict[str, float]] = {}
        for group in list(self.groups):
            live = self.members(group)
            if live:
                snapshot[group] = {channel: self.groups[group][channel] for channel in live}
        return snapshot

    def clear(self) -> None:
        self.groups.clear()
        self.unsent_discards.clear()


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for waiter in waiters:
        loop = waiter.get_loop()
        if loop is running:
            _resolve(waiter)
        elif not loop.is_closed():
            # A put from another thread's loop: a plain set_result would not wake this one.
            loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
