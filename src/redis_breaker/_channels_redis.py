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
command that meets a dead connection is sent once more on a fresh one, and
the layer hears of it (``on_reconnect``): Redis may have restarted empty
without anyone seeing an error, and the group memberships of this process
must be written again.

With Sentinel hosts, channels_redis closes its pools but never the
connections its ``Sentinel`` managers opened to the sentinels themselves;
``close_pools`` here closes those too.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from ._sentinel import aclose_sentinel, sentinel_url

__all__ = ["RedisLayer", "probe_url", "sentinel_probe_url"]

_UPSTREAM_POP_TIMEOUT = 5.0
T = TypeVar("T")


class NoticingRetry(Retry):
    """A ``Retry`` that tells its layer when a command went through only on a new connection.

    redis-py deep-copies the retry into every connection; a weak reference is
    copied as it is, so every copy still points at the one layer.
    """

    def __init__(self, *args: Any, layer: weakref.ref[RedisLayer] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._layer = layer

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[..., Any],
                              *args: Any, **kwargs: Any) -> T:
        failed = False

        async def noting(*fail_args: Any) -> None:
            nonlocal failed
            failed = True
            result = fail(*fail_args)
            if inspect.isawaitable(result):
                await result

        result: T = await super().call_with_retry(do, noting, *args, **kwargs)
        if failed:
            layer = self._layer() if self._layer is not None else None
            if layer is not None:
                layer.reconnected()
        return result


class RedisLayer(RedisChannelLayer):  # type: ignore[misc]
    """``RedisChannelLayer`` whose blocking pop ends before the socket read timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Sentinel managers of the pools made so far: channels_redis closes the
        #: pools but never the connections to the sentinels themselves.
        self._sentinel_managers: list[Any] = []
        #: Called (on the event loop) when a command succeeded only after reconnecting.
        self.on_reconnect: Callable[[], None] | None = None
        self.brpop_timeout = pop_timeout(
            [read_timeout(self.create_pool(i)) for i in range(self.ring_size)]
        )
        self._sentinel_managers.clear()  # those pools only told the timeouts, never connected

    def create_pool(self, index: int) -> Any:
        pool = _create_pool(with_reconnect(self.hosts[index], self))
        manager = getattr(pool, "sentinel_manager", None)
        if manager is not None:
            self._sentinel_managers.append(manager)
        return pool

    def reconnected(self) -> None:
        callback = self.on_reconnect
        if callback is not None:
            callback()

    async def close_pools(self) -> None:
        await super().close_pools()
        managers, self._sentinel_managers = self._sentinel_managers, []
        for manager in managers:
            await aclose_sentinel(manager)  # redis-py 5.0's Sentinel has no aclose()


def _create_pool(host: dict[str, Any]) -> Any:
    """The connection pool for one hosts entry, every key of the entry applied.

    channels_redis 4.1+ has this as ``channels_redis.utils.create_pool``;
    channels_redis 4.0 builds an ``address`` entry's pool from the URL alone,
    dropping the socket timeouts (a blackholed Redis then holds a call for
    minutes) and the reconnect retry.
    """
    try:
        from channels_redis.utils import create_pool
    except ImportError:
        pass
    else:
        return create_pool(host)
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


def with_reconnect(host: dict[str, Any], layer: RedisLayer | None = None) -> dict[str, Any]:
    """``host`` whose connections retry a command once after a connection error.

    Only connection errors: a read timeout (a hung server) is not retried, so
    finding an outage takes no longer. A retry policy the host sets is kept
    (and then the layer is not told of reconnections).
    """
    if {"retry", "retry_on_error", "retry_on_timeout"} & host.keys():
        return host
    retry = NoticingRetry(NoBackoff(), 1, (RedisConnectionError,),
                          layer=None if layer is None else weakref.ref(layer))
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
