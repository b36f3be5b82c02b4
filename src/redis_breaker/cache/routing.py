"""Where each ``BreakerCache`` call goes: the primary, the fallback, or Redis directly.

Three routes, one per family of methods (docs/cache.md has the table):

- ``_read``: the primary through the breaker; the fallback while the breaker is
  open, on a connection error, or for a key the journal covers.
- ``_write``: the same, and a call served by the fallback journals its key, so
  Redis's older copy is deleted before Redis serves that key again.
- ``_direct``: Redis and nothing else, for what no local store can answer
  (collections, ``keys``, ``lock``, a call given ``client=``), through the
  breaker: ``BreakerOpenError`` while it is open, ``KeyNotReplayedError`` for a
  key the journal still covers. What talks to Redis after the call returns (a
  lock, an iterator) or through a client the caller gave is served by the
  primary's guarded copy, whose every command goes through the breaker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline

from redis_breaker import _registry
from redis_breaker._breaker import Breaker, guarded_function
from redis_breaker._client import guarded_view, is_guarded
from redis_breaker._registry import get_breaker

from .clients import KeyNotReplayedError, client_method, direct_backend, is_django_redis
from .journal import INTEGRATION, Journal, journal_for
from .locations import first_location
from .options import OPTIONS, why_unusable
from .store import FallbackStore

__all__ = ["CacheRouting"]

_DEFAULTS = {spec.key: spec.default for spec in OPTIONS}

#: A fallback for one call: ``fallback(bound, key, *args, version=v)``.
Fallback = Callable[..., Any]


#: Keywords of django-redis's client methods left out when None (their default).
_OMITTED_WHEN_NONE = ("client", "itersize")


#: The registry's breakers by name (never rebound, only changed): a binding is
#: current while its breaker is the one registered under its name. Read with one
#: dict lookup per call, where ``get_breaker`` would cost a Python call.
_REGISTERED = _registry._breakers

#: The routes a call can take through ``_Bound.route`` (the fallback's role differs).
_READ, _WRITE = "read", "write"


class _Bound:
    """What one BreakerCache instance talks to, resolved once per breaker object.

    Besides the stores, the calls of the closed path, made once here (a
    ``guarded_function`` each: the breaker's inlined closed path around the
    primary's own method, with the fallback that serves the call when the
    breaker refuses it or Redis fails), so a healthy call pays one wrapper and
    no per-call closures, argument tuples or keyword dicts.
    """

    __slots__ = ("alias", "breaker", "delete_many_call", "direct", "directs", "django_redis",
                 "fallback", "get_call", "has_key_call", "journal", "primary", "routes",
                 "set_call", "unwrap")

    def __init__(self, breaker: Breaker, primary: BaseCache, fallback: BaseCache,
                 journal: Journal, alias: str = "") -> None:
        #: The PRIMARY's alias, for the errors that name it.
        self.alias = alias
        self.breaker = breaker
        self.primary = primary
        self.fallback = fallback
        self.journal = journal
        self.django_redis = is_django_redis(primary)
        #: The primary seen through guarded clients (``_direct``, ``client``).
        self.direct = direct_backend(primary, breaker)
        #: ``route()``'s calls and fallbacks, by (family, op, fallback).
        self.routes: dict[tuple[str, str, Any], tuple[Callable[..., Any], Callable[..., Any]]] = {}
        #: ``_direct``'s calls (no fallback), by op.
        self.directs: dict[str, Callable[..., Any]] = {}
        #: What django-redis's clients raise around a Redis error (``client_method``).
        self.unwrap: type[BaseException] | None = None
        if self.django_redis:
            from django_redis.exceptions import ConnectionInterrupted

            self.unwrap = ConnectionInterrupted
        self.get_call = self.guarded(self.method("get"), self.get_uncovered)
        self.has_key_call = self.guarded(self.method("has_key"), self.has_uncovered)
        self.set_call = self.guarded(self.method("set"), self.set_failed)
        self.delete_many_call = self.guarded(self.method("delete_many"),
                                             self.delete_many_failed)

    def guarded(self, method: Callable[..., Any],
                fallback: Callable[..., Any] | None) -> Callable[..., Any]:
        return guarded_function(method, breaker=self.breaker, fallback=fallback,
                                integration=INTEGRATION, unwrap=self.unwrap)

    def version(self, version: int | None) -> int:
        # Resolved once so the journal, the primary and the fallback agree on the key.
        return self.primary.version if version is None else version

    # The fallbacks of the reads. The fallback only ever holds keys the journal
    # covers (it is cleared when the journal is made, and a replayed key leaves
    # it before it stops being covered), so while the journal is empty every
    # read of a key it does not cover is a miss: answered here without asking
    # the fallback (key validation, its lock, unpickling: most of an open-state
    # read's cost). Coverage is looked up again: a write may have covered the
    # key since the caller looked. Each takes the arguments the primary was
    # given (``version`` None: the primary's own).
    def get_uncovered(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        journal = self.journal
        if journal.active:
            v = self.primary.version if version is None else version
            if journal.covers(key, v):
                return self.fallback.get(key, default, version=v)
        return default

    def has_uncovered(self, key: Any, version: int | None = None) -> bool:
        journal = self.journal
        if journal.active:
            v = self.primary.version if version is None else version
            if journal.covers(key, v):
                return bool(self.fallback.has_key(key, version=v))
        return False

    def get_many_uncovered(self, keys: list[Any], version: int = 0) -> dict[Any, Any]:
        journal = self.journal
        if not journal.active:
            return {}
        covered = journal.split(keys, version)[0]
        return dict(self.fallback.get_many(covered, version=version)) if covered else {}

    # The fallbacks of the writes: the key is journaled with the fallback's write.
    def set_failed(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> bool | None:
        v = self.primary.version if version is None else version
        return self.journal.write((key,), v, self.set_fallback, key, value, timeout, v)

    def set_fallback(self, key: Any, value: Any, timeout: Any, version: int) -> bool | None:
        self.fallback.set(key, value, timeout, version=version)
        return True if self.django_redis else None

    def delete_many_failed(self, keys: list[Any], version: int | None = None) -> int:
        v = self.primary.version if version is None else version
        return self.journal.write(keys, v, self.delete_count, keys, v)

    def delete_count(self, keys: Iterable[Any], version: int) -> int:
        delete = self.fallback.delete
        return sum(bool(delete(k, version=version)) for k in keys)

    def route(self, family: str, op: str,
              fallback: Fallback | None) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """``(call, served)``: the primary's ``op`` through the breaker, and its fallback.

        Made once per (family, op, fallback) and kept. ``call`` takes the
        primary's arguments, ``key`` first and ``version`` by keyword; when the
        breaker refuses it or Redis fails, ``served`` gets the same arguments
        and answers: ``fallback(bound, key, *args, version=v)`` with the version
        resolved, or the fallback store's own ``op`` when ``fallback`` is None;
        a write journals the key with it.
        """
        found = self.routes.get((family, op, fallback))
        if found is None:
            served = self.served(family, op, fallback)
            found = (self.guarded(self.method(op), served), served)
            self.routes[(family, op, fallback)] = found
        return found

    def method(self, op: str) -> Callable[..., Any]:
        """The primary's ``op``; ``NotImplementedError`` when it has none (Django's RedisCache).

        With django-redis, its client's ``op`` when the cache's only hands the
        call over (``client_method``).
        """
        found = client_method(self.primary, op) if self.django_redis else None
        if found is None:
            found = getattr(self.primary, op, None)
        if found is None:
            raise NotImplementedError(
                f"BreakerCache.{op}(): the PRIMARY {self.alias!r} "
                f"({type(self.primary).__name__}) has no {op}(); "
                "django_redis.cache.RedisCache has it.")
        return found

    def served(self, family: str, op: str, fallback: Fallback | None) -> Callable[..., Any]:
        """What ``route``'s call does when the breaker refuses it (or Redis fails)."""
        primary, journal, bound = self.primary, self.journal, self
        method = getattr(self.fallback, op) if fallback is None else None

        if family == _READ:
            def served(key: Any, *args: Any, version: int | None = None, **kw: Any) -> Any:
                v = primary.version if version is None else version
                if method is not None:
                    return method(key, *args, version=v)
                return fallback(bound, key, *args, version=v)  # type: ignore[misc]
        else:
            def served(key: Any, *args: Any, version: int | None = None, **kw: Any) -> Any:
                v = primary.version if version is None else version
                if method is not None:
                    return journal.write((key,), v, method, key, *args, version=v)
                return journal.write((key,), v, fallback, bound, key,  # type: ignore[arg-type]
                                     *args, version=v)
        return served


