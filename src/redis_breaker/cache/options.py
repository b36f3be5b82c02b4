"""``BreakerCache``'s ``OPTIONS``: one table, read by the backend and by the system checks.

``validate_options`` returns every problem with one BreakerCache's OPTIONS,
each with a message, a fix and its stable check id (``redis_breaker.E010`` to
``E016``, ``E019``). ``redis_breaker.cache.checks`` reports them all. The backend raises
``ImproperlyConfigured`` on first use with the first problem that makes it
unusable (an unknown option, a PRIMARY or FALLBACK that names no cache, a bad
JOURNAL_MAX_KEYS: each option's ``usable`` rule); the others (a PRIMARY that is
not Redis, a FALLBACK that is, a BREAKER that is not a string: the ``sound``
rules) leave it working, so only the checks report them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from redis_breaker.checks_common import is_subclass, setting_path, shown

__all__ = ["OPTIONS", "OptionProblem", "OptionSpec", "is_breaker_cache", "is_redis_cache",
           "validate_options", "why_unusable"]

BREAKER_CACHE = "redis_breaker.cache.BreakerCache"
REDIS_CACHES = ("django.core.cache.backends.redis.RedisCache", "django_redis.cache.RedisCache")
_NOT_REDIS = ("the alias of a cache that does not use Redis (LocMemCache, a database or file "
              "cache), or remove it for a private LocMemCache")


@dataclass(frozen=True, slots=True)
class OptionProblem:
    """One thing wrong with a BreakerCache's OPTIONS."""

    check_id: str
    #: The option, or None when OPTIONS itself is wrong.
    key: Any
    #: Message and fix, given where the option is written (``CACHES["x"]["OPTIONS"]["KEY"]``
    #: for the checks, ``OPTIONS["KEY"]`` for the backend's error).
    text: Callable[[str], str]
    hint: Callable[[str], str]

    def path(self, options_path: str) -> str:
        return options_path if self.key is None else setting_path(options_path, self.key)

    def message(self, options_path: str) -> str:
        return self.text(self.path(options_path))

    def fix(self, options_path: str) -> str:
        return self.hint(self.path(options_path))


Rule = Callable[[Mapping[str, Any], Mapping[str, Any]], OptionProblem | None]


@dataclass(frozen=True, slots=True)
class OptionSpec:
    key: str
    default: Any
    meaning: str
    #: A problem the backend refuses to run with; each rule gets (OPTIONS, CACHES).
    usable: Rule | None
    #: A problem only the checks report, looked for once the value is usable.
    sound: Rule | None = None


def is_breaker_cache(entry: Any) -> bool:
    return isinstance(entry, Mapping) and is_subclass(entry.get("BACKEND"), (BREAKER_CACHE,))


def is_redis_cache(entry: Any) -> bool:
    return isinstance(entry, Mapping) and is_subclass(entry.get("BACKEND"), REDIS_CACHES)


def _redis_aliases(caches: Mapping[str, Any]) -> str:
    return ", ".join(repr(a) for a, e in caches.items() if is_redis_cache(e)) or "none yet"


# ------------------------------------------------------------------ rules
def _primary_names_a_cache(options: Mapping[str, Any],
                           caches: Mapping[str, Any]) -> OptionProblem | None:
    primary = options.get("PRIMARY")
    if isinstance(primary, str) and primary in caches:
        return None
    why = "is missing" if primary is None else f"is {shown(primary)}, not an alias in CACHES"
    aliases = _redis_aliases(caches)
    return OptionProblem(
        "redis_breaker.E010", "PRIMARY", lambda path: f"{path} {why}.",
        lambda path: f"Set {path} to the alias of the Redis cache the breaker protects (Redis "
                     f"caches in CACHES: {aliases}).")


def _primary_is_redis(options: Mapping[str, Any],
                      caches: Mapping[str, Any]) -> OptionProblem | None:
    primary = options["PRIMARY"]
    entry = caches[primary]
    if is_redis_cache(entry):
        return None
    backend = entry.get("BACKEND") if isinstance(entry, Mapping) else None
    aliases = _redis_aliases(caches)
    return OptionProblem(
        "redis_breaker.E011", "PRIMARY",
        lambda path: f"{path} names {primary!r}, whose BACKEND {backend!r} is not a Redis cache.",
        lambda path: f"Point {path} at a django.core.cache.backends.redis.RedisCache or "
                     f"django_redis.cache.RedisCache alias (Redis caches in CACHES: {aliases}).")


def _fallback_names_a_cache(options: Mapping[str, Any],
                            caches: Mapping[str, Any]) -> OptionProblem | None:
    fallback = options.get("FALLBACK")
    if fallback is None or (isinstance(fallback, str) and fallback in caches):
        return None
    return OptionProblem(
        "redis_breaker.E012", "FALLBACK",
        lambda path: f"{path} is {shown(fallback)}, not an alias in CACHES.",
        lambda path: f"Set {path} to the alias of a local cache (LocMemCache, a database or "
                     "file cache), or remove it for a private LocMemCache.")


