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
from .routing import CacheRouting, _Bound

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
    def sadd(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sadd", args[:1], args, kwargs)

    def scard(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("scard", args[:1], args, kwargs)

    def sdiff(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sdiff", args, args, kwargs)

    def sdiffstore(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sdiffstore", args, args, kwargs)

    def sinter(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sinter", args, args, kwargs)

    def sinterstore(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sinterstore", args, args, kwargs)

    def sismember(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sismember", args[:1], args, kwargs)

    def smembers(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("smembers", args[:1], args, kwargs)

    def smismember(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("smismember", args[:1], args, kwargs)

    def smove(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("smove", args[:2], args, kwargs)

    def spop(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("spop", args[:1], args, kwargs)

    def srandmember(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("srandmember", args[:1], args, kwargs)

    def srem(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("srem", args[:1], args, kwargs)

    def sscan(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sscan", args[:1], args, kwargs)

    def sscan_iter(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sscan_iter", args[:1], args, kwargs, lasting=True)

    def sunion(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sunion", args, args, kwargs)

    def sunionstore(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("sunionstore", args, args, kwargs)

    def hset(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("hset", args[:1], args, kwargs)

    def hdel(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("hdel", args[:1], args, kwargs)

    def hlen(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("hlen", args[:1], args, kwargs)

    def hkeys(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("hkeys", args[:1], args, kwargs)

    def hexists(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("hexists", args[:1], args, kwargs)

    def zadd(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zadd", args[:1], args, kwargs)

    def zcard(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zcard", args[:1], args, kwargs)

    def zcount(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zcount", args[:1], args, kwargs)

    def zincrby(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zincrby", args[:1], args, kwargs)

    def zpopmax(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zpopmax", args[:1], args, kwargs)

    def zpopmin(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zpopmin", args[:1], args, kwargs)

    def zrange(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zrange", args[:1], args, kwargs)

    def zrangebyscore(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zrangebyscore", args[:1], args, kwargs)

    def zrank(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zrank", args[:1], args, kwargs)

    def zrem(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zrem", args[:1], args, kwargs)

    def zremrangebyscore(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zremrangebyscore", args[:1], args, kwargs)

    def zrevrange(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zrevrange", args[:1], args, kwargs)

    def zrevrangebyscore(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zrevrangebyscore", args[:1], args, kwargs)

    def zscore(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("zscore", args[:1], args, kwargs)

