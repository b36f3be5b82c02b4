"""Which Redis databases a cache shares with a Celery broker or a channel layer (``W010``).

A cache's ``clear()`` is the primary's ``FLUSHDB`` (Django's RedisCache and
django-redis alike): in a database that also holds a Celery broker's queues or
a channel layer's groups it deletes them too. BreakerCache's own recovery
deletes only the cache's keys, but a healthy ``clear()`` is the primary's.
``shared_databases`` finds the tenants of a cache's database from the settings
(and from the Celery apps already loaded), comparing host, port and database
number; ``localhost``, ``127.0.0.1`` and ``::1`` count as one host.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.conf import settings

__all__ = ["Database", "cache_database_urls", "cache_databases", "shared_databases",
           "url_database"]

#: (host or socket path, port, database number)
Database = tuple[str, int, int]

_LOOPBACK = {"", "localhost", "127.0.0.1", "::1", "0.0.0.0"}
_REDIS_SCHEMES = {"redis", "rediss", "unix", "redis+socket", "rediss+socket", "socket"}


def _host(name: str | None) -> str:
    name = (name or "").lower()
    return "localhost" if name in _LOOPBACK else name


def url_database(url: Any, db: Any = None) -> Database | None:
    """The database a Redis URL names (the URL's number wins over ``db``, as in redis-py)."""
    if not isinstance(url, str) or "://" not in url:
        return None
    try:
        parts = urlsplit(url)
        if parts.scheme not in _REDIS_SCHEMES:
            return None
        query = parse_qs(parts.query)
        if parts.scheme in ("unix", "redis+socket", "rediss+socket", "socket"):
            where, port, number = unquote(parts.path), 0, (query.get("db") or
                                                            query.get("virtual_host") or [db])[0]
        else:
            where, port = _host(parts.hostname), parts.port or 6379
            path = parts.path.strip("/")
            number = path if path else (query.get("db") or [db])[0]
        return where, port, int(number or 0)
    except (TypeError, ValueError):
        return None


def _locations(entry: Mapping[str, Any]) -> list[str]:
    location = entry.get("LOCATION")
    items = location if isinstance(location, (list, tuple)) else [location]
    found: list[str] = []
    for item in items:
        if not isinstance(item, str):
            continue
        parts = [part.strip() for part in item.replace(";", ",").split(",") if part.strip()]
        if "@" in item and any("://" not in part for part in parts):
            # A separator inside a user name or password cut a URL in pieces (E040): any
            # piece's "host" may be part of the credentials, so none of them counts.
            continue
        found += parts
    return found


def cache_databases(entry: Mapping[str, Any]) -> set[Database]:
    """The Redis databases a Redis cache entry of ``CACHES`` writes to."""
    return set(cache_database_urls(entry))


def cache_database_urls(entry: Mapping[str, Any]) -> dict[Database, str]:
    """Each Redis database a Redis cache entry of ``CACHES`` writes to, with its URL."""
    options = entry.get("OPTIONS")
    options = options if isinstance(options, Mapping) else {}
    pool = options.get("CONNECTION_POOL_KWARGS")
    db = options.get("db", pool.get("db") if isinstance(pool, Mapping) else None)
    return {found: url for url in _locations(entry)
            if (found := url_database(url, db)) is not None}


def _host_database(host: Any) -> Database | None:
    """A channels_redis ``hosts`` entry: a URL, a ``(host, port)`` pair, or a dict."""
    if isinstance(host, str):
        return url_database(host)
    if isinstance(host, (list, tuple)) and len(host) == 2:
        try:
            return _host(str(host[0])), int(host[1]), 0
        except (TypeError, ValueError):
            return None
    if isinstance(host, Mapping) and "sentinels" not in host:
        address = host.get("address")
        if isinstance(address, str):
            return url_database(address, host.get("db"))
        if address is not None:
            found = _host_database(address)
            return None if found is None else (found[0], found[1], int(host.get("db") or 0))
        if "host" in host:
            return _host(str(host["host"])), int(host.get("port") or 6379), int(host.get("db") or 0)
    return None


def _celery_urls() -> Iterator[tuple[str, Any]]:
    for name in ("CELERY_BROKER_URL", "BROKER_URL", "CELERY_BROKER_WRITE_URL",
                 "CELERY_RESULT_BACKEND"):
        yield name, getattr(settings, name, None)
    if "celery" in sys.modules:
        try:
            from celery import _state

            apps = list(_state._get_active_apps())
        except Exception:  # an old or odd Celery: the settings are enough
            apps = []
        for app in apps:
            if getattr(app, "main", None) == "default":
                continue  # the app Celery makes up when nobody made one
            try:
                conf = app.conf
                for key in ("broker_url", "broker_write_url", "result_backend"):
                    yield f"the Celery app {app.main!r} {key}", conf.get(key)
            except Exception:
                continue


def _tenants() -> Iterator[tuple[str, Database]]:
    """(what, database) for every Celery broker/result store and channel layer host."""
    for what, value in _celery_urls():
        urls = value if isinstance(value, (list, tuple)) else str(value or "").split(";")
        for url in urls:
            found = url_database(str(url).strip())
            if found is not None:
                yield f"the Celery broker ({what})", found
    layers = getattr(settings, "CHANNEL_LAYERS", None)
    if isinstance(layers, Mapping):
        for alias, entry in layers.items():
            config = entry.get("CONFIG") if isinstance(entry, Mapping) else None
            hosts = config.get("hosts") if isinstance(config, Mapping) else None
            for host in hosts if isinstance(hosts, (list, tuple)) else ():
                found = _host_database(host)
                if found is not None:
                    yield f'the channel layer CHANNEL_LAYERS["{alias}"]', found


def shared_databases(entry: Mapping[str, Any]) -> list[tuple[str, Database]]:
    """Who else keeps data in the databases of cache ``entry``: (what, database), once each."""
    mine = cache_databases(entry)
    seen: dict[str, Database] = {}
    for what, found in _tenants():
        if found in mine and what not in seen:
            seen[what] = found
    return list(seen.items())
