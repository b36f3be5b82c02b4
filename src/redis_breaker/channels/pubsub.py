"""channels_redis's pub/sub layer behind the breaker: ``BreakerPubSubChannelLayer``.

```python
CHANNEL_LAYERS = {"default": {
    "BACKEND": "redis_breaker.channels.BreakerPubSubChannelLayer",
    "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"], "breaker": "default"},
}}
```

``channels_redis.pubsub.RedisPubSubChannelLayer`` keeps nothing in Redis: a
``send`` is a PUBLISH that reaches whoever is subscribed at that moment, and
the channels and group memberships of a process live in that process (its
subscriptions). So, closed, every operation is channels_redis's; open (or
when a call fails on a connection error):

- ``send`` to a channel subscribed in this process and ``group_send`` to its
  members here are delivered in-process;
- ``send`` to a channel nobody subscribes to here (a worker's general channel,
  another process's specific channel) is kept, bounded by the channel's
  capacity and expiring after ``expiry`` seconds (counted), and published, in
  order, once Redis answers; a kept message that no subscriber receives
  (PUBLISH says 0) stays kept until one does or it expires;
- ``group_send``'s members in other processes do not get the message (Redis
  alone knows them): counted (``layer.local_only``, a metric, one event per
  outage);
- a PUBLISH that failed after it may have reached Redis (a read timeout: a
  frozen server runs it when it thaws) is never published again: when it was
  delivered here, the copy Redis may still deliver is dropped; when it was not,
  it is counted ``uncertain`` (event and metric);
- subscriptions (``new_channel``, ``receive``, ``group_add``,
  ``group_discard``) apply here at once and reach Redis on recovery, which
  re-subscribes every channel and group of the process as the breaker's trial
  calls. The receive task does not read from Redis while the breaker is not
  closed, so channels_redis's reconnect (redis-py re-subscribing on connect)
  and the recovery never run at the same time.

``receive`` never raises because of Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from channels.layers import BaseChannelLayer
from channels_redis import pubsub as _upstream
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from redis import asyncio as aioredis

from redis_breaker._background import BackgroundJob
from redis_breaker._breaker import TRIAL_WAIT_S, Breaker
from redis_breaker._errors import BreakerOpenError
from redis_breaker._events import emit
from redis_breaker._redact import describe_error, redact
from redis_breaker._registry import get_breaker
from redis_breaker._state import State, StateChange

from . import metrics
from .layer import shard_breaker
from .loops import cancel_and_wait, wait
from .outbox import PendingSends
from .remote import _create_pool, _reset_on_close, probe_url, with_reconnect

__all__ = ["BreakerPubSubChannelLayer"]

logger = logging.getLogger(__name__)
_INTEGRATION = "channels"
_PASSING = (State.CLOSED, State.DISABLED)
_RECHECK_S = 1.0
_RETRY_MAX_S = 0.25
_FORWARD_RETRY_MAX_S = 1.0
#: After a host's recovery, a send that no subscriber received is kept (and
#: published again) for this long: the consumers of other processes may not
#: have subscribed again yet.
RESUBSCRIBE_WINDOW_S = 10.0
_consistent_hash: Callable[[Any, int], int] = _upstream._consistent_hash
_wrap_close: Callable[[Any, asyncio.AbstractEventLoop], None] = _upstream._wrap_close


def decode_hosts(hosts: Any) -> list[dict[str, Any]]:
    """channels_redis's ``hosts`` as a list of dicts (``channels_redis.utils.decode_hosts``, 4.1+)."""
    if not hosts:
        return [{"address": "redis://localhost:6379"}]
    if isinstance(hosts, (str, bytes)):
        raise ValueError("You must pass a list of Redis hosts, even if there is only one.")
    result: list[dict[str, Any]] = []
    for entry in hosts:
        if isinstance(entry, dict):
            result.append(entry)
        elif isinstance(entry, (tuple, list)):
            result.append({"host": entry[0], "port": entry[1]})
        else:
            result.append({"address": entry})
    return result


#: How redis-py words a connection the server ended (closed, reset, a write into one it had closed).
_SERVER_ENDED = ("Connection closed by server", "Connection reset by peer", "Broken pipe",
                 "(104,", "(32,", "while writing to socket")


