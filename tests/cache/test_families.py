"""django-redis's methods on BreakerCache, family by family, on a real Redis healthy and away."""

from __future__ import annotations

import datetime
import inspect
import re
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django_redis.cache import RedisCache as DjangoRedis
from django_redis.client import DefaultClient

from redis_breaker import BreakerOpenError
from redis_breaker.cache import BreakerCache, KeyNotReplayedError
from redis_breaker.testing import forced_open
from tests.harness import RedisServer, free_port

from .conftest import caches_for, primary_entry, recovered, wait_for

DOC = (Path(__file__).parents[2] / "docs" / "cache.md").read_text()
COLLECTIONS = [n for n in dir(DjangoRedis) if re.fullmatch(r"[hsz][a-z]+", n)]
#: django-redis 6 added the hash, set and sorted-set methods (the oldest supported is 5.4).
HAS_COLLECTIONS = hasattr(DjangoRedis, "sadd")


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n, None))}


def _commands(client: Any) -> int:
    return int(client.info("stats")["total_commands_processed"])


@pytest.fixture
def cache(settings: Any, redis_server: RedisServer) -> BreakerCache:
    """A BreakerCache over django-redis."""
    settings.CACHES = caches_for(redis_server.url, "django_redis")
    found = caches["default"]
    assert isinstance(found, BreakerCache)
    return found


def test_every_public_method_of_both_primaries_exists() -> None:
    """Each public method of Django's RedisCache and of django-redis's is a method of BreakerCache."""
    missing = (_public(DjangoRedisCache) | _public(DjangoRedis)) - _public(BreakerCache)
    assert not missing
    if HAS_COLLECTIONS:
        assert len(COLLECTIONS) >= 35


def test_every_keyword_of_django_redis_is_taken() -> None:
    """For each explicit method, BreakerCache takes every parameter django-redis takes."""
    for name in sorted(_public(DjangoRedis) - {"client"}):
        ours = inspect.signature(getattr(BreakerCache, name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in ours.values()):
            continue  # *args, **kwargs: passed on as they are
        theirs = getattr(DjangoRedis, name)
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(theirs).parameters.values()):
            theirs = getattr(DefaultClient, name, None)  # the backend passes them on to it
        if theirs is None:
            continue
        wanted = {p for p in inspect.signature(theirs).parameters if p != "self"}
        assert wanted <= set(ours), (name, wanted - set(ours))


def test_every_method_is_in_the_docs_table() -> None:
    """docs/cache.md's table of methods has a row naming each public method of BreakerCache."""
    table = DOC.partition("## Every method, healthy and while Redis is away")[2]
    table = table.partition("\n## ")[0]
    named = set(re.findall(r"`([a-z_]+)`", table))
    undocumented = {n for n in _public(BreakerCache) - named
                    if not n.startswith("a") or n[1:] not in _public(BreakerCache)}
    assert not undocumented - {"breaker", "fallback", "primary", "adopt_breaker_url"}


def test_healthy_answers_are_django_redis_answers(cache: BreakerCache,
                                                  redis_server: RedisServer) -> None:
    """TTL, pattern, collection and keyword calls give the bare backend's answers."""
    bare = caches["redis"]
    for c in (bare, cache):
        c.clear()
        assert c.set("k", 1, timeout=100) is True
        assert c.set("k", 2, nx=True) is False
        assert c.set("x", 2, xx=True) is False
        assert 98 <= c.ttl("k") <= 100
        assert 98_000 <= c.pttl("k") <= 100_000
        assert c.persist("k") is True
        assert c.ttl("k") is None
        assert c.expire("k", 50) is True
        assert c.pexpire("k", 40_000) is True
        assert c.expire_at("k", datetime.datetime.now() + datetime.timedelta(seconds=30)) is True
        assert c.ttl("missing") == 0
        assert c.incr("n", 5, ignore_key_check=True) == 5
        c.set_many({"p-a": 1, "p-b": 2, "q": 3})
        assert sorted(c.keys("p-*")) == ["p-a", "p-b"]
        assert sorted(c.iter_keys("p-*")) == ["p-a", "p-b"]
        assert c.delete_pattern("p-*") == 2
        assert c.delete_many(["q", "nope"]) == 1
        if HAS_COLLECTIONS:
            assert c.sadd("s", "a", "b") == 2
            assert c.smembers("s") == {"a", "b"}
            assert c.hset("h", "f", "v") == 1
            assert c.hkeys("h") == ["f"]
            assert c.zadd("z", {"m": 1.0}) == 1
            assert c.zrange("z", 0, -1) == ["m"]
        c.set("other", 1)
        assert c.delete("other", prefix="") is True
        pipe = c.client.get_client(write=True).pipeline()
        c.set("piped", 7, client=pipe)
        pipe.execute()
        assert c.get("piped") == 7
    assert cache.breaker.stats().consecutive_failures == 0


