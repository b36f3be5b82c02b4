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
(see ``_cache_journal``). Errors that are not an outage (``incr`` of a missing
key) are the primary's own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.exceptions import ImproperlyConfigured

from redis_breaker._breaker import Breaker
from redis_breaker._registry import get_breaker
from redis_breaker._sentinel import sentinel_url
from redis_breaker.conf import conf

from .journal import INTEGRATION, Journal, journal_for
from .options import OPTIONS, why_unusable

__all__ = ["BreakerCache"]

_DEFAULTS = {spec.key: spec.default for spec in OPTIONS}

_MISSING = object()


def _first_raw_location(entry: Mapping[str, Any]) -> str | None:
    location = entry.get("LOCATION")
    if isinstance(location, (list, tuple)):
        location = location[0] if location else None
    if not isinstance(location, str) or not location:
        return None
    return re.split("[;,]", location)[0].strip()


def _first_location(entry: Mapping[str, Any]) -> str | None:
    """The URL the breaker's probe takes from a primary cache entry, when one can be built.

    For a django-redis Sentinel primary, a ``redis+sentinel://`` URL from its
    ``SENTINELS`` and the master group its ``LOCATION`` names (the LOCATION's
    host is a group name, not a server: PINGing it would keep the breaker open).
    """
    if uses_sentinel(entry):
        return sentinel_location(entry)
    first = _first_raw_location(entry)
    return first if first and "://" in first else None


def uses_sentinel(entry: Mapping[str, Any]) -> bool:
    """Whether a cache entry is a django-redis cache that finds its master through Sentinel."""
    options = entry.get("OPTIONS")
    if not isinstance(options, Mapping):
        return False
    if options.get("SENTINELS"):
        return True
    backend = entry.get("BACKEND")
    if not isinstance(backend, str) or "django_redis" not in backend:
        return False
    names = (options.get("CLIENT_CLASS"), options.get("CONNECTION_FACTORY"),
             options.get("CONNECTION_POOL_CLASS"),
             conf.DJANGO_REDIS_CONNECTION_FACTORY)
    return any(isinstance(n, str) and "sentinel" in n.lower() for n in names)


def sentinel_location(entry: Mapping[str, Any]) -> str | None:
    """``redis+sentinel://`` URL for a django-redis Sentinel primary, None if it cannot be built.

    ``OPTIONS["SENTINELS"]`` gives the sentinels, the ``LOCATION``'s host the
    master group, its path the database; the password is ``OPTIONS["PASSWORD"]``
    or the LOCATION's, the sentinels' own is ``SENTINEL_KWARGS["password"]``.
    """
    options = entry.get("OPTIONS")
    location = _first_raw_location(entry)
    if not isinstance(options, Mapping) or not location:
        return None
    try:
        parts = urlsplit(location)
        service = parts.hostname
        db_text = parts.path.strip("/") or (parse_qs(parts.query).get("db") or ["0"])[0]
        sentinel_kwargs = options.get("SENTINEL_KWARGS") or {}
        if not service or not db_text.isdigit() or not isinstance(sentinel_kwargs, Mapping):
            return None
        password = options.get("PASSWORD") or (unquote(parts.password) if parts.password
                                                else None)
        return sentinel_url(
            options.get("SENTINELS") or (), service, db=int(db_text),
            username=unquote(parts.username) if parts.username else None,
            password=str(password) if password else None,
            sentinel_username=sentinel_kwargs.get("username"),
            sentinel_password=sentinel_kwargs.get("password"),
        )
    except (TypeError, ValueError):
        return None


class _Bound:
    """What one BreakerCache instance talks to, resolved once per breaker object."""

    __slots__ = ("breaker", "fallback", "journal", "primary")

    def __init__(self, breaker: Breaker, primary: BaseCache, fallback: BaseCache,
                 journal: Journal) -> None:
        self.breaker = breaker
        self.primary = primary
        self.fallback = fallback
        self.journal = journal


def _options_error(options: dict[str, Any]) -> str | None:
    problem = why_unusable(options, conf.CACHES)
    if problem is None:
        return None
    return f"BreakerCache: {problem.message('OPTIONS')} {problem.fix('OPTIONS')}"


