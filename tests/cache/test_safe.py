"""``safe_cache_get/set/delete`` on a plain Redis cache and on a BreakerCache."""

from __future__ import annotations

from typing import Any

from redis_breaker import get_breaker
from redis_breaker.shortcuts import safe_cache_delete, safe_cache_get, safe_cache_set
from redis_breaker.testing import capture_events
from tests.harness import RedisServer

from .conftest import caches_for, primary_entry, wait_for


def test_plain_cache_never_raises_and_logs_once(settings: Any,
                                                redis_server: RedisServer) -> None:
    """On a plain RedisCache with Redis stopped the helpers return, and warn once per outage."""
    settings.CACHES = {"default": primary_entry("django", redis_server.url)}
    assert safe_cache_set("k", "v") is True
    assert safe_cache_get("k") == "v"
    redis_server.stop()
    with capture_events() as events:
        for i in range(10):
            assert safe_cache_get(f"g{i}", "dflt") == "dflt"
            assert safe_cache_set(f"s{i}", "v2") is False
            assert safe_cache_delete(f"d{i}") is False
    assert get_breaker().is_open
    assert [e["event"] for e in events].count("fallback_used") == 1


def test_plain_cache_write_during_outage_is_not_undone(settings: Any,
                                                       redis_server: RedisServer) -> None:
    """A set that could not reach Redis makes the key a miss until its old value is deleted."""
    settings.CACHES = {"default": primary_entry("django", redis_server.url)}
    safe_cache_set("k", "v1")
    redis_server.freeze()
    assert safe_cache_set("k", "v2") is False  # timed out: journaled
    with capture_events() as events:
        redis_server.thaw()
        assert safe_cache_get("k") is None  # never v1
        # The replay deletes Redis's copy, then lets go of the key: until then a set
        # is still journaled (False), so wait for the replay's end, not the delete.
        wait_for(lambda: any(e["event"] == "cache_journal_replayed" for e in events),
                 what="journal replay")
    client = redis_server.client()
    try:
        assert not client.exists(":1:k")
    finally:
        client.close()
    assert safe_cache_get("k") is None
    assert safe_cache_set("k", "v3") is True
    assert safe_cache_get("k") == "v3"


def test_helpers_on_a_breaker_cache(settings: Any, redis_server: RedisServer) -> None:
    """Through a BreakerCache the helpers use its fallback while Redis is down."""
    settings.CACHES = caches_for(redis_server.url)
    redis_server.stop()
    assert safe_cache_set("k", "v") is True
    assert safe_cache_get("k") == "v"
    assert safe_cache_delete("k") is True
    assert safe_cache_get("k", "gone") == "gone"
