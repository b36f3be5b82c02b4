"""System checks of every ``BreakerCache`` in ``CACHES`` (``redis_breaker.E010`` to ``E019``, ``E040``, ``W001``, ``W010``).

Registered by ``redis_breaker.checks``, under the name ``check_caches``. The
OPTIONS themselves are judged by the table in ``options`` (the same that the
backend raises from); here are the checks of the primary cache they point at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.checks import Warning as CheckWarning

from redis_breaker._config import url_problem
from redis_breaker._redact import redact_url
from redis_breaker.checks_common import (
    EXAMPLE_TIMEOUT,
    SENTINEL_URL_EXAMPLE,
    TIMEOUTS,
    breaker_has_url,
    given,
    is_subclass,
    setting_path,
    url_sets,
)
from redis_breaker.conf import conf

from .backend import sentinel_location, uses_sentinel
from .options import OPTIONS, is_breaker_cache, validate_options
from .sharing import cache_database_urls, shared_databases

__all__ = ["check_caches"]

_DJANGO_REDIS = "django_redis.cache.RedisCache"
# Problems with these options are reported after the primary's own checks.
_AFTER_PRIMARY = frozenset(spec.key for spec in OPTIONS if spec.key != "PRIMARY")


def check_caches(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every ``BreakerCache`` in ``CACHES``: its OPTIONS and the primary it protects."""
    caches = conf.CACHES
    if not isinstance(caches, Mapping):
        return []
    found: list[CheckMessage] = []
    for alias, entry in caches.items():
        if is_breaker_cache(entry):
            found += _check_breaker_cache(str(alias), entry, caches)
    return found


def _check_breaker_cache(alias: str, entry: Mapping[str, Any],
                         caches: Mapping[str, Any]) -> list[CheckMessage]:
    options = entry.get("OPTIONS", {})
    where = setting_path("CACHES", alias, "OPTIONS")
    problems = validate_options(options, caches)
    errors: list[CheckMessage] = [
        Error(p.message(where), hint=p.fix(where), id=p.check_id) for p in problems]
    if not isinstance(options, Mapping) or any(p.key == "PRIMARY" for p in problems):
        return errors
    split = next((i for i, p in enumerate(problems) if p.key in _AFTER_PRIMARY), len(problems))
    primary = options["PRIMARY"]
    return [*errors[:split], *_check_locations(alias, primary, caches[primary]),
            *_check_primary(primary, caches[primary]),
            *_check_sentinel_primary(options, primary, caches[primary]), *errors[split:],
            *_check_shared_database(alias, primary, caches[primary])]


def _locations(entry: Mapping[str, Any]) -> list[str]:
    location = entry.get("LOCATION")
    items = location if isinstance(location, (list, tuple)) else [location]
    found: list[str] = []
    for item in items:
        if isinstance(item, str):
            found += [part.strip() for part in item.replace(";", ",").split(",") if part.strip()]
    return found


#: Stands in ``_check_locations`` for a LOCATION string cut inside its credentials.
_CUT = object()


def _check_locations(alias: str, primary: str, entry: Any) -> list[CheckMessage]:
    """Every URL of the primary's LOCATION, judged as ``REDIS_BREAKERS``' ``URL`` is (E040).

    Read as the primary reads it: Django's RedisCache splits a string on ``;``
    and ``,``, django-redis on ``,``; a list gives one URL per item. Nothing is
    stripped (neither backend strips: a space after a comma is part of the next
    URL, which redis-py then refuses). The message shows a URL with its password
    masked, never as written.
    """
    if not isinstance(entry, Mapping) or entry.get("LOCATION") is None:
        return []  # Django reports a Redis cache without LOCATION when it is built
    location = entry["LOCATION"]
    where = setting_path("CACHES", primary, "LOCATION")
    separators = "," if is_subclass(entry.get("BACKEND"), (_DJANGO_REDIS,)) else ";,"
    items = list(location) if isinstance(location, (list, tuple)) else [location]
    urls: list[Any] = []
    for item in items:
        if isinstance(item, str):
            whole = item
            for sep in separators[1:]:
                item = item.replace(sep, separators[0])
            parts = item.split(separators[0])
            if "@" in whole and any("://" not in part for part in parts):
                # A separator inside a user name or password cut the URL in pieces, any of
                # which may hold a part of them: judged (and shown) as one, never piece by piece.
                urls.append(_CUT)
            else:
                urls += parts
        else:
            urls.append(item)
    fix = (f"Set {where} to a redis://, rediss:// or unix:// URL (or several: a list, or "
           f"separated by {' or '.join(repr(c) for c in separators)} without spaces); "
           f"percent-encode any of @ : / ? # % {' '.join(separators)} and spaces in the user "
           "name or password. A django-redis Sentinel primary names its master group: "
           "redis://<group>/<db>.")
    found: list[CheckMessage] = []
    for index, url in enumerate(urls, 1):
        which = f"URL {index} of {len(urls)}" if len(urls) > 1 else "URL"
        why: str | None
        if url is _CUT:
            why, text = (f"holds credentials and is cut by {' or '.join(map(repr, separators))} "
                         "into pieces that are not all URLs (a separator inside the user name "
                         "or password?); not shown"), ""
        elif not isinstance(url, str):
            why, text = f"is a {type(url).__name__}, not a string", ""
        elif not url:
            why, text = "is empty (a separator too many)", ""
        else:
            text = f" {redact_url(url)!r}"
            why = url_problem(url)
            if why is None and url.lower().startswith("redis+sentinel:"):
                why = ("has scheme 'redis+sentinel', which the cache backends do not read "
                       "(django-redis finds a master through Sentinel with CLIENT_CLASS "
                       "SentinelClient)")
        if why:
            found.append(Error(
                f"{where} {which}{text} {why}: the BreakerCache {alias!r} cannot reach its "
                "PRIMARY, and its breaker's probe would PING nothing.",
                hint=fix, id="redis_breaker.E040"))
    return found