def _cache_entries() -> Mapping[str, Any]:
    # What the cache handler builds caches from (settings.CACHES as Django resolved it).
    entries: Mapping[str, Any] = caches.settings
    return entries


def _options_error(options: dict[str, Any]) -> str | None:
    problem = why_unusable(options, _cache_entries())
    if problem is None:
        return None
    return f"BreakerCache: {problem.message('OPTIONS')} {problem.fix('OPTIONS')}"


def _versions(bound: _Bound, kwargs: dict[str, Any]) -> set[int]:
    found = {kwargs.get(k) for k in ("version", "version_keys", "version_dest")}
    found.discard(None)
    found.add(bound.primary.version)
    return found  # type: ignore[return-value]


class CacheRouting(BaseCache):
    """The configuration, the binding to primary/fallback/journal, and the three routes."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = dict(params.get("OPTIONS") or {})
        # A bad configuration is raised on first use, not here: Django builds every
        # cache while running its own checks, and ours (redis_breaker.E010-E019)
        # must get the chance to report it with the key and the fix.
        self._config_error = _options_error(options)
        primary = options.get("PRIMARY")
        self._primary_alias = primary if isinstance(primary, str) else ""
        self._fallback_alias: str | None = options.get("FALLBACK")
        self._breaker_name = str(options.get("BREAKER", _DEFAULTS["BREAKER"]))
        self._add_fail_closed = options.get("ADD_FAIL_CLOSED") is True
        default_max_keys: int = _DEFAULTS["JOURNAL_MAX_KEYS"]
        max_keys = options.get("JOURNAL_MAX_KEYS", default_max_keys)
        self._max_keys = (max_keys if isinstance(max_keys, int) and max_keys >= 1
                          else default_max_keys)
        primary_entry = _cache_entries().get(self._primary_alias, {})
        self._probe_url = first_location(primary_entry) if primary_entry else None
        self._fallback_timeout = params.get("TIMEOUT", primary_entry.get("TIMEOUT", 300))
        # Where the data lives: two BreakerCache aliases over the same stores share a journal.
        self._identity = (self._primary_alias, repr(sorted(primary_entry.items())),
                          self._fallback_alias, self._breaker_name, self._max_keys)
        self._bound: _Bound | None = None

    # ------------------------------------------------------------- resolving
    def _bind(self) -> _Bound:
        bound = self._bound
        if bound is not None and _REGISTERED.get(self._breaker_name) is bound.breaker:
            return bound
        return self._rebind()

    def _rebind(self) -> _Bound:
        if self._config_error is not None:
            raise ImproperlyConfigured(self._config_error)
        breaker = get_breaker(self._breaker_name)
        bound = self._bound
        if bound is not None and bound.breaker is breaker:
            return bound
        breaker.adopt_url(self._probe_url)
        # An instance of its own, like every alias's: built from the settings of now
        # (a BreakerCache rebuilt after a settings change gets a primary built anew).
        primary = caches.create_connection(self._primary_alias)
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
            fallback = FallbackStore(
                f"redis_breaker.fallback:{self._primary_alias}:{hash(self._identity)}",
                {"TIMEOUT": self._fallback_timeout,
                 "OPTIONS": {"MAX_ENTRIES": max(self._max_keys, 300)}},
            )
        journal = journal_for(
            breaker, self._identity, self._primary_alias, fallback,
            lambda: caches.create_connection(self._primary_alias), self._max_keys,
        )
        if journal.make_key is None:
            journal.make_key = primary.make_key
        bound = _Bound(breaker, primary, journal.fallback or fallback, journal,
                       self._primary_alias)
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

    def _timeout(self, bound: _Bound, timeout: Any) -> Any:
        # The primary's default, not the fallback's, so both expire a key alike.
        return bound.primary.default_timeout if timeout is DEFAULT_TIMEOUT else timeout

    # ---------------------------------------------------------------- routes
    # While the journal is empty (Redis healthy, or down with nothing written
    # since) a call is one ``_Bound.route`` call: the primary's method through
    # the breaker, the version left to the primary. The journal's own path
    # (covered keys served by the fallback) is taken only while it holds keys.
    def _routed(family: str) -> Callable[..., Any]:  # type: ignore[misc]
        """The route method of ``family`` (``_read``, ``_write``): one body, made once per
        family, so a call pays no extra frame."""

        def routed(self: CacheRouting, op: str, key: Any, version: int | None,
                   args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                   fallback: Fallback | None = None) -> Any:
            bound = self._bound
            if bound is None or _REGISTERED.get(self._breaker_name) is not bound.breaker:
                bound = self._bind()
            call, served = (bound.routes.get((family, op, fallback))
                            or bound.route(family, op, fallback))
            journal = bound.journal
            if journal.active:
                v = bound.primary.version if version is None else version
                if journal.diverts(key, v):
                    return served(key, *args, version=v)
            if version is None:  # the primary's own default: no keyword to pass through
                return call(key, *args, **kwargs) if kwargs else call(key, *args)
            if kwargs:
                return call(key, *args, version=version, **kwargs)
            return call(key, *args, version=version)

        routed.__name__ = f"_{family}"
        return routed

    _read = _routed(_READ)
    _write = _routed(_WRITE)
    del _routed

    def _direct(self, op: str, keys: Iterable[Any], args: tuple[Any, ...],
                kwargs: dict[str, Any], *, lasting: bool = False) -> Any:
        """Redis alone. ``lasting``: the result talks to Redis later (a lock, an iterator)."""
        bound = self._bound
        if bound is None or _REGISTERED.get(self._breaker_name) is not bound.breaker:
            bound = self._bind()
        call = bound.directs.get(op)
        if call is None:
            # One breaker call for the whole operation, as for reads and writes.
            call = bound.directs[op] = bound.guarded(bound.method(op), None)
        journal = bound.journal
        if journal.active:
            versions = _versions(bound, kwargs)
            for key in keys:
                if any(journal.covers(key, v) for v in versions):
                    journal.kick()
                    raise KeyNotReplayedError(bound.breaker.name, key)
        given = None
        if kwargs:
            given = kwargs.get("client")
            # Unset keywords are left out, as django-redis's own cache passes only what it
            # is given: django-redis 5.4's ShardClient.keys/iter_keys take no client or
            # itersize. ``kwargs`` is the caller's own (a literal or its **kwargs): changed
            # in place.
            for name in _OMITTED_WHEN_NONE:
                if name in kwargs and kwargs[name] is None:
                    del kwargs[name]
        if given is None and not lasting:
            return call(*args, **kwargs)
        if given is not None:
            kwargs = {**kwargs, "client": self._guarded(bound, given)}
        # Through the guarded clients: every command the result sends later is guarded too.
        return getattr(bound.direct, op)(*args, **kwargs)

    @staticmethod
    def _guarded(bound: _Bound, given: Any) -> Any:
        # A pipeline only queues what the cache gives it; whoever executes it decides.
        if is_guarded(given) or isinstance(given, (Pipeline, AsyncPipeline)):
            return given
        return guarded_view(given, bound.breaker)
