"""``get_redis_connection``: a cache alias's redis-py client, guarded by its breaker.

The counterpart of ``django_redis.get_redis_connection`` (which works on a
``BreakerCache`` as it is, through ``BreakerCache.client``), for either Redis
backend: every command goes through the breaker, ``BreakerOpenError`` while
it is open.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches

from redis_breaker._client import guard_client, guarded_view
from redis_breaker._registry import get_breaker
from redis_breaker.conf import conf

from .backend import BreakerCache
from .clients import is_django_redis
from .locations import first_location

__all__ = ["get_redis_connection"]


def get_redis_connection(alias: str = "default", write: bool = True, *,
                         breaker: str = "default") -> Any:
    """The redis-py client of cache ``alias``, every command through a breaker.

    For a ``BreakerCache``, its own breaker; for a plain Redis cache (Django's
    or django-redis), the breaker named ``breaker``, which adopts the cache's
    URL. The client shares the cache's connection pool.
    """
    cache = caches[alias]
    if isinstance(cache, BreakerCache):
        client = cache.client
        if is_django_redis(cache.primary):
            return client.get_client(write=write)
        return client.get_client(None, write=write)
    b = get_breaker(breaker)
    b.adopt_url(first_location(conf.CACHES.get(alias, {})))
    if is_django_redis(cache):
        return guarded_view(cache.client.get_client(write=write), b)  # type: ignore[attr-defined]
    inner = getattr(cache, "_cache", None)
    if inner is not None and hasattr(inner, "get_client"):
        return guard_client(inner.get_client(None, write=write), b)
    raise NotImplementedError(f"get_redis_connection(): cache {alias!r} does not use Redis")
