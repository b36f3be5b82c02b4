"""Fixtures for the cache tests: a BreakerCache over a real Redis, both primaries."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches

from redis_breaker import Breaker, get_breaker
from redis_breaker.cache import BreakerCache
from tests.harness import RedisServer

TEMPLATES_DIR = Path(__file__).parent / "templates"


def primary_entry(kind: str, url: str, **extra: Any) -> dict[str, Any]:
    """A Django cache entry for a real Redis with 0.5 s socket timeouts."""
    if kind == "django":
        options: dict[str, Any] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        backend = "django.core.cache.backends.redis.RedisCache"
    else:
        options = {"SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5}
        backend = "django_redis.cache.RedisCache"
    options.update(extra)
    return {"BACKEND": backend, "LOCATION": url, "OPTIONS": options}


def caches_for(url: str, kind: str = "django", **options: Any) -> dict[str, Any]:
    return {
        "redis": primary_entry(kind, url),
        "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                    "OPTIONS": {"PRIMARY": "redis", **options}},
    }


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll a real-server condition with a deadline (never used for freezegun-driven logic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def recovered(cache: BreakerCache) -> bool:
    """The breaker is closed and the journal is fully replayed."""
    return cache.breaker.state.value == "closed" and not cache._bind().journal.active


@pytest.fixture(params=["django", "django_redis"])
def primary_kind(request: pytest.FixtureRequest) -> str:
    """Django's RedisCache and django-redis, both supported as PRIMARY."""
    return str(request.param)


@pytest.fixture
def breaker_cache(settings: Any, redis_server: RedisServer, primary_kind: str) -> BreakerCache:
    """``caches["default"]``: a BreakerCache over the real server, breaker defaults."""
    settings.CACHES = caches_for(redis_server.url, primary_kind)
    cache = caches["default"]
    assert isinstance(cache, BreakerCache)
    return cache


@pytest.fixture
def breaker() -> Breaker:
    return get_breaker("default")
