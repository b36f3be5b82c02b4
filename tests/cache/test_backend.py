"""BreakerCache against a real Redis: unchanged when healthy, fallback when not."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.core.cache import caches
from freezegun import freeze_time

import redis_breaker
from redis_breaker import Breaker, State, guard
from redis_breaker.cache import BreakerCache
from redis_breaker.testing import capture_events, forced_open
from tests.harness import RedisServer

from .conftest import caches_for, primary_entry, recovered, wait_for


def _commands(client: Any) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_normal_operation_unchanged(breaker_cache: BreakerCache, redis_server: RedisServer,
                                    settings: Any, primary_kind: str) -> None:
    """Every BaseCache method gives the same answers as the bare primary, stored in Redis."""
    bare = caches["redis"]
    for cache in (bare, breaker_cache):
        cache.clear()
        assert cache.get("k") is None
        assert cache.get("k", "dflt") == "dflt"
        cache.set("k", {"v": 1})
        assert cache.get("k") == {"v": 1}
        assert cache.add("k", 2) is False
        assert cache.add("n", 10) is True
        assert cache.incr("n") == 11
        assert cache.decr("n", 3) == 8
        assert cache.has_key("n") is True
        assert cache.touch("n", 100) is True
        assert cache.touch("missing") is False
        cache.set_many({"a": 1, "b": 2}, timeout=None)
        assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        cache.delete_many(["a"])
        assert cache.get_many(["a", "b"]) == {"b": 2}
        assert cache.get_or_set("g", lambda: "made") == "made"
        assert cache.get_or_set("g", "other") == "made"
        assert cache.delete("g") is True
        assert cache.delete("g") is False
        cache.set("v", "x", version=3)
        assert cache.incr_version("v", version=3) == 4
        assert cache.get("v", version=4) == "x"
        assert cache.decr_version("v", version=4) == 3
        assert cache.get("v", version=3) == "x"
    # The breaker cache wrote through the primary: same keys, same prefix and version.
    keys = sorted(k.decode() for k in redis_server.client().keys("*"))
    assert ":1:b" in keys
    assert ":1:n" in keys
    assert ":3:v" in keys
    assert breaker_cache.breaker.stats().consecutive_failures == 0
    assert breaker_cache.fallback.get("b") is None  # nothing went to the fallback


def test_timeout_none_and_default_pass_through(breaker_cache: BreakerCache,
                                               redis_server: RedisServer) -> None:
    """``timeout=None`` stores forever and the default timeout is the primary's own."""
    breaker_cache.set("forever", 1, timeout=None)
    breaker_cache.set("default", 1)
    client = redis_server.client()
    assert client.ttl(":1:forever") == -1
    assert 0 < client.ttl(":1:default") <= 300


def test_non_outage_errors_are_the_primarys_and_do_not_count(
        breaker_cache: BreakerCache, breaker: Breaker) -> None:
    """``incr`` of a missing key raises ValueError like the primary and changes no counter."""
    with pytest.raises(ValueError, match="not found"):
        breaker_cache.incr("missing")
    with pytest.raises(ValueError, match="not found"):
        breaker_cache.incr_version("missing")
    stats = breaker.stats()
    assert stats.consecutive_failures == 0
    assert stats.window_failures == 0
    assert stats.fallback_calls == 0


def test_fallback_get_set_delete_on_failure(breaker_cache: BreakerCache, breaker: Breaker,
                                            redis_server: RedisServer) -> None:
    """With Redis stopped, get/set/delete raise nothing and are served by the fallback."""
    redis_server.stop()
    with capture_events() as events:
        breaker_cache.set("k", "during")  # discovers the outage: served, counted
        assert breaker_cache.get("k") == "during"
        assert breaker_cache.delete("k") is True
        assert breaker_cache.get("k", "gone") == "gone"
        for i in range(10):
            breaker_cache.set(f"x{i}", i)
            assert breaker_cache.get(f"x{i}") == i
    assert breaker.state.value == "open"
    assert breaker.stats().last_error is not None
    warnings = [e for e in events if e["event"] == "fallback_used"]
    assert len(warnings) == 1
    assert warnings[0]["integration"] == "cache"


