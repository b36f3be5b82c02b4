"""``redis_breaker.W010``: a cache sharing its Redis database with Celery or a channel layer."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from redis_breaker.checks import check_caches

CACHE = {"redis": {"BACKEND": "django_redis.cache.RedisCache",
                   "LOCATION": "redis://127.0.0.1:6379/0",
                   "OPTIONS": {"SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5}},
         "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                     "OPTIONS": {"PRIMARY": "redis"}}}


def _ids(settings: Any, **extra: Any) -> list[str]:
    settings.CACHES = extra.pop("CACHES", CACHE)
    for name, value in extra.items():
        setattr(settings, name, value)
    return [m.id for m in check_caches()]


@pytest.mark.parametrize(("setting", "value"), [
    ("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    ("CELERY_BROKER_URL", "redis://:secret@127.0.0.1:6379"),
    ("BROKER_URL", "redis://127.0.0.1:6379/0"),
    ("CELERY_RESULT_BACKEND", "redis://127.0.0.1/0"),
    ("CHANNEL_LAYERS", {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                    "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]}}}),
    ("CHANNEL_LAYERS", {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                    "CONFIG": {"hosts": [("localhost", 6379)]}}}),
    ("CHANNEL_LAYERS", {"default": {"BACKEND": "redis_breaker.channels.BreakerChannelLayer",
                                    "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:6379",
                                                          "db": 0}]}}}),
])
def test_a_shared_database_is_a_warning(settings: Any, setting: str, value: Any) -> None:
    """The broker, result store or a channel layer host in the cache's database: W010."""
    assert _ids(settings, **{setting: value}) == ["redis_breaker.W010"]


@pytest.mark.parametrize(("setting", "value"), [
    ("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"),
    ("CELERY_BROKER_URL", "redis://127.0.0.1:6380/0"),
    ("CELERY_BROKER_URL", "amqp://guest@127.0.0.1//"),
    ("CHANNEL_LAYERS", {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                    "CONFIG": {"hosts": [{"address": ("127.0.0.1", 6379),
                                                          "db": 2}]}}}),
])
def test_another_database_is_fine(settings: Any, setting: str, value: Any) -> None:
    """Another number, port or broker: nothing to say."""
    assert _ids(settings, **{setting: value}) == []


def test_the_cache_database_option_and_query_count(settings: Any) -> None:
    """The database comes from the URL's path or ?db=, else the db option (Django's RedisCache)."""
    caches = {**CACHE, "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                 "LOCATION": "redis://127.0.0.1:6379",
                                 "OPTIONS": {"db": 3, "socket_timeout": 1,
                                             "socket_connect_timeout": 1}}}
    assert _ids(settings, CACHES=caches, CELERY_BROKER_URL="redis://127.0.0.1:6379/3") == [
        "redis_breaker.W010"]
    caches["redis"]["LOCATION"] = "redis://127.0.0.1:6379?db=4"
    assert _ids(settings, CACHES=caches, CELERY_BROKER_URL="redis://127.0.0.1:6379/3") == []


def test_the_warning_says_what_and_how(settings: Any) -> None:
    """Through manage.py check: the tenant, the database, the fix; no password shown."""
    settings.CACHES = CACHE
    settings.CELERY_BROKER_URL = "redis://:hunter2@127.0.0.1:6379/0"
    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    text = out.getvalue()
    assert "redis_breaker.W010" in text
    assert "Celery broker (CELERY_BROKER_URL)" in text
    assert "FLUSHDB" in text
    assert "database of its own" in text
    assert "hunter2" not in text

