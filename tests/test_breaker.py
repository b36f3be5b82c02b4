"""The engine's state machine, driven with freezegun: tripping, rejection, backoff, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pybreaker
import pytest
import redis
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from redis_breaker import (
    Breaker,
    BreakerConfig,
    BreakerOpenError,
    State,
    StateChange,
    Stats,
    guard,
)
from redis_breaker.testing import capture_events


def refused() -> None:
    raise redis.ConnectionError("Error 111 connecting to redis://:s3cret@10.0.0.1:6379. Connection refused.")


def ok() -> str:
    return "ok"


def fail(breaker: Breaker, times: int, exc: Callable[[], Any] = refused) -> None:
    for _ in range(times):
        with pytest.raises((redis.ConnectionError, redis.TimeoutError, BreakerOpenError)):
            breaker.call(exc)


def make(**overrides: Any) -> Breaker:
    """A breaker without a probe, and a jitter that always takes the longest wait."""
    overrides.setdefault("probe", False)
    return Breaker("t", BreakerConfig(**overrides), rng=lambda: 1.0)


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time("2026-01-01 00:00:00") as frozen:
        yield frozen


def test_opens_after_consecutive_failures(clock: FrozenDateTimeFactory) -> None:
    """Five connection errors in a row open the breaker, and the sixth call never runs."""
    breaker = make()
    fail(breaker, 4)
    assert breaker.state is State.CLOSED
    fail(breaker, 1)
    assert breaker.state is State.OPEN
    ran = []
    with pytest.raises(BreakerOpenError) as info:
        breaker.call(ran.append, 1)
    assert ran == []
    assert info.value.name == "t"
    assert info.value.retry_in == pytest.approx(0.5)
    assert isinstance(info.value, pybreaker.CircuitBreakerError)


def test_success_resets_the_consecutive_count(clock: FrozenDateTimeFactory) -> None:
    """Failures separated by a success never reach the consecutive threshold."""
    breaker = make(failure_rate=None)
    for _ in range(10):
        fail(breaker, 4)
        breaker.call(ok)
    assert breaker.state is State.CLOSED
    assert breaker.stats().consecutive_failures == 0


def test_failure_rate_over_the_window_trips(clock: FrozenDateTimeFactory) -> None:
    """Alternating failures never make five in a row but do exceed 50% of 20 calls."""
    breaker = make(failure_rate=0.5, minimum_calls=20)
    for _ in range(9):
        breaker.call(ok)
        fail(breaker, 1)
    assert breaker.state is State.CLOSED
    breaker.call(ok)
    with capture_events() as events:
        fail(breaker, 1)
    assert breaker.state is State.OPEN
    assert events[0]["reason"] == "failure rate 50% over 10s (n=20)"


def test_failure_rate_needs_the_minimum_calls(clock: FrozenDateTimeFactory) -> None:
    """A 100% failure rate over fewer calls than MINIMUM_CALLS does not trip by rate."""
    breaker = make(failure_threshold=100, minimum_calls=20)
    fail(breaker, 19)
    assert breaker.state is State.CLOSED
    fail(breaker, 1)
    assert breaker.state is State.OPEN


def test_old_failures_age_out_of_the_window(clock: FrozenDateTimeFactory) -> None:
    """Failures older than WINDOW no longer count toward the rate."""
    breaker = make(failure_threshold=100, minimum_calls=20, window=10.0)
    fail(breaker, 15)
    clock.tick(11)
    for _ in range(5):
        breaker.call(ok)
    fail(breaker, 4)
    stats = breaker.stats()
    assert (stats.window_calls, stats.window_failures) == (9, 4)
    assert breaker.state is State.CLOSED


def test_slow_calls_count_as_failures(clock: FrozenDateTimeFactory) -> None:
    """A call slower than SLOW_CALL_THRESHOLD returns its result but counts as a failure."""
    breaker = make(slow_call_threshold=0.2, failure_threshold=2)

    def slow() -> str:
        clock.tick(0.3)
        return "late"

    assert breaker.call(slow) == "late"
    assert breaker.stats().consecutive_failures == 1
    assert breaker.call(slow) == "late"
    assert breaker.state is State.OPEN
    assert "slow-call threshold" in (breaker.stats().last_error or "")


@pytest.mark.parametrize(
    "error",
    [
        ValueError("key 'k' not found"),
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        KeyError("x"),
    ],
)
def test_non_outage_errors_change_no_counter(clock: FrozenDateTimeFactory, error: BaseException) -> None:
    """Errors about the data or the caller propagate and leave every counter as it was."""
    breaker = make()
    fail(breaker, 4)
    before = breaker.stats()

    def raise_it() -> None:
        raise error

    with pytest.raises(type(error)):
        breaker.call(raise_it)
    after = breaker.stats()
    assert after.consecutive_failures == before.consecutive_failures == 4
    assert (after.window_calls, after.window_failures) == (before.window_calls, before.window_failures)
    assert after.last_error == before.last_error


@pytest.mark.parametrize(
    "error",
    [
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        OSError(113, "No route to host"),
    ],
)
def test_connection_level_errors_count(clock: FrozenDateTimeFactory, error: BaseException) -> None:
    """Every kind of "Redis is not reachable" error counts toward tripping."""
    breaker = make(failure_threshold=1)

    def raise_it() -> None:
        raise error

    with pytest.raises(type(error)):
        breaker.call(raise_it)
    assert breaker.state is State.OPEN


@pytest.mark.parametrize(("cause", "counted"), [
    (redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), True),
    (redis.TimeoutError("Timeout reading from socket"), True),
    (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
     False),
    (None, False),
])
def test_django_redis_connection_interrupted_is_judged_by_its_cause(
        clock: FrozenDateTimeFactory, cause: BaseException | None, counted: bool) -> None:
    """django-redis's clients raise every command error as ConnectionInterrupted: its cause decides."""
    from django_redis.exceptions import ConnectionInterrupted

    breaker = make(failure_threshold=1)

    def raise_it() -> None:
        if cause is None:
            raise ConnectionInterrupted(connection=None)
        raise ConnectionInterrupted(connection=None) from cause

    with pytest.raises(ConnectionInterrupted):
        breaker.call(raise_it)
    assert breaker.state is (State.OPEN if counted else State.CLOSED)