class BreakerCache(BaseCache):
    """Delegates to the PRIMARY cache alias through a breaker; FALLBACK while Redis is away."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = dict(params.get("OPTIONS") or {})
        # A bad configuration is raised on first use, not here: Django builds every
        # cache while running its own checks, and ours (redis_breaker.E010-E017)
        # must get the chance to report it with the key and the fix.
        self._config_error = _options_error(options)
        primary = options.get("PRIMARY")
        self._primary_alias = primary if isinstance(primary, str) else ""
        self._fallback_alias: str | None = options.get("FALLBACK")
        self._breaker_name = str(options.get("BREAKER", _DEFAULTS["BREAKER"]))
        default_max_keys: int = _DEFAULTS["JOURNAL_MAX_KEYS"]
        max_keys = options.get("JOURNAL_MAX_KEYS", default_max_keys)
        self._max_keys = (max_keys if isinstance(max_keys, int) and max_keys >= 1
                          else default_max_keys)
        primary_entry = conf.CACHES.get(self._primary_alias, {})
        self._probe_url = _first_location(primary_entry) if primary_entry else None
        self._fallback_timeout = params.get("TIMEOUT", primary_entry.get("TIMEOUT", 300))
        # Where the data lives: two BreakerCache aliases over the same stores share a journal.
        self._identity = (self._primary_alias, repr(sorted(primary_entry.items())),
                          self._fallback_alias, self._breaker_name, self._max_keys)
        self._bound: _Bound | None = None

    # ------------------------------------------------------------- resolving
    def _bind(self) -> _Bound:
        if self._config_error is not None:
            raise ImproperlyConfigured(self._config_error)
        breaker = get_breaker(self._breaker_name)
        bound = self._bound
        if bound is not None and bound.breaker is breaker:
            return bound
        breaker.adopt_url(self._probe_url)
        primary = caches[self._primary_alias]
        if getattr(primary, "_ignore_exceptions", False):
            # django-redis would swallow the errors: writes lost unjournaled, stale reads later.
            raise ImproperlyConfigured(
                f"BreakerCache: the primary {self._primary_alias!r} ignores exceptions "
                "(django-redis IGNORE_EXCEPTIONS / DJANGO_REDIS_IGNORE_EXCEPTIONS); turn it off "
                "so the breaker sees outages."
            )
        if self._fallback_alias is not None:
            fallback = caches[self._fallback_alias]
        else:
            fallback = LocMemCache(
                f"redis_breaker.fallback:{self._primary_alias}:{hash(self._identity)}",
                {"TIMEOUT": self._fallback_timeout,
                 "OPTIONS": {"MAX_ENTRIES": max(self._max_keys, 300)}},
            )
        journal = journal_for(
            breaker, self._identity, self._primary_alias, fallback,
            lambda: caches.create_connection(self._primary_alias), self._max_keys,
        )
        bound = _Bound(breaker, primary, journal.fallback or fallback, journal)
        self._bound = bound
        return bound

    def adopt_breaker_url(self) -> Breaker:
        """This cache's breaker, given the URL it adopts on first use, without binding the cache.

        No primary, no journal (which would clear the fallback), no connection:
        for the status surfaces of a process that never used the cache, which
        must read the state file of the breaker's adopted URL.
        """
        breaker = get_breaker(self._breaker_name)
        breaker.adopt_url(self._probe_url)
        return breaker

    @property
    def primary(self) -> BaseCache:
        return self._bind().primary

    @property
    def fallback(self) -> BaseCache:
        return self._bind().fallback

    @property
    def breaker(self) -> Breaker:
        return self._bind().breaker

    def _version(self, bound: _Bound, version: int | None) -> int:
        # Resolved once so the journal, the primary and the fallback agree on the key.
        return bound.primary.version if version is None else version

    # ----------------------------------------------------------- single keys
    def _read(self, op: str, key: Any, version: int | None, *args: Any) -> Any:
        bound = self._bind()
        v = self._version(bound, version)
        journal = bound.journal
        fallback = getattr(bound.fallback, op)
        if journal.active and journal.diverts(key, v):
            return fallback(key, *args, version=v)
        return bound.breaker.call_with_fallback(
            getattr(bound.primary, op), fallback, (key, *args), {"version": v},
            integration=INTEGRATION,
        )

    def _write(self, op: str, key: Any, version: int | None, *args: Any) -> Any:
        bound = self._bind()
        v = self._version(bound, version)
        journal = bound.journal
        written = (key,)
        fallback = getattr(bound.fallback, op)

        def served_by_fallback(*a: Any, **kw: Any) -> Any:
            return journal.write(written, v, fallback, *a, **kw)

        if journal.active and journal.diverts(key, v):
            return served_by_fallback(key, *args, version=v)
        return bound.breaker.call_with_fallback(
            getattr(bound.primary, op), served_by_fallback, (key, *args), {"version": v},
            integration=INTEGRATION,
        )

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self._read("get", key, version, default)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return bool(self._read("has_key", key, version))

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> Any:
        return self._write("set", key, version, value, timeout)

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> bool:
        return bool(self._write("add", key, version, value, timeout))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return bool(self._write("touch", key, version, timeout))

    def delete(self, key: Any, version: int | None = None) -> bool:
        return bool(self._write("delete", key, version))

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(self._write("incr", key, version, delta))

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(self._write("incr", key, version, -delta))

    def incr_version(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        bound = self._bind()
        v = self._version(bound, version)
        return self._bump_version(bound, key, delta, v)

    def _bump_version(self, bound: _Bound, key: Any, delta: int, v: int) -> int:
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
    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        bound = self._bind()
        v = self._version(bound, version)
        keys = list(keys)
        journal = bound.journal
        found: dict[Any, Any] = {}
        if journal.active:
            covered, keys = journal.divert_many(keys, v)
            if covered:
                found.update(bound.fallback.get_many(covered, version=v))
            if not keys:
                return found
        found.update(bound.breaker.call_with_fallback(
            bound.primary.get_many, bound.fallback.get_many, (keys,), {"version": v},
            integration=INTEGRATION,
        ))
        return found

    def set_many(self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[Any]:
        bound = self._bind()
        v = self._version(bound, version)
        journal = bound.journal
        failed: list[Any] = []
        data = dict(data)
        if journal.active:
            covered, rest = journal.divert_many(data, v)
            if covered:
                failed += journal.write(covered, v, bound.fallback.set_many,
                                        {k: data[k] for k in covered}, timeout, version=v) or []
            data = {k: data[k] for k in rest}
            if not data:
                return failed
        written = list(data)

        def served_by_fallback(*a: Any, **kw: Any) -> Any:
            return journal.write(written, v, bound.fallback.set_many, *a, **kw)

        failed += bound.breaker.call_with_fallback(
            bound.primary.set_many, served_by_fallback, (data, timeout), {"version": v},
            integration=INTEGRATION,
        ) or []
        return failed

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        bound = self._bind()
        v = self._version(bound, version)
        keys = list(keys)
        journal = bound.journal
        if journal.active:
            covered, keys = journal.divert_many(keys, v)
            if covered:
                journal.write(covered, v, bound.fallback.delete_many, covered, version=v)
            if not keys:
                return
        rest = keys

        def served_by_fallback(*a: Any, **kw: Any) -> Any:
            return journal.write(rest, v, bound.fallback.delete_many, *a, **kw)

        bound.breaker.call_with_fallback(
            bound.primary.delete_many, served_by_fallback, (rest,), {"version": v},
            integration=INTEGRATION,
        )

    def clear(self) -> None:
        bound = self._bind()
        journal = bound.journal

        def served_by_fallback() -> None:
            with journal.lock:
                journal.cover_all()
                bound.fallback.clear()

        bound.breaker.call_with_fallback(bound.primary.clear, served_by_fallback,
                                         integration=INTEGRATION)
        with journal.lock:
            # Whatever the fallback held is older than an empty primary.
            bound.fallback.clear()

    def close(self, **kwargs: Any) -> None:
        bound = self._bound
        if bound is not None:
            bound.primary.close(**kwargs)

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
                        version: int | None = None) -> list[Any]:
        result: list[Any] = await self._async(self.set_many, dict(data), timeout, version)
        return result

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        await self._async(self.delete_many, list(keys), version)

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

