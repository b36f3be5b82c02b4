"""The Redis side of ``BreakerChannelLayer``: channels_redis with a blocking pop that fits.

channels_redis blocks in BZPOPMIN for ``brpop_timeout`` (5 s) on a connection
whose read timeout is redis-py's ``socket_timeout``, which redis-py 8 sets to
5 s by default: an idle, healthy Redis then times the pop out and ``receive``
raises (channels_redis issue #422). Here the pop is kept well under the read
timeout, whatever the hosts configure.

channels_redis also builds its pools without redis-py's retry, so a pooled
connection that died with a restarted server fails its next command even
though Redis is back (redis-py 8 with RESP3 no longer checks a pooled
connection for EOF before handing it out). That one error would send a
message down the in-process path and lose it for other processes; here a
command that meets a dead connection is sent once more on a fresh one.
Either way (redis-py 5 reconnects a dead pooled connection before the
command, silently; later versions retry the command) the layer hears of it
(``on_reconnect``) from the connection's own connect callback: Redis may have
restarted empty without anyone seeing an error, and the group memberships of
this process must be written again.

Pools are kept per event loop and closed with their loop, whatever the
channels_redis release: channels_redis 4.0 keeps only the last loop's pools,
dropping the previous loop's unclosed (every ``async_to_sync`` call of a sync
view runs on a loop of its own, closed after it), and threads that take turns
(gthread workers) could even get a pool of another thread's, closed, loop.

With Sentinel hosts, channels_redis closes its pools but never the
connections its ``Sentinel`` managers opened to the sentinels themselves;
``close_pools`` here closes those too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import inspect
import itertools
import logging
import os
import socket
import struct
import threading
import time
import types
import weakref
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    from channels_redis.utils import create_pool as _upstream_create_pool
except ImportError:  # channels_redis 4.0
    _upstream_create_pool = None

from redis_breaker._sentinel import aclose_sentinel, sentinel_url

from .outbox import SeenIds

__all__ = ["POP_WATCH", "Abandoned", "PopWatch", "RedisLayer", "close_with_loop", "probe_url",
           "sentinel_probe_url"]

_UPSTREAM_POP_TIMEOUT = 5.0
#: A backup copy's cleanup that failed is tried again after this, doubling up to the max.
_CLEAN_RETRY_S = 0.05
_CLEAN_RETRY_MAX_S = 1.0
#: channels_redis's send (expire old messages, check the capacity, add, renew
#: the key's expiry) in one round trip instead of four: the same keys, members
#: and scores. KEYS[1] channel key; ARGV payload, score, expired-before,
#: capacity, expiry. Returns 1, or 0 when the channel is full.
#:
#: Each script's first write is a ZADD that may add memory (``XX``: it adds
#: nothing, at most moves this very payload's score): Redis refuses a script
#: on ``maxmemory`` only at its first write command, and only if that command
#: may add memory; a script that began with ZREMRANGEBYSCORE would then write
#: past ``maxmemory`` where channels_redis's commands get Redis's OOM error.
_SEND = b"""
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[3])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[4]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
_SEND_SHA = hashlib.sha1(_SEND).hexdigest()
#: channels_redis's group_send on one shard, its expired messages dropped in
#: the same round trip. KEYS channel keys; ARGV payloads, capacities, score,
#: expired-before, expiry. Returns how many channels were full.
_GROUP_SEND = b"""
local n = #KEYS
local score = ARGV[2 * n + 1]
local expired_before = ARGV[2 * n + 2]
local expiry = ARGV[2 * n + 3]
local full = 0
redis.call('ZADD', KEYS[1], 'XX', score, ARGV[1])
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, expired_before)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], score, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        full = full + 1
    end
end
return full
"""
_GROUP_SEND_SHA = hashlib.sha1(_GROUP_SEND).hexdigest()
#: Before a blocking pop: every message of the backup queue (KEYS[2]) goes back
#: to the channel (KEYS[1]) with its score, so a pop a cancellation cut short
#: loses nothing.
_RESTORE = b"""
local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
    redis.call('ZADD', KEYS[1], entries[i + 1], entries[i])
end
redis.call('DEL', KEYS[2])
"""
_RESTORE_SHA = hashlib.sha1(_RESTORE).hexdigest()
#: channels_redis's own logger: its over-capacity line is part of its behaviour.
_upstream_log = logging.getLogger("channels_redis.core")
#: Set on a received message that is a second copy of one received before.
DUPLICATE = "__redis_breaker_duplicate__"