def test_reads_and_ttl_writes_while_open_use_the_fallback_and_the_journal(
        cache: BreakerCache, redis_server: RedisServer) -> None:
    """Open: ttl answers from the fallback, expire/persist change its copy and journal the key."""
    cache.set_many({"k": "old", "j": "old"}, timeout=None)
    raw = redis_server.client()
    with forced_open(cache.breaker):
        before = _commands(raw)
        assert cache.ttl("k") == 0  # not in the fallback: a miss, as for get()
        cache.set("k", "new", timeout=100)
        assert 98 <= cache.ttl("k") <= 100
        assert cache.persist("k") is True
        assert cache.ttl("k") is None
        assert cache.expire("j", 10) is False  # the fallback does not hold it
        assert cache.expire("k", 0) is True
        assert cache.get("k") is None
        assert cache.set("n", 1, nx=True) is True
        assert cache.incr("c", 3, ignore_key_check=True) == 3
        assert _commands(raw) - before == 1  # INFO itself
    wait_for(lambda: recovered(cache), what="journal replay")
    assert raw.exists(":1:k", ":1:j") == 0  # both journaled: Redis's old copies deleted
    assert cache.get("j") is None


def test_delete_pattern_while_open_covers_what_it_matches(cache: BreakerCache,
                                                          redis_server: RedisServer) -> None:
    """A pattern deleted during an outage hides its keys at once and is run on Redis after."""
    cache.set_many({"user:1": "a", "user:2": "b", "page:1": "p"}, timeout=None)
    raw = redis_server.client()
    raw.set("other:1:x", "foreign")
    with forced_open(cache.breaker):
        cache.set("user:3", "during")
        assert cache.delete_pattern("user:*") == 1  # the fallback's own copy
        assert cache.get("user:1") is None  # covered: never Redis's value
        assert cache.get("user:3") is None
        cache.set("user:4", "after")
        assert cache.get("user:4") == "after"
        assert cache.delete("x", prefix="other") is False  # another prefix: replayed later
    wait_for(lambda: recovered(cache), what="journal replay")
    assert sorted(k.decode() for k in raw.keys("*")) == [":1:page:1"]
    assert cache.get("page:1") == "p"


def test_direct_families_fail_fast_while_open(cache: BreakerCache,
                                              redis_server: RedisServer) -> None:
    """Collections, keys, iter_keys, lock and client= calls raise BreakerOpenError, sending nothing."""
    if HAS_COLLECTIONS:
        cache.sadd("s", "a")
    raw = redis_server.client()
    with forced_open(cache.breaker):
        before = _commands(raw)
        calls = [lambda: cache.keys("*"), lambda: list(cache.iter_keys("*")),
                 lambda: cache.lock("L").acquire(blocking=False),
                 lambda: cache.get("s", client=cache.client.get_client())]
        if HAS_COLLECTIONS:
            calls += [lambda: cache.smembers("s"), lambda: cache.sadd("s", "b"),
                      lambda: cache.hset("h", "f", "v"), lambda: cache.zadd("z", {"m": 1})]
        for call in calls:
            with pytest.raises(BreakerOpenError):
                call()
        assert _commands(raw) - before == 1
    if HAS_COLLECTIONS:
        assert cache.smembers("s") == {"a"}


def test_lock_is_never_granted_while_open_and_excludes_when_healthy(
        cache: BreakerCache, redis_server: RedisServer) -> None:
    """No lock without Redis's word: refused while open, and held against others when healthy."""
    with forced_open(cache.breaker), pytest.raises(BreakerOpenError), cache.lock("job", timeout=5):
        pytest.fail("a lock was granted while the breaker was open")
    assert not redis_server.client().exists(":1:job")
    held = cache.lock("job", timeout=5)
    assert held.acquire(blocking=False)
    results: list[bool] = []
    other = threading.Thread(target=lambda: results.append(
        cache.lock("job", timeout=5).acquire(blocking=False)))
    other.start()
    other.join()
    assert results == [False]
    held.release()


def test_direct_calls_refuse_a_key_not_replayed_yet(cache: BreakerCache,
                                                    redis_server: RedisServer) -> None:
    """Closed but the replay failing (a read-only replica): a covered key is refused, not read."""
    cache.set("k", "v1")
    cache.set("other", "a")
    client = redis_server.client()
    client.replicaof("127.0.0.1", free_port())
    try:
        cache.delete("k")  # refused by Redis: served by the fallback, journaled
        assert cache.breaker.state.value == "closed"
        with pytest.raises(KeyNotReplayedError, match="not replayed yet"):
            cache.ttl("k", client=cache.client.get_client())
        assert cache.get("other", client=cache.client.get_client()) == "a"  # Redis, as usual
    finally:
        client.replicaof("no", "one")
    wait_for(lambda: recovered(cache), what="journal replay")
    assert cache.ttl("k", client=cache.client.get_client()) == 0