def test_a_guarded_function_that_reads_the_cache_trips_on_the_threshold(
        breaker_cache: BreakerCache, breaker: Breaker, redis_server: RedisServer) -> None:
    """``@guard`` on the cache's own breaker around code that reads the cache.

    Redis stopped: the cache counts each failure and serves its fallback, and the
    function returns normally. The breaker opens on its fifth call, as without the
    decorator: the function's returns do not erase the cache's failures, and an
    error that reaches the decorator is not counted a second time.
    """

    @guard("default")
    def profile() -> Any:
        return breaker_cache.get("profile", "fallback")

    direct = redis_breaker.client(redis_server.url, breaker="default", socket_timeout=0.5,
                                  socket_connect_timeout=0.5)

    @guard("default")
    def profile_or_error() -> Any:
        return direct.get("profile")

    redis_server.stop()
    for expected in range(1, 4):
        assert profile() == "fallback"
        assert (breaker.state.value, breaker.stats().consecutive_failures) == ("closed", expected)
    with pytest.raises(redis.ConnectionError):
        profile_or_error()
    assert (breaker.state.value, breaker.stats().consecutive_failures) == ("closed", 4)
    assert profile() == "fallback"
    assert breaker.state.value == "open"


def test_every_method_served_while_open(breaker_cache: BreakerCache, breaker: Breaker,
                                        redis_server: RedisServer) -> None:
    """While open every method answers from the fallback and sends Redis nothing."""
    breaker_cache.set("before", 1)
    client = redis_server.client()
    with forced_open(breaker):
        before = _commands(client)
        cache = breaker_cache
        assert cache.get("before") is None  # never the Redis value: a miss
        cache.set("k", 1)
        assert cache.add("k", 2) is False
        assert cache.incr("k", 5) == 6
        assert cache.decr("k") == 5
        assert cache.has_key("k") is True
        assert cache.touch("k", 10) is True
        cache.set_many({"a": 1, "b": 2})
        assert cache.get_many(["a", "b", "k"]) == {"a": 1, "b": 2, "k": 5}
        cache.delete_many(["a"])
        assert cache.get_or_set("g", "made") == "made"
        assert cache.incr_version("g") == 2
        assert cache.get("g", version=2) == "made"
        assert cache.delete("b") is True
        with pytest.raises(ValueError, match="not found"):
            cache.incr("never-set")
        cache.clear()
        assert cache.get("k") is None
        # The only command Redis processed is this INFO itself.
        assert _commands(client) - before == 1


def test_an_open_breaker_answers_gets_without_redis_and_counts_them(
        settings: Any, redis_server: RedisServer, primary_kind: str) -> None:
    """Open, a key written meanwhile: its ``get`` is the fallback's value, another key's a miss.

    Redis is up again but the breaker is still open: neither read reaches it,
    both count as served by the fallback, and the miss as refused (the written
    key's read was never the breaker's to refuse). Half-open, the other key's
    read is a trial call on Redis and gets Redis's value.
    """
    settings.CACHES = caches_for(redis_server.url, primary_kind)
    settings.REDIS_BREAKERS = {"default": {"PROBE": False, "FAILURE_THRESHOLD": 1,
                                           "RESET_TIMEOUT": 1.0}}
    cache = caches["default"]
    b = cache.breaker
    client = redis_server.client()
    cache.set("other", "on redis")
    with freeze_time("2026-01-01") as clock:
        redis_server.freeze()
        assert cache.get("trip") is None  # one timeout opens the breaker
        redis_server.thaw()
        assert b.state is State.OPEN
        cache.set("w", "written")  # refused: the fallback, journaled
        before, commands = b.totals(), _commands(client)
        assert cache.get("w") == "written"
        after = b.totals()
        assert (after.rejected, after.fallbacks["cache"]) == (
            before.rejected, before.fallbacks["cache"] + 1)
        assert cache.get("other", "miss") == "miss"
        assert cache.get("other") is None
        last = b.totals()
        assert (last.rejected, last.fallbacks["cache"]) == (
            after.rejected + 2, after.fallbacks["cache"] + 2)
        assert _commands(client) - commands == 1  # this INFO: no read reached Redis
        clock.tick(5)  # the open interval is over: the next call is a trial
        assert cache.get("other") == "on redis"
        assert b.state in (State.HALF_OPEN, State.CLOSED)
        assert cache.get("w") in ("written", None)  # never Redis's copy before the replay