def test_kombu_operational_error_counts(clock: FrozenDateTimeFactory) -> None:
    """kombu's OperationalError (a broker that cannot be reached) counts."""
    from kombu.exceptions import OperationalError

    breaker = make(failure_threshold=1)

    def raise_it() -> None:
        raise OperationalError("Error 111 connecting to localhost:6379. Connection refused.")

    with pytest.raises(OperationalError):
        breaker.call(raise_it)
    assert breaker.state is State.OPEN


def test_users_can_count_and_exclude_exception_types(clock: FrozenDateTimeFactory) -> None:
    """COUNT_EXCEPTIONS adds types that count; EXCLUDE_EXCEPTIONS removes default ones."""
    breaker = make(failure_threshold=1, count_exceptions=("builtins.LookupError",),
                   exclude_exceptions=(redis.TimeoutError,))

    def timeout() -> None:
        raise redis.TimeoutError("slow")

    fail(breaker, 3, timeout)
    assert breaker.state is State.CLOSED
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["missing"])
    assert breaker.state is State.OPEN


def test_half_open_after_the_interval_without_a_probe(clock: FrozenDateTimeFactory) -> None:
    """Without a probe, the first call after the open interval is a trial; two successes close."""
    breaker = make()
    fail(breaker, 5)
    clock.tick(0.49)
    with pytest.raises(BreakerOpenError):
        breaker.call(ok)
    clock.tick(0.02)
    assert breaker.call(ok) == "ok"
    assert breaker.state is State.HALF_OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state is State.CLOSED


def test_trial_failure_reopens_with_a_doubled_interval(clock: FrozenDateTimeFactory) -> None:
    """Each failed trial doubles the open interval, up to MAX_RESET_TIMEOUT."""
    breaker = make(reset_timeout=1.0, max_reset_timeout=5.0)
    fail(breaker, 5)
    waits = []
    for _ in range(5):
        waits.append(breaker.stats().retry_in_s)
        clock.tick(breaker.stats().retry_in_s or 0)
        fail(breaker, 1)
        assert breaker.state is State.OPEN
    assert waits == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])


