"""Two BreakerChannelLayer instances on one real Redis, standing for two server processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest
from channels.layers import channel_layers

from redis_breaker import Breaker, BreakerConfig
from redis_breaker.channels import BreakerChannelLayer
from tests.harness import RedisServer

# Short timeouts so that a hung (SIGSTOP) Redis is found in well under a second.
SOCKET_TIMEOUT = 0.5


def fast_breaker(name: str) -> Breaker:
    """A breaker that probes often, so recovery in real-server tests takes a fraction of a second."""
    return Breaker(name, BreakerConfig(reset_timeout=0.05, max_reset_timeout=0.2,
                                       probe_timeout=0.25, failure_rate=None))


async def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether ``condition`` holds within ``timeout`` seconds (looked at every 50 ms)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return condition()


def hosts(server: RedisServer, timeout: float = SOCKET_TIMEOUT) -> list[dict[str, object]]:
    return [{"address": server.url, "socket_timeout": timeout,
             "socket_connect_timeout": timeout}]


@dataclass
class Process:
    """One simulated server process: its layer alias, layer and breaker."""

    alias: str
    layer: BreakerChannelLayer
    breaker: Breaker


@pytest.fixture
def make_process(redis_server: RedisServer) -> Iterator[object]:
    """Build Process objects whose layers are registered under their own alias."""
    made: list[Process] = []

    def make(alias: str, **config: object) -> Process:
        breaker = fast_breaker(alias)
        layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker, **config)
        channel_layers.set(alias, layer)
        process = Process(alias, layer, breaker)
        made.append(process)
        return process

    yield make
    for process in made:
        channel_layers.backends.pop(process.alias, None)
        process.breaker.reset()


@pytest.fixture
async def two_processes(make_process: object) -> AsyncIterator[tuple[Process, Process]]:
    """Processes "proc-a" and "proc-b", with their layers closed after the test."""
    a = make_process("proc-a")  # type: ignore[operator]
    b = make_process("proc-b")  # type: ignore[operator]
    yield a, b
    for process in (a, b):
        await process.layer.close()
