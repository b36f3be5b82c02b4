"""django-redis's methods beyond ``BaseCache``, on ``BreakerCache``, by family.

Each exists when the PRIMARY is django-redis's ``RedisCache`` (with Django's
own ``RedisCache`` it raises ``NotImplementedError``, as the primary has no
such method) and takes the same arguments, ``client=`` included.

- TTL: ``ttl``/``pttl`` are reads (the fallback's record of the key while Redis
  is away: 0 for a key it does not hold, as django-redis answers for a missing
  key); ``expire``/``pexpire``/``expire_at``/``pexpire_at``/``persist`` are
  writes (the fallback's copy gets the new expiry, the key is journaled).
- Patterns: ``delete_pattern`` is a write (journaled as a pattern that covers
  every key it matches and is run on Redis on recovery); ``keys`` and
  ``iter_keys`` list what Redis holds, so they are direct.
- Collections (``h*``, ``s*``, ``z*``) and ``lock``: direct. A set, hash or
  sorted set has no local stand-in that could be merged back, and a lock held
  only in one process's memory excludes nobody.
"""

from __future__ import annotations

import datetime
import functools
import re
import time
from collections.abc import Iterator
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.cache.backends.locmem import LocMemCache

from .keyspace import glob_escape, glob_regex
from .routing import _REGISTERED, CacheRouting, _Bound

__all__ = ["DjangoRedisMethods"]


def _seconds(value: Any, scale: float = 1.0) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value) / scale


def _until(when: Any, scale: float = 1.0) -> float:
    if isinstance(when, datetime.datetime):
        return when.timestamp() - time.time()
    return float(when) / scale - time.time()


def fallback_ttl(bound: _Bound, key: Any, *, version: int, millis: bool) -> int | None:
    """What django-redis's ttl/pttl would say of the fallback's copy of ``key``."""
    fallback = bound.fallback
    if not fallback.has_key(key, version=version):
        return 0
    expiry = None
    if isinstance(fallback, LocMemCache):
        made = fallback.make_key(key, version=version)
        with fallback._lock:  # type: ignore[attr-defined]
            expiry = fallback._expire_info.get(made)  # type: ignore[attr-defined]
    if expiry is None:
        return None  # forever, or a fallback that does not tell
    left = max(0.0, expiry - time.time())
    return int(left * 1000) if millis else int(left)


def _touch(bound: _Bound, key: Any, seconds: float | None, *, version: int) -> bool:
    fallback: BaseCache = bound.fallback
    if seconds is not None and seconds <= 0:
        return bool(fallback.delete(key, version=version))
    return bool(fallback.touch(key, seconds, version=version))


# The fallbacks of the TTL family, ``fallback(bound, key, *args, version=v)``:
# functions of the module, so each method's route is made once (``_Bound.route``).
def _ttl_fallback(bound: _Bound, key: Any, *, version: int) -> int | None:
    return fallback_ttl(bound, key, version=version, millis=False)


def _pttl_fallback(bound: _Bound, key: Any, *, version: int) -> int | None:
    return fallback_ttl(bound, key, version=version, millis=True)


def _persist_fallback(bound: _Bound, key: Any, *, version: int) -> bool:
    return _touch(bound, key, None, version=version)


def _expire_fallback(bound: _Bound, key: Any, timeout: Any, *, version: int) -> bool:
    if timeout is DEFAULT_TIMEOUT:
        # The primary's default, not the fallback's, so both expire a key alike.
        timeout = bound.primary.default_timeout
    return _touch(bound, key, _seconds(timeout), version=version)


def _pexpire_fallback(bound: _Bound, key: Any, timeout: Any, *, version: int) -> bool:
    if timeout is DEFAULT_TIMEOUT:
        return _expire_fallback(bound, key, timeout, version=version)
    return _touch(bound, key, _seconds(timeout, 1000.0), version=version)


def _expire_at_fallback(bound: _Bound, key: Any, when: Any, *, version: int) -> bool:
    return _touch(bound, key, _until(when), version=version)


def _pexpire_at_fallback(bound: _Bound, key: Any, when: Any, *, version: int) -> bool:
    return _touch(bound, key, _until(when, 1000.0), version=version)


#: ``delete_pattern``'s route in ``_Bound.routes``: its fallback needs the prefix too.
_PATTERN_ROUTE = ("pattern", "delete_pattern", None)


def _pattern_matcher(bound: _Bound, pattern: str, version: int | None,
                     prefix: str | None) -> re.Pattern[str]:
    """The Redis keys ``delete_pattern(pattern)`` deletes (needed only while the journal is in use)."""
    primary = bound.primary
    v = primary.version if version is None else version
    return glob_regex(str(primary.key_func(
        pattern, glob_escape(primary.key_prefix if prefix is None else prefix),
        glob_escape(str(v)))))


