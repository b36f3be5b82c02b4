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

from redis_breaker import State
from tests.harness import RedisServer

from .conftest import GROUP, TASK, Stack, build_stack, frozen_clock, queued_ids

FLAP_SECONDS = 40.0
THREADS = 4


@pytest.fixture
def clock() -> Iterator[Any]:
    yield from frozen_clock(tick=True)


@pytest.fixture
def stack(settings: Any, redis_server: RedisServer, clock: Any, transactional_db: None
          ) -> Iterator[Stack]:
    yield from build_stack(settings, redis_server, clock)


def test_flapping_under_load(stack: Stack) -> None:
    """About 40 s of flapping under four threads: no error, no stale read, no task lost."""
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
    time.sleep(FLAP_SECONDS)
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
