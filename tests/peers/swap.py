"""A pytest plugin for the peers' suites: their Redis caches, swapped for ``BreakerCache``.

Loaded (``-p swap``) into a run of Django's or django-redis's own cache tests
by ``tests/peers/run.py``, in a process of its own: it imports nothing of this
project's ``tests`` package (django-redis's suite has a ``tests`` package too).

Both modes point ``127.0.0.1:6379`` in every cache ``LOCATION`` at the run's
own redis-server (``PEERS_REDIS_PORT``). With ``PEERS_MODE=breaker``, every
alias whose backend is a Redis cache becomes a ``BreakerCache`` over a copy of
it (``<alias>__primary``), with a breaker of its own, exactly as a user would
switch backends in settings. The swap happens where Django's cache handler
reads ``CACHES``, so ``settings.CACHES`` stays what the tests wrote (some read
it back and change it), and every ``override_settings`` is swapped again.

Each test's outcome is written to ``PEERS_REPORT`` (JSON, by node id).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

REDIS_BACKENDS = ("django.core.cache.backends.redis.RedisCache", "django_redis.cache.RedisCache")
COPIED = ("KEY_PREFIX", "VERSION", "KEY_FUNCTION", "TIMEOUT")
_outcomes: dict[str, str] = {}


def _relocate(location: Any, port: str) -> Any:
    if isinstance(location, str):
        return location.replace("127.0.0.1:6379", f"127.0.0.1:{port}")
    if isinstance(location, (list, tuple)):
        return type(location)(_relocate(item, port) for item in location)
    return location


def swapped(caches: dict[str, Any], *, breaker: bool, port: str) -> dict[str, Any]:
    """``CACHES`` as this run's cache handler should see it."""
    result: dict[str, Any] = {}
    for alias, entry in caches.items():
        if not isinstance(entry, dict) or entry.get("BACKEND") not in REDIS_BACKENDS:
            result[alias] = entry
            continue
        entry = {**entry, "LOCATION": _relocate(entry.get("LOCATION"), port)}
        if not breaker or alias.endswith("__primary"):
            result[alias] = entry
            continue
        result[f"{alias}__primary"] = entry
        result[alias] = {
            "BACKEND": "redis_breaker.cache.BreakerCache",
            "OPTIONS": {"PRIMARY": f"{alias}__primary", "BREAKER": f"peers-{alias}"},
            **{k: entry[k] for k in COPIED if k in entry},
        }
    return result


def pytest_configure(config: pytest.Config) -> None:
    from django.core.cache import CacheHandler

    breaker = os.environ.get("PEERS_MODE") == "breaker"
    port = os.environ["PEERS_REDIS_PORT"]
    original = CacheHandler.configure_settings

    def configure_settings(self: CacheHandler, settings: Any) -> Any:
        return swapped(original(self, settings), breaker=breaker, port=port)

    CacheHandler.configure_settings = configure_settings  # type: ignore[method-assign]


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    previous = _outcomes.get(report.nodeid)
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and previous != "failed":
        _outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and previous is None:
        _outcomes[report.nodeid] = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("PEERS_REPORT")
    if path:
        with open(path, "w") as out:
            json.dump(_outcomes, out, indent=1, sort_keys=True)
