"""``safe_cache_get/set/delete``: for code that calls a cache directly and must never raise.

Through a ``BreakerCache`` they are plain calls (it never raises on an outage).
On a plain Redis cache alias they go through the named breaker; a write or
delete that could not reach Redis is journaled with no fallback store, so the
key reads as a miss until its old value has been deleted from Redis.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from redis_breaker._breaker import Breaker
from redis_breaker._registry import get_breaker
from redis_breaker.conf import conf

from .backend import BreakerCache, _first_location
from .journal import INTEGRATION, Journal, journal_for

__all__ = ["safe_cache_delete", "safe_cache_get", "safe_cache_set"]

_MAX_KEYS = 10_000


def _resolve(alias: str, breaker: str) -> tuple[BaseCache, Breaker | None, Journal | None]:
    cache = caches[alias]
    if isinstance(cache, BreakerCache):
        return cache, None, None
    b = get_breaker(breaker)
    entry = conf.CACHES.get(alias, {})
    b.adopt_url(_first_location(entry))
    journal = journal_for(b, ("safe_cache", alias, repr(sorted(entry.items()))), alias, None,
                          lambda: caches.create_connection(alias), _MAX_KEYS)
    return cache, b, journal


def safe_cache_get(key: Any, default: Any = None, *, version: int | None = None,
                   alias: str = "default", breaker: str = "default") -> Any:
    """``cache.get`` that returns ``default`` instead of raising or waiting while Redis is down."""
    cache, b, journal = _resolve(alias, breaker)
    if b is None or journal is None:
        return cache.get(key, default, version=version)
    v = cache.version if version is None else version
    if journal.active and journal.diverts(key, v):
        return default
    return b.call_with_fallback(cache.get, lambda *a, **kw: default, (key, default),
                                {"version": v}, integration=INTEGRATION)


def safe_cache_set(key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, *,
                   version: int | None = None, alias: str = "default",
                   breaker: str = "default") -> bool:
    """``cache.set``; True when the value was stored (in Redis, or a BreakerCache's fallback)."""
    cache, b, journal = _resolve(alias, breaker)
    if b is None or journal is None:
        cache.set(key, value, timeout, version=version)
        return True
    v = cache.version if version is None else version

    def skipped(*a: Any, **kw: Any) -> bool:
        journal.write((key,), v, bool)
        return False

    if journal.active and journal.diverts(key, v):
        return skipped()
    result = b.call_with_fallback(cache.set, skipped, (key, value, timeout), {"version": v},
                                  integration=INTEGRATION)
    return result is not False


def safe_cache_delete(key: Any, *, version: int | None = None, alias: str = "default",
                      breaker: str = "default") -> bool:
    """``cache.delete``; a delete that cannot reach Redis is journaled and replayed later."""
    cache, b, journal = _resolve(alias, breaker)
    if b is None or journal is None:
        return bool(cache.delete(key, version=version))
    v = cache.version if version is None else version

    def skipped(*a: Any, **kw: Any) -> bool:
        journal.write((key,), v, bool)
        return False

    if journal.active and journal.diverts(key, v):
        return skipped()
    return bool(b.call_with_fallback(cache.delete, skipped, (key,), {"version": v},
                                     integration=INTEGRATION))