class PopWatch:
    """A receive task's blocking pop: whether it is under way, and whether anyone still waits.

    Once BZPOPMIN is sent, Redis may hand it a message at any moment: the
    message is then in no queue of Redis, only in the reply on its way.
    Cancelling the pop then closes the connection and drops the reply, and the
    message with it. A receive whose consumer stops waiting during a pop
    therefore lets the pop end (``abandoned``): a message it brings is kept
    for the channel's next receive, an empty pop ends the task (``Abandoned``).
    """

    __slots__ = ("abandoned", "popping")

    def __init__(self) -> None:
        self.popping = False
        self.abandoned = False


class Abandoned(Exception):
    """A receive nobody waits for any more ended between two pops."""


#: The watch of the receive task running in this context (each task has its own).
POP_WATCH: contextvars.ContextVar[PopWatch | None] = contextvars.ContextVar(
    "redis_breaker_pop_watch", default=None)

#: Every RedisLayer of the process, for their locks to be renewed after fork.
_LAYERS: weakref.WeakSet[RedisLayer] = weakref.WeakSet()


class _ReconnectWatch:
    """Tells the layer when a connection of its pools connects again (it had died or was dropped).

    A connection's connect callbacks run on its first connect and on every
    reconnection, in every redis-py release; the first is not news.
    """

    def __init__(self, layer: RedisLayer) -> None:
        self._layer = weakref.ref(layer)
        self._connected: weakref.WeakSet[Any] = weakref.WeakSet()

    def watch(self, pool: Any) -> None:
        """Register with every connection ``pool`` makes from now on."""
        make = getattr(pool, "make_connection", None)
        if make is None:
            return

        def make_connection() -> Any:
            connection = make()
            register = getattr(connection, "register_connect_callback", None)
            if register is not None:
                register(self.connected)  # held weakly: this watch lives with the layer
            return connection

        pool.make_connection = make_connection

    def connected(self, connection: Any) -> None:
        _reset_on_close(connection)
        if connection not in self._connected:
            self._connected.add(connection)
            return
        layer = self._layer()
        if layer is not None:
            layer.reconnected()


