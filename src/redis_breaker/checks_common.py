"""What the system checks of every integration share.

How a setting's path and value are written in a message, whether a ``BACKEND``
path is one of a few classes, whether socket timeouts are given. A module of
its own because ``redis_breaker.checks`` imports each integration's checks
(``redis_breaker.cache.checks``), so they cannot import these from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.utils.module_loading import import_string

from ._redact import shown as _shown
from .conf import conf

__all__ = ["EXAMPLE_TIMEOUT", "SENTINEL_URL_EXAMPLE", "TIMEOUTS", "breaker_has_url", "given",
           "is_subclass", "setting_path", "shown", "url_sets"]

TIMEOUTS = ("socket_timeout", "socket_connect_timeout")
EXAMPLE_TIMEOUT = 0.5
SENTINEL_URL_EXAMPLE = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0"


def setting_path(root: str, *keys: Any) -> str:
    """``CACHES["default"]["OPTIONS"]``: where a value is written in the settings."""
    return root + "".join(f'["{k}"]' if isinstance(k, str) else f"[{k!r}]" for k in keys)


def shown(value: Any) -> str:
    """``value`` for a message: its type and repr, never a credential (bytes, lists and dicts
    masked element by element; ``_redact.shown``)."""
    return _shown(value)


def is_subclass(backend: Any, dotted: Iterable[str]) -> bool:
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


def url_sets(url: str, key: str) -> bool:
    """Whether a Redis URL carries ``key`` in its query (redis-py's from_url reads it)."""
    try:
        values = parse_qs(urlsplit(url).query).get(key)
    except ValueError:
        return False
    return bool(values and values[0] not in ("", "None"))


def given(options: Mapping[str, Any], *keys: str) -> bool:
    return any(options.get(k) is not None for k in keys)


def breaker_has_url(name: Any) -> bool:
    """Whether ``REDIS_BREAKERS[name]`` sets a ``URL`` for the probe."""
    breakers = conf.REDIS_BREAKERS
    entry = breakers.get(name) if isinstance(breakers, dict) and isinstance(name, str) else None
    return isinstance(entry, dict) and bool(entry.get("URL"))
