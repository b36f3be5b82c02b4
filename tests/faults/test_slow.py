"""Slow: Redis answers, but late (``DEBUG SLEEP`` back to back). A grey failure.

With ``SLOW_CALL_THRESHOLD`` a call that succeeds after the threshold counts
as a failure, so slow calls trip the breaker; the callers still get their
results. The clock runs (ticking freezegun) so that call durations are real.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import RedisServer

from .conftest import Stack, build_stack, frozen_clock, running_server

THRESHOLD = 0.03
SLEEP = 0.2  # a call waits one sleep at most: well under the 0.5 s socket timeout


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
    yield from build_stack(settings, server, clock, SLOW_CALL_THRESHOLD=THRESHOLD,
                           RESET_TIMEOUT=30.0, MAX_RESET_TIMEOUT=60.0)


class Sleeper(threading.Thread):
    """Keeps Redis busy in DEBUG SLEEP, one after the other, until stopped."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(daemon=True, name="faults-debug-sleep")
        self.client = server.client(socket_timeout=5)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.client.execute_command("DEBUG", "SLEEP", SLEEP)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        self.client.close()


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