_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset_on_close(connection: Any) -> None:
    """Have closing ``connection`` reset it (SO_LINGER 0) rather than end it with a FIN.

    A connection is closed when a reply did not come in time. With a FIN, the
    kernel keeps sending what the server had not acknowledged (a blocking pop,
    say) and the server runs it once it can read again (a network back, a
    frozen server thawed): a pop for a client that is gone takes a message
    nobody receives. A reset drops what was not delivered.
    """
    writer = getattr(connection, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


class _LoopPools:
    """The pools (and Sentinel managers) a layer made on one event loop."""

    def __init__(self) -> None:
        self.pools: dict[int, Any] = {}
        #: One client per pool, made once: a ``Redis`` costs 100-250 µs to build.
        self.clients: dict[int, Any] = {}
        self.sentinel_managers: list[Any] = []

    async def close(self) -> None:
        pools, self.pools = self.pools, {}
        self.clients = {}
        managers, self.sentinel_managers = self.sentinel_managers, []
        for pool in pools.values():
            await pool.disconnect()
        for manager in managers:
            await aclose_sentinel(manager)  # redis-py 5.0's Sentinel has no aclose()


class RedisLayer(RedisChannelLayer):  # type: ignore[misc]
    """``RedisChannelLayer`` whose blocking pop ends before the socket read timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called (on the event loop) when a command went through only on a new connection.
        self.on_reconnect: Callable[[], None] | None = None
        self._watch = _ReconnectWatch(self)
        self._loop_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPools] = (
            weakref.WeakKeyDictionary()
        )
        self._loop_pools_lock = threading.Lock()
        _LAYERS.add(self)
        serializer = getattr(self, "_serializer", None)  # channels_redis 4.0: 12 bytes, fixed
        self.random_prefix_length = int(getattr(serializer, "random_prefix_length", 12))
        #: Random prefixes of the messages received lately (see ``outbox.SeenIds``).
        self.seen = SeenIds(float(self.expiry) * 2)
        self._cleaners_retrying: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        # These pools only tell the timeouts: they never connect.
        self.brpop_timeout = pop_timeout(
            [read_timeout(_create_pool(with_reconnect(host))) for host in self.hosts]
        )

    def forked(self) -> None:
        """Make this layer the forked child's own.

        A client prefix of its own: the parent's process-local channels live under
        the old one, and two processes popping the same Redis key would take each
        other's messages. No receive in progress (the parent's, on a loop that does
        not run here), no connections of the parent's loops (their sockets are
        shared with the parent), fresh locks.
        """
        fresh = RedisChannelLayer(hosts=self.hosts[:1], capacity=self.capacity)
        for name in _RECEIVE_STATE:
            if hasattr(fresh, name):
                setattr(self, name, getattr(fresh, name))
        self.client_prefix = fresh.client_prefix
        self.seen = SeenIds(self.seen.keep, self.seen.limit)
        self._cleaners_retrying = weakref.WeakSet()
        self._watch = _ReconnectWatch(self)
        self._loop_pools = weakref.WeakKeyDictionary()
        self._loop_pools_lock = threading.Lock()

    # ---------------------------------------------------------------- sending
    def payload(self, channel: str, message: dict[str, Any]) -> bytes:
        """The member channels_redis's ``send`` would write for ``message``."""
        if "!" in channel:
            message = {**message, "__asgi_channel__": channel}
        payload: bytes = self.serialize(message)
        return payload

    def message_id(self, payload: bytes) -> bytes | None:
        """The random prefix that makes ``payload`` unique, if the layer adds one."""
        length = self.random_prefix_length
        return payload[:length] if length > 0 else None

    async def send_payload(self, channel: str, message: dict[str, Any], payload: bytes,
                           score: float, index: int | None = None) -> None:
        """channels_redis's ``send`` of an already serialized message; ``ChannelFull`` when full."""
        if not await self.forward(channel, payload, score, index):
            raise ChannelFull()

    async def forward(self, channel: str, payload: bytes, score: float,
                      index: int | None = None) -> bool:
        """Write ``payload`` with ``score`` to ``channel``; False when the channel is full.

        Writing the same payload again leaves one copy (a sorted set's member).
        ``index``: the host (by default a specific channel's, or the next in turn).
        A specific channel goes to the host its receiver pops from, the hash of
        its non-local part (channels_redis's own ``send`` hashes the whole name,
        which with several hosts is another host than its ``receive`` reads).
        """
        if "!" in channel:
            key = self.prefix + self.non_local_name(channel)
            if index is None:
                index = self.consistent_hash(self.non_local_name(channel))
        else:
            key = self.prefix + channel
            if index is None:
                index = next(self._send_index_generator)
        args = (key, payload, repr(score), int(time.time()) - int(self.expiry),
                self.get_capacity(channel), int(self.expiry))
        added = await _script(self.connection(index), _SEND, _SEND_SHA, 1, args)
        return bool(added)

    async def group_send(self, group: str, message: dict[str, Any],
                         sent: list[bytes] | None = None) -> None:
        """channels_redis's ``group_send`` in two round trips per shard instead of four.

        The payloads written (or maybe written, should a command fail) are
        appended to ``sent``.
        """
        for _index, _names, write in await self.group_send_shards(group, message, sent):
            await write()

    async def group_send_shards(
        self, group: str, message: dict[str, Any], sent: list[bytes] | None = None,
    ) -> list[tuple[int, list[str], Callable[[], Coroutine[Any, Any, None]]]]:
        """Read the group's members; for each host holding some: (host, members, write)."""
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        async with connection.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, min=0, max=int(time.time()) - int(self.group_expiry))
            pipe.zrange(key, 0, -1)
            members = (await pipe.execute())[1]
        channel_names = [x.decode("utf8") for x in members]
        by_shard, payloads, capacities = self._map_channel_keys_to_connection(
            channel_names, message)
        if sent is not None:
            sent.extend(payloads.values())
        shards: list[tuple[int, list[str], Callable[[], Coroutine[Any, Any, None]]]] = []
        for index, keys in by_shard.items():
            on_shard = set(keys)
            names = [n for n in channel_names if self.prefix + self.non_local_name(n) in on_shard]

            async def write(index: int = index, keys: list[str] = keys) -> None:
                now = time.time()
                args = (*keys, *(payloads[k] for k in keys), *(capacities[k] for k in keys),
                        repr(now), int(now) - int(self.expiry), int(self.expiry))
                full = await _script(self.connection(index), _GROUP_SEND, _GROUP_SEND_SHA,
                                     len(keys), args)
                if full:
                    _upstream_log.info("%s of %s channels over capacity in group %s", full,
                                       len(channel_names), group)

            shards.append((index, names, write))
        return shards

    async def receive_at(self, channel: str, index: int) -> dict[str, Any]:
        """``receive``, a general channel popped from host ``index``."""
        if "!" not in channel and self.ring_size > 1:
            # channels_redis takes the host for a general channel from this iterator,
            # before its first await.
            self._receive_index_generator = itertools.repeat(index)
        message: dict[str, Any] = await self.receive(channel)
        return message

    def deserialize(self, message: bytes) -> dict[str, Any]:
        """channels_redis's ``deserialize``; a second copy of a message comes back marked."""
        result: dict[str, Any] = super().deserialize(message)
        length = self.random_prefix_length
        if length > 0 and not self.seen.first_time(message[:length]):
            result[DUPLICATE] = True
        return result

    async def _brpop_with_clean(self, index: int, channel: str, timeout: float) -> bytes | None:
        """channels_redis's blocking pop with its backup queue, keeping a popped message.

        Once BZPOPMIN has returned a message it is in no queue of Redis: should
        the write of its backup copy fail (Redis cut right then, say a blackholed
        network), channels_redis raised and the message was gone. Here it is
        returned all the same; the backup copy only guards against a
        cancellation, and its cleanup finds nothing to pop.
        """
        backup = self._backup_channel_name(channel)
        connection = self.connection(index)
        await _script(connection, _RESTORE, _RESTORE_SHA, 2, (channel, backup))
        watch = POP_WATCH.get()
        if watch is None:
            watch = PopWatch()
        elif watch.abandoned:
            raise Abandoned  # nothing taken yet
        watch.popping = True
        try:
            result = await connection.bzpopmin(channel, timeout=timeout)
            if result is None:
                if watch.abandoned:
                    raise Abandoned
                return None
            _key, member, score = result
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                await connection.zadd(backup, {member: float(score)})
        finally:
            watch.popping = False
        popped: bytes = member
        return popped

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        """Pop the backup copy of a received message, however long Redis is away.

        channels_redis starts this as a task it never awaits: a failure (Redis
        cut just after the receive) was "never retrieved", the copy stayed in
        the backup queue, and the channel's next receive put it back in front:
        the consumer got the message twice. Retrying until Redis answers keeps
        the channel's clean lock held, so no receive of that channel restores
        the copy in the meantime; a cancelled cleanup (the layer closing) ends
        quietly.
        """
        delay = _CLEAN_RETRY_S
        task = asyncio.current_task()
        try:
            while True:
                try:
                    await super()._clean_receive_backup(index, channel)
                    return
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    if task is not None:
                        self._cleaners_retrying.add(task)  # close_pools does not wait for these
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _CLEAN_RETRY_MAX_S)
        except asyncio.CancelledError:
            return
        finally:
            self._cleaners_retrying.discard(task)  # type: ignore[arg-type]

    def create_pool(self, index: int) -> Any:
        pool = _create_pool(with_reconnect(self.hosts[index]))
        self._watch.watch(pool)
        return pool

    def connection(self, index: int) -> Any:
        """This loop's client for host ``index`` (its pool made on first use)."""
        loop_pools = self._loop_pools.get(asyncio.get_running_loop())
        if loop_pools is not None:
            client = loop_pools.clients.get(index)
            if client is not None:
                return client
        return self._new_connection(index)

    def _new_connection(self, index: int) -> Any:
        if not 0 <= index < self.ring_size:
            raise ValueError(f"There are only {self.ring_size} hosts - you asked for {index}!")
        loop_pools = self._pools_of(asyncio.get_running_loop())
        pool = loop_pools.pools.get(index)
        if pool is None:
            pool = loop_pools.pools[index] = self.create_pool(index)
            manager = getattr(pool, "sentinel_manager", None)
            if manager is not None:
                loop_pools.sentinel_managers.append(manager)
        client = loop_pools.clients[index] = aioredis.Redis(connection_pool=pool)
        return client

    def _pools_of(self, loop: asyncio.AbstractEventLoop) -> _LoopPools:
        """This loop's pools, made (and closed with the loop) on first use."""
        loop_pools = self._loop_pools.get(loop)
        if loop_pools is not None:
            return loop_pools
        with self._loop_pools_lock:
            loop_pools = self._loop_pools.get(loop)
            if loop_pools is None:
                loop_pools = self._loop_pools[loop] = _LoopPools()
                close_with_loop(loop, _closing(loop_pools))
            return loop_pools

    async def group_rejoin(self, group: str, members: dict[str, float]) -> None:
        """Write ``members`` (channel: joined at) back into ``group``, and renew its expiry."""
        connection = self.connection(self.consistent_hash(group))
        async with connection.pipeline(transaction=False) as pipe:
            pipe.zadd(self._group_key(group), members)
            pipe.expire(self._group_key(group), int(self.group_expiry))
            await pipe.execute()

    def reconnected(self) -> None:
        callback = self.on_reconnect
        if callback is not None:
            callback()

    async def close_pools(self) -> None:
        """Close this loop's pools (and Sentinel connections); others close with their loops."""
        # A backup copy's cleanup waiting for Redis to come back gives up (the
        # copy is delivered again later, as channels_redis does).
        for task in list(self._cleaners_retrying):
            task.cancel()
        await self.wait_received()
        with self._loop_pools_lock:
            loop_pools = self._loop_pools.get(asyncio.get_running_loop())
        if loop_pools is not None:
            await loop_pools.close()


