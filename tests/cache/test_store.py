"""The default fallback (``FallbackStore``) answers as Django's LocMemCache does, and the closed
path's calls are made once per cache, not per call."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import pytest
from django.core.cache import CacheKeyWarning, caches
from django.core.cache.backends.locmem import LocMemCache
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redis_breaker import Breaker
from redis_breaker.cache import BreakerCache
from redis_breaker.cache.store import FallbackStore
from tests.harness import RedisServer

_names = itertools.count()


def _pair(**options: Any) -> tuple[LocMemCache, FallbackStore]:
    n = next(_names)
    params = {"TIMEOUT": 300, "OPTIONS": options}
    return LocMemCache(f"test-store-django-{n}", params), FallbackStore(f"test-store-ours-{n}",
                                                                          params)


def test_answers_as_locmemcache() -> None:
    django_store, ours = _pair(MAX_ENTRIES=3, CULL_FREQUENCY=3)
    value = {"list": [1, 2], "text": "é"}
    with freeze_time("2026-01-01 00:00:00") as frozen:
        for store in (django_store, ours):
            store.set("a", value, 10)
            store.set("b", 2, None)
            store.set("c", 3, version=2)
        for store in (django_store, ours):
            got = store.get("a")
            assert got == value
            assert got is not value
            got["list"].append(3)  # a copy: the store keeps what was set
        frozen.tick(5)
        steps = [
            lambda s: s.get("a"), lambda s: s.get("a", "dflt", version=2), lambda s: s.has_key("a"),
            lambda s: s.has_key("c"), lambda s: s.has_key("c", version=2),
            lambda s: s.get("c", version=2), lambda s: s.get("missing", "dflt"),
            lambda s: s.has_key("missing"),
        ]
        assert [step(ours) for step in steps] == [step(django_store) for step in steps]
        frozen.tick(6)  # "a" expired
        assert [step(ours) for step in steps] == [step(django_store) for step in steps]
        assert ours.get("a", "gone") == "gone"
        assert not ours.has_key("a")
        # Expired entries are deleted on read, as Django's are.
        assert sorted(ours._cache) == sorted(django_store._cache)  # type: ignore[attr-defined]
        # Reads move a key to the front: culling drops the least recently used alike.
        for store in (django_store, ours):
            store.set("d", 4)
            store.get("b")
            store.set("e", 5)
            store.set("f", 6)
        assert list(ours._cache) == list(django_store._cache)  # type: ignore[attr-defined]


@pytest.mark.parametrize("key", ["with space", "tab\there", "x" * 260, "del\x7f"])
def test_key_warnings_are_djangos(key: str) -> None:
    django_store, ours = _pair()
    for method in ("get", "has_key", "set"):
        args = (key, 1) if method == "set" else (key,)
        with warnings.catch_warnings(record=True) as theirs:
            warnings.simplefilter("always")
            getattr(django_store, method)(*args)
        with warnings.catch_warnings(record=True) as mine:
            warnings.simplefilter("always")
            getattr(ours, method)(*args)
        assert theirs
        assert [(w.category, str(w.message)) for w in mine] == [
            (w.category, str(w.message)) for w in theirs]
        assert all(w.category is CacheKeyWarning for w in mine)


def _called(store: Any, method: str, args: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """What ``store.method(*args)`` returned, and the warnings it gave (category, text)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = getattr(store, method)(*args)
    return result, [(w.category, str(w.message)) for w in seen]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.one_of(
    st.text(max_size=300),
    # Near the edges: ASCII controls, space, DEL, non-ASCII spaces and separators.
    st.text(st.sampled_from("ab:\x00\x1f \x7f\x80\x85\xa0é\u2028\u3000\U0001f600"),
            max_size=40),
))
def test_every_key_warns_as_with_django(key: str) -> None:
    """Any text: the same warnings as Django's LocMemCache (none, or the same ones) on get,
    has_key and set, and the same value back."""
    django_store, ours = _pair()
    for store in (django_store, ours):
        store.set("prefill", 0)
    for method, args in (("get", (key, "dflt")), ("has_key", (key,)), ("set", (key, 1)),
                         ("get", (key, "dflt")), ("has_key", (key,))):
        assert _called(ours, method, args) == _called(django_store, method, args), (method, key)


def _reversed_key(key: str, key_prefix: str, version: int) -> str:
    return f"{version}|{key}|{key_prefix}"


def test_a_key_function_of_its_own_is_used() -> None:
    params = {"TIMEOUT": 300, "KEY_PREFIX": "p", "VERSION": 3,
              "KEY_FUNCTION": _reversed_key}
    django_store = LocMemCache("test-store-django-kf", params)
    ours = FallbackStore("test-store-ours-kf", params)
    for store in (django_store, ours):
        store.set("k", "v")
        store.set("k", "w", version=4)
    assert list(ours._cache) == list(django_store._cache) == ["4|k|p", "3|k|p"]  # type: ignore[attr-defined]
    assert [ours.get("k"), ours.get("k", version=4), ours.has_key("k", version=5)] == [
        "v", "w", False]


def test_a_valid_key_warns_nothing() -> None:
    _, ours = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.set("fine:key-1", 1)
        assert ours.get("fine:key-1") == 1
        assert ours.has_key("fine:key-1")


def test_the_default_fallback_is_a_fallback_store(breaker_cache: BreakerCache) -> None:
    assert type(breaker_cache.fallback) is FallbackStore


def test_closed_path_calls_are_made_once(breaker_cache: BreakerCache, primary_kind: str,
                                         breaker: Breaker) -> None:
    """Every method's route is made on first use and kept: calls do not add more."""

    def calls() -> None:
        breaker_cache.set("k", 1)
        breaker_cache.get("k")
        breaker_cache.has_key("k")
        breaker_cache.add("k2", 1)
        breaker_cache.incr("k")
        breaker_cache.touch("k", 30)
        breaker_cache.delete("k2")
        breaker_cache.delete_many(["k2", "k3"])
        if primary_kind == "django_redis":
            breaker_cache.ttl("k")
            breaker_cache.pttl("k")
            breaker_cache.expire("k", 30)
            breaker_cache.pexpire("k", 30_000)
            breaker_cache.persist("k")
            breaker_cache.set("k", 2, nx=True)
            breaker_cache.incr("n", ignore_key_check=True)
            breaker_cache.delete_pattern("absent-*")
            # The collections came with django-redis 6 (the oldest supported has none).
            if hasattr(caches["redis"], "sadd"):
                breaker_cache.sadd("s", "a")
                breaker_cache.smembers("s")

    calls()
    bound = breaker_cache._bind()
    made = (dict(bound.routes), dict(bound.directs))
    for _ in range(3):
        calls()
    assert (bound.routes, bound.directs) == made
    assert bound.breaker is breaker


def test_a_new_registry_breaker_rebinds(breaker_cache: BreakerCache,
                                        redis_server: RedisServer) -> None:
    from redis_breaker import _registry

    breaker_cache.set("k", 1)
    first = breaker_cache._bind()
    _registry._breakers.clear()
    assert breaker_cache.get("k") == 1
    second = breaker_cache._bind()
    assert second is not first
    assert second.breaker is _registry._breakers["default"]
