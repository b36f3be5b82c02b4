"""Where a primary cache's Redis is: the URL its breaker's probe PINGs.

``first_location`` gives the primary's first ``LOCATION`` URL, or, for a
django-redis cache that finds its master through Sentinel, a
``redis+sentinel://`` URL built from its ``SENTINELS``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis_breaker._sentinel import sentinel_url
from redis_breaker.conf import conf

__all__ = ["first_location", "sentinel_location", "uses_sentinel"]


def _first_raw_location(entry: Mapping[str, Any]) -> str | None:
    location = entry.get("LOCATION")
    if isinstance(location, (list, tuple)):
        location = location[0] if location else None
    if not isinstance(location, str) or not location:
        return None
    return re.split("[;,]", location)[0].strip()


def first_location(entry: Mapping[str, Any]) -> str | None:
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