async def _script(client: Any, script: bytes, sha: str, keys: int, args: tuple[Any, ...]) -> Any:
    """Run a Lua script by its SHA, loading it when the server does not know it yet."""
    try:
        return await client.evalsha(sha, keys, *args)
    except NoScriptError:  # a new or restarted server
        return await client.eval(script, keys, *args)


def close_with_loop(loop: asyncio.AbstractEventLoop,
                    closing: Callable[[], Coroutine[Any, Any, None] | None]) -> None:
    """Run ``closing()``'s work on ``loop`` when it closes: connections are bound to their loop.

    As channels_redis 4.1+ does for its own pools, ``loop.close`` is wrapped:
    an ``async_to_sync`` loop closes right after the call, and what is not
    closed before that can only be left to the garbage collector.
    """
    original = loop.close

    def close(self: asyncio.AbstractEventLoop) -> None:
        self.close = original  # type: ignore[method-assign]
        if not self.is_running() and not self.is_closed():
            work = closing()
            if work is not None:
                with contextlib.suppress(Exception):
                    self.run_until_complete(work)
        original()

    loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]


def _closing(loop_pools: _LoopPools) -> Callable[[], Coroutine[Any, Any, None] | None]:
    ref = weakref.ref(loop_pools)

    def closing() -> Coroutine[Any, Any, None] | None:
        target = ref()
        return target.close() if target is not None and target.pools else None

    return closing


