"""The Django cache through the breaker: ``BreakerCache`` and the ``safe_cache_*`` helpers.

``backend`` is the cache backend, ``journal`` the record of keys changed while
Redis was away, ``safe`` the helpers for code that calls a cache directly.
"""

from __future__ import annotations

from .backend import BreakerCache
from .safe import safe_cache_delete, safe_cache_get, safe_cache_set

__all__ = ["BreakerCache", "safe_cache_delete", "safe_cache_get", "safe_cache_set"]
