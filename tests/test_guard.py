"""The guard decorator on sync and async functions, with and without a fallback."""

from __future__ import annotations

import pytest
import redis

from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, get_breaker, guard
from redis_breaker.testing import forced_open


def test_bare_guard_uses_the_default_breaker() -> None:
    """@guard without arguments runs through the shared "default" breaker."""

    @guard
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3
    with forced_open("default"), pytest.raises(BreakerOpenError):
        add(1, 2)
    assert add.__name__ == "add"


def test_fallback_gets_the_same_arguments() -> None:
    """A rejected call returns fallback(*args, **kwargs)."""

    def local(key: str, default: str = "") -> str:
        return f"local:{key}:{default}"

    @guard("cache", fallback=local)
    def remote(key: str, default: str = "") -> str:
        return f"remote:{key}"

    assert remote("k", default="d") == "remote:k"
    with forced_open("cache"):
        assert remote("k", default="d") == "local:k:d"


def test_counted_failure_takes_the_fallback_and_others_propagate() -> None:
    """A connection error is served by the fallback; a ValueError still reaches the caller."""
    breaker = Breaker("g", BreakerConfig(probe=False))

    @guard(breaker, fallback=lambda x: "fallback")
    def call(x: object) -> str:
        if x == "down":
            raise redis.ConnectionError("refused")
        raise ValueError("bad input")

    assert call("down") == "fallback"
    assert breaker.stats().consecutive_failures == 1
    with pytest.raises(ValueError, match="bad input"):
        call("other")


def test_without_fallback_the_original_error_propagates() -> None:
    """Without a fallback, connection errors propagate and are counted."""
    breaker = Breaker("g", BreakerConfig(probe=False, failure_threshold=1))

    @guard(breaker)
    def down() -> None:
        raise redis.ConnectionError("refused")

    with pytest.raises(redis.ConnectionError):
        down()
    with pytest.raises(BreakerOpenError):
        down()


def test_names_are_resolved_at_call_time() -> None:
    """A decorator naming a breaker follows the shared instance, created on first use."""

    @guard("late")
    def f() -> str:
        return "ok"

    assert f() == "ok"
    get_breaker("late").force_open()
    with pytest.raises(BreakerOpenError):
        f()


async def test_async_function_with_async_fallback() -> None:
    """An async def is awaited through the breaker and an async fallback is awaited."""

    async def local(key: str) -> str:
        return f"local:{key}"

    @guard("a", fallback=local)
    async def remote(key: str) -> str:
        return f"remote:{key}"

    assert await remote("k") == "remote:k"
    with forced_open("a"):
        assert await remote("k") == "local:k"


async def test_async_function_without_fallback_raises() -> None:
    """An async guarded call is rejected with BreakerOpenError when open."""

    @guard("a")
    async def remote() -> str:
        return "remote"

    with forced_open("a"), pytest.raises(BreakerOpenError):
        await remote()


def test_guard_rejects_a_wrong_breaker_argument() -> None:
    """Passing something that is neither a name nor a Breaker fails at decoration time."""
    with pytest.raises(TypeError, match="breaker name or a Breaker"):
        guard(42)  # type: ignore[call-overload]


SHAPES = [(is_async, by, with_fallback) for is_async in (False, True)
          for by in ("object", "name") for with_fallback in (False, True)]


@pytest.mark.parametrize(("is_async", "by", "with_fallback"), SHAPES,
                         ids=[f"{'async' if a else 'sync'}-by-{b}-{'fallback' if f else 'raising'}"
                              for a, b, f in SHAPES])
async def test_every_shape_of_guard_goes_through_the_breaker(
        is_async: bool, by: str, with_fallback: bool) -> None:
    """Each wrapper guard builds (sync/async, breaker by object/by name, with/without a
    fallback) counts successes and failures, trips, rejects without calling the function,
    and passes again once the breaker is reset."""
    config = BreakerConfig(probe=False, failure_threshold=2, failure_rate=None)
    breaker = get_breaker("shapes") if by == "name" else Breaker("shapes-object", config)
    if by == "name":
        breaker.configure(config)
    calls: list[str] = []

    def body(mode: str) -> str:
        calls.append(mode)
        if mode == "down":
            raise redis.ConnectionError("refused")
        if mode == "bad":
            raise ValueError("bad input")
        return f"redis:{mode}"

    async def abody(mode: str) -> str:
        return body(mode)

    def local(mode: str) -> str:
        return f"local:{mode}"

    target = breaker if by == "object" else "shapes"
    fallback = local if with_fallback else None
    guarded = guard(target, fallback=fallback)(abody if is_async else body)

    async def call(mode: str) -> str:
        result = guarded(mode)
        return await result if is_async else result  # type: ignore[no-any-return]

    assert await call("up") == "redis:up"
    assert breaker.totals().successes == 1
    with pytest.raises(ValueError, match="bad input"):  # not counted, always propagates
        await call("bad")
    assert breaker.stats().consecutive_failures == 0
    if with_fallback:
        assert await call("down") == "local:down"
    else:
        with pytest.raises(redis.ConnectionError):
            await call("down")
    assert breaker.stats().consecutive_failures == 1
    assert not breaker.is_open
    if with_fallback:
        assert await call("down") == "local:down"
    else:
        with pytest.raises(redis.ConnectionError):
            await call("down")
    assert breaker.is_open
    calls.clear()
    if with_fallback:
        assert await call("up") == "local:up"
        fallbacks = breaker.totals().fallbacks
        assert sum(fallbacks.values()) == 3
        assert all(k.startswith("guard:") for k in fallbacks)
    else:
        with pytest.raises(BreakerOpenError):
            await call("up")
    assert calls == []  # rejected: the function was not called
    assert breaker.totals().rejected == 1
    breaker.reset()
    assert await call("up") == "redis:up"
    assert breaker.totals().successes == 2

