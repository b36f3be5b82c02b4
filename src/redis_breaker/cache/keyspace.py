"""The cache's own keys in its Redis database: a pattern for them, and clearing only them.

Recovery after a journal overflow, or after a ``clear()`` made while Redis was
away, must remove every value the cache may have stale in Redis, and nothing
else: a Celery broker, a channel layer or an application may keep their data in
the same database. ``clear_own_keys`` SCANs for the cache's key pattern
(its ``KEY_FUNCTION`` applied to ``*``, its escaped ``KEY_PREFIX`` and any
version: ``<prefix>:*:*`` by default) and UNLINKs what it finds, one batch per
breaker call. Only a ``KEY_FUNCTION`` whose keys cannot be told from others'
(it hashes the key, or drops the prefix and the version) leaves no choice but
the primary's own ``clear()``, which is ``FLUSHDB``; that is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from django.core.cache.backends.base import BaseCache

from redis_breaker._events import emit

from .clients import raw_write_clients

__all__ = ["SCAN_COUNT", "clear_own_keys", "glob_regex", "own_pattern"]

#: Keys asked for per SCAN call, and deleted per UNLINK.
SCAN_COUNT = 1000

_SPECIAL = re.compile(r"([*?\[\]\\])")
# Keys of the other usual tenants of a Redis database: a cache pattern that
# matches one of them could delete their data.
_FOREIGN = ("celery", "_kombu.binding.celery", "unacked", "unacked_index", "asgi:group:chat",
            "asgi:specific.abc!", "session", "queue:default")


def glob_escape(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching what Redis's ``MATCH``/``KEYS`` glob ``pattern`` matches."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                negate = body.startswith("^")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"[{'^' if negate else ''}{body}]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def own_pattern(cache: BaseCache) -> str | None:
    """The glob that matches every key ``cache`` makes and none of its neighbours', or None."""
    pattern = str(cache.key_func("*", glob_escape(cache.key_prefix), "*"))
    matcher = glob_regex(pattern)
    samples = (cache.make_key("k", version=1), cache.make_key("a:b*c[d]?", version=12))
    if not all(matcher.fullmatch(str(s)) for s in samples):
        return None  # the key function does not keep the key as it is
    if any(matcher.fullmatch(f) for f in _FOREIGN):
        return None  # no prefix, no version: everything looks like the cache's
    return pattern


def clear_own_keys(cache: BaseCache, call: Callable[..., Any], *, name: str = "",
                   breaker: str | None = None) -> int:
    """Delete the cache's own keys from Redis; returns how many (-1: the database was flushed).

    ``call(fn, *args)`` runs each Redis command (the journal passes the
    breaker's ``call_as_trial``): one SCAN or one UNLINK of up to
    ``SCAN_COUNT`` keys per call.
    """
    pattern = own_pattern(cache)
    if pattern is None:
        emit(logging.WARNING, "cache_clear_whole_database", cache=name, breaker=breaker,
             reason="the KEY_FUNCTION's keys cannot be told from other data in the database")
        call(cache.clear)
        return -1
    deleted = 0
    for client in raw_write_clients(cache):
        cursor: Any = 0
        while True:
            cursor, keys = call(client.scan, cursor, match=pattern, count=SCAN_COUNT)
            if keys:
                deleted += int(call(client.unlink, *keys))
            if not cursor:
                break
    return deleted
