"""No lock is held across the guarded call: shown with events, not timings."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import redis
from freezegun import freeze_time

from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, State

WAIT = 10.0  # generous: only reached when the property is broken


def open_then_half_open(breaker: Breaker) -> None:
    def refused() -> None:
        raise redis.ConnectionError("refused")

    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(redis.ConnectionError):
            breaker.call(refused)
    assert breaker.state is State.OPEN


def test_blocked_call_does_not_delay_another_thread() -> None:
    """While one call is stuck inside the breaker, another thread's call completes."""
    breaker = Breaker("c", BreakerConfig(probe=False))
    inside, release, other_done = threading.Event(), threading.Event(), threading.Event()

    def stuck() -> None:
        inside.set()
        assert release.wait(WAIT)

    holder = threading.Thread(target=breaker.call, args=(stuck,))
    holder.start()
    assert inside.wait(WAIT)
    other = threading.Thread(target=lambda: (breaker.call(lambda: None), other_done.set()))
    other.start()
    # The second call finishes while the first is still inside: no lock is held across calls.
    assert other_done.wait(WAIT)
    assert holder.is_alive()
    release.set()
    holder.join(WAIT)
    other.join(WAIT)


class ManualClock:
    """An injected clock: freezegun's patches fall back to real time inside threads."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_half_open_rejects_beyond_the_permits_at_once() -> None:
    """A caller arriving while the only trial is in flight is rejected without waiting for it."""
    clock = ManualClock()
    breaker = Breaker("c", BreakerConfig(probe=False), clock=clock)
    open_then_half_open(breaker)
    clock.now += 1
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def trial() -> None:
        inside.set()
        assert release.wait(WAIT)

    holder = threading.Thread(target=breaker.call, args=(trial,))
    holder.start()
    assert inside.wait(WAIT)

    def second() -> None:
        try:
            breaker.call(lambda: None)
        except BreakerOpenError as exc:
            errors.append(exc)

    t = threading.Thread(target=second)
    t.start()
    t.join(WAIT)
    assert not t.is_alive()
    assert holder.is_alive()  # rejected while the trial is still running
    assert len(errors) == 1
    release.set()
    holder.join(WAIT)


def test_many_threads_count_every_failure_exactly() -> None:
    """Counters stay exact under contention: 8 threads x 500 calls are all in the window."""
    breaker = Breaker("c", BreakerConfig(probe=False, failure_threshold=65535, failure_rate=None,
                                         window=3600.0))

    def refused() -> None:
        raise redis.ConnectionError("refused")

    def work() -> None:
        for i in range(500):
            with contextlib.suppress(redis.ConnectionError):
                breaker.call(refused if i % 2 else (lambda: None))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 6)
    stats = breaker.stats()
    assert (stats.window_calls, stats.window_failures) == (4000, 2000)


async def test_async_call_blocked_does_not_delay_another_task() -> None:
    """An awaiting acall does not stop another task's acall from completing."""
    breaker = Breaker("c", BreakerConfig(probe=False))
    inside, release = asyncio.Event(), asyncio.Event()

    async def stuck() -> str:
        inside.set()
        await release.wait()
        return "stuck"

    async def quick() -> str:
        return "quick"

    holder = asyncio.create_task(breaker.acall(stuck))
    await asyncio.wait_for(inside.wait(), WAIT)
    assert await asyncio.wait_for(breaker.acall(quick), WAIT) == "quick"
    assert not holder.done()
    release.set()
    assert await holder == "stuck"


async def test_async_half_open_rejects_beyond_the_permits() -> None:
    """In half-open, a second coroutine is rejected while the first trial awaits."""
    with freeze_time("2026-01-01") as clock:
        breaker = Breaker("c", BreakerConfig(probe=False))
        open_then_half_open(breaker)
        clock.tick(1)
        inside, release = asyncio.Event(), asyncio.Event()

        async def trial() -> None:
            inside.set()
            await release.wait()

        async def quick() -> None:
            return None

        holder = asyncio.create_task(breaker.acall(trial))
        await asyncio.wait_for(inside.wait(), WAIT)
        with pytest.raises(BreakerOpenError):
            await breaker.acall(quick)
        release.set()
        await holder
        assert breaker.state is State.HALF_OPEN
