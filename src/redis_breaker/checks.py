"""System checks for ``REDIS_BREAKERS`` and the integrations' settings.

Ids are stable; each is documented in docs/configuration.md and asserted by a test.

- ``redis_breaker.E001``: ``REDIS_BREAKERS`` is not a dict.
- ``redis_breaker.E002``: a breaker's name is not a string or its entry is not a dict.
- ``redis_breaker.E003``: unknown key in a breaker's entry.
- ``redis_breaker.E004``: a value of the wrong type.
- ``redis_breaker.E005``: a value out of range or malformed (``URL``).
- ``redis_breaker.E006``: values that contradict each other.
- ``redis_breaker.E007``: an exception path that cannot be imported.
- ``redis_breaker.E010``: a ``BreakerCache`` whose ``PRIMARY`` is missing or names no alias.
- ``redis_breaker.E011``: a ``BreakerCache`` ``PRIMARY`` that is not a Redis cache.
- ``redis_breaker.E012``: a ``BreakerCache`` ``FALLBACK`` that names no alias.
- ``redis_breaker.E013``: a ``BreakerCache`` ``FALLBACK`` that is a Redis cache or the primary.
- ``redis_breaker.E014``: a ``BreakerCache`` ``OPTIONS`` that is not a dict or has an unknown key.
- ``redis_breaker.E015``: a ``BreakerCache`` ``BREAKER`` that is not a string.
- ``redis_breaker.E016``: a ``BreakerCache`` ``JOURNAL_MAX_KEYS`` that is not a positive integer.
- ``redis_breaker.E017``: a django-redis ``PRIMARY`` that ignores exceptions.
- ``redis_breaker.E018``: a Sentinel ``PRIMARY`` from which no probe URL can be built, and no ``URL``.
- ``redis_breaker.E020``: a ``BreakerChannelLayer`` ``breaker`` that is not a breaker name.
- ``redis_breaker.E021``: a ``BreakerChannelLayer`` ``CONFIG`` without usable ``hosts``.
- ``redis_breaker.E022``: a Sentinel host from which no probe URL can be built, and no ``URL``.
- ``redis_breaker.E030``: ``CELERY_REDIS_BREAKER_FALLBACK`` is not a fallback policy.
- ``redis_breaker.E031``: ``CELERY_REDIS_BREAKER_NAME`` is not a string.
- ``redis_breaker.E032``: ``CELERY_REDIS_BREAKER_TIMEOUT`` is not a positive number.
- ``redis_breaker.E033``: ``CELERY_REDIS_BREAKER_RELAY_INTERVAL`` is not a number of seconds.
- ``redis_breaker.W001``: a ``BreakerCache`` primary without socket timeouts.
- ``redis_breaker.W002``: a ``BreakerChannelLayer`` host without socket timeouts.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

from ._config import validate_settings
from ._redact import redact
from .conf import conf

__all__ = ["check_breakers", "check_caches", "check_celery", "check_channel_layers"]

_IDS = {
    "unknown": "redis_breaker.E003",
    "type": "redis_breaker.E004",
    "value": "redis_breaker.E005",
    "consistency": "redis_breaker.E006",
    "import": "redis_breaker.E007",
}

# The keys BreakerCache accepts (kept in step with cache._OPTIONS by a test).
_CACHE_OPTIONS = ("PRIMARY", "FALLBACK", "BREAKER", "JOURNAL_MAX_KEYS")
_REDIS_CACHES = ("django.core.cache.backends.redis.RedisCache", "django_redis.cache.RedisCache")
_DJANGO_REDIS = "django_redis.cache.RedisCache"
_TIMEOUTS = ("socket_timeout", "socket_connect_timeout")
_EXAMPLE_TIMEOUT = 0.5


@register(Tags.caches)
def check_breakers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    breakers = conf.REDIS_BREAKERS
    if breakers is None:
        return []
    if not isinstance(breakers, dict):
        return [Error(
            f"REDIS_BREAKERS is {type(breakers).__name__}, not a dict.",
            hint='Set REDIS_BREAKERS = {"default": {"URL": "redis://..."}}, '
                 "one entry per breaker name.",
            id="redis_breaker.E001",
        )]
    errors: list[CheckMessage] = []
    for name, entry in breakers.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            errors.append(Error(
                f"REDIS_BREAKERS[{name!r}] must map a breaker name (str) to a dict of settings; "
                f"got {type(entry).__name__}.",
                hint=f'Write REDIS_BREAKERS["{name}"] = {{"URL": "redis://...", ...}}.',
                id="redis_breaker.E002",
            ))
            continue
        for problem in validate_settings(entry):
            errors.append(Error(
                f'REDIS_BREAKERS["{name}"]["{problem.key}"]: {problem.message()}.',
                hint=problem.fix(),
                id=_IDS[problem.kind],
            ))
    return errors


# ------------------------------------------------------------------ helpers
def _path(root: str, *keys: Any) -> str:
    return root + "".join(f'["{k}"]' if isinstance(k, str) else f"[{k!r}]" for k in keys)


def _shown(value: Any) -> str:
    """``value`` for a message: its type and repr, never a password."""
    return redact(f"{type(value).__name__} {value!r}")


def _is_subclass(backend: Any, dotted: Iterable[str]) -> bool:
    """Whether the class at dotted path ``backend`` is (a subclass of) one of ``dotted``."""
    if not isinstance(backend, str):
        return False
    try:
        cls = import_string(backend)
    except ImportError:
        # Unimportable here (an optional package missing): judge by the path alone.
        return backend in dotted
    for path in dotted:
        try:
            base = import_string(path)
        except ImportError:
            continue
        if isinstance(cls, type) and isinstance(base, type) and issubclass(cls, base):
            return True
    return False


def _is_breaker_cache(entry: Any) -> bool:
    return isinstance(entry, Mapping) and _is_subclass(entry.get("BACKEND"),
                                                       ("redis_breaker.cache.BreakerCache",))


def _is_redis_cache(entry: Any) -> bool:
    return isinstance(entry, Mapping) and _is_subclass(entry.get("BACKEND"), _REDIS_CACHES)


def _locations(entry: Mapping[str, Any]) -> list[str]:
    location = entry.get("LOCATION")
    items = location if isinstance(location, (list, tuple)) else [location]
    found: list[str] = []
    for item in items:
        if isinstance(item, str):
            found += [part.strip() for part in item.replace(";", ",").split(",") if part.strip()]
    return found


def _url_sets(url: str, key: str) -> bool:
    """Whether a Redis URL carries ``key`` in its query (redis-py's from_url reads it)."""
    try:
        values = parse_qs(urlsplit(url).query).get(key)
    except ValueError:
        return False
    return bool(values and values[0] not in ("", "None"))


def _given(options: Mapping[str, Any], *keys: str) -> bool:
    return any(options.get(k) is not None for k in keys)


def _suggest(key: Any, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f"Did you mean {close[0]!r}? " if close else ""


# ------------------------------------------------------------------ the cache
@register(Tags.caches)
def check_caches(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every ``BreakerCache`` in ``CACHES``: its OPTIONS and the primary it protects."""
    caches = conf.CACHES
    if not isinstance(caches, Mapping):
        return []
    found: list[CheckMessage] = []
    for alias, entry in caches.items():
        if _is_breaker_cache(entry):
            found += _check_breaker_cache(str(alias), entry, caches)
    return found


def _check_breaker_cache(alias: str, entry: Mapping[str, Any],
                         caches: Mapping[str, Any]) -> list[CheckMessage]:
    options = entry.get("OPTIONS", {})
    where = _path("CACHES", alias, "OPTIONS")
    if not isinstance(options, Mapping):
        return [Error(f"{where} is {_shown(options)}, not a dict.",
                      hint=f'Set {where} = {{"PRIMARY": "<alias of your Redis cache>"}}.',
                      id="redis_breaker.E014")]
    found: list[CheckMessage] = []
    for key in options:
        if key not in _CACHE_OPTIONS:
            found.append(Error(
                f"{_path('CACHES', alias, 'OPTIONS', key)}: unknown BreakerCache option {key!r}.",
                hint=f"{_suggest(key, _CACHE_OPTIONS)}Remove it; BreakerCache takes "
                     f"{', '.join(_CACHE_OPTIONS)} (options of the Redis client belong in the "
                     "PRIMARY cache's own OPTIONS).",
                id="redis_breaker.E014",
            ))
    aliases = ", ".join(repr(a) for a, e in caches.items() if _is_redis_cache(e)) or "none yet"
    primary = options.get("PRIMARY")
    primary_path = _path("CACHES", alias, "OPTIONS", "PRIMARY")
    if primary is None or not isinstance(primary, str) or primary not in caches:
        why = ("is missing" if primary is None else
               f"is {_shown(primary)}, not an alias in CACHES")
        found.append(Error(f"{primary_path} {why}.",
                           hint=f"Set {primary_path} to the alias of the Redis cache the breaker "
                                f"protects (Redis caches in CACHES: {aliases}).",
                           id="redis_breaker.E010"))
        primary = None
    elif not _is_redis_cache(caches[primary]):
        backend = caches[primary].get("BACKEND") if isinstance(caches[primary], Mapping) else None
        found.append(Error(
            f"{primary_path} names {primary!r}, whose BACKEND {backend!r} is not a Redis cache.",
            hint=f"Point {primary_path} at a django.core.cache.backends.redis.RedisCache or "
                 f"django_redis.cache.RedisCache alias (Redis caches in CACHES: {aliases}).",
            id="redis_breaker.E011",
        ))
        primary = None
    else:
        found += _check_primary(primary, caches[primary])
        found += _check_sentinel_primary(alias, options, primary, caches[primary])
    found += _check_fallback(alias, options, primary, caches)
    breaker = options.get("BREAKER")
    if "BREAKER" in options and not isinstance(breaker, str):
        path = _path("CACHES", alias, "OPTIONS", "BREAKER")
        found.append(Error(f"{path} is {_shown(breaker)}, not a breaker name.",
                           hint=f'Set {path} to the name of a breaker (a string such as '
                                f'"default", a key of REDIS_BREAKERS).',
                           id="redis_breaker.E015"))
    limit = options.get("JOURNAL_MAX_KEYS")
    if "JOURNAL_MAX_KEYS" in options and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        path = _path("CACHES", alias, "OPTIONS", "JOURNAL_MAX_KEYS")
        found.append(Error(f"{path} is {_shown(limit)}, not a positive integer.",
                           hint=f"Set {path} to an integer of 1 or more (default 10000), or "
                                "remove it.",
                           id="redis_breaker.E016"))
    return found


def _check_primary(alias: str, entry: Mapping[str, Any]) -> list[CheckMessage]:
    found: list[CheckMessage] = []
    options = entry.get("OPTIONS") or {}
    if not isinstance(options, Mapping):
        return found  # Django's own cache setup reports this one
    where = _path("CACHES", alias, "OPTIONS")
    django_redis = _is_subclass(entry.get("BACKEND"), (_DJANGO_REDIS,))
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
        given = {k: _given(options, upper) or _given(pool, k) for k, upper in keys.items()}
    else:
        keys = {k: k for k in _TIMEOUTS}
        given = {k: _given(options, k) for k in _TIMEOUTS}
    locations = _locations(entry)
    missing = [keys[k] for k in _TIMEOUTS
               if not given[k] and not (locations and all(_url_sets(u, k) for u in locations))]
    if missing:
        example = ", ".join(f'"{k}": {_EXAMPLE_TIMEOUT}' for k in keys.values())
        found.append(CheckWarning(
            f"{where} sets no {' / '.join(missing)}: the BreakerCache primary {alias!r} waits "
            "for a hung or unreachable Redis as long as the operating system lets it, "
            "before the breaker can count a failure.",
            hint=f"Add {example} (seconds) to {where}.",
            id="redis_breaker.W001",
        ))
    return found


def _breaker_has_url(name: Any) -> bool:
    breakers = conf.REDIS_BREAKERS
    entry = breakers.get(name) if isinstance(breakers, dict) and isinstance(name, str) else None
    return isinstance(entry, dict) and bool(entry.get("URL"))


_SENTINEL_URL_EXAMPLE = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0"


def _check_sentinel_primary(alias: str, options: Mapping[str, Any], primary: str,
                            entry: Mapping[str, Any]) -> list[CheckMessage]:
    """A Sentinel primary whose sentinels the probe cannot be pointed at (E018)."""
    from .cache.backend import sentinel_location, uses_sentinel

    name = options.get("BREAKER", "default")
    if not uses_sentinel(entry) or sentinel_location(entry) or _breaker_has_url(name):
        return []
    where = _path("CACHES", primary)
    return [Error(
        f"{where} finds its master through Redis Sentinel, but no probe URL can be built "
        f"from it (OPTIONS[\"SENTINELS\"] must be (host, port) pairs and LOCATION "
        f"redis://<master group>/<db>), and REDIS_BREAKERS[\"{name}\"] sets no URL: the "
        "breaker could not find the master again after a failover.",
        hint=f'Set REDIS_BREAKERS["{name}"]["URL"] = "{_SENTINEL_URL_EXAMPLE}" (your '
             f"sentinels and master group), or fix {where}[\"OPTIONS\"][\"SENTINELS\"].",
        id="redis_breaker.E018",
    )]


def _check_fallback(alias: str, options: Mapping[str, Any], primary: str | None,
                    caches: Mapping[str, Any]) -> list[CheckMessage]:
    if options.get("FALLBACK") is None:
        return []
    fallback = options["FALLBACK"]
    path = _path("CACHES", alias, "OPTIONS", "FALLBACK")
    if not isinstance(fallback, str) or fallback not in caches:
        return [Error(f"{path} is {_shown(fallback)}, not an alias in CACHES.",
                      hint=f"Set {path} to the alias of a local cache (LocMemCache, a "
                           "database or file cache), or remove it for a private LocMemCache.",
                      id="redis_breaker.E012")]
    target = caches[fallback]
    why = None
    if fallback in (primary, options.get("PRIMARY")):
        why = "is the PRIMARY itself"
    elif fallback == alias or _is_breaker_cache(target):
        why = "is a BreakerCache"
    elif _is_redis_cache(target):
        why = "is a Redis cache, which is down whenever the fallback is needed"
    if why is None:
        return []
    return [Error(f"{path} names {fallback!r}, which {why}.",
                  hint=f"Set {path} to the alias of a cache that does not use Redis "
                       "(LocMemCache, a database or file cache), or remove it for a private "
                       "LocMemCache.",
                  id="redis_breaker.E013")]


# ------------------------------------------------------------------ Channels
@register()
def check_channel_layers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every ``BreakerChannelLayer`` in ``CHANNEL_LAYERS``: its breaker and hosts."""
    layers = conf.CHANNEL_LAYERS
    if not isinstance(layers, Mapping):
        return []
    found: list[CheckMessage] = []
    for alias, entry in layers.items():
        if isinstance(entry, Mapping) and _is_subclass(
                entry.get("BACKEND"), ("redis_breaker.channels.BreakerChannelLayer",)):
            found += _check_layer(str(alias), entry)
    return found


def _check_layer(alias: str, entry: Mapping[str, Any]) -> list[CheckMessage]:
    config = entry.get("CONFIG", {})
    where = _path("CHANNEL_LAYERS", alias, "CONFIG")
    example = (f'[{{"address": "redis://...", "socket_timeout": {_EXAMPLE_TIMEOUT}, '
               f'"socket_connect_timeout": {_EXAMPLE_TIMEOUT}}}]')
    if not isinstance(config, Mapping):
        return [Error(f"{where} is {_shown(config)}, not a dict.",
                      hint=f'Set {where} = {{"hosts": {example}}}.', id="redis_breaker.E021")]
    found: list[CheckMessage] = []
    breaker = config.get("breaker", "default")
    if not isinstance(breaker, str):
        from ._breaker import Breaker

        if not isinstance(breaker, Breaker):
            path = _path("CHANNEL_LAYERS", alias, "CONFIG", "breaker")
            found.append(Error(f"{path} is {_shown(breaker)}, not a breaker name.",
                               hint=f'Set {path} to the name of a breaker (a string such as '
                                    f'"default", a key of REDIS_BREAKERS).',
                               id="redis_breaker.E020"))
    hosts = config.get("hosts")
    path = _path("CHANNEL_LAYERS", alias, "CONFIG", "hosts")
    if not hosts or not isinstance(hosts, (list, tuple)):
        why = ("is missing: channels_redis would use redis://localhost:6379 without timeouts"
               if not hosts else f"is {_shown(hosts)}, not a list of hosts")
        found.append(Error(f"{path} {why}.", hint=f"Set {path} = {example}.",
                           id="redis_breaker.E021"))
        return found
    for i, host in enumerate(hosts):
        found += _check_host(_path("CHANNEL_LAYERS", alias, "CONFIG", "hosts", i), host, example)
    found += _check_sentinel_host(alias, breaker, hosts[0])
    return found


def _check_sentinel_host(alias: str, breaker: Any, host: Any) -> list[CheckMessage]:
    """A Sentinel first host whose sentinels the probe cannot be pointed at (E022)."""
    from .channels.remote import sentinel_probe_url

    if not isinstance(host, Mapping) or "master_name" not in host:
        return []
    name = breaker if isinstance(breaker, str) else getattr(breaker, "name", None)
    if isinstance(breaker, str) and _breaker_has_url(name):
        return []
    if not isinstance(breaker, str) and getattr(breaker, "url", None):
        return []
    if sentinel_probe_url(dict(host)):
        return []
    path = _path("CHANNEL_LAYERS", alias, "CONFIG", "hosts", 0)
    return [Error(
        f"{path} finds its master through Redis Sentinel, but no probe URL can be built from "
        f"it (\"sentinels\" must be (host, port) pairs and \"master_name\" a string), and the "
        f"breaker {name!r} has no URL: it could not find the master again after a failover.",
        hint=f'Set REDIS_BREAKERS["{name}"]["URL"] = "{_SENTINEL_URL_EXAMPLE}" (your '
             f'sentinels and master group), or fix {path}["sentinels"].',
        id="redis_breaker.E022",
    )]


def _check_host(path: str, host: Any, example: str) -> list[CheckMessage]:
    if isinstance(host, str):
        given = {k: _url_sets(host, k) for k in _TIMEOUTS}
    elif isinstance(host, (list, tuple)) and len(host) == 2:
        given = dict.fromkeys(_TIMEOUTS, False)
    elif isinstance(host, Mapping) and ({"address", "host", "sentinels"} & host.keys()):
        address = host.get("address")
        given = {k: _given(host, k) or (isinstance(address, str) and _url_sets(address, k))
                 for k in _TIMEOUTS}
    else:
        return [Error(f"{path} is {_shown(host)}, not a Redis host.",
                      hint=f"Give each host as a dict with an address and socket timeouts, "
                           f"as in {example}.",
                      id="redis_breaker.E021")]
    missing = [k for k in _TIMEOUTS if not given[k]]
    if not missing:
        return []
    return [CheckWarning(
        f"{path} sets no {' / '.join(missing)}: a hung or unreachable Redis holds every "
        "channel layer call until the operating system gives up, before the breaker can "
        "count a failure.",
        hint=f"Write the host as a dict with socket timeouts (seconds), as in {example}.",
        id="redis_breaker.W002",
    )]


# ------------------------------------------------------------------ Celery
@register()
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The ``CELERY_REDIS_BREAKER_*`` Django settings (Celery's ``CELERY`` namespace)."""
    from .health import celery_outbox

    if celery_outbox() is None:  # Celery is not installed: the settings mean nothing
        return []
    from .celery.checks import check_settings

    return check_settings()
