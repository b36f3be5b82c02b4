"""Recovery deletes only the cache's own keys: a Celery queue in the same database survives."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import caches

from redis_breaker.cache.keyspace import glob_regex, own_pattern
from redis_breaker.testing import capture_events, forced_open
from tests.harness import RedisServer

from .conftest import caches_for, primary_entry, recovered, wait_for

# What a Celery broker and a channel layer keep in a database they share with a cache.
NEIGHBOURS = {"celery": "list", "_kombu.binding.celery": "set", "unacked": "hash",
              "asgi:group:chat": "zset", "app:counter": "string"}


def _neighbours(server: RedisServer) -> None:
    raw = server.client()
    raw.rpush("celery", "task-1", "task-2", "task-3")
    raw.sadd("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
    raw.hset("unacked", "tag", "task-0")
    raw.zadd("asgi:group:chat", {"specific.abc!": 1.0})
    raw.set("app:counter", 41)


def _assert_neighbours_intact(server: RedisServer) -> None:
    raw = server.client()
    assert raw.lrange("celery", 0, -1) == [b"task-1", b"task-2", b"task-3"]
    for key, kind in NEIGHBOURS.items():
        assert raw.type(key).decode() == kind, key


@pytest.mark.parametrize("how", ["overflow", "clear"])
def test_recovery_keeps_the_celery_queue(settings: Any, redis_server: RedisServer,
                                         primary_kind: str, how: str) -> None:
    """Journal overflow or clear() during an outage: on recovery only the cache's keys go."""
    settings.CACHES = caches_for(redis_server.url, primary_kind, JOURNAL_MAX_KEYS=3)
    cache = caches["default"]
    _neighbours(redis_server)
    cache.set_many({f"old{i}": i for i in range(50)}, version=1)
    cache.set("versioned", "v", version=7)
    with capture_events() as events:
        with forced_open(cache.breaker):
            if how == "overflow":
                for i in range(5):
                    cache.set(f"k{i}", i)
            else:
                cache.clear()
            assert cache.get("old1") is None  # everything covered
        wait_for(lambda: recovered(cache), what="journal replay")
    _assert_neighbours_intact(redis_server)
    assert redis_server.client().dbsize() == len(NEIGHBOURS)
    replayed = [e for e in events if e["event"] == "cache_journal_replayed"]
    assert [e["keys"] for e in replayed] == [-1]
    assert not [e for e in events if e["event"] == "cache_clear_whole_database"]


def test_a_key_prefix_limits_what_is_deleted(settings: Any, redis_server: RedisServer) -> None:
    """With KEY_PREFIX, another cache's keys in the same database survive too."""
    settings.CACHES = {
        **caches_for(redis_server.url, JOURNAL_MAX_KEYS=1),
        "redis": {**primary_entry("django", redis_server.url), "KEY_PREFIX": "site1"},
        "other": {**primary_entry("django", redis_server.url), "KEY_PREFIX": "site2"},
    }
    caches["other"].set("kept", 1)
    cache = caches["default"]
    cache.set("gone", 1)
    with forced_open(cache.breaker):
        cache.clear()
    wait_for(lambda: recovered(cache), what="journal replay")
    assert sorted(k.decode() for k in redis_server.client().keys("*")) == ["site2:1:kept"]


def _hashing_key(key: str, key_prefix: str, version: int) -> str:
    import hashlib

    return hashlib.sha1(f"{key_prefix}:{version}:{key}".encode()).hexdigest()


def test_a_key_function_that_hides_the_key_flushes_and_says_so(
        settings: Any, redis_server: RedisServer) -> None:
    """Keys that cannot be told from others leave FLUSHDB: done, with a WARNING event."""
    settings.CACHES = caches_for(redis_server.url)
    settings.CACHES["redis"]["KEY_FUNCTION"] = _hashing_key
    cache = caches["default"]
    assert own_pattern(cache.primary) is None
    cache.set("k", 1)
    with capture_events() as events:
        with forced_open(cache.breaker):
            cache.clear()
        wait_for(lambda: recovered(cache), what="journal replay")
    assert redis_server.client().dbsize() == 0
    [warning] = [e for e in events if e["event"] == "cache_clear_whole_database"]
    assert "KEY_FUNCTION" in warning["reason"]


@pytest.mark.parametrize("pattern", ["*", ":1:*", "a?c", "a[bc]d", "a[^b]d", "a[b-d]e",
                                     r"a\*b", "user:[0-9]*", "x*y*z"])
def test_glob_regex_matches_what_redis_matches(redis_server: RedisServer, pattern: str) -> None:
    """The journal's pattern matching agrees with Redis's own KEYS on the same keys."""
    raw = redis_server.client()
    names = ["abc", "abd", "acd", "aad", "abe", "ace", "a*b", "axb", ":1:k", ":2:k",
             "user:1", "user:x", "xyz", "x-y-z", "xz", "a\nc"]
    for name in names:
        raw.set(name, 1)
    by_redis = {k.decode() for k in raw.keys(pattern)}
    matcher = glob_regex(pattern)
    assert {n for n in names if matcher.fullmatch(n)} == by_redis