def _maybe_sent(exc: BaseException) -> bool:
    """Whether a failed PUBLISH may have reached its subscribers (and may still).

    A rejection, or an error while connecting, sent nothing. A read that timed
    out may have: a frozen server runs the PUBLISH when it thaws, a network
    that comes back delivers it. A connection the server ended (stopped,
    killed, restarted) has not: Redis writes a PUBLISH's messages to the
    subscribers and its reply to the publisher in the same pass after running
    it, so a server that went away before answering had sent nothing to the
    subscribers either (but for the microseconds between two writes of that
    pass); such a message is kept and published again on recovery.
    """
    if isinstance(exc, BreakerOpenError):
        return False
    text = str(exc)
    if "connecting to" in text or "Timeout connecting" in text:
        return False
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return False
    return not any(marker in text for marker in _SERVER_ENDED)


class _Shard(RedisSingleShardConnection):  # type: ignore[misc]
    """One host's connections of one loop: channels_redis's, through the host's breaker."""

    _redis: Any
    _pubsub: Any
    _receive_task: Any
    _subscribed_to: set[str]

    def __init__(self, host: dict[str, Any], channel_layer: _LoopLayer, index: int) -> None:
        super().__init__(host, channel_layer)
        self.config = host
        self.index = index
        self.breaker: Breaker = channel_layer.channel_layer.breakers[index]

    def _ensure_redis(self) -> None:
        if self._redis is None:
            pool = _create_pool(with_reconnect(self.config))
            _watch_resets(pool)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._pubsub = self._redis.pubsub()

    async def publish(self, channel: str, message: bytes, outcome: list[bool] | None = None) -> Any:
        """PUBLISH (no lock: the client's pool serves concurrent commands); ``outcome``
        gets True when it failed after it may have reached Redis."""
        if self._redis is None:
            self._ensure_redis()
        try:
            return await self._redis.publish(channel, message)
        except BaseException as exc:
            if outcome is not None and _maybe_sent(exc):
                outcome.append(True)
            raise

    async def flush(self) -> None:
        """channels_redis's shard flush, closing the client as every redis-py 5+ release wants
        (channels_redis 4.0 calls the ``close()`` redis-py 5.0.1 deprecated)."""
        async with self._lock:
            task, self._receive_task = self._receive_task, None
            if task is not None:
                # The task also ends by itself once it is no longer the receive task.
                await cancel_and_wait((task,))
            client, self._redis, self._pubsub = self._redis, None, None
            if client is not None:
                await _aclose(client)
            self._subscribed_to = set()

    async def resubscribe(self, names: set[str]) -> None:
        """Subscribe to exactly ``names`` (a dead connection connects again on the way)."""
        async with self._lock:
            self._ensure_redis()
            self._ensure_receiver()
            pubsub = self._pubsub
            have = {n.decode() if isinstance(n, bytes) else n for n in pubsub.channels}
            if names:
                await pubsub.subscribe(*sorted(names))
            else:
                await self._redis.ping()
            extra = have - names
            if extra:
                await pubsub.unsubscribe(*sorted(extra))
            self._subscribed_to = set(names)

    async def _do_receiving(self) -> None:
        """channels_redis's receive task, idle while the breaker is not closed.

        A failure is counted against the breaker instead of logged every second.
        """
        layer = self.channel_layer
        breaker = self.breaker
        delay = TRIAL_WAIT_S
        me = asyncio.current_task()
        while self._receive_task is me:  # flush() replaced it: a lost cancellation ends it too
            changed = layer.changed
            if breaker.state not in _PASSING:
                await wait(changed, _RECHECK_S)
                continue
            try:
                pubsub = self._pubsub
                if pubsub is not None and pubsub.subscribed:
                    connection = pubsub.connection
                    if connection is not None and not connection.is_connected:
                        # Connecting re-subscribes (redis-py): not while a resync runs.
                        async with self._lock:
                            if not connection.is_connected:
                                await connection.connect()
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=0.1)
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
                delay = TRIAL_WAIT_S
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                if breaker.counts(exc):
                    _record_failure(breaker, exc)
                    breaker.note_fallback(_INTEGRATION, exc)
                    layer.behind(self.index)
                else:
                    logger.exception("Unexpected exception in receive task")
                await wait(changed, delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    def _receive_message(self, message: Any) -> None:
        if message is not None and self.channel_layer.echoes:
            name = message["channel"]
            if isinstance(name, bytes):
                name = name.decode()
            if self.channel_layer.take_echo(name, message["data"]):
                return
        super()._receive_message(message)


class _LoopLayer(RedisPubSubLoopLayer):  # type: ignore[misc]
    """channels_redis's per-loop layer, each operation through its host's breaker."""

    channel_layer: BreakerPubSubChannelLayer

    def __init__(self, *args: Any, channel_layer: BreakerPubSubChannelLayer,
                 **kwargs: Any) -> None:
        super().__init__(*args, channel_layer=channel_layer, **kwargs)
        self._shards = [_Shard(host, self, i) for i, host in enumerate(channel_layer.hosts)]
        self.loop = asyncio.get_running_loop()
        #: Set, then replaced, on every transition of a breaker of the layer.
        self.changed = asyncio.Event()
        #: Hosts whose subscriptions Redis may not have.
        self.wanted: set[int] = set()
        self.resync: asyncio.Task[None] | None = None
        #: (name, payload) -> deadlines: copies Redis may deliver of messages delivered here.
        self.echoes: dict[tuple[str, bytes], list[float]] = {}

    def _index(self, name: str) -> int:
        return _consistent_hash(name, len(self._shards))

    # ------------------------------------------------------------------ sending
    async def send(self, channel: str, message: Any) -> None:
        owner = self.channel_layer
        payload = owner.serialize(message)
        if owner.pending and channel in owner.pending:
            owner.keep(channel, payload)  # kept messages of this channel go first
            owner.forward_soon()
            return
        index = self._index(channel)
        receivers = await owner.breakers[index].acall_with_fallback(
            self._shards[index].publish, owner.send_locally, (channel, payload, []),
            integration=_INTEGRATION)
        if receivers == 0 and owner.recovering(index):
            # Nobody subscribed yet, just after an outage: its consumer may not have
            # subscribed again yet. Kept until one has, or it expires.
            owner.keep(channel, payload)
            owner.forward_soon()

    async def group_send(self, group: str, message: Any) -> bool:
        owner = self.channel_layer
        name = self._get_group_channel_name(group)
        index = self._index(name)
        return await owner.breakers[index].acall_with_fallback(
            self._shards[index].publish, owner.group_send_locally,
            (name, owner.serialize(message), []), integration=_INTEGRATION)

    # ---------------------------------------------------------------- receiving
    async def new_channel(self, prefix: str = "specific.") -> str:
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        self.channels[channel] = asyncio.Queue()
        await self._subscribe(channel)
        return channel

    async def receive(self, channel: str) -> Any:
        owner = self.channel_layer
        if channel not in self.channels:
            self.channels[channel] = asyncio.Queue()
            await self._subscribe(channel)
        if channel in owner.pending and owner.breakers[self._index(channel)].is_open:
            # Kept while Redis is away: served here. Once it is back, the forwarder
            # publishes them in order and they come through the subscription.
            kept = owner.pending.take(channel)
            if kept is not None:
                metrics.count(owner.breaker.name, "received_here")
                return owner.deserialize(kept.payload)
        queue = self.channels[channel]
        try:
            message = await queue.get()
        except (asyncio.CancelledError, asyncio.TimeoutError, GeneratorExit):
            # As channels_redis: a cancelled receive is a consumer going away.
            if channel in self.channels:
                del self.channels[channel]
                try:
                    await self._unsubscribe(channel)
                except BaseException:
                    logger.exception("Unexpected exception while cleaning-up channel:")
            raise
        return owner.deserialize(message)

    async def _subscribe(self, name: str) -> None:
        index = self._index(name)
        await self.channel_layer.breakers[index].acall_with_fallback(
            self._shards[index].subscribe, self._later, (name,), integration=_INTEGRATION)

    async def _unsubscribe(self, name: str) -> None:
        index = self._index(name)
        await self.channel_layer.breakers[index].acall_with_fallback(
            self._shards[index].unsubscribe, self._later, (name,), integration=_INTEGRATION)

    def _later(self, name: str) -> None:
        self.behind(self._index(name))

    # ------------------------------------------------------------------- groups
    async def group_add(self, group: str, channel: str) -> None:
        if channel not in self.channels:
            raise RuntimeError(
                "You can only call group_add() on channels that exist in-process.\n"
                "Consumers are encouraged to use the common pattern:\n"
                f"   self.channel_layer.group_add({group!r}, self.channel_name)")
        name = self._get_group_channel_name(group)
        self.groups.setdefault(name, set()).add(channel)
        await self._subscribe(name)

    async def group_discard(self, group: str, channel: str) -> None:
        name = self._get_group_channel_name(group)
        members = self.groups.get(name, set())
        if channel not in members:
            return
        members.remove(channel)
        if not members:
            del self.groups[name]
            await self._unsubscribe(name)

    async def flush(self) -> None:
        """channels_redis's flush (closes the connections; nothing in Redis to delete)."""
        self.echoes = {}
        self.wanted = set()
        resync, self.resync = self.resync, None
        if resync is not None:
            await cancel_and_wait((resync,))
        await super().flush()

    # ----------------------------------------------------------------- recovery
    def deliver(self, name: str, payload: bytes) -> bool:
        """Queue ``payload`` for channel ``name`` (or group channel ``name``'s members) here.

        Runs in any thread; the queues are this loop's.
        """
        if name in self.channels:
            targets = [self.channels[name]]
        else:
            targets = [self.channels[c] for c in self.groups.get(name, ()) if c in self.channels]
        if not targets:
            return False
        if _running_loop() is self.loop:
            for queue in targets:
                queue.put_nowait(payload)
        else:
            for queue in targets:
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                    self.loop.call_soon_threadsafe(queue.put_nowait, payload)
        return True

    def expect_echo(self, name: str, payload: bytes) -> None:
        self.echoes.setdefault((name, payload), []).append(
            time.monotonic() + self.channel_layer.expiry)

    def take_echo(self, name: str, payload: bytes) -> bool:
        """Whether ``payload`` from Redis is a copy of a message delivered here (dropped)."""
        key = (name, payload)
        deadlines = self.echoes.get(key)
        now = time.monotonic()
        if deadlines is None:
            if len(self.echoes) > 1000:
                self.echoes = {k: v for k, v in self.echoes.items() if v[-1] > now}
            return False
        while deadlines and deadlines[0] <= now:
            deadlines.pop(0)
        found = bool(deadlines)
        if found:
            deadlines.pop(0)
        if not deadlines:
            self.echoes.pop(key, None)
        return found

    def behind(self, index: int) -> None:
        """Redis may lack some subscriptions of host ``index``: re-apply them once it answers."""
        self.wanted.add(index)
        if not self.channel_layer.breakers[index].is_open:
            self.start_resync()

    def on_change(self, change: StateChange) -> None:
        """A breaker of the layer changed state (on this loop)."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()
        back = change.to_state is State.HALF_OPEN or (
            change.to_state in _PASSING and change.from_state not in _PASSING)
        if back:
            self.wanted.update(i for i, b in enumerate(self.channel_layer.breakers)
                               if b.name == change.breaker)
            self.start_resync()

    def start_resync(self) -> None:
        if self.wanted and (self.resync is None or self.resync.done()):
            self.resync = asyncio.ensure_future(self._resync())

    def _names(self, index: int) -> set[str]:
        names = set(self.channels) | set(self.groups)
        return {n for n in names if self._index(n) == index}

    async def _resync(self) -> None:
        """Subscribe again to every channel and group of this loop, as trial calls."""
        delay = TRIAL_WAIT_S
        while self.wanted:
            changed = self.changed
            for index in sorted(self.wanted):
                breaker = self.channel_layer.breakers[index]
                if breaker.is_open:
                    continue  # its next half-open starts this again
                self.wanted.discard(index)
                names = self._names(index)
                try:
                    await breaker.acall_as_trial(self._shards[index].resubscribe, names)
                except BreakerOpenError:
                    self.wanted.add(index)
                except Exception as exc:
                    if breaker.counts(exc):
                        self.wanted.add(index)
                    else:
                        emit(logging.ERROR, "channels_resync_failed", breaker=breaker.name,
                             error=describe_error(exc), args=f"{len(names)} subscriptions")
                else:
                    emit(logging.INFO, "channels_groups_resynced", breaker=breaker.name,
                         groups=sum(n in self.groups for n in names),
                         memberships=sum(len(self.groups.get(n, ())) for n in names),
                         discards=0)
            if all(self.channel_layer.breakers[i].is_open for i in self.wanted):
                return
            await wait(changed, delay)
            delay = min(delay * 2, _RETRY_MAX_S)


class BreakerPubSubChannelLayer(RedisPubSubChannelLayer):  # type: ignore[misc]
    """channels_redis's ``RedisPubSubChannelLayer`` behind a circuit breaker (one per host).

    Every channels_redis CONFIG key passes through; ``breaker`` names the shared
    breaker (or is a ``Breaker``); ``expiry``, ``capacity`` and
    ``channel_capacity`` bound the messages kept for other processes while
    Redis is unusable (channels_redis's pub/sub layer ignores them).
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]
    _layers: dict[asyncio.AbstractEventLoop, _LoopLayer]

    def __init__(self, hosts: Any = None, *, breaker: str | Breaker = "default",
                 **config: Any) -> None:
        super().__init__(hosts=hosts, **config)
        self.hosts = decode_hosts(hosts)
        limits = BaseChannelLayer(expiry=config.get("expiry", 60),
                                  capacity=config.get("capacity", 100),
                                  channel_capacity=config.get("channel_capacity"))
        self.expiry = limits.expiry
        self.capacity = limits.capacity
        self.get_capacity = limits.get_capacity
        self.breaker = breaker if isinstance(breaker, Breaker) else get_breaker(breaker)
        self.breaker.adopt_url(probe_url(self.hosts))
        #: One breaker per host: ``breaker`` for the first, ``<breaker>-shard<i>`` for the others.
        self.breakers = [self.breaker] + [shard_breaker(self.breaker, i, self.hosts[i])
                                          for i in range(1, len(self.hosts))]
        #: Messages for channels no consumer of this process subscribes to, kept while open.
        self.pending = PendingSends(self.expiry, self.get_capacity, self._expired)
        #: Kept messages dropped unsent after ``expiry``; kept messages published on recovery.
        self.expired = 0
        self.forwarded = 0
        #: Group messages that reached this process's members only (counted once each).
        self.local_only = 0
        #: Messages for other processes whose PUBLISH failed after it may have reached Redis.
        self.uncertain = 0
        self._reported_local_only = 0
        #: When each host's breaker last closed after an outage.
        self._back_at: list[float | None] = [None] * len(self.breakers)
        self._forwarder = BackgroundJob("redis-breaker-pubsub-forward", self._forward_in_thread)
        self._listener = _weak_listener(self)
        for shard in self.breakers:
            shard.add_listener(self._listener)
        metrics.register_default()
        _LAYERS.add(self)

    def __str__(self) -> str:
        return redact(f"{type(self).__name__}(breaker={self.breaker.name!r}, hosts={self.hosts})")

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer: _LoopLayer | None = self._layers.get(loop)
        if layer is None:
            layer = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer

    def _loop_layers(self) -> list[_LoopLayer]:
        return list(dict(self._layers).values())

    # The channel layer API, as methods (channels_redis proxies them with __getattr__).
    async def send(self, channel: str, message: Any) -> None:
        """Publish to a channel; while Redis is unusable, deliver here or keep (see the module)."""
        await self._get_layer().send(channel, message)

    async def group_send(self, group: str, message: Any) -> None:
        await self._get_layer().group_send(group, message)

    async def send_to_group(self, group: str, message: Any) -> bool:
        """``group_send`` that tells whether Redis took the message (False: this process only)."""
        return await self._get_layer().group_send(group, message) is not False

    async def new_channel(self, prefix: str = "specific.") -> str:
        name: str = await self._get_layer().new_channel(prefix)
        return name

    async def receive(self, channel: str) -> Any:
        """The next message of ``channel``; never a Redis error."""
        return await self._get_layer().receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        await self._get_layer().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._get_layer().group_discard(group, channel)

    async def flush(self) -> None:
        """Forget this loop's channels and groups and close its connections; drop kept messages."""
        self.pending.clear()
        await self._get_layer().flush()

    async def close(self) -> None:
        """Close this loop's connections (the layer stays usable)."""
        layer = self._layers.pop(asyncio.get_running_loop(), None)
        if layer is not None:
            await layer.flush()

    # ------------------------------------------------------------ open path
    def send_locally(self, channel: str, payload: bytes, outcome: list[bool]) -> None:
        index = _consistent_hash(channel, len(self.breakers))
        delivered = False
        for layer in self._loop_layers():
            if layer.deliver(channel, payload):
                delivered = True
                if outcome:
                    layer.expect_echo(channel, payload)
        if not delivered:
            if outcome:
                self._uncertain(channel)
            else:
                self.keep(channel, payload)
                if not self.breakers[index].is_open:
                    # A failure below the threshold: no transition will come to publish it.
                    self.forward_soon()
        self._behind(index)

    def group_send_locally(self, name: str, payload: bytes, outcome: list[bool]) -> bool:
        for layer in self._loop_layers():
            if layer.deliver(name, payload) and outcome:
                layer.expect_echo(name, payload)
        if not outcome:
            self.local_only += 1
            metrics.count(self.breaker.name, "local_only")
        self._behind(_consistent_hash(name, len(self.breakers)))
        return False

    def keep(self, channel: str, payload: bytes) -> None:
        self.pending.put(channel, payload, time.time(), {})
        metrics.count(self.breaker.name, "kept")

    def _uncertain(self, channel: str) -> None:
        self.uncertain += 1
        metrics.count(self.breaker.name, "uncertain")
        emit(logging.WARNING, "channels_message_uncertain", breaker=self.breaker.name,
             channel=channel, reason="publish failed after it may have reached Redis; "
                                     "not published again")

    def _expired(self, channel: str, count: int) -> None:
        self.expired += count
        metrics.count(self.breaker.name, "expired", count)
        emit(logging.WARNING, "channels_messages_expired", breaker=self.breaker.name,
             channel=channel, messages=count, expiry=self.expiry)

    def _behind(self, index: int) -> None:
        for layer in self._loop_layers():
            if _running_loop() is layer.loop:
                layer.behind(index)
            else:
                with contextlib.suppress(RuntimeError):
                    layer.loop.call_soon_threadsafe(layer.behind, index)

    # ------------------------------------------------------------- recovery
    def recovering(self, index: int) -> bool:
        """Whether host ``index`` came back within the last ``RESUBSCRIBE_WINDOW_S`` seconds."""
        back = self._back_at[index]
        return back is not None and time.monotonic() - back < RESUBSCRIBE_WINDOW_S

    def _on_change(self, change: StateChange) -> None:
        """Breaker listener: runs in whatever thread made the transition."""
        if change.to_state in _PASSING and change.from_state not in _PASSING:
            for i, breaker in enumerate(self.breakers):
                if breaker.name == change.breaker:
                    self._back_at[i] = time.monotonic()
        if change.to_state is not State.OPEN:
            self.forward_soon()
            self._report_local_only()
        for layer in self._loop_layers():
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                layer.loop.call_soon_threadsafe(layer.on_change, change)

    def _report_local_only(self) -> None:
        count = self.local_only - self._reported_local_only
        if count > 0:
            self._reported_local_only = self.local_only
            emit(logging.WARNING, "channels_group_messages_local_only", breaker=self.breaker.name,
                 messages=count)

    def forward_soon(self) -> None:
        if self.pending:
            self._forwarder.kick()

    def _forward_in_thread(self) -> None:
        asyncio.run(self._forward_all())

    async def _forward_all(self) -> None:
        """Publish the kept messages, oldest first per channel, as trial calls.

        A message no subscriber received (PUBLISH returned 0: its consumer has
        not subscribed again yet) is tried again shortly, until it expires.
        """
        forwarded = 0
        delay = TRIAL_WAIT_S
        clients: dict[int, Any] = {}
        try:
            while self.pending:
                blocked = waiting = False
                for channel in self.pending.channels():
                    index = _consistent_hash(channel, len(self.breakers))
                    breaker = self.breakers[index]
                    while True:
                        if breaker.is_open:
                            waiting = True
                            break
                        # Lent, not taken: a send made while it is written queues behind it.
                        kept = self.pending.lend(channel)
                        if kept is None:
                            break
                        client = clients.get(index)
                        if client is None:
                            pool = _create_pool(with_reconnect(self.hosts[index]))
                            _watch_resets(pool)
                            client = clients[index] = aioredis.Redis(connection_pool=pool)
                        try:
                            receivers = await breaker.acall_as_trial(client.publish, channel,
                                                                     kept.payload)
                        except Exception as exc:
                            if breaker.counts(exc) and _maybe_sent(exc):
                                self.pending.settle(channel)
                                self._uncertain(channel)  # it may have run: not again
                            else:
                                self.pending.put_back(channel, kept)
                                blocked = True
                                if not breaker.counts(exc) and not isinstance(
                                        exc, BreakerOpenError):
                                    emit(logging.ERROR, "channels_forward_failed",
                                         breaker=breaker.name, channel=channel,
                                         error=describe_error(exc))
                            break
                        except BaseException:
                            self.pending.put_back(channel, kept)
                            raise
                        if not receivers:
                            self.pending.put_back(channel, kept)
                            blocked = True
                            break
                        self.pending.settle(channel)
                        forwarded += 1
                if blocked:
                    self.pending.sweep()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _FORWARD_RETRY_MAX_S)
                elif waiting:
                    return
        finally:
            for client in clients.values():
                with contextlib.suppress(Exception):
                    await _aclose(client)
            if forwarded:
                self.forwarded += forwarded
                metrics.count(self.breaker.name, "forwarded", forwarded)
                emit(logging.INFO, "channels_messages_forwarded", breaker=self.breaker.name,
                     messages=forwarded, left=len(self.pending))

    def _forked(self) -> None:
        """In a forked child: the parent's loops, connections and kept messages are not ours."""
        self._layers = {}
        self.pending = PendingSends(self.expiry, self.get_capacity, self._expired)