def _fallback_is_local(options: Mapping[str, Any],
                       caches: Mapping[str, Any]) -> OptionProblem | None:
    fallback = options.get("FALLBACK")
    if fallback is None:
        return None
    target = caches[fallback]
    if fallback == options.get("PRIMARY"):
        why = "is the PRIMARY itself"
    elif is_breaker_cache(target):  # this BreakerCache itself, or another one
        why = "is a BreakerCache"
    elif is_redis_cache(target):
        why = "is a Redis cache, which is down whenever the fallback is needed"
    else:
        return None
    return OptionProblem("redis_breaker.E013", "FALLBACK",
                         lambda path: f"{path} names {fallback!r}, which {why}.",
                         lambda path: f"Set {path} to {_NOT_REDIS}.")


def _breaker_is_a_name(options: Mapping[str, Any],
                       caches: Mapping[str, Any]) -> OptionProblem | None:
    if "BREAKER" not in options or isinstance(options["BREAKER"], str):
        return None
    breaker = options["BREAKER"]
    return OptionProblem(
        "redis_breaker.E015", "BREAKER",
        lambda path: f"{path} is {shown(breaker)}, not a breaker name.",
        lambda path: f'Set {path} to the name of a breaker (a string such as "default", a key '
                     f"of REDIS_BREAKERS).")


def _journal_max_keys_positive(options: Mapping[str, Any],
                               caches: Mapping[str, Any]) -> OptionProblem | None:
    if "JOURNAL_MAX_KEYS" not in options:
        return None
    limit = options["JOURNAL_MAX_KEYS"]
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
        return None
    return OptionProblem(
        "redis_breaker.E016", "JOURNAL_MAX_KEYS",
        lambda path: f"{path} is {shown(limit)}, not a positive integer.",
        lambda path: f"Set {path} to an integer of 1 or more (default 10000), or remove it.")


def _add_fail_closed_is_bool(options: Mapping[str, Any],
                             caches: Mapping[str, Any]) -> OptionProblem | None:
    if "ADD_FAIL_CLOSED" not in options or isinstance(options["ADD_FAIL_CLOSED"], bool):
        return None
    value = options["ADD_FAIL_CLOSED"]
    return OptionProblem(
        "redis_breaker.E019", "ADD_FAIL_CLOSED",
        lambda path: f"{path} is {shown(value)}, not True or False.",
        lambda path: f"Set {path} to True (add() returns False while Redis cannot be asked) "
                     "or False (the default: add() is answered by the fallback), or remove it.")


#: Every option a BreakerCache takes, in documentation order.
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("PRIMARY", None, "Alias of the Redis cache the breaker protects (required).",
               usable=_primary_names_a_cache, sound=_primary_is_redis),
    OptionSpec("FALLBACK", None, "Alias of the cache that serves calls while Redis is away "
               "(None: a private LocMemCache).",
               usable=_fallback_names_a_cache, sound=_fallback_is_local),
    OptionSpec("BREAKER", "default", "Name of the shared breaker (a key of REDIS_BREAKERS).",
               usable=None, sound=_breaker_is_a_name),
    OptionSpec("JOURNAL_MAX_KEYS", 10_000, "How many changed keys the journal names one by one "
               "before it covers every key.", usable=_journal_max_keys_positive),
    OptionSpec("ADD_FAIL_CLOSED", False, "add() (and set(nx=True)) returns False while Redis "
               "cannot be asked, instead of asking the fallback.", usable=_add_fail_closed_is_bool),
)

_KEYS = tuple(spec.key for spec in OPTIONS)


def _unknown(key: Any) -> OptionProblem:
    close = difflib.get_close_matches(str(key), list(_KEYS), n=1)
    suggestion = f"Did you mean {close[0]!r}? " if close else ""
    return OptionProblem(
        "redis_breaker.E014", key,
        lambda path: f"{path}: unknown BreakerCache option {key!r}.",
        lambda path: f"{suggestion}Remove it; BreakerCache takes {', '.join(_KEYS)} (options of "
                     "the Redis client belong in the PRIMARY cache's own OPTIONS).")


def _problems(options: Any, caches: Mapping[str, Any], *,
              usable_only: bool) -> Iterator[OptionProblem]:
    if not isinstance(options, Mapping):
        yield OptionProblem(
            "redis_breaker.E014", None,
            lambda path: f"{path} is {shown(options)}, not a dict.",
            lambda path: f'Set {path} = {{"PRIMARY": "<alias of your Redis cache>"}}.')
        return
    for key in options:
        if key not in _KEYS:
            yield _unknown(key)
    for spec in OPTIONS:
        problem = spec.usable(options, caches) if spec.usable is not None else None
        if problem is None and spec.sound is not None and not usable_only:
            problem = spec.sound(options, caches)
        if problem is not None:
            yield problem


def validate_options(options: Any, caches: Mapping[str, Any]) -> list[OptionProblem]:
    """Every problem with one BreakerCache's ``OPTIONS``, in the table's order."""
    return list(_problems(options, caches, usable_only=False))


def why_unusable(options: Any, caches: Mapping[str, Any]) -> OptionProblem | None:
    """The first problem that makes the backend unusable, or None.

    Only the ``usable`` rules run: the ``sound`` ones import backend classes to
    compare them, which the backend need not pay for (or cause) each time Django
    builds it.
    """
    return next(_problems(options, caches, usable_only=True), None)
