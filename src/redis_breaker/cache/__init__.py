"""The Django cache through the breaker: ``BreakerCache`` and the ``safe_cache_*`` helpers.

``backend`` is the cache backend (``routing`` says where each call goes,
``families`` holds django-redis's methods beyond ``BaseCache``), ``journal``
the record of keys changed while Redis was away, ``store`` the default
fallback, ``keyspace`` the cache's own keys in its database, ``clients``
guarded views of the primary's clients, ``connection`` a guarded
``get_redis_connection``, ``safe`` the helpers for code that calls a cache
directly.
"""

from __future__ import annotations

from .backend import BreakerCache
from .clients import KeyNotReplayedError
from .connection import get_redis_connection
from .safe import safe_cache_delete, safe_cache_get, safe_cache_set

__all__ = ["BreakerCache", "KeyNotReplayedError", "get_redis_connection", "safe_cache_delete",
           "safe_cache_get", "safe_cache_set"]
