"""System checks of every ``BreakerChannelLayer`` and ``BreakerPubSubChannelLayer`` in ``CHANNEL_LAYERS`` (``redis_breaker.E020`` to ``E023``, ``W002``).

Registered by ``redis_breaker.checks``, under the name ``check_channel_layers``.
The layer itself validates nothing of its CONFIG (channels_redis reads
``hosts``), so these checks are the only judge of it; whether a Sentinel host
gives the probe a URL is decided by ``remote.sentinel_probe_url``, the function
the layer's own ``probe_url`` uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.checks import Warning as CheckWarning

from redis_breaker._breaker import Breaker
from redis_breaker._config import url_problem
from redis_breaker._redact import redact_url
from redis_breaker.checks_common import (
    EXAMPLE_TIMEOUT,
    SENTINEL_URL_EXAMPLE,
    TIMEOUTS,
    breaker_has_url,
    given,
    is_subclass,
    setting_path,
    shown,
    url_sets,
)
from redis_breaker.conf import conf

from .remote import sentinel_probe_url

__all__ = ["check_channel_layers"]

_LAYER = "redis_breaker.channels.BreakerChannelLayer"
_PUBSUB_LAYER = "redis_breaker.channels.BreakerPubSubChannelLayer"
_EXAMPLE_HOSTS = (f'[{{"address": "redis://...", "socket_timeout": {EXAMPLE_TIMEOUT}, '
                  f'"socket_connect_timeout": {EXAMPLE_TIMEOUT}}}]')


def check_channel_layers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every ``BreakerChannelLayer`` (or pub/sub layer) in ``CHANNEL_LAYERS``: breaker and hosts."""
    layers = conf.CHANNEL_LAYERS
    if not isinstance(layers, Mapping):
        return []
    found: list[CheckMessage] = []
    for alias, entry in layers.items():
        if isinstance(entry, Mapping) and is_subclass(entry.get("BACKEND"),
                                                             (_LAYER, _PUBSUB_LAYER)):
            found += _check_layer(str(alias), entry)
    return found


def _check_layer(alias: str, entry: Mapping[str, Any]) -> list[CheckMessage]:
    config = entry.get("CONFIG", {})
    where = setting_path("CHANNEL_LAYERS", alias, "CONFIG")
    if not isinstance(config, Mapping):
        return [Error(f"{where} is {shown(config)}, not a dict.",
                      hint=f'Set {where} = {{"hosts": {_EXAMPLE_HOSTS}}}.',
                      id="redis_breaker.E021")]
    found: list[CheckMessage] = []
    breaker = config.get("breaker", "default")
    if not isinstance(breaker, (str, Breaker)):
        path = setting_path("CHANNEL_LAYERS", alias, "CONFIG", "breaker")
        found.append(Error(f"{path} is {shown(breaker)}, not a breaker name.",
                           hint=f'Set {path} to the name of a breaker (a string such as '
                                f'"default", a key of REDIS_BREAKERS).',
                           id="redis_breaker.E020"))
    hosts = config.get("hosts")
    path = setting_path("CHANNEL_LAYERS", alias, "CONFIG", "hosts")
    if not hosts or not isinstance(hosts, (list, tuple)):
        why = ("is missing: channels_redis would use redis://localhost:6379 without timeouts"
               if not hosts else f"is {shown(hosts)}, not a list of hosts")
        found.append(Error(f"{path} {why}.", hint=f"Set {path} = {_EXAMPLE_HOSTS}.",
                           id="redis_breaker.E021"))
        return found
    for i, host in enumerate(hosts):
        host_path = setting_path("CHANNEL_LAYERS", alias, "CONFIG", "hosts", i)
        address = _check_address(host_path, host)
        found += address or _check_host(host_path, host)
    found += _check_sentinel_host(alias, breaker, hosts[0])
    return found


