"""Guarded views of a primary cache: its backend, its cache client, its redis-py clients.

``direct_backend(primary, breaker)`` is a shallow copy of the PRIMARY backend
whose cache client (Django's ``RedisCacheClient`` as ``_cache``, django-redis's
client as ``client``) hands out guarded redis-py clients: every command it
sends goes through the breaker, ``BreakerOpenError`` while it is open. It is
what ``BreakerCache.client`` returns and what serves the calls that have no
fallback (collections, ``keys``, ``lock``, a call given ``client=``). The
primary itself is untouched and shares its connection pools with the view.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache

from redis_breaker._breaker import Breaker
from redis_breaker._client import ClassCache, guard_client, guarded_view, is_guarded
from redis_breaker._errors import BreakerOpenError

__all__ = ["KeyNotReplayedError", "direct_backend", "is_django_redis", "raw_write_clients"]

_classes = ClassCache()


class KeyNotReplayedError(BreakerOpenError):
    """A call with no fallback for a key that changed while Redis was away, not yet replayed.

    Redis may still hold the key's value from before the outage until the
    journal's replay deletes it (usually milliseconds after recovery); a call
    that can only be answered by Redis (a collection, a lock, a call given
    ``client=``) is refused meanwhile rather than served that value.
    """

    def __init__(self, name: str, key: Any) -> None:
        super().__init__(name, None, "replaying")
        self.key = key

    def __str__(self) -> str:
        return (f"cache key {self.key!r} changed while Redis was away and is not replayed yet "
                f"(breaker {self.name!r}); retry shortly")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.key))


def is_django_redis(cache: BaseCache) -> bool:
    """Whether ``cache`` is django-redis's backend (else Django's own RedisCache)."""
    return any(c.__module__.startswith("django_redis") for c in type(cache).__mro__)


def client_method(cache: BaseCache, op: str) -> Callable[..., Any] | None:
    """django-redis's client's own ``op`` when ``cache.op`` only hands the call to it.

    Most of django-redis's ``RedisCache`` methods are ``return
    self.client.op(*args, **kwargs)`` under ``omit_exception`` (``get`` goes
    through ``_get``), which turns a ``ConnectionInterrupted`` back into the
    Redis error it wraps, or swallows it with ``IGNORE_EXCEPTIONS`` (refused
    for a PRIMARY). BreakerCache calls the client's method directly and
    unwraps the error itself (``guarded_function(unwrap=...)``): three Python
    calls fewer on every call, and the same answers and errors. None when
    ``op`` is anything else: a subclass's own method, a body that does more
    (``delete_pattern`` sets ``itersize``), another ``client`` property.
    """
    try:
        from django_redis.cache import RedisCache as Base
    except ImportError:  # pragma: no cover - called for django-redis caches only
        return None
    cls: Any = type(cache)
    if not isinstance(cache, Base) or cls.client is not Base.client:
        return None
    name = op
    if op == "get":
        if cls.get is not Base.get:
            return None
        name = "_get"
    method = getattr(cls, name, None)
    if method is None or method is not getattr(Base, name, None):
        return None
    code = getattr(getattr(method, "__wrapped__", None), "__code__", None)
    if code is None or code.co_names != ("client", op):
        return None
    found: Callable[..., Any] | None = getattr(cache.client, op, None)
    return found


# Each guarded class subclasses the original alone, so ``__class__`` can be
# swapped on a copy (a mixin base would change the instance layout).
def _django_client(base: Any) -> type:
    class GuardedRedisCacheClient(base):  # type: ignore[misc]
        """Django's ``RedisCacheClient`` makes a redis-py client per call: each is guarded."""

        def get_client(self, key: Any = None, *, write: bool = False) -> Any:
            return guard_client(super().get_client(key, write=write), self._rb_breaker)

    return GuardedRedisCacheClient


