"""redis_breaker.E040: every URL of a BreakerCache primary's LOCATION, judged as REDIS_BREAKERS' URL.

The URLs below are ones redis-py or the cache backends refuse, or mis-read, when
the cache is first used; each must be reported by ``manage.py check`` instead,
naming the alias, the key and the fix, with the password masked.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import caches

from redis_breaker.checks import check_caches
from tests.harness import RedisServer

from .conftest import primary_entry

SECRET = "s3cr3t-Pa55"


def _errors(settings: Any, location: Any, kind: str = "django") -> list[Any]:
    entry = primary_entry(kind, "redis://127.0.0.1:6379/0")
    entry["LOCATION"] = location
    settings.CACHES = {"redis": entry, "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                                                   "OPTIONS": {"PRIMARY": "redis"}}}
    return [m for m in check_caches() if m.id == "redis_breaker.E040"]


@pytest.mark.parametrize("kind", ["django", "django_redis"])
@pytest.mark.parametrize(("location", "said"), [
    (f"redis://:{SECRET}@127.0.0.1:99999/0", "port"),
    (f"redis://:{SECRET}@127.0.0.1:notaport/0", "port"),
    (f"redis://:{SECRET}@127.0.0.1:-1/0", "port"),
    (f" redis://:{SECRET}@127.0.0.1:6379/0", "whitespace"),
    (f"redis://:{SECRET}@127.0.0.1:6379/zero", "database"),
    (f"http://:{SECRET}@127.0.0.1:6379/0", "scheme"),
    (f"redis://:{SECRET}@127.0.0.1:6379/0?socket_timeout=abc", "socket_timeout"),
    (f"redis+sentinel://:{SECRET}@127.0.0.1:26379/mymaster", "redis+sentinel"),
    (["redis://127.0.0.1:6379/0", f"redis://:{SECRET}@127.0.0.1:70000/0"], "URL 2 of 2"),
    ([b"redis://127.0.0.1:6379/0"], "bytes"),
])
def test_each_bad_url_is_an_error_naming_alias_key_and_fix(settings: Any, kind: str,
                                                           location: Any, said: str) -> None:
    errors = _errors(settings, location, kind)
    assert len(errors) == 1, errors
    error = errors[0]
    text = f"{error.msg} {error.hint}"
    assert 'CACHES["redis"]["LOCATION"]' in error.msg
    assert "'default'" in error.msg
    assert said in error.msg
    assert "Set CACHES[\"redis\"][\"LOCATION\"] to a redis://" in error.hint
    assert SECRET not in text


def test_a_space_after_a_comma_is_an_error_for_both_backends(settings: Any) -> None:
    """Django splits on ';' and ',', django-redis on ',': neither strips what it split."""
    url = "redis://127.0.0.1:6379/0"
    assert len(_errors(settings, f"{url}, {url}")) == 1
    assert len(_errors(settings, f"{url}; {url}")) == 1
    assert len(_errors(settings, f"{url}, {url}", "django_redis")) == 1
    assert len(_errors(settings, f"{url};", "django")) == 1  # an empty URL after it


def test_the_reported_location_really_fails_and_a_good_one_works(settings: Any,
                                                                 redis_server: RedisServer) -> None:
    """What E040 reports breaks on first use; what it passes (a list, a Sentinel group) does not."""
    assert _errors(settings, f"{redis_server.url}, {redis_server.url}") != []
    with pytest.raises(ValueError, match="scheme"):
        caches["redis"].get("k")  # reads go to the second URL, " redis://..."
    for good in (f"{redis_server.url},{redis_server.url}", [redis_server.url, redis_server.url],
                 redis_server.url):
        assert _errors(settings, good) == []
        caches["redis"].set("k", 1)
        assert caches["default"].get("k") == 1
    sentinel = primary_entry("django_redis", "redis://mymaster/0")
    sentinel["OPTIONS"].update({"CLIENT_CLASS": "django_redis.client.SentinelClient",
                                "SENTINELS": [("127.0.0.1", 26379)]})
    settings.CACHES = {"redis": sentinel, "default": {
        "BACKEND": "redis_breaker.cache.BreakerCache", "OPTIONS": {"PRIMARY": "redis"}}}
    assert [m for m in check_caches() if m.id == "redis_breaker.E040"] == []
