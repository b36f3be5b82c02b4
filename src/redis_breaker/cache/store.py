"""The default FALLBACK: Django's ``LocMemCache``, its key check made cheap.

A private store that serves, while Redis is away, the keys written since
(``journal``). It is Django's ``LocMemCache``: the same storage, expiry,
culling and lock, values pickled on ``set`` and unpickled on ``get`` (a
caller that changes what it got never changes what the next caller gets, as
with Redis). Two things differ, both costs of an outage's reads:

- ``validate_key``: Django's looks for the characters memcached refuses with
  a lazily compiled regular expression (Django 4.2: a loop over the
  characters), and every use of the lazy object goes through
  ``LazyObject``'s attribute lookup, raising and catching an
  ``AttributeError``: about two thirds of a ``LocMemCache.get``
  (docs/cache.md, *Benchmark*). Here the same test runs on a compiled
  expression, and Django's own ``validate_key`` runs, with its warnings,
  only for a key that fails it.
- ``get`` and ``has_key`` are Django's, with ``make_and_validate_key`` and
  ``_has_expired`` written out (three Python calls fewer).
"""

from __future__ import annotations

import pickle
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.core.cache.backends.base import MEMCACHE_MAX_KEY_LENGTH
from django.core.cache.backends.locmem import LocMemCache

__all__ = ["FallbackStore"]

#: The characters Django's ``memcache_key_warnings`` warns about (control characters,
#: space, DEL), as in every supported Django.
_refused = re.compile(r"[\x00-\x20\x7f]").search


class FallbackStore(LocMemCache):
    """``LocMemCache`` whose ``validate_key`` costs a length check and one regex search."""

    # LocMemCache's own, which django-stubs does not declare (annotations only:
    # the attributes and the method stay LocMemCache's).
    _cache: OrderedDict[str, bytes]
    _expire_info: dict[str, float | None]
    _lock: threading.Lock
    _delete: Callable[[str], bool]

    def validate_key(self, key: Any) -> None:
        if len(key) > MEMCACHE_MAX_KEY_LENGTH or _refused(key):
            super().validate_key(key)

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        key = self.key_func(key, self.key_prefix, self.version if version is None else version)
        if len(key) > MEMCACHE_MAX_KEY_LENGTH or _refused(key):
            super().validate_key(key)
        with self._lock:
            expiry = self._expire_info.get(key, -1)
            if expiry is not None and expiry <= time.time():
                self._delete(key)
                return default
            pickled = self._cache[key]
            self._cache.move_to_end(key, last=False)
        return pickle.loads(pickled)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        key = self.key_func(key, self.key_prefix, self.version if version is None else version)
        if len(key) > MEMCACHE_MAX_KEY_LENGTH or _refused(key):
            super().validate_key(key)
        with self._lock:
            expiry = self._expire_info.get(key, -1)
            if expiry is not None and expiry <= time.time():
                self._delete(key)
                return False
            return True