def _create_pool(host: dict[str, Any]) -> Any:
    """The connection pool for one hosts entry, every key of the entry applied.

    channels_redis 4.1+ has this as ``channels_redis.utils.create_pool``;
    channels_redis 4.0 builds an ``address`` entry's pool from the URL alone,
    dropping the socket timeouts (a blackholed Redis then holds a call for
    minutes) and the reconnect retry.
    """
    if _upstream_create_pool is not None:
        return _upstream_create_pool(host)
    options = dict(host)
    if "address" in options:
        return aioredis.ConnectionPool.from_url(options.pop("address"), **options)
    master_name = options.pop("master_name", None)
    if master_name is not None:
        sentinels = options.pop("sentinels")
        sentinel = aioredis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            sentinels, sentinel_kwargs=options.pop("sentinel_kwargs", None))
        return aioredis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
            master_name, sentinel, **options)
    return aioredis.ConnectionPool(**options)


def with_reconnect(host: dict[str, Any]) -> dict[str, Any]:
    """``host`` whose connections retry a command once after a connection error.

    Only connection errors: a read timeout (a hung server) is not retried, so
    finding an outage takes no longer. A retry policy the host sets is kept.
    """
    if {"retry", "retry_on_error", "retry_on_timeout"} & host.keys():
        return host
    retry = Retry(NoBackoff(), 1, (RedisConnectionError,))
    # redis-py 5 checks retry_on_error, later versions the Retry's own error list.
    return {**host, "retry": retry, "retry_on_error": [RedisConnectionError]}


