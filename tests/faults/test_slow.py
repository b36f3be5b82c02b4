"""Slow: Redis answers, but late (``DEBUG SLEEP`` back to back). A grey failure.

With ``SLOW_CALL_THRESHOLD`` a call that succeeds after the threshold counts
as a failure, so slow calls trip the breaker; the callers still get their
results. The clock runs (ticking freezegun) so that call durations are real.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import RedisServer

from .conftest import Stack, build_stack, frozen_clock, running_server

# The threshold is a deadline every healthy call must meet, trial calls included:
# 150 ms holds on a machine whose cores are busy with other work, where a healthy
# call was measured at 50 ms (a 30 ms threshold reopened the breaker in recovery).
THRESHOLD = 0.15
SLEEP = 0.4
# Slow, not timed out: an operation of several commands (a Celery publish) can
# meet a sleep on each, and the callers' sockets wait for all of them.
SOCKET_TIMEOUT = 2.0


@pytest.fixture
def clock() -> Iterator[Any]:
    yield from frozen_clock(tick=True)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    yield from running_server(extra_args=("--enable-debug-command", "local"))


@pytest.fixture
def stack(settings: Any, server: RedisServer, clock: Any, transactional_db: None
          ) -> Iterator[Stack]:
    # A long open interval: the probe waits for the test's tick, not for the clock to run.
    yield from build_stack(settings, server, clock, socket_timeout=SOCKET_TIMEOUT,
                           SLOW_CALL_THRESHOLD=THRESHOLD,
                           RESET_TIMEOUT=30.0, MAX_RESET_TIMEOUT=60.0)


class Sleeper:
    """Keeps Redis busy in DEBUG SLEEP, one after the other, until stopped.

    ``redis-cli`` in a process of its own sends the next sleep the moment the
    last one ends: a thread of the test process would first have to win the GIL
    from the callers, and on a busy machine callers then slip quick calls into
    the gap between two sleeps until the breaker can no longer trip.
    """

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start sleeping; return once Redis has answered a PING late.

        Starting ``redis-cli`` can take longer than the callers' whole discovery on
        a busy machine: they would meet a quick Redis.
        """
        self.process = subprocess.Popen(
            ["redis-cli", "-h", self.server.host, "-p", str(self.server.port), "-r", "-1",
             "DEBUG", "SLEEP", str(SLEEP)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.server.client(socket_timeout=SOCKET_TIMEOUT)
        try:
            for _ in range(500):
                began = time.perf_counter()
                client.ping()
                if time.perf_counter() - began >= THRESHOLD:
                    return
                assert self.process.poll() is None, "redis-cli ended"
                time.sleep(0.01)  # real time: the process starting, not the breaker's clock
            raise AssertionError("Redis never answered late: DEBUG SLEEP did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(10)
        # The sleep it was in finishes on the server's side: wait it out.
        assert self.server.ping(timeout=SLEEP + 1.0), "Redis still busy after the last sleep"


def test_slow_calls_trip_the_breaker(stack: Stack) -> None:
    """Slow calls from all three count as failures and open it; callers get results meanwhile."""
    stack.warm_up()
    stack.fault_begins()
    sleeper = Sleeper(stack.server)
    sleeper.start()
    try:
        # A call that arrives as one sleep ends is quick: not every call is slow.
        stack.discover(max_rounds=6)
        assert "slow-call threshold" in (stack.breaker.stats().last_error or "")
        stack.assert_open_skips_redis()
    finally:
        sleeper.stop()
    stack.recover()
    stack.assert_kept()