def _django_redis_client(base: Any) -> type:
    sharded = hasattr(base, "get_server")  # ShardClient: a client per server, by name

    class GuardedClient(base):  # type: ignore[misc]
        """django-redis's client caches its redis-py clients: they are seen through views.

        Every way a method reaches Redis hands out a view: ``get_client``,
        ``get_client_with_index``, ``connect`` and, for ``ShardClient``,
        ``get_server`` and the ``_serverdict`` its ``keys``, ``delete_pattern``
        and ``clear`` walk (a dict of views, made with the view).
        """

        def _rb_view_of(self, raw: Any) -> Any:
            if raw is None or is_guarded(raw):
                return raw
            found = self._rb_views.get(id(raw))
            if found is None or found[0] is not raw:
                found = (raw, guarded_view(raw, self._rb_breaker))
                self._rb_views[id(raw)] = found
            return found[1]

        def _rb_connected(self) -> None:
            # The clients list is the primary's own: it must keep raw clients, so
            # the ones django-redis would make through ``self.connect`` (guarded
            # here) are made first with the original ``connect``.
            clients = self._clients
            for index, found in enumerate(clients):
                if found is None:
                    clients[index] = base.connect(self, index)

        def get_client(self, write: bool = True, tried: Any = None, **kwargs: Any) -> Any:
            if not sharded:
                self._rb_connected()
            found = super().get_client(write=write, tried=tried, **kwargs)
            if isinstance(found, tuple):  # django-redis 5.4's show_index=True
                return self._rb_view_of(found[0]), found[1]
            return self._rb_view_of(found)

        def get_client_with_index(self, write: bool = True, tried: Any = None) -> Any:
            if not sharded:
                self._rb_connected()
            raw, index = super().get_client_with_index(write=write, tried=tried)
            return self._rb_view_of(raw), index

        def connect(self, *args: Any, **kwargs: Any) -> Any:
            made = super().connect(*args, **kwargs)
            if isinstance(made, dict):  # ShardClient: every server's, by name
                return {name: self._rb_view_of(raw) for name, raw in made.items()}
            return self._rb_view_of(made)

        if sharded:
            def get_server(self, key: Any) -> Any:
                return self._rb_view_of(super().get_server(key))

    return GuardedClient


def _guarded_class(cls: type, factory: Callable[[Any], type]) -> type:
    return _classes.make(cls, factory)


def _view(raw: Any, factory: Callable[[Any], type], breaker: Breaker) -> Any:
    view = copy.copy(raw)
    view.__class__ = _guarded_class(type(raw), factory)
    view._rb_breaker = breaker
    return view


def direct_backend(primary: BaseCache, breaker: Breaker) -> BaseCache:
    """A copy of ``primary`` whose every Redis command goes through ``breaker``.

    A primary that is not a Redis cache (reported by ``redis_breaker.E011``)
    has no Redis client to guard: it is used as it is.
    """
    backend = copy.copy(primary)
    if is_django_redis(primary):
        view = _view(primary.client, _django_redis_client, breaker)  # type: ignore[attr-defined]
        view._rb_views = {}
        servers = getattr(view, "_serverdict", None)
        if isinstance(servers, dict):
            # ShardClient's keys/delete_pattern/clear walk this dict: views of its clients.
            view._serverdict = {name: view._rb_view_of(raw) for name, raw in servers.items()}
        backend._client = view  # type: ignore[attr-defined]
    elif isinstance(primary, RedisCache):
        # Django's RedisCache keeps its client in a cached_property.
        backend.__dict__["_cache"] = _view(primary._cache,
                                           _django_client, breaker)
    return backend


def raw_write_clients(primary: BaseCache) -> list[Any]:
    """The primary's redis-py clients that take writes (one per shard), unguarded."""
    if is_django_redis(primary):
        client = primary.client  # type: ignore[attr-defined]
        servers = getattr(client, "_serverdict", None)
        if isinstance(servers, dict):
            return list(servers.values())
        return [client.get_client(write=True)]
    return [primary._cache.get_client(None, write=True)]  # type: ignore[attr-defined]