def _forget_local(bound: _Bound, matching: re.Pattern[str], prefix: str | None) -> int:
    # Covered keys the pattern matches lose their fallback copy (a miss, never
    # the value the pattern deleted); the pattern keeps covering them. The caller
    # holds the journal's lock.
    gone = 0
    if prefix is None or prefix == bound.primary.key_prefix:
        for key, ver in bound.journal.named_matching(matching):
            gone += bool(bound.fallback.delete(key, version=ver))
    return gone


def _delete_pattern_fallback(bound: _Bound, pattern: str, version: int | None = None,
                             prefix: str | None = None, **kwargs: Any) -> int:
    """``delete_pattern`` while Redis is away: journaled, run on Redis on recovery."""
    v = bound.primary.version if version is None else version
    matching = _pattern_matcher(bound, pattern, v, prefix)
    journal = bound.journal
    with journal.lock:
        journal.record_pattern((pattern, v, prefix), matching)
        return _forget_local(bound, matching, prefix)


def _collection(op: str, keys: int | None) -> Any:
    """django-redis's ``op`` on a hash, set or sorted set: Redis alone, through the breaker.

    ``keys``: how many of the first arguments are keys (None: all of them), for the
    journal's test in ``_direct``. A call with no keywords, while the journal is empty
    and the cache is bound, is its route's breaker call alone: one Python call fewer
    than ``_direct``, the same answer and errors.
    """

    def method(self: CacheRouting, *args: Any, **kwargs: Any) -> Any:
        if not kwargs:
            bound = self._bound
            if (bound is not None and _REGISTERED.get(self._breaker_name) is bound.breaker
                    and not bound.journal.active):
                call = bound.directs.get(op)
                if call is not None:
                    return call(*args)
        return self._direct(op, args if keys is None else args[:keys], args, kwargs)

    method.__name__ = op
    method.__qualname__ = f"DjangoRedisMethods.{op}"
    method.__doc__ = f"django-redis's ``{op}``, on Redis alone through the breaker."
    return method