def _check_sentinel_host(alias: str, breaker: Any, host: Any) -> list[CheckMessage]:
    """A Sentinel first host whose sentinels the probe cannot be pointed at (E022)."""
    if not isinstance(host, Mapping) or "master_name" not in host:
        return []
    name = breaker if isinstance(breaker, str) else getattr(breaker, "name", None)
    if isinstance(breaker, str) and breaker_has_url(name):
        return []
    if not isinstance(breaker, str) and getattr(breaker, "url", None):
        return []
    if sentinel_probe_url(dict(host)):
        return []
    path = setting_path("CHANNEL_LAYERS", alias, "CONFIG", "hosts", 0)
    return [Error(
        f"{path} finds its master through Redis Sentinel, but no probe URL can be built from "
        f"it (\"sentinels\" must be (host, port) pairs and \"master_name\" a string), and the "
        f"breaker {name!r} has no URL: it could not find the master again after a failover.",
        hint=f'Set REDIS_BREAKERS["{name}"]["URL"] = "{SENTINEL_URL_EXAMPLE}" (your '
             f'sentinels and master group), or fix {path}["sentinels"].',
        id="redis_breaker.E022",
    )]


_ADDRESS_FIX = ('Write it as "redis://[[user]:password@]host:port/db" (rediss:// for TLS, '
                'unix:///path/to/redis.sock), or as a dict {"host": ..., "port": 1-65535}; '
                "percent-encode any of @ : / ? # % and spaces in the user name or password.")


def _check_address(path: str, host: Any) -> list[CheckMessage]:
    """A hosts entry's address redis-py cannot use (E023): the layer would reach no Redis."""
    why: str | None = None
    where, text = path, ""
    if isinstance(host, str) or (isinstance(host, Mapping)
                                 and isinstance(host.get("address"), str)):
        url = host if isinstance(host, str) else host["address"]
        if not isinstance(host, str):
            where = f'{path}["address"]'
        text = f" {redact_url(url)!r}"
        why = url_problem(url)
        if why is None and url.lower().startswith("redis+sentinel:"):
            why = ("has scheme 'redis+sentinel', which channels_redis does not read (give "
                   "\"sentinels\" and \"master_name\" instead)")
    elif isinstance(host, (list, tuple)) and len(host) == 2:
        why = _host_port_problem(host[0], host[1])
    elif isinstance(host, Mapping) and "host" in host:
        why = _host_port_problem(host.get("host"), host.get("port", 6379))
    if why is None:
        return []
    return [Error(f"{where}{text} {why}: the channel layer cannot reach this Redis, and "
                  "its breaker's probe would PING nothing.",
                  hint=f"Fix {where}. {_ADDRESS_FIX}", id="redis_breaker.E023")]


def _host_port_problem(host: Any, port: Any) -> str | None:
    if not isinstance(host, str) or not host.strip():
        return f"has a host that is {shown(host)}, not a host name or address"
    if any(c.isspace() for c in host):
        return "has whitespace in its host"
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return f"has a port that is {shown(port)}, not a number from 1 to 65535"
    return None


def _check_host(path: str, host: Any) -> list[CheckMessage]:
    """One ``hosts`` entry: a host at all (E021), with both socket timeouts (W002)."""
    if isinstance(host, str):
        set_here = {k: url_sets(host, k) for k in TIMEOUTS}
    elif isinstance(host, (list, tuple)) and len(host) == 2:
        set_here = dict.fromkeys(TIMEOUTS, False)
    elif isinstance(host, Mapping) and ({"address", "host", "sentinels"} & host.keys()):
        address = host.get("address")
        set_here = {k: given(host, k) or (isinstance(address, str) and url_sets(address, k))
                    for k in TIMEOUTS}
    else:
        return [Error(f"{path} is {shown(host)}, not a Redis host.",
                      hint=f"Give each host as a dict with an address and socket timeouts, "
                           f"as in {_EXAMPLE_HOSTS}.",
                      id="redis_breaker.E021")]
    missing = [k for k in TIMEOUTS if not set_here[k]]
    if not missing:
        return []
    return [CheckWarning(
        f"{path} sets no {' / '.join(missing)}: a hung or unreachable Redis holds every "
        "channel layer call until the operating system gives up, before the breaker can "
        "count a failure.",
        hint=f"Write the host as a dict with socket timeouts (seconds), as in {_EXAMPLE_HOSTS}.",
        id="redis_breaker.W002",
    )]
