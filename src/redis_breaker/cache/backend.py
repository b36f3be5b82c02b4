"""``BreakerCache``: a Django cache backend that survives Redis outages without stale reads.

::

    CACHES = {
        "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                  "LOCATION": "redis://...", "OPTIONS": {"socket_timeout": 0.5}},
        "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                    "OPTIONS": {"PRIMARY": "redis", "BREAKER": "default"}},
    }

Closed: every call goes to the PRIMARY through the breaker. Open, or on a
connection error: the FALLBACK serves it and keys that change are journaled
(see ``journal``). Errors that are not an outage (``incr`` of a missing key)
are the primary's own. Every public method and keyword of the primary exists
here (django-redis's in ``families``); ``routing`` says where each call goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from .clients import KeyNotReplayedError
from .families import DjangoRedisMethods
from .journal import INTEGRATION, PASS, Foreign
from .locations import first_location, sentinel_location, uses_sentinel
from .routing import _REGISTERED, _Bound

__all__ = ["BreakerCache", "KeyNotReplayedError", "sentinel_location", "uses_sentinel"]

# The name other modules and tests have imported it by.
_first_location = first_location

_MISSING = object()

#: ``set``'s ``nx``/``xx`` as the keywords handed to the primary, made once (never changed).
_SET_FLAGS: dict[tuple[bool, bool], dict[str, Any]] = {
    (nx, xx): {k: True for k, on in (("nx", nx), ("xx", xx)) if on}
    for nx in (False, True) for xx in (False, True)
}


def _false(*args: Any, **kwargs: Any) -> bool:
    return False


def _add(bound: _Bound, key: Any, value: Any, timeout: Any, *, version: int) -> bool:
    return bool(bound.fallback.add(key, value, timeout, version=version))


def _set_xx(bound: _Bound, key: Any, value: Any, timeout: Any, *, version: int) -> bool:
    if not bound.fallback.has_key(key, version=version):
        return False
    bound.fallback.set(key, value, timeout, version=version)
    return True


def _incr_or_create(bound: _Bound, key: Any, delta: int, *, version: int) -> int:
    bound.fallback.add(key, 0, None, version=version)
    return int(bound.fallback.incr(key, delta, version=version))


class BreakerCache(DjangoRedisMethods):
    """Delegates to the PRIMARY cache alias through a breaker; FALLBACK while Redis is away."""

    # ------------------------------------------------------- the primary's own
    @property
    def client(self) -> Any:
        """The primary's cache client, handing out guarded redis-py clients.

        django-redis: its client (``cache.client.get_client()``, what
        ``django_redis.get_redis_connection`` returns); Django's RedisCache:
        its ``RedisCacheClient`` (``get_client(key, write=...)``). Every command
        sent through them goes through the breaker (``BreakerOpenError`` while
        it is open); they share the primary's connection pools.
        """
        bound = self._bind()
        return bound.direct.client if bound.django_redis else bound.direct._cache  # type: ignore[attr-defined]

    @property
    def _cache(self) -> Any:
        # Django's RedisCache idiom (``cache._cache.get_client()``), guarded.
        bound = self._bind()
        if bound.django_redis:
            raise AttributeError("_cache: the PRIMARY is django-redis; use .client")
        return bound.direct._cache  # type: ignore[attr-defined]

    @property
    def _class(self) -> Any:
        return self._bind().primary._class  # type: ignore[attr-defined]

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> Any:
        return self._bind().primary.get_backend_timeout(timeout)

    def make_key(self, key: Any, version: int | None = None) -> str:
        return self._bind().primary.make_key(key, version=version)

    def validate_key(self, key: Any) -> None:
        self._bind().primary.validate_key(key)

    def make_and_validate_key(self, key: Any, version: int | None = None) -> str:
        return self._bind().primary.make_and_validate_key(key, version=version)

    # ----------------------------------------------------------- single keys
    # get, has_key and set inline ``_bind`` and the journal's test: the closed
    # path is one call of the primary's method through the breaker
    # (``_Bound.get_call`` etc.), the version left to the primary.
    def get(self, key: Any, default: Any = None, version: int | None = None,
            client: Any = None) -> Any:
        bound = self._bound
        if bound is None or _REGISTERED.get(self._breaker_name) is not bound.breaker:
            bound = self._bind()
        if client is not None:
            return self._direct("get", (key,), (key, default),
                                {"version": version, "client": client})
        journal = bound.journal
        if journal.active:
            found = journal.read(key, bound.primary.version if version is None else version,
                                 default)
            if found is not PASS:
                return found
        return bound.get_call(key, default, version)

    def has_key(self, key: Any, version: int | None = None, client: Any = None) -> bool:
        bound = self._bound
        if bound is None or _REGISTERED.get(self._breaker_name) is not bound.breaker:
            bound = self._bind()
        if client is not None:
            return bool(self._direct("has_key", (key,), (key,),
                                     {"version": version, "client": client}))
        journal = bound.journal
        if journal.active:
            v = bound.primary.version if version is None else version
            if journal.diverts(key, v):
                return bool(bound.fallback.has_key(key, version=v))
        return bool(bound.has_key_call(key, version))

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None, client: Any = None, nx: bool = False,
            xx: bool = False) -> Any:
        bound = self._bound
        if bound is None or _REGISTERED.get(self._breaker_name) is not bound.breaker:
            bound = self._bind()
        if client is not None or nx or xx:
            extra = _SET_FLAGS[bool(nx), bool(xx)]
            if client is not None:
                return self._direct("set", (key,), (key, value, timeout),
                                    {"version": version, "client": client, **extra})
            if nx:  # as ``add``
                return bool(self._write("set", key, version, (value, timeout), extra,
                                        _false if self._add_fail_closed else _add))
            return bool(self._write("set", key, version, (value, timeout), extra, _set_xx))
        journal = bound.journal
        if journal.active:
            v = bound.primary.version if version is None else version
            if journal.diverts(key, v):
                return bound.set_failed(key, value, timeout, v)
        return bound.set_call(key, value, timeout, version)

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None, client: Any = None) -> bool:
        if client is not None:
            return bool(self._direct("add", (key,), (key, value, timeout),
                                     {"version": version, "client": client}))
        # ADD_FAIL_CLOSED: when Redis cannot say whether the key exists, say it does.
        return bool(self._write("add", key, version, (value, timeout), None,
                                _false if self._add_fail_closed else _add))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None,
              client: Any = None) -> bool:
        if client is not None:
            return bool(self._direct("touch", (key,), (key, timeout),
                                     {"version": version, "client": client}))
        return bool(self._write("touch", key, version, (timeout,)))

    def delete(self, key: Any, version: int | None = None, prefix: str | None = None,
               client: Any = None) -> bool:
        if client is not None:
            extra = {"prefix": prefix} if prefix is not None else {}
            return bool(self._direct("delete", (key,), (key,),
                                     {"version": version, "client": client, **extra}))
        if prefix is not None and prefix != self._bind().primary.key_prefix:
            return self._delete_foreign(key, version, prefix)
        return bool(self._write("delete", key, version))

    def _delete_foreign(self, key: Any, version: int | None, prefix: str) -> bool:
        # Another prefix's key: nothing of it is cached here, but Redis must lose it.
        bound = self._bind()
        v = self._version(bound, version)
        journal = bound.journal
        foreign = (Foreign(prefix, key),)

        def served_by_fallback(*a: Any, **kw: Any) -> bool:
            return journal.write(foreign, v, _false)

        return bool(bound.breaker.call_with_fallback(
            bound.primary.delete, served_by_fallback, (key,), {"version": v, "prefix": prefix},
            integration=INTEGRATION))

    def incr(self, key: Any, delta: int = 1, version: int | None = None, client: Any = None,
             ignore_key_check: bool = False) -> int:
        if client is not None or ignore_key_check:
            extra = {"ignore_key_check": True} if ignore_key_check else {}
            if client is not None:
                return int(self._direct("incr", (key,), (key, delta),
                                        {"version": version, "client": client, **extra}))
            return int(self._write("incr", key, version, (delta,), extra, _incr_or_create))
        return int(self._write("incr", key, version, (delta,)))

    def decr(self, key: Any, delta: int = 1, version: int | None = None,
             client: Any = None) -> int:
        if client is not None:
            return int(self._direct("decr", (key,), (key, delta),
                                    {"version": version, "client": client}))
        return int(self._write("incr", key, version, (-delta,)))

    def incr_version(self, key: Any, delta: int = 1, version: int | None = None,
                     client: Any = None) -> int:
        if client is not None:
            return int(self._direct("incr_version", (key,), (key, delta),
                                    {"version": version, "client": client}))
        bound = self._bind()
        v = self._version(bound, version)
        journal = bound.journal
        pair = (key,)

        def on_fallback(key: Any, delta: int = 1, version: int = v) -> int:
            with journal.lock:
                journal.record(pair, version)
                journal.record(pair, version + delta)
                return _fallback_incr_version(bound.fallback, key, delta, version)

        if journal.active and journal.diverts(key, v, v + delta):
            return on_fallback(key, delta, v)
        return int(bound.breaker.call_with_fallback(
            bound.primary.incr_version, on_fallback, (key, delta), {"version": v},
            integration=INTEGRATION,
        ))

    # ------------------------------------------------------------- many keys
    def get_many(self, keys: Iterable[Any], version: int | None = None,
                 client: Any = None) -> dict[Any, Any]:
        keys = list(keys)
        if client is not None:
            return dict(self._direct("get_many", keys, (keys,),
                                     {"version": version, "client": client}))
        bound = self._bind()
        v = self._version(bound, version)
        journal = bound.journal
        found: dict[Any, Any] = {}
        if journal.active:
            covered, keys = journal.divert_many(keys, v)
            if covered:
                found.update(bound.fallback.get_many(covered, version=v))
            if not keys:
                return found
        found.update(bound.breaker.call_with_fallback(
            bound.primary.get_many, bound.get_many_uncovered, (keys,), {"version": v},
            integration=INTEGRATION,
        ))
        return found

    def set_many(self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None, client: Any = None) -> Any:
        data = dict(data)
        if client is not None:
            return self._direct("set_many", data, (data, timeout),
                                {"version": version, "client": client})
        bound = self._bind()
        v = self._version(bound, version)
        journal = bound.journal
        failed: list[Any] = []
        if journal.active:
            covered, rest = journal.divert_many(data, v)
            if covered:
                failed += journal.write(covered, v, bound.fallback.set_many,
                                        {k: data[k] for k in covered}, timeout, version=v) or []
            data = {k: data[k] for k in rest}
            if not data:
                return None if bound.django_redis else failed
        written = list(data)

        def served_by_fallback(*a: Any, **kw: Any) -> Any:
            return journal.write(written, v, bound.fallback.set_many, *a, **kw)

        failed += bound.breaker.call_with_fallback(
            bound.primary.set_many, served_by_fallback, (data, timeout), {"version": v},
            integration=INTEGRATION,
        ) or []
        return None if bound.django_redis else failed

    def delete_many(self, keys: Iterable[Any], version: int | None = None,
                    client: Any = None) -> Any:
        keys = list(keys)
        if client is not None:
            return self._direct("delete_many", keys, (keys,),
                                {"version": version, "client": client})
        bound = self._bind()
        journal = bound.journal
        count = 0
        if journal.active:
            v = self._version(bound, version)
            covered, keys = journal.divert_many(keys, v)
            if covered:
                count += journal.write(covered, v, bound.delete_count, covered, v)
        if keys:
            count += int(bound.delete_many_call(keys, version) or 0)
        # django-redis counts what it deleted; Django's RedisCache returns nothing.
        return count if bound.django_redis else None

    def clear(self, client: Any = None) -> Any:
        if client is not None:
            return self._direct("clear", (), (), {"client": client})
        bound = self._bind()
        journal = bound.journal

        def served_by_fallback() -> None:
            # Redis is cleared on recovery, of this cache's keys only (keyspace).
            with journal.lock:
                journal.cover_all()
                bound.fallback.clear()

        result = bound.breaker.call_with_fallback(bound.primary.clear, served_by_fallback,
                                                  integration=INTEGRATION)
        with journal.lock:
            # Whatever the fallback held is older than an empty primary.
            bound.fallback.clear()
        return result

    def close(self, **kwargs: Any) -> None:
        bound = self._bound
        if bound is not None:
            # Through the guarded copy, which shares the primary's client and pools.
            bound.direct.close(**kwargs)

    # ------------------------------------------------------------------ async
    # Neither Django's RedisCache nor django-redis has native async methods; a
    # thread hop is what they cost anyway. While the breaker is open nothing
    # touches Redis, so the fallback answers inline without the hop.
    def _inline(self) -> bool:
        return self._bind().breaker.is_open

    async def _async(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._inline():
            return fn(*args, **kwargs)
        return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return await self._async(self.get, key, default, version)

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        return bool(await self._async(self.has_key, key, version))

    async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> Any:
        return await self._async(self.set, key, value, timeout, version)

    async def aadd(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> bool:
        return bool(await self._async(self.add, key, value, timeout, version))

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT,
                     version: int | None = None) -> bool:
        return bool(await self._async(self.touch, key, timeout, version))

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return bool(await self._async(self.delete, key, version))

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(await self._async(self.incr, key, delta, version))

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(await self._async(self.decr, key, delta, version))

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        result: dict[Any, Any] = await self._async(self.get_many, list(keys), version)
        return result

    async def aset_many(self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT,
                        version: int | None = None) -> Any:
        return await self._async(self.set_many, dict(data), timeout, version)

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> Any:
        return await self._async(self.delete_many, list(keys), version)

    async def aget_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT,
                          version: int | None = None) -> Any:
        return await self._async(self.get_or_set, key, default, timeout, version)

    async def aincr_version(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(await self._async(self.incr_version, key, delta, version))

    async def adecr_version(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(await self._async(self.decr_version, key, delta, version))

    async def aclear(self) -> None:
        await self._async(self.clear)

    async def aclose(self, **kwargs: Any) -> None:
        await self._async(self.close, **kwargs)


def _fallback_incr_version(cache: BaseCache, key: Any, delta: int, version: int) -> int:
    value = cache.get(key, _MISSING, version=version)
    if value is _MISSING:
        raise ValueError(f"Key '{key}' not found")
    cache.set(key, value, version=version + delta)
    cache.delete(key, version=version)
    return version + delta