class DjangoRedisMethods(CacheRouting):
    """TTL, pattern, collection and lock methods of django-redis, each in its family."""

    # -------------------------------------------------------------------- TTL
    def ttl(self, key: Any, version: int | None = None, client: Any = None) -> int | None:
        if client is not None:
            found = self._direct("ttl", (key,), (key,), {"version": version, "client": client})
        else:
            found = self._read("ttl", key, version, fallback=_ttl_fallback)
        return None if found is None else int(found)

    def pttl(self, key: Any, version: int | None = None, client: Any = None) -> int | None:
        if client is not None:
            found = self._direct("pttl", (key,), (key,), {"version": version, "client": client})
        else:
            found = self._read("pttl", key, version, fallback=_pttl_fallback)
        return None if found is None else int(found)

    def persist(self, key: Any, version: int | None = None, client: Any = None) -> bool:
        if client is not None:
            return bool(self._direct("persist", (key,), (key,),
                                     {"version": version, "client": client}))
        return bool(self._write("persist", key, version, fallback=_persist_fallback))

    def expire(self, key: Any, timeout: Any, version: int | None = None,
               client: Any = None) -> bool:
        if client is not None:
            return bool(self._direct("expire", (key,), (key, timeout),
                                     {"version": version, "client": client}))
        return bool(self._write("expire", key, version, (timeout,), fallback=_expire_fallback))

    def pexpire(self, key: Any, timeout: Any, version: int | None = None,
                client: Any = None) -> bool:
        if client is not None:
            return bool(self._direct("pexpire", (key,), (key, timeout),
                                     {"version": version, "client": client}))
        return bool(self._write("pexpire", key, version, (timeout,),
                                fallback=_pexpire_fallback))

    def expire_at(self, key: Any, when: Any, version: int | None = None,
                  client: Any = None) -> bool:
        if client is not None:
            return bool(self._direct("expire_at", (key,), (key, when),
                                     {"version": version, "client": client}))
        return bool(self._write("expire_at", key, version, (when,),
                                fallback=_expire_at_fallback))

    def pexpire_at(self, key: Any, when: Any, version: int | None = None,
                   client: Any = None) -> bool:
        if client is not None:
            return bool(self._direct("pexpire_at", (key,), (key, when),
                                     {"version": version, "client": client}))
        return bool(self._write("pexpire_at", key, version, (when,),
                                fallback=_pexpire_at_fallback))

    # --------------------------------------------------------------- patterns
    def delete_pattern(self, pattern: str, version: int | None = None,
                       prefix: str | None = None, client: Any = None,
                       itersize: int | None = None) -> int:
        kwargs: dict[str, Any] = {}
        if version is not None:
            kwargs["version"] = version
        if prefix is not None:
            kwargs["prefix"] = prefix
        if itersize is not None:
            kwargs["itersize"] = itersize
        if client is not None:
            return int(self._direct("delete_pattern", (), (pattern,), {**kwargs,
                                                                       "client": client}))
        bound = self._bound
        if bound is None or _REGISTERED.get(self._breaker_name) is not bound.breaker:
            bound = self._bind()
        found = bound.routes.get(_PATTERN_ROUTE)
        if found is None:
            served = functools.partial(_delete_pattern_fallback, bound)
            found = (bound.guarded(bound.method("delete_pattern"), served), served)
            bound.routes[_PATTERN_ROUTE] = found
        count = found[0](pattern, **kwargs)
        journal = bound.journal
        if journal.active:
            matching = _pattern_matcher(bound, pattern, version, prefix)
            with journal.lock:
                _forget_local(bound, matching, prefix)
        return int(count)

    def keys(self, search: str, version: int | None = None, client: Any = None) -> Any:
        if version is None and client is None:
            # As a collection method (``_collection``): its route's breaker call alone.
            bound = self._bound
            if bound is not None and _REGISTERED.get(self._breaker_name) is bound.breaker:
                call = bound.directs.get("keys")
                if call is not None:
                    return call(search)
        return self._direct("keys", (), (search,), {"version": version, "client": client})

    def iter_keys(self, search: str, itersize: int | None = None, client: Any = None,
                  version: int | None = None) -> Iterator[Any]:
        return self._direct("iter_keys", (), (search,), {  # type: ignore[no-any-return]
            "itersize": itersize, "client": client, "version": version}, lasting=True)

    # ------------------------------------------------------------------- lock
    def lock(self, key: Any, version: int | None = None, timeout: float | None = None,
             sleep: float = 0.1, blocking: bool = True, blocking_timeout: float | None = None,
             client: Any = None, thread_local: bool = True) -> Any:
        """A redis-py ``Lock`` on a guarded client: acquiring it while Redis is away raises."""
        kwargs = {"version": version, "timeout": timeout, "sleep": sleep,
                  "blocking_timeout": blocking_timeout, "client": client,
                  "thread_local": thread_local}
        if not blocking:
            # Only when asked: django-redis before 6 takes no ``blocking``.
            kwargs["blocking"] = blocking
        return self._direct("lock", (key,), (key,), kwargs, lasting=True)

    # ------------------------------------------------------------ collections
    # One key first, unless said otherwise; the arguments are django-redis's own.
    # Each is ``_direct`` made for its command (``_collection``): a call without
    # keywords, while the journal is empty, is one breaker call and nothing else.
    sadd = _collection("sadd", 1)
    scard = _collection("scard", 1)
    sdiff = _collection("sdiff", None)
    sdiffstore = _collection("sdiffstore", None)
    sinter = _collection("sinter", None)
    sinterstore = _collection("sinterstore", None)
    sismember = _collection("sismember", 1)
    smembers = _collection("smembers", 1)
    smismember = _collection("smismember", 1)
    smove = _collection("smove", 2)
    spop = _collection("spop", 1)
    srandmember = _collection("srandmember", 1)
    srem = _collection("srem", 1)
    sscan = _collection("sscan", 1)

    def sscan_iter(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sscan_iter", args[:1], args, kwargs, lasting=True)

    sunion = _collection("sunion", None)
    sunionstore = _collection("sunionstore", None)
    hset = _collection("hset", 1)
    hdel = _collection("hdel", 1)
    hlen = _collection("hlen", 1)
    hkeys = _collection("hkeys", 1)
    hexists = _collection("hexists", 1)
    zadd = _collection("zadd", 1)
    zcard = _collection("zcard", 1)
    zcount = _collection("zcount", 1)
    zincrby = _collection("zincrby", 1)
    zpopmax = _collection("zpopmax", 1)
    zpopmin = _collection("zpopmin", 1)
    zrange = _collection("zrange", 1)
    zrangebyscore = _collection("zrangebyscore", 1)
    zrank = _collection("zrank", 1)
    zrem = _collection("zrem", 1)
    zremrangebyscore = _collection("zremrangebyscore", 1)
    zrevrange = _collection("zrevrange", 1)
    zrevrangebyscore = _collection("zrevrangebyscore", 1)
    zscore = _collection("zscore", 1)
