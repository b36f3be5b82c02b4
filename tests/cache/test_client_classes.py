"""Every django-redis client class behind a BreakerCache: nothing reaches Redis while open.

For ``DefaultClient``, ``HerdClient``, ``ShardClient`` (two real servers) and
``SentinelClient`` (a real Sentinel setup), every public method of the
BreakerCache and of its ``client`` (and every redis-py client the client hands
out) is called with the breaker forced open; the servers' own command
statistics must not move. The same calls pass while the breaker is closed.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django_redis.client import DefaultClient
from django_redis.pool import ConnectionFactory
from redis.lock import Lock

from redis_breaker import BreakerOpenError
from redis_breaker.cache import BreakerCache
from redis_breaker.testing import forced_open
from tests.harness import RedisNotInstalled, RedisSentinelCluster, RedisServer

from .conftest import recovered, wait_for

#: Methods of django-redis's clients that never talk to Redis.
OFFLINE = {"decode", "encode", "make_key", "make_pattern", "get_next_client_index",
           "get_server_name", "disconnect", "close", "do_close_clients"}
#: BreakerCache's own methods that never talk to Redis (or only to the primary's pools).
CACHE_OFFLINE = {"make_key", "make_and_validate_key", "validate_key", "get_backend_timeout",
                 "close", "adopt_breaker_url"}
INCRS = ("incr", "decr", "incr_version", "decr_version")
HOUSEKEEPING = {"info", "ping", "replconf", "publish", "subscribe", "psync", "sync", "sentinel",
                "role", "client", "config", "hello", "select", "command", "multi", "exec"}
#: Methods handing out redis-py clients: each client is tried with a PING.
HANDS_OUT = {"get_client", "get_client_with_index", "connect", "get_server"}

ARGS: dict[str, Any] = {
    "value": 1, "timeout": 100, "when": 4_000_000_000, "pattern": "k*",
    "search": "k*", "field": "f", "member": "m", "delta": 1, "data": {"k1": "v"},
    "dest": "d", "destination": "d", "source": "k1", "min": 0, "max": 10, "start": 0,
    "end": -1, "amount": 1.0, "keys": ["k1", "k2"], "default": 3, "index": 0,
}
VAR_ARGS = {"keys": ("k1", "k2"), "values": ("m",), "members": ("m",), "args": ("k1",)}


def _arguments(fn: Any, name: str) -> tuple[list[Any], dict[str, Any]]:
    """Positional arguments for the parameters ``fn`` requires, by their django-redis names."""
    args: list[Any] = []
    for param in list(inspect.signature(fn).parameters.values()):
        if param.name == "self":
            continue
        if param.kind is param.VAR_POSITIONAL:
            args += (f"{name}:a", f"{name}:b") if param.name == "keys" else VAR_ARGS.get(
                param.name, ("m",))
        elif param.kind is param.VAR_KEYWORD or (param.default is not param.empty and not (
                name == "hset" and param.name in ("field", "value"))):
            continue
        elif param.name == "mapping":
            args.append({"m": 1.0} if name.startswith("z") else {"f": "v"})
        elif param.name in ("key", "source"):
            args.append(f"{name}:k")  # a key per method: no WRONGTYPE between families
        elif param.name == "keys":
            args.append([f"{name}:a", f"{name}:b"])
        else:
            args.append(ARGS[param.name])
    return args, {}


def _use(result: Any) -> None:
    """Whatever the call handed back that talks to Redis later is made to."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int):
        result = result[0]  # get_client_with_index
    if isinstance(result, Lock):
        if result.acquire(blocking=False):
            result.release()
    elif isinstance(result, Iterator):
        list(result)
    elif isinstance(result, dict) and result and all(hasattr(v, "ping") for v in result.values()):
        for client in result.values():
            client.exists("k1")
    elif hasattr(result, "ping") and hasattr(result, "connection_pool"):
        result.exists("k1")


def _calls(cache: BreakerCache) -> list[tuple[str, Any]]:
    """(name, thunk) for every public method of the cache and of its client."""
    out: list[tuple[str, Any]] = []
    client = cache.client
    original = type(client).__mro__[1]  # the guarded class subclasses it alone
    assert original.__module__.startswith("django_redis"), original
    for name in sorted(dir(original)):
        fn = getattr(original, name)
        if name.startswith("_") or not callable(fn) or name in OFFLINE:
            continue
        params = inspect.signature(fn).parameters.values()
        if all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self" for p in params):
            fn = getattr(DefaultClient, name, fn)  # HerdClient's refusals take anything
        args, kwargs = _arguments(fn, name)
        out.append((f"client.{name}", lambda n=name, a=args, k=kwargs: getattr(client, n)(*a, **k)))
    for name in sorted(dir(BreakerCache)):
        fn = getattr(BreakerCache, name)
        if (name.startswith("_") or not inspect.isfunction(fn) or name in CACHE_OFFLINE
                or inspect.iscoroutinefunction(fn)):
            continue
        # The arguments the configured client takes (ShardClient's differ across versions).
        theirs = getattr(original, name, None)
        if theirs is None or all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self"
                                 for p in inspect.signature(theirs).parameters.values()):
            theirs = getattr(DefaultClient, name, fn)
        args, kwargs = _arguments(theirs, name)
        out.append((f"cache.{name}", lambda n=name, a=args, k=kwargs: getattr(cache, n)(*a, **k)))
    return out