def read_timeout(pool: Any) -> float | None:
    """The read timeout connections of ``pool`` get (redis-py's default when unset)."""
    kwargs = getattr(pool, "connection_kwargs", {})
    if "socket_timeout" in kwargs:
        value = kwargs["socket_timeout"]
        return None if value is None else float(value)
    try:
        default = inspect.signature(pool.connection_class).parameters["socket_timeout"].default
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return None if default in (None, inspect.Parameter.empty) else float(default)


def pop_timeout(read_timeouts: list[float | None]) -> float:
    """Half the shortest read timeout, at most channels_redis's 5 s.

    Half leaves room for a slow reply on a busy server; BZPOPMIN takes
    fractional seconds since Redis 6.
    """
    bounded = [t for t in read_timeouts if t is not None and t > 0]
    if not bounded:
        return _UPSTREAM_POP_TIMEOUT
    return max(0.05, min(_UPSTREAM_POP_TIMEOUT, min(bounded) / 2))


def probe_url(hosts: list[dict[str, Any]]) -> str | None:
    """A URL the breaker's probe can PING for the first host, when one can be built."""
    if not hosts:
        return None
    host = hosts[0]
    address = host.get("address")
    if isinstance(address, str):
        return address
    if "master_name" in host:
        return sentinel_probe_url(host)
    if "host" not in host:
        return None  # a socket path: the breaker needs its own URL setting.
    auth = ""
    if host.get("password"):
        user = quote(str(host.get("username") or ""), safe="")
        auth = f"{user}:{quote(str(host['password']), safe='')}@"
    scheme = "rediss" if host.get("ssl") else "redis"
    return f"{scheme}://{auth}{host['host']}:{int(host.get('port', 6379))}/{int(host.get('db', 0))}"


def sentinel_probe_url(host: dict[str, Any]) -> str | None:
    """``redis+sentinel://`` URL for a channels_redis Sentinel host, None if it cannot be built.

    The host's ``sentinels`` and ``master_name``; its ``password``/``username``
    are the master's, ``sentinel_kwargs``'s the sentinels' own.
    """
    sentinel_kwargs = host.get("sentinel_kwargs") or {}
    master_name = host.get("master_name")
    if not isinstance(sentinel_kwargs, dict) or not isinstance(master_name, str):
        return None
    try:
        return sentinel_url(
            host.get("sentinels") or (), master_name, db=int(host.get("db", 0)),
            username=host.get("username"), password=host.get("password"),
            sentinel_username=sentinel_kwargs.get("username"),
            sentinel_password=sentinel_kwargs.get("password"),
        )
    except (TypeError, ValueError):
        return None


#: What channels_redis keeps of the receives in progress and of its per-loop connections.
_RECEIVE_STATE = ("receive_count", "receive_lock", "receive_event_loop", "receive_buffer",
                  "receive_cleaners", "receive_clean_locks", "_layers")


def _after_fork_in_child() -> None:
    for layer in list(_LAYERS):
        layer.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