def test_jitter_shortens_the_wait_by_at_most_a_fifth(clock: FrozenDateTimeFactory) -> None:
    """With the lowest jitter draw the interval is 80% of the backoff step."""
    breaker = Breaker("j", BreakerConfig(probe=False, reset_timeout=1.0), rng=lambda: 0.0)
    fail(breaker, 5)
    assert breaker.stats().retry_in_s == pytest.approx(0.8)


def test_a_recovery_that_holds_resets_the_backoff(clock: FrozenDateTimeFactory) -> None:
    """Closed for WINDOW seconds: the next outage starts again from the first interval."""
    breaker = make(reset_timeout=1.0, max_reset_timeout=30.0, window=10.0)
    fail(breaker, 5)
    clock.tick(1)
    fail(breaker, 1)  # trial fails: next wait 2 s
    clock.tick(2)
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    clock.tick(10)
    fail(breaker, 5)
    assert breaker.stats().retry_in_s == pytest.approx(1.0)


def test_a_trip_soon_after_closing_keeps_backing_off(clock: FrozenDateTimeFactory) -> None:
    """Redis flapping: a trip within WINDOW seconds of a recovery takes the next step,
    so a Redis that comes and goes cannot cause a close/open storm."""
    breaker = make(reset_timeout=1.0, max_reset_timeout=30.0, window=10.0)
    fail(breaker, 5)
    clock.tick(1)
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    waits = []
    for _ in range(6):
        clock.tick(0.5)
        fail(breaker, 5)
        waits.append(breaker.stats().retry_in_s)
        clock.tick(waits[-1])
        breaker.call(ok)
        breaker.call(ok)
        assert breaker.state is State.CLOSED
    assert waits == pytest.approx([2.0, 4.0, 8.0, 16.0, 30.0, 30.0])


def test_half_open_admits_only_the_permitted_trials(clock: FrozenDateTimeFactory) -> None:
    """While a trial is in flight, every other caller is rejected at once."""
    breaker = make(half_open_max_calls=1)
    fail(breaker, 5)
    clock.tick(1)
    seen = []

    def trial() -> str:
        with pytest.raises(BreakerOpenError) as info:
            breaker.call(ok)
        seen.append(info.value.state)
        return "trial"

    assert breaker.call(trial) == "trial"
    assert seen == ["half_open"]


def test_stale_outcome_does_not_close_a_reopened_breaker(clock: FrozenDateTimeFactory) -> None:
    """A call admitted while closed that ends after the trip changes nothing."""
    breaker = make(failure_threshold=1)

    def slow_success() -> str:
        fail(breaker, 1)  # another caller trips the breaker meanwhile
        return "late"

    assert breaker.call(slow_success) == "late"
    assert breaker.state is State.OPEN


def test_force_open_disable_and_reset(clock: FrozenDateTimeFactory) -> None:
    """Manual states: forced open rejects, disabled passes and never trips, reset closes."""
    breaker = make(failure_threshold=1)
    breaker.force_open()
    with pytest.raises(BreakerOpenError) as info:
        breaker.call(ok)
    assert info.value.state == "forced_open"
    clock.tick(3600)
    with pytest.raises(BreakerOpenError):
        breaker.call(ok)
    breaker.disable()
    fail(breaker, 10)
    assert breaker.state is State.DISABLED
    assert breaker.stats().consecutive_failures == 10
    breaker.reset()
    assert breaker.state is State.CLOSED
    assert breaker.stats().consecutive_failures == 0


