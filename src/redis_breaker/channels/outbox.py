"""Messages for channels this process does not own, kept while Redis is unusable.

A ``send`` to a general channel (``"!"`` not in its name: a worker may read
it anywhere) or to another process's specific channel cannot be delivered
here while the breaker is open. It is kept in a ``PendingSends``, bounded per
channel by the layer's capacity and dropped (counted) once older than its
expiry, as channels_redis would, and forwarded to Redis in order once it
answers (``Forwarder``). A receiver of a general channel in this process may
take a kept message first: each message is either received here or
forwarded, never both.

The forwarder ``lend``s a channel's oldest message while it writes it: until
the write is settled (``settle``, or ``put_back`` when it did not go through)
the channel still counts as holding kept messages, so a send made meanwhile
queues behind it. A receiver here takes kept messages only while Redis cannot
be used for them (the layers decide): once the forwarder writes them, they
are read from Redis, in the order they were written.

Each message is kept serialized, with the score channels_redis would have
given it, so forwarding writes exactly the member the failed send may already
have written (a hung server runs a command sent before it froze as soon as
it thaws): the sorted set holds it once, and a receiver that already took
that copy drops the forwarded one by its random prefix (``SeenIds``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from channels.exceptions import ChannelFull

from .local import _wake, drop_waiter

__all__ = ["Kept", "PendingSends", "SeenIds"]


@dataclass(eq=False)
class Kept:
    """One message kept for a channel of another process."""

    payload: bytes
    #: The ``time.time()`` channels_redis would have scored it with.
    score: float
    #: ``time.monotonic()`` after which it is dropped.
    expires: float
    #: The message as the sender gave it, for a receiver in this process.
    message: dict[str, Any] = field(repr=False)


class PendingSends:
    """Per-channel FIFO queues of ``Kept`` messages, shared by loops and threads."""

    def __init__(self, expiry: float, capacity_for: Callable[[str], int],
                 on_expired: Callable[[str, int], object]) -> None:
        self.expiry = float(expiry)
        self._capacity_for = capacity_for
        self._on_expired = on_expired
        self._queues: dict[str, deque[Kept]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: Channels whose oldest message the forwarder is writing now.
        self._lent: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values()) + len(self._lent)

    def __bool__(self) -> bool:
        return bool(self._queues) or bool(self._lent)

    def __contains__(self, channel: str) -> bool:
        """Whether messages wait for ``channel`` (a send must then queue behind them),
        the one being forwarded included."""
        return channel in self._queues or channel in self._lent

    def channels(self) -> list[str]:
        with self._lock:
            return list(self._queues)

    def put(self, channel: str, payload: bytes, score: float, message: dict[str, Any]) -> None:
        """Keep a message; ``ChannelFull`` when the channel already holds its capacity."""
        now = time.monotonic()
        with self._lock:
            queue = self._queues.get(channel)
            if queue is None:
                queue = self._queues[channel] = deque()
            expired = self._drop_expired(queue, now)
            try:
                if len(queue) + (channel in self._lent) >= self._capacity_for(channel):
                    raise ChannelFull(channel)
                queue.append(Kept(payload, score, now + self.expiry, message))
            finally:
                if not queue:
                    del self._queues[channel]
            waiters = self._waiters.pop(channel, ())
        if expired:
            self._on_expired(channel, expired)
        if waiters:
            _wake(list(waiters))

    def take(self, channel: str) -> Kept | None:
        """Remove and return the oldest unexpired message of ``channel``, for a
        receiver here; None while an older one is being forwarded."""
        return self._pop(channel, lend=False)

    def lend(self, channel: str) -> Kept | None:
        """The oldest unexpired message of ``channel``, for the forwarder to write.

        The channel keeps counting as pending until ``settle`` (written) or
        ``put_back`` (not written); one message per channel is lent at a time.
        """
        return self._pop(channel, lend=True)

    def settle(self, channel: str) -> None:
        """The lent message of ``channel`` was written (or is given up): forget it."""
        with self._lock:
            self._lent.discard(channel)

    def _pop(self, channel: str, lend: bool) -> Kept | None:
        with self._lock:
            queue = self._queues.get(channel)
            if queue is None or channel in self._lent:
                return None
            expired = self._drop_expired(queue, time.monotonic())
            kept = queue.popleft() if queue else None
            if not queue:
                del self._queues[channel]
            if lend and kept is not None:
                self._lent.add(channel)
        if expired:
            self._on_expired(channel, expired)
        return kept

    def put_back(self, channel: str, kept: Kept) -> None:
        """Return a message ``lend`` gave out, ahead of the others (a forward that failed)."""
        with self._lock:
            self._lent.discard(channel)
            self._queues.setdefault(channel, deque()).appendleft(kept)
            waiters = self._waiters.pop(channel, ())
        if waiters:
            _wake(list(waiters))

    def wait(self, channel: str) -> asyncio.Future[None]:
        """A future that completes when a message for ``channel`` is kept."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.setdefault(channel, []).append(waiter)
        return waiter

    def forget_waiter(self, channel: str, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        with self._lock:
            drop_waiter(self._waiters, channel, waiter)

    def sweep(self) -> None:
        """Drop (and count) every expired message."""
        now = time.monotonic()
        dropped: list[tuple[str, int]] = []
        with self._lock:
            for channel, queue in list(self._queues.items()):
                expired = self._drop_expired(queue, now)
                if expired:
                    dropped.append((channel, expired))
                if not queue:
                    del self._queues[channel]
        for channel, count in dropped:
            self._on_expired(channel, count)

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()
            self._lent.clear()

    @staticmethod
    def _drop_expired(queue: deque[Kept], now: float) -> int:
        expired = 0
        while queue and queue[0].expires <= now:
            queue.popleft()
            expired += 1
        return expired


class SeenIds:
    """Random prefixes of the messages received lately, to drop a second copy of one.

    A message is forwarded with the bytes of the send that failed; should that
    send have reached Redis after all (a command that ran once a frozen server
    thawed) and been received already, the forwarded copy carries the same
    prefix. Prefixes are kept for ``keep`` seconds (the layer's expiry: an
    older message is never forwarded) and at most ``limit`` of them.
    """

    def __init__(self, keep: float, limit: int = 200_000) -> None:
        self.keep = float(keep)
        self.limit = limit
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, key: bytes) -> bool:
        """Remember ``key``; False when it was seen within ``keep`` seconds."""
        now = time.monotonic()
        seen = self._seen
        with self._lock:
            if key in seen:
                return False
            seen[key] = now + self.keep
            if len(seen) > self.limit or next(iter(seen.values())) <= now:
                self._trim(now)
        return True

    def add(self, key: bytes) -> None:
        self.first_time(key)

    def _trim(self, now: float) -> None:
        seen = self._seen
        while seen and (len(seen) > self.limit or next(iter(seen.values())) <= now):
            seen.popitem(last=False)
