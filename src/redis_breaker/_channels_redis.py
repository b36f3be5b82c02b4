"""The Redis side of ``BreakerChannelLayer``: channels_redis with a blocking pop that fits.

channels_redis blocks in BZPOPMIN for ``brpop_timeout`` (5 s) on a connection
whose read timeout is redis-py's ``socket_timeout``, which redis-py 8 sets to
5 s by default: an idle, healthy Redis then times the pop out and ``receive``
raises (channels_redis issue #422). Here the pop is kept well under the read
timeout, whatever the hosts configure.
"""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import quote

from channels_redis.core import RedisChannelLayer

__all__ = ["RedisLayer", "probe_url"]

_UPSTREAM_POP_TIMEOUT = 5.0


class RedisLayer(RedisChannelLayer):  # type: ignore[misc]
    """``RedisChannelLayer`` whose blocking pop ends before the socket read timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.brpop_timeout = pop_timeout(
            [read_timeout(self.create_pool(i)) for i in range(self.ring_size)]
        )


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
    if "master_name" in host or "host" not in host:
        return None  # Sentinel or a socket path: the breaker needs its own URL setting.
    auth = ""
    if host.get("password"):
        user = quote(str(host.get("username") or ""), safe="")
        auth = f"{user}:{quote(str(host['password']), safe='')}@"
    scheme = "rediss" if host.get("ssl") else "redis"
    return f"{scheme}://{auth}{host['host']}:{int(host.get('port', 6379))}/{int(host.get('db', 0))}"