def test_each_entry_point_with_a_fallback_counts_a_refusal_once(
        clock: FrozenDateTimeFactory) -> None:
    """Open: every entry point that takes a fallback serves it without calling the function.

    Each refused call counts once as rejected and once as served by its
    integration's fallback; the first in each integration warns, once per
    outage. A forced-open breaker refuses the same way; once the open
    interval is over, a trial is admitted.
    """
    breaker = make()
    fail(breaker, 5)
    assert breaker.state is State.OPEN
    called: list[str] = []

    def fn(x: str) -> str:
        called.append(x)
        return "redis"

    async def afn(x: str) -> str:
        called.append(x)
        return "redis"

    guarded = guard(breaker, fallback=lambda x: "local")(fn)
    aguarded = guard(breaker, fallback=lambda x: "local")(afn)

    def refuse_all() -> list[str]:
        return [
            breaker.call_with_fallback(fn, lambda x: "local", ("a",), integration="cwf"),
            asyncio.run(breaker.acall_with_fallback(afn, lambda x: "local", ("b",),
                                                    integration="acwf")),
            guarded("c"),
            asyncio.run(aguarded("d")),
        ]

    names = {"cwf", "acwf", f"guard:{fn.__qualname__}", f"guard:{afn.__qualname__}"}
    with capture_events() as events:
        before = breaker.totals()
        assert refuse_all() == ["local"] * 4
        assert refuse_all() == ["local"] * 4
        after = breaker.totals()
    assert called == []
    assert after.rejected - before.rejected == 8
    assert {k: v - before.fallbacks.get(k, 0) for k, v in after.fallbacks.items()} == dict.fromkeys(
        names, 2)
    warned = [e["integration"] for e in events if e["event"] == "fallback_used"]
    assert sorted(warned) == sorted(names)
    breaker.force_open("maintenance")
    assert refuse_all() == ["local"] * 4
    assert breaker.totals().rejected - after.rejected == 4
    breaker.reset()
    fail(breaker, 5)
    clock.tick(3600)  # past the open interval: the next call is a trial
    assert guarded("e") == "redis"
    assert called == ["e"]


def test_stats_snapshot(clock: FrozenDateTimeFactory) -> None:
    """stats() reports state, counters and the last error with the password removed."""
    breaker = make()
    fail(breaker, 5)
    for _ in range(3):
        with pytest.raises(BreakerOpenError):
            breaker.call(ok)
    breaker.call_with_fallback(ok, lambda: "fallback")
    stats = breaker.stats()
    assert stats.state is State.OPEN
    assert stats.consecutive_failures == 5
    assert (stats.window_calls, stats.window_failures) == (5, 5)
    assert stats.rejected == 4
    assert stats.fallback_calls == 1
    assert stats.last_error is not None
    assert "s3cret" not in stats.last_error
    assert "redis://:***@10.0.0.1:6379" in stats.last_error
    assert stats.as_dict()["state"] == "open"


