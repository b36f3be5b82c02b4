"""Flapping: Redis down and up every 1-2 s (stopped, then hung, in turn) under threaded load.

Four threads make requests (a cache write and read of their own keys, a task,
a group message) for about 40 s while Redis flaps. No caller sees an error, no
read returns anything but the thread's last write or a miss, and once Redis
stays up every task dispatched reaches the broker. The clock ticks at real
speed here: the flapping is real time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from redis_breaker import Breaker, BreakerConfig, State
from tests.celery.conftest import (  # noqa: F401 - the outbox on SQLite and on PostgreSQL
    _outbox_database,
    outbox_db,
    postgres_db,
    postgres_server,
)
from tests.celery.databases import outbox_alias
from tests.harness import RedisServer, wait_until
from tests.harness.hostproc import make_client

from .conftest import GROUP, TASK, Stack, build_stack, frozen_clock, queued_ids

FLAP_SECONDS = 40.0
#: With the outbox on PostgreSQL (its second run), half as long: the same churn, fewer flaps.
FLAP_SECONDS_POSTGRES = 20.0
THREADS = 4


@pytest.fixture
def clock() -> Iterator[Any]:
    yield from frozen_clock(tick=True)


@pytest.fixture
def stack(settings: Any, redis_server: RedisServer, clock: Any, transactional_db: None
          ) -> Iterator[Stack]:
    yield from build_stack(settings, redis_server, clock)


@pytest.mark.usefixtures("outbox_db")
@pytest.mark.timeout(300)  # 40 s of flapping, then thousands of rows relayed at the machine's pace
def test_flapping_under_load(stack: Stack) -> None:
    """About 40 s of flapping under four threads: no error, no stale read, no task lost.

    Once with the outbox on SQLite, once (20 s) on PostgreSQL: four threads write outbox
    rows while relays claim and delete them.
    """
    stack.warm_up()
    stack.fault_begins()
    stop = threading.Event()
    errors: list[str] = []
    stale: list[str] = []
    dispatched: list[str] = []
    lock = threading.Lock()

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        last: dict[str, Any] = {}
        n = 0
        while not stop.is_set():
            n += 1
            key = f"flap:{tid}:{rng.randrange(5)}"
            try:
                stack.cache.set(key, n)
                last[key] = n
                other = f"flap:{tid}:{rng.randrange(5)}"
                got = stack.cache.get(other)
                if got is not None and got != last.get(other):
                    stale.append(f"{other}: read {got!r}, last written {last.get(other)!r}")
                result = stack.app.tasks[TASK].delay(n)
                with lock:
                    dispatched.append(result.id)
                stack.loop.run(stack.layer.group_send(GROUP, {"type": "fault.message", "n": 0}))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)

    def run_worker(tid: int) -> None:
        from django.db import connections

        try:
            worker(tid)
        finally:
            connections.close_all()

    faults: list[str] = []
    flapper = threading.Thread(
        target=stack.server.flap, args=(stop, lambda e: faults.append(e) if e != "up" else None),
        daemon=True)
    threads = [threading.Thread(target=run_worker, args=(i,)) for i in range(THREADS)]
    for t in [flapper, *threads]:
        t.start()
    time.sleep(FLAP_SECONDS if outbox_alias() == "default" else FLAP_SECONDS_POSTGRES)
    stop.set()
    for t in [flapper, *threads]:
        t.join(30)
    if not stack.server.running:
        stack.server.start()
    if stack.server.frozen:
        stack.server.thaw()

    assert errors == []
    assert stale == []
    assert len(faults) >= 8
    totals = stack.breaker.totals()
    assert totals.transitions.get(("closed", "open"), 0) >= 2, totals.transitions
    assert set(totals.fallbacks) == {"cache", "celery", "channels"}
    if stack.breaker.state is not State.CLOSED:
        stack.recover()
    stack.settle()
    ids = set(queued_ids(stack.server))
    missing = [i for i in dispatched if i not in ids]
    assert missing == [], f"{len(missing)} of {len(dispatched)} tasks never reached Redis"
    assert not stack.cache._bind().journal.active


FLAP_MINUTE = 60.0


def most_trips(config: BreakerConfig, seconds: float) -> int:
    """The most trips the backoff allows in ``seconds`` of flapping.

    No recovery holds WINDOW seconds, so every trip comes within WINDOW of the
    last close and adds a step: trip k is followed by at least the open interval
    of step k (its lowest jitter, 0.8), whatever Redis does meanwhile.
    """
    trips, elapsed = 1, 0.0
    while True:
        elapsed += 0.8 * min(config.max_reset_timeout, config.reset_timeout * 2 ** (trips - 1))
        if elapsed > seconds:
            return trips
        trips += 1


@pytest.mark.timeout(240)
def test_a_minute_of_flapping_trips_a_few_times(redis_server: RedisServer) -> None:
    """Redis 1 s up, 1 s down (stopped, then hung, in turn) for a minute, traffic from a
    thread through call_with_fallback: no caller sees an error, and the backoff keeps the
    close->open cycles to a handful (an undamped breaker would cycle about 30 times)."""
    config = BreakerConfig(url=redis_server.url)
    assert config.window < 2 * FLAP_MINUTE  # no recovery outlasts it: steps only add up
    breaker = Breaker("flap-minute", config)
    client = make_client(redis_server.url)
    stop = threading.Event()
    errors: list[str] = []
    outcomes = {"redis": 0, "fallback": 0}
    fallback = object()

    def traffic() -> None:
        while not stop.is_set():
            try:
                got = breaker.call_with_fallback(client.get, lambda _key: fallback, ("flap",))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            else:
                outcomes["fallback" if got is fallback else "redis"] += 1
            time.sleep(0.01)

    faults: list[str] = []
    flapper = threading.Thread(target=redis_server.flap, args=(stop, faults.append),
                               kwargs={"period": (1.0, 1.0)}, daemon=True)
    caller = threading.Thread(target=traffic, daemon=True)
    try:
        caller.start()
        flapper.start()
        time.sleep(FLAP_MINUTE)
    finally:
        stop.set()
        flapper.join(30)
        caller.join(30)
        if not redis_server.running:
            redis_server.start()
        if redis_server.frozen:
            redis_server.thaw()
    transitions = breaker.totals().transitions
    trips = transitions.get(("closed", "open"), 0)
    bound = most_trips(config, FLAP_MINUTE + 5.0)
    print(f"\n{faults.count('refused')} stops and {faults.count('hung')} hangs in "
          f"{FLAP_MINUTE:g}s: {trips} close->open cycles (the backoff allows {bound}), "
          f"{transitions.get(('half_open', 'open'), 0)} failed half-opens, calls {outcomes}")
    assert errors == []
    assert faults.count("refused") + faults.count("hung") >= 20
    assert outcomes["redis"] > 0
    assert outcomes["fallback"] > 0
    assert 2 <= trips <= bound, transitions
    # Redis stays up now: the breaker closes once its (longest) open interval is over.
    assert wait_until(lambda: breaker.state is State.CLOSED,
                      config.max_reset_timeout + 30.0), breaker.stats()
    assert breaker.call(client.get, "flap") is None
    client.close()
