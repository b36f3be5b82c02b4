"""A real Sentinel setup per test: a master, a replica and three sentinels on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness import RedisNotInstalled, RedisSentinelCluster

#: Fast breakers: probe every 50 ms up to 0.5 s, no rate tripping, so recovery
#: follows the failover closely.
FAST = {"RESET_TIMEOUT": 0.05, "MAX_RESET_TIMEOUT": 0.5, "FAILURE_RATE": None,
        "PROBE_TIMEOUT": 0.5}
SOCKET_TIMEOUT = 0.5


@pytest.fixture
def sentinel_cluster() -> Iterator[RedisSentinelCluster]:
    """Started and agreed on its master; torn down after the test."""
    try:
        cluster = RedisSentinelCluster()
    except RedisNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
             between: Callable[[], object] | None = None) -> None:
    """Poll a real-server condition with a generous deadline (a loaded machine fails over slowly)."""
    # Real time, also inside a test that freezes the breaker's clock with freezegun.
    deadline = time.clock_gettime(time.CLOCK_MONOTONIC) + timeout
    while time.clock_gettime(time.CLOCK_MONOTONIC) < deadline:
        if predicate():
            return
        if between is not None:
            between()
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")