def _stats(servers: list[RedisServer]) -> list[dict[str, int]]:
    """Calls per data command on each server, as the server counts them.

    Left out: what sentinels and replication send on their own (PING, INFO,
    REPLCONF, PUBLISH, ...), and INFO itself.
    """
    found = []
    for server in servers:
        raw = server.client().info("commandstats")
        found.append({k: int(v["calls"]) for k, v in raw.items()
                      if k.removeprefix("cmdstat_").split("|")[0] not in HOUSEKEEPING})
    return found


def _check_every_call(cache: BreakerCache, servers: list[RedisServer],
                      settle: Any = None) -> None:
    calls = _calls(cache)
    assert len(calls) > 80, len(calls)  # 88 with django-redis 5.4, more with 7
    # Closed: each call works (the same calls, so the open run below is no accident of arguments).
    unsupported = set()  # HerdClient has no incr, decr, touch
    for name, call in calls:
        if name not in ("cache.clear", "client.clear"):
            try:
                _use(call())
            except NotImplementedError:
                unsupported.add(name)
            except ValueError:  # incr/decr/incr_version of a missing key, as documented
                assert name.rpartition(".")[2] in INCRS, name
    if settle is not None:
        settle()
    with forced_open(cache.breaker):
        before = _stats(servers)
        refused = 0
        for name, call in calls:
            try:
                _use(call())
            except BreakerOpenError:
                refused += 1
            except ValueError:  # the fallback's: a counter it does not hold
                assert name.rpartition(".")[2] in INCRS, name
            except NotImplementedError:
                assert name in unsupported, name
            assert _stats(servers) == before, f"{name} reached Redis while the breaker was open"
        # The direct ones, and every client handed out (29 of 88 calls with django-redis 5.4).
        assert refused > len(calls) // 4, (refused, len(calls))
    # What was written while open is replayed now: nothing is left for a later test.
    wait_for(lambda: recovered(cache), what="the journal to be replayed")


def _entry(location: Any, **options: Any) -> dict[str, Any]:
    return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": location,
            "OPTIONS": {"SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5, **options}}


def _breaker_cache(settings: Any, entry: dict[str, Any]) -> BreakerCache:
    settings.CACHES = {"redis": entry, "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                                                   "OPTIONS": {"PRIMARY": "redis"}}}
    cache = caches["default"]
    assert isinstance(cache, BreakerCache)
    return cache


@pytest.mark.parametrize("client_class", ["django_redis.client.DefaultClient",
                                          "django_redis.client.HerdClient"])
def test_default_and_herd_clients(settings: Any, redis_server: RedisServer,
                                  client_class: str) -> None:
    """One server, and a replica URL too: every client index is guarded."""
    cache = _breaker_cache(settings, _entry([redis_server.url, redis_server.url],
                                            CLIENT_CLASS=client_class))
    _check_every_call(cache, [redis_server])


# django-redis 7's ShardClient passes its own client on between its methods, which warns.
@pytest.mark.filterwarnings("ignore:.* on sharded client should not specify client")
def test_shard_client(settings: Any, redis_server: RedisServer) -> None:
    """Two shards: keys(), delete_pattern() and clear() walk every server, each guarded."""
    other = RedisServer().start()
    try:
        cache = _breaker_cache(settings, _entry([redis_server.url, other.url],
                                                CLIENT_CLASS="django_redis.client.ShardClient"))
        cache.set("spread-a", 1)
        cache.set("spread-b", 2)
        _check_every_call(cache, [redis_server, other])
        # The primary's own clients stay unguarded (the view's are its own).
        assert not any(type(c).__name__.startswith("Guarded")
                       for c in cache.primary.client._serverdict.values())  # type: ignore[attr-defined]
    finally:
        other.close()


def test_sentinel_client(settings: Any) -> None:
    # A master group of its own: django-redis keeps its connection pools in a
    # process-wide dict keyed by LOCATION, so a later test naming the same
    # group would otherwise get this cluster's pools, pointing at sentinels gone.
    try:
        cluster = RedisSentinelCluster(master_name="rb-client-classes")
    except RedisNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    location = f"redis://{cluster.master_name}/0"
    try:
        cluster.start()
        cache = _breaker_cache(settings, _entry(
            location, CLIENT_CLASS="django_redis.client.SentinelClient",
            CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
            SENTINELS=cluster.sentinels))
        cluster.wait_for_replication()
        _check_every_call(cache, [cluster.master, *cluster.replicas],
                          settle=cluster.wait_for_replication)
    finally:
        for key in [k for k in ConnectionFactory._pools if k.startswith(location)]:
            ConnectionFactory._pools.pop(key).disconnect()
        cluster.close()