def _record_failure(breaker: Breaker, exc: BaseException) -> None:
    """Count a failure that happened outside a breaker call (the receive task)."""
    if breaker.state not in _PASSING:
        return

    def fail() -> None:
        raise exc

    with contextlib.suppress(BaseException):
        breaker.call(fail)


async def _aclose(client: Any) -> None:
    closing = getattr(client, "aclose", None)  # redis-py 5.0.1+
    if closing is None:
        await client.close(close_connection_pool=True)
    else:
        await closing(close_connection_pool=True)


def _watch_resets(pool: Any) -> None:
    """Connections of ``pool`` close with a reset (see ``remote._reset_on_close``)."""
    make = getattr(pool, "make_connection", None)
    if make is None:
        return

    def make_connection() -> Any:
        connection = make()
        register = getattr(connection, "register_connect_callback", None)
        if register is not None:
            register(_RESETS.connected)  # redis-py holds it weakly: a bound method
        return connection

    pool.make_connection = make_connection


class _Resets:
    def connected(self, connection: Any) -> None:
        _reset_on_close(connection)


_RESETS = _Resets()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _weak_listener(layer: BreakerPubSubChannelLayer) -> Callable[[StateChange], None]:
    ref = weakref.ref(layer)
    breakers = list(layer.breakers)

    def listener(change: StateChange) -> None:
        target = ref()
        if target is None:
            for breaker in breakers:
                with contextlib.suppress(ValueError):
                    breaker.remove_listener(listener)
            return
        target._on_change(change)

    return listener


_LAYERS: weakref.WeakSet[BreakerPubSubChannelLayer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for layer in list(_LAYERS):
        layer._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