@pytest.mark.parametrize("fail_closed", [False, True])
def test_add_while_redis_is_away(settings: Any, redis_server: RedisServer,
                                 fail_closed: bool) -> None:
    """add() asks the fallback while open, or with ADD_FAIL_CLOSED says the key is taken."""
    settings.CACHES = caches_for(redis_server.url, "django_redis", ADD_FAIL_CLOSED=fail_closed)
    cache = caches["default"]
    cache.add("held", "by-someone")  # in Redis
    with forced_open(cache.breaker):
        assert cache.add("held", "me") is not fail_closed  # the fallback cannot know
        assert cache.set("fresh", 1, nx=True) is not fail_closed
        assert cache.get_or_set("g", "dflt") == "dflt"
    wait_for(lambda: recovered(cache), what="journal replay")
    assert cache.add("fresh", 2) is True


def test_django_primary_has_no_django_redis_methods(settings: Any,
                                                    redis_server: RedisServer) -> None:
    """With Django's RedisCache as PRIMARY, django-redis's methods say the primary lacks them."""
    settings.CACHES = caches_for(redis_server.url, "django")
    cache = caches["default"]
    with pytest.raises(NotImplementedError, match="has no keys"):
        cache.keys("*")
    for name, call in (("ttl", lambda: cache.ttl("k")), ("expire", lambda: cache.expire("k", 5)),
                       ("persist", lambda: cache.persist("k")),
                       ("delete_pattern", lambda: cache.delete_pattern("k*")),
                       ("sadd", lambda: cache.sadd("s", "a"))):
        with pytest.raises(NotImplementedError, match=f"has no {name}"):
            call()
    raw = cache._cache.get_client(None, write=True)
    with forced_open(cache.breaker), pytest.raises(BreakerOpenError):
        raw.get("k")
    assert cache.get_backend_timeout(-5) == 0
    assert cache.make_key("k") == ":1:k"


class CountingRedisCache(DjangoRedis):
    """A django-redis subclass with its own ``get`` and ``ttl`` (a PRIMARY users may write)."""

    calls: ClassVar[list[str]] = []

    def get(self, key: Any, default: Any = None, version: int | None = None,
            client: Any = None) -> Any:
        self.calls.append("get")
        return super().get(key, default, version, client)

    def ttl(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("ttl")
        return super().ttl(*args, **kwargs)


def test_redis_errors_reach_the_caller_as_django_redis_gives_them(
        cache: BreakerCache, redis_server: RedisServer) -> None:
    """A command Redis refuses raises the bare backend's error, and no counter moves.

    django-redis's clients wrap every error in ``ConnectionInterrupted`` and its
    cache re-raises the error inside; BreakerCache calls the clients directly
    and must do the same.
    """
    bare = caches["redis"]
    raw = redis_server.client()
    raw.rpush(bare.make_key("list"), b"x")  # GET, INCRBY, SMEMBERS, HLEN on it: WRONGTYPE
    calls = {
        "get": lambda c: c.get("list"),
        "incr": lambda c: c.incr("list"),
        "decr": lambda c: c.decr("list"),
    }
    if HAS_COLLECTIONS:
        calls["smembers"] = lambda c: c.smembers("list")
        calls["hlen"] = lambda c: c.hlen("list")
    for name, call in calls.items():
        with pytest.raises(redis.ResponseError, match="WRONGTYPE") as theirs:
            call(bare)
        with pytest.raises(redis.ResponseError, match="WRONGTYPE") as ours:
            call(cache)
        assert type(ours.value) is type(theirs.value), name
    stats = cache.breaker.stats()
    assert (stats.consecutive_failures, stats.window_failures) == (0, 0)


def test_a_stopped_redis_counts_through_the_django_redis_client(
        cache: BreakerCache, redis_server: RedisServer) -> None:
    """Connection errors from django-redis's clients count and open the breaker; reads are
    served by the fallback, writes journaled, and the breaker's last error is Redis's."""
    cache.set("k", "before")
    redis_server.stop()
    try:
        assert cache.get("k", "default") == "default"
        assert cache.ttl("k") == 0
        cache.set("k", "during")
        assert cache.has_key("other") is False  # keys not journaled: Redis is asked
        assert cache.expire("another", 60) is False
        assert cache.breaker.state.value == "open"
        assert cache.get("k") == "during"
        last_error = cache.breaker.stats().last_error or ""
        assert last_error.startswith("ConnectionError"), last_error
        with pytest.raises(BreakerOpenError):
            cache.keys("*")
    finally:
        redis_server.start()


def test_a_primary_subclass_keeps_its_own_methods(settings: Any,
                                                  redis_server: RedisServer) -> None:
    """A PRIMARY subclassing django-redis's cache has its own ``get`` and ``ttl`` called."""
    settings.CACHES = {
        "redis": {**primary_entry("django_redis", redis_server.url),
                  "BACKEND": f"{__name__}.CountingRedisCache"},
        "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                    "OPTIONS": {"PRIMARY": "redis"}},
    }
    cache = caches["default"]
    CountingRedisCache.calls.clear()
    cache.set("k", 1, timeout=60)
    assert cache.get("k") == 1
    assert 0 < cache.ttl("k") <= 60
    assert CountingRedisCache.calls == ["get", "ttl"]
