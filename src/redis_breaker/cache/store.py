"""The default FALLBACK: Django's ``LocMemCache``, its key check made cheap.

A private store that serves, while Redis is away, the keys written since
(``journal``). It is Django's ``LocMemCache``: the same storage, expiry,
culling and lock, values pickled on ``set`` and unpickled on ``get`` (a
caller that changes what it got never changes what the next caller gets, as
with Redis). Two things differ, both costs of an outage's reads:

- the key check: Django's ``validate_key`` looks for the characters
  memcached refuses (control characters, space, DEL) with a lazily compiled
  regular expression (Django 4.2: a loop over the characters), and every use
  of the lazy object goes through ``LazyObject``'s attribute lookup, raising
  and catching an ``AttributeError``: about two thirds of a
  ``LocMemCache.get`` (docs/cache.md, *Benchmark*). Here a key passes on its
  length, ``" " not in key`` and ``key.isprintable()`` (false for every other
  refused character); only a key that fails them goes to Django's own check,
  which decides, and warns, as it would have (a non-ASCII space such as
  U+00A0, for one, fails ``isprintable`` and is valid).
- ``get`` and ``has_key`` are Django's, with ``make_and_validate_key`` (Django's
  default key function inline) and ``_has_expired`` written out.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.core.cache.backends.base import MEMCACHE_MAX_KEY_LENGTH, default_key_func
from django.core.cache.backends.locmem import LocMemCache

__all__ = ["FallbackStore"]


class FallbackStore(LocMemCache):
    """``LocMemCache`` whose key check costs a length test and two string methods."""

    # LocMemCache's own, which django-stubs does not declare (annotations only:
    # the attributes and the method stay LocMemCache's).
    _cache: OrderedDict[str, bytes]
    _expire_info: dict[str, float | None]
    _lock: threading.Lock
    _delete: Callable[[str], bool]

    def validate_key(self, key: Any) -> None:
        if len(key) > MEMCACHE_MAX_KEY_LENGTH or " " in key or not key.isprintable():
            super().validate_key(key)

    def _made(self, key: Any, version: int | None) -> str:
        """``make_and_validate_key``, written out: Django's default key function inline,
        and the key check on a length test and two string methods (no regex call)."""
        if version is None:
            version = self.version
        if self.key_func is default_key_func:
            made = f"{self.key_prefix!s}:{version!s}:{key!s}"  # Django's "%s:%s:%s"
        else:
            made = self.key_func(key, self.key_prefix, version)
        # A key that fails these may still be valid (a non-ASCII space or separator):
        # Django's check decides, and warns as it would.
        if len(made) > MEMCACHE_MAX_KEY_LENGTH or " " in made or not made.isprintable():
            super().validate_key(made)
        return made

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        # ``_made``, inline: this is every read of a key written during an outage.
        if version is None:
            version = self.version
        if self.key_func is default_key_func:
            key = f"{self.key_prefix!s}:{version!s}:{key!s}"  # Django's "%s:%s:%s", cheaper
        else:
            key = self.key_func(key, self.key_prefix, version)
        if len(key) > MEMCACHE_MAX_KEY_LENGTH or " " in key or not key.isprintable():
            super().validate_key(key)
        # The lock's own methods, not ``with``: the statement's lookups of
        # ``__enter__`` and ``__exit__`` cost as much as taking the lock.
        lock = self._lock
        lock.acquire()
        try:
            expiry = self._expire_info.get(key, -1)
            if expiry is not None and expiry <= time.time():
                self._delete(key)
                return default
            pickled = self._cache[key]
            self._cache.move_to_end(key, last=False)
        finally:
            lock.release()
        return pickle.loads(pickled)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        key = self._made(key, version)
        lock = self._lock
        lock.acquire()
        try:
            expiry = self._expire_info.get(key, -1)
            if expiry is not None and expiry <= time.time():
                self._delete(key)
                return False
            return True
        finally:
            lock.release()