def test_listeners_receive_every_transition(clock: FrozenDateTimeFactory) -> None:
    """Callables get a StateChange and pybreaker listeners get state_change, in order."""
    breaker = make()
    changes: list[StateChange] = []
    pb_changes: list[tuple[str, str]] = []

    class PB(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            pb_changes.append((old_state.name if old_state else None, new_state.name))

    breaker.add_listener(changes.append)
    breaker.add_listener(PB())
    fail(breaker, 5)
    clock.tick(1)
    breaker.call(ok)
    breaker.call(ok)
    assert [(c.from_state, c.to_state) for c in changes] == [
        (State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.CLOSED),
    ]
    assert pb_changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert breaker.pybreaker.current_state == "closed"
    assert changes[-1].open_for_s == pytest.approx(1.0)
    assert breaker.last_change is changes[-1]


def test_a_failing_listener_does_not_break_the_breaker(clock: FrozenDateTimeFactory) -> None:
    """An exception in a listener is logged; the transition and other listeners proceed."""
    breaker = make(failure_threshold=1)
    seen: list[StateChange] = []

    def broken(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(seen.append)
    with capture_events() as events:
        fail(breaker, 1)
    assert breaker.state is State.OPEN
    assert len(seen) == 1
    assert [e["event"] for e in events] == ["breaker_state_changed", "listener_failed"]


def test_transition_events_carry_the_design_fields(clock: FrozenDateTimeFactory) -> None:
    """Open is logged at ERROR and closed at INFO, with reason, failures and durations."""
    breaker = make()
    with capture_events() as events:
        fail(breaker, 5)
        breaker.call_with_fallback(ok, lambda: "fb", integration="cache")
        breaker.call_with_fallback(ok, lambda: "fb", integration="cache")
        clock.tick(2)
        breaker.call(ok)
        breaker.call(ok)
    opened, warned, half, closed, summary = events
    assert opened["event"] == "breaker_state_changed"
    assert opened["log_level"] == "error"
    assert opened["reason"] == "5 consecutive failures"
    assert opened["failures"] == 5
    assert "s3cret" not in opened["last_error"]
    assert (warned["event"], warned["log_level"], warned["integration"]) == ("fallback_used", "warning", "cache")
    assert (half["to_state"], half["reason"]) == ("half_open", "open interval elapsed")
    assert (closed["to_state"], closed["log_level"]) == ("closed", "info")
    assert closed["reason"] == "2 trial calls succeeded"
    assert closed["open_for_s"] == pytest.approx(2.0)
    assert closed["fallback_calls"] == 2
    assert (summary["event"], summary["fallback_calls"]) == ("fallback_summary", 2)


def test_fallback_warning_is_logged_once_per_outage(clock: FrozenDateTimeFactory) -> None:
    """A thousand fallback calls in one outage make one warning, not a thousand lines."""
    breaker = make()
    fail(breaker, 5)
    with capture_events() as events:
        for _ in range(1000):
            breaker.call_with_fallback(ok, lambda: "fb", integration="cache")
    assert [e["event"] for e in events] == ["fallback_used"]
    assert breaker.stats().fallback_calls == 1000


def test_fallbacks_below_the_threshold_warn_once_a_minute_and_all_count(
        clock: FrozenDateTimeFactory) -> None:
    """Closed, each counted failure falls back: one warning a minute, every call counted."""
    breaker = make(failure_threshold=1000, failure_rate=None)
    with capture_events() as events:
        for _ in range(10):
            assert breaker.call_with_fallback(refused, lambda: "fb", integration="cache") == "fb"
        clock.tick(59)
        breaker.call_with_fallback(refused, lambda: "fb", integration="cache")
        clock.tick(2)
        breaker.call_with_fallback(refused, lambda: "fb", integration="cache")
        breaker.call_with_fallback(refused, lambda: "fb", integration="cache")
    assert [e["event"] for e in events] == ["fallback_used", "fallback_used"]
    assert breaker.state is State.CLOSED
    assert breaker.totals().fallbacks == {"cache": 13}


def test_blocks_of_two_breakers_exited_out_of_order_count_on_their_own() -> None:
    """``with a:`` then ``with b:``, exited a first (an ExitStack unwound by hand): each
    block's outcome lands on its own breaker, in this thread and in a thread of its own."""

    def run() -> tuple[Stats, Stats]:
        a = Breaker("order-a", BreakerConfig(probe=False, failure_rate=None, host_shared=False))
        b = Breaker("order-b", BreakerConfig(probe=False, failure_rate=None, host_shared=False))
        a.__enter__()
        b.__enter__()
        a.__exit__(redis.ConnectionError, redis.ConnectionError("refused"), None)
        b.__exit__(None, None, None)
        with b:
            pass
        return a.stats(), b.stats()

    for a_stats, b_stats in (run(), _in_thread(run)):
        assert (a_stats.consecutive_failures, a_stats.window_calls) == (1, 1)
        assert (b_stats.consecutive_failures, b_stats.window_calls) == (0, 2)


def _in_thread(fn: Callable[[], Any]) -> Any:
    found: list[Any] = []
    worker = threading.Thread(target=lambda: found.append(fn()))
    worker.start()
    worker.join(10)
    return found[0]


def test_context_manager_counts_like_call(clock: FrozenDateTimeFactory) -> None:
    """`with breaker:` counts the block's connection errors and rejects when open."""
    breaker = make(failure_threshold=2)
    for _ in range(2):
        with pytest.raises(redis.ConnectionError), breaker:
            refused()
    assert breaker.state is State.OPEN
    with pytest.raises(BreakerOpenError), breaker:
        pytest.fail("the block must not run")


async def test_async_paths(clock: FrozenDateTimeFactory) -> None:
    """acall, `async with` and acall_with_fallback trip and recover like the sync paths."""
    breaker = make(failure_threshold=2)

    async def down() -> None:
        refused()

    async def up() -> str:
        return "up"

    with pytest.raises(redis.ConnectionError):
        await breaker.acall(down)
    with pytest.raises(redis.ConnectionError):
        async with breaker:
            await down()
    assert breaker.state is State.OPEN
    with pytest.raises(BreakerOpenError):
        await breaker.acall(up)

    async def async_fallback() -> str:
        return "async fallback"

    assert await breaker.acall_with_fallback(up, async_fallback) == "async fallback"
    assert await breaker.acall_with_fallback(up, lambda: "sync fallback") == "sync fallback"
    clock.tick(1)
    assert await breaker.acall(up) == "up"
    async with breaker:
        pass
    assert breaker.state is State.CLOSED


async def test_async_with_gives_the_breaker_and_runs_on_any_loop(
        clock: FrozenDateTimeFactory) -> None:
    """`async with breaker as b` binds the breaker, whichever loop or exit stack enters it.

    On this loop, on another loop in another thread and under AsyncExitStack; an
    error inside the block reaches the caller (the exit suppresses nothing) and an
    open breaker rejects the block before it runs.
    """
    breaker = make(failure_threshold=2)
    async with breaker as bound:
        assert bound is breaker
    async with contextlib.AsyncExitStack() as stack:
        assert await stack.enter_async_context(breaker) is breaker

    async def on_another_loop() -> Breaker:
        async with breaker as other:
            return other

    assert _in_thread(lambda: asyncio.run(on_another_loop())) is breaker
    assert breaker.stats().consecutive_failures == 0
    for _ in range(2):
        with pytest.raises(redis.ConnectionError):
            async with breaker:
                refused()
    assert breaker.state is State.OPEN
    with pytest.raises(BreakerOpenError):
        async with breaker:
            pytest.fail("the block must not run")


def _outer_entry_points(breaker: Breaker) -> dict[str, Callable[[Callable[[], Any]], Any]]:
    """Ways to run ``fn`` through ``breaker`` from the outside, each returning fn's result."""

    def in_block(fn: Callable[[], Any]) -> Any:
        with breaker:
            return fn()

    return {
        "call": breaker.call,
        "guard": lambda fn: guard(breaker)(fn)(),
        "with": in_block,
        "call_with_fallback": lambda fn: breaker.call_with_fallback(fn, lambda: "outer fallback"),
    }


@pytest.mark.parametrize("outer", ["call", "guard", "with", "call_with_fallback"])
def test_a_failure_inside_a_call_through_the_same_breaker_counts_once(
        clock: FrozenDateTimeFactory, outer: str) -> None:
    """A guarded function whose own call through the breaker fails counts one failure, not two.

    As a function under ``@guard("default")`` that uses a guarded client of that
    breaker: the error reaches the outer call as well, which must not count it again
    (the breaker would open after half its threshold).
    """
    breaker = make(failure_rate=None)
    run = _outer_entry_points(breaker)[outer]

    def inner() -> None:
        breaker.call(refused)

    for expected in range(1, 5):
        try:
            assert run(inner) == "outer fallback"
        except redis.ConnectionError:
            assert outer != "call_with_fallback"
        assert breaker.stats().consecutive_failures == expected
        assert breaker.state is State.CLOSED
    with contextlib.suppress(redis.ConnectionError):
        run(inner)
    assert breaker.state is State.OPEN


@pytest.mark.parametrize("outer", ["call", "guard", "with"])
def test_an_inner_failure_the_outer_call_caught_is_not_erased(
        clock: FrozenDateTimeFactory, outer: str) -> None:
    """An outer call that caught its inner call's failure (served a fallback) does not reset the count.

    As a function under ``@guard`` that reads the cache of the same breaker: the
    cache counts the failure and serves its fallback, the function returns. Its
    success is not one of Redis: with it counted, the consecutive failures never
    reached the threshold, and a Redis that refused every call never tripped it.
    """
    breaker = make(failure_rate=None)
    run = _outer_entry_points(breaker)[outer]

    def reads_through_a_fallback() -> str:
        clock.tick(0.001)  # the inner failure comes after the outer call began
        return breaker.call_with_fallback(refused, lambda: "fallback")

    for expected in range(1, 5):
        assert run(reads_through_a_fallback) == "fallback"
        assert breaker.stats().consecutive_failures == expected
    assert run(reads_through_a_fallback) == "fallback"
    assert breaker.state is State.OPEN
    # A success of its own, with no failure inside it, still resets the count.
    clock.tick(1)
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    fail(breaker, 2)
    run(ok)
    assert breaker.stats().consecutive_failures == 0


async def test_nested_async_calls_count_a_failure_once_and_keep_it(
        clock: FrozenDateTimeFactory) -> None:
    """The same for `async with` and acall around acall_with_fallback / acall."""
    breaker = make(failure_rate=None)

    async def down() -> None:
        refused()

    async def caught() -> str:
        clock.tick(0.001)
        return await breaker.acall_with_fallback(down, lambda: "fallback")

    async def raised() -> None:
        await breaker.acall(down)

    with pytest.raises(redis.ConnectionError):
        await breaker.acall(raised)
    assert breaker.stats().consecutive_failures == 1
    with pytest.raises(redis.ConnectionError):
        async with breaker:
            await raised()
    assert breaker.stats().consecutive_failures == 2
    assert await breaker.acall(caught) == "fallback"
    assert breaker.stats().consecutive_failures == 3
    async with breaker:
        assert await caught() == "fallback"
    assert breaker.stats().consecutive_failures == 4
    with pytest.raises(redis.ConnectionError):
        await breaker.acall(raised)
    assert breaker.state is State.OPEN


@pytest.mark.parametrize("permits", [1, 2])
def test_a_nested_call_in_half_open_needs_a_second_trial_permit(
        clock: FrozenDateTimeFactory, permits: int) -> None:
    """As docs/engine.md says: with one permit the inner call is rejected, with two it closes."""
    breaker = make(failure_threshold=1, half_open_max_calls=permits)
    outer = guard(breaker)(lambda: breaker.call(ok))
    fail(breaker, 1)
    clock.tick(1)
    for _ in range(2):
        if permits == 1:
            with pytest.raises(BreakerOpenError):
                outer()
        else:
            assert outer() == "ok"
    assert breaker.state is (State.HALF_OPEN if permits == 1 else State.CLOSED)


def test_a_success_in_flight_in_another_thread_still_resets_the_count(
        clock: FrozenDateTimeFactory) -> None:
    """Only a failure counted in the call's own thread is kept from its success."""
    breaker = make(failure_rate=None)
    began, finish = threading.Event(), threading.Event()

    def slow_ok() -> str:
        began.set()
        finish.wait(10)
        return "ok"

    found: list[str] = []
    worker = threading.Thread(target=lambda: found.append(breaker.call(slow_ok)))
    worker.start()
    assert began.wait(10)
    clock.tick(0.001)
    fail(breaker, 3)
    finish.set()
    worker.join(10)
    assert found == ["ok"]
    assert breaker.stats().consecutive_failures == 0


def test_call_with_fallback_serves_the_failing_call(clock: FrozenDateTimeFactory) -> None:
    """The call that discovers the outage gets the fallback too, and non-outage errors propagate."""
    breaker = make()
    assert breaker.call_with_fallback(refused, lambda: "fallback") == "fallback"
    assert breaker.stats().consecutive_failures == 1
    with pytest.raises(ValueError, match="bad"):
        breaker.call_with_fallback(lambda: int("bad"), lambda: "fallback")


def test_reconfigure_keeps_the_state(clock: FrozenDateTimeFactory) -> None:
    """configure() swaps thresholds without closing an open breaker."""
    breaker = make()
    fail(breaker, 5)
    breaker.configure(BreakerConfig(probe=False, failure_threshold=1, window=5.0))
    assert breaker.state is State.OPEN
    assert breaker.config.failure_threshold == 1


def test_totals_count_every_success_across_buckets_and_outages(
        clock: FrozenDateTimeFactory) -> None:
    """The success total for metrics is exact whichever path recorded each success."""
    breaker = make(window=1.0)
    for _ in range(7):
        breaker.call(ok)
        clock.tick(0.35)  # across the window's buckets, and out of the window
    with breaker:
        pass
    assert breaker.call_with_fallback(ok, lambda: "fallback") == "ok"
    fail(breaker, 5)
    clock.tick(1)
    breaker.call(ok)  # two trials close it: the window is cleared
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    assert breaker.totals().successes == 7 + 1 + 1 + 3