def _check_primary(alias: str, entry: Mapping[str, Any]) -> list[CheckMessage]:
    found: list[CheckMessage] = []
    options = entry.get("OPTIONS") or {}
    if not isinstance(options, Mapping):
        return found  # Django's own cache setup reports this one
    where = setting_path("CACHES", alias, "OPTIONS")
    django_redis = is_subclass(entry.get("BACKEND"), (_DJANGO_REDIS,))
    if django_redis:
        ignoring = options.get("IGNORE_EXCEPTIONS",
                               conf.DJANGO_REDIS_IGNORE_EXCEPTIONS)
        if ignoring:
            source = (f'{where}["IGNORE_EXCEPTIONS"]' if "IGNORE_EXCEPTIONS" in options
                      else "DJANGO_REDIS_IGNORE_EXCEPTIONS")
            found.append(Error(
                f"{source} is true: the BreakerCache primary {alias!r} swallows Redis errors, "
                "so the breaker never sees an outage (writes are lost unjournaled and stale "
                "values are served after it).",
                hint=f"Set {source} to False (or remove it); the BreakerCache serves the "
                     "fallback while Redis is down.",
                id="redis_breaker.E017",
            ))
        pool = options.get("CONNECTION_POOL_KWARGS") or {}
        pool = pool if isinstance(pool, Mapping) else {}
        keys = {"socket_timeout": "SOCKET_TIMEOUT",
                "socket_connect_timeout": "SOCKET_CONNECT_TIMEOUT"}
        timeouts = {k: given(options, upper) or given(pool, k) for k, upper in keys.items()}
    else:
        keys = {k: k for k in TIMEOUTS}
        timeouts = {k: given(options, k) for k in TIMEOUTS}
    locations = _locations(entry)
    missing = [keys[k] for k in TIMEOUTS
               if not timeouts[k] and not (locations and all(url_sets(u, k) for u in locations))]
    if missing:
        example = ", ".join(f'"{k}": {EXAMPLE_TIMEOUT}' for k in keys.values())
        found.append(CheckWarning(
            f"{where} sets no {' / '.join(missing)}: the BreakerCache primary {alias!r} waits "
            "for a hung or unreachable Redis as long as the operating system lets it, "
            "before the breaker can count a failure.",
            hint=f"Add {example} (seconds) to {where}.",
            id="redis_breaker.W001",
        ))
    return found


def _check_sentinel_primary(options: Mapping[str, Any], primary: str,
                            entry: Mapping[str, Any]) -> list[CheckMessage]:
    """A Sentinel primary whose sentinels the probe cannot be pointed at (E018)."""
    name = options.get("BREAKER", "default")
    if not uses_sentinel(entry) or sentinel_location(entry) or breaker_has_url(name):
        return []
    where = setting_path("CACHES", primary)
    return [Error(
        f"{where} finds its master through Redis Sentinel, but no probe URL can be built "
        f"from it (OPTIONS[\"SENTINELS\"] must be (host, port) pairs and LOCATION "
        f"redis://<master group>/<db>), and REDIS_BREAKERS[\"{name}\"] sets no URL: the "
        "breaker could not find the master again after a failover.",
        hint=f'Set REDIS_BREAKERS["{name}"]["URL"] = "{SENTINEL_URL_EXAMPLE}" (your '
             f"sentinels and master group), or fix {where}[\"OPTIONS\"][\"SENTINELS\"].",
        id="redis_breaker.E018",
    )]


def _check_shared_database(alias: str, primary: str, entry: Any) -> list[CheckMessage]:
    """A primary whose Redis database also holds a Celery broker or a channel layer (W010)."""
    if not isinstance(entry, Mapping):
        return []
    where = setting_path("CACHES", primary, "LOCATION")
    # The server as the URL names it, through the redaction routine: a user name with
    # a character a URL cannot hold unencoded reads as the "host" of a raw URL.
    urls = cache_database_urls(entry)
    return [CheckWarning(
        f"{where} ({alias!r}'s PRIMARY, {redact_url(urls.get(database, ''))!r}) writes to "
        f"Redis database {database[2]} of that server, which also holds {tenant}: the "
        "cache's clear() is FLUSHDB of that database and deletes their data too.",
        hint=f"Give the cache a database of its own (another number in {where}, such as "
             "/1). After an outage BreakerCache deletes only the cache's own keys, but a "
             "clear() while Redis is healthy is the primary's FLUSHDB.",
        id="redis_breaker.W010",
    ) for tenant, database in shared_databases(entry)]