def test_fallback_alias_and_breaker_option(settings: Any, redis_server: RedisServer) -> None:
    """FALLBACK names a cache alias and BREAKER a breaker; the probe adopts the primary's URL."""
    settings.CACHES = {
        **caches_for(redis_server.url, FALLBACK="local", BREAKER="sessions"),
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                  "LOCATION": "fallback-alias-test"},
    }
    cache = caches["default"]
    assert isinstance(cache, BreakerCache)
    assert cache.breaker.name == "sessions"
    assert cache.breaker.url == redis_server.url
    with forced_open(cache.breaker):
        cache.set("k", "v")
        assert caches["local"].get("k") == "v"  # until recovery replays it away


@pytest.mark.parametrize("options", [{"PRIMARY": "nope"}, {"PRIMARY": "redis", "TYPO": 1},
                                     {"PRIMARY": "redis", "FALLBACK": "nope"}])
def test_bad_options_are_improperly_configured(settings: Any, redis_server: RedisServer,
                                               options: dict[str, Any]) -> None:
    """A wrong PRIMARY/FALLBACK alias or an unknown option fails loudly at first use."""
    from django.core.exceptions import ImproperlyConfigured

    settings.CACHES = {"redis": primary_entry("django", redis_server.url),
                       "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                                   "OPTIONS": options}}
    with pytest.raises(ImproperlyConfigured):
        caches["default"].get("k")


def test_primary_that_ignores_exceptions_is_refused(settings: Any,
                                                    redis_server: RedisServer) -> None:
    """django-redis with IGNORE_EXCEPTIONS would hide outages from the breaker: refused."""
    from django.core.exceptions import ImproperlyConfigured

    settings.CACHES = {"redis": primary_entry("django_redis", redis_server.url,
                                              IGNORE_EXCEPTIONS=True),
                       "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                                   "OPTIONS": {"PRIMARY": "redis"}}}
    with pytest.raises(ImproperlyConfigured, match="IGNORE_EXCEPTIONS"):
        caches["default"].get("k")


def test_journal_overflow_clears_the_primary(settings: Any, redis_server: RedisServer) -> None:
    """Past JOURNAL_MAX_KEYS the journal covers every key and recovery clears the primary."""
    settings.CACHES = caches_for(redis_server.url, JOURNAL_MAX_KEYS=3)
    cache = caches["default"]
    cache.set("untouched", "old")
    with capture_events() as events, forced_open(cache.breaker):
        for i in range(5):
            cache.set(f"k{i}", i)
        assert cache.get("k4") == 4
        assert cache.get("untouched") is None  # covered: could be stale after overflow
    overflow = [e for e in events if e["event"] == "cache_journal_overflow"]
    assert len(overflow) == 1
    assert overflow[0]["max_keys"] == 3
    cache.get("untouched")  # any call after recovery starts the replay
    wait_for(lambda: recovered(cache), what="journal replay")
    assert redis_server.client().dbsize() == 0
    assert cache.get("k4") is None
    assert cache.get("untouched") is None


async def test_async_methods(breaker_cache: BreakerCache, breaker: Breaker) -> None:
    """Every a* method works through Redis, and while open from the fallback."""
    cache = breaker_cache
    await cache.aset("k", 1)
    assert await cache.aget("k") == 1
    assert await cache.aadd("k", 2) is False
    assert await cache.aincr("k") == 2
    assert await cache.adecr("k") == 1
    assert await cache.ahas_key("k") is True
    assert await cache.atouch("k", 30) is True
    await cache.aset_many({"a": 1})
    assert await cache.aget_many(["a", "k"]) == {"a": 1, "k": 1}
    await cache.adelete_many(["a"])
    assert await cache.aget_or_set("g", "x") == "x"
    assert await cache.aincr_version("g") == 2
    assert await cache.adecr_version("g", version=2) == 1
    assert await cache.adelete("g") is True
    await cache.aclear()
    assert await cache.aget("k") is None
    await cache.aset("before-open", 1)
    with forced_open(breaker):
        await cache.aset("o", "open")
        assert await cache.aget("o") == "open"
        assert await cache.aget("before-open") is None
    await cache.aclose()
