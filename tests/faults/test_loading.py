"""LOADING: Redis restarted and still loading its dataset answers ``-LOADING`` to everything.

redis-py raises ``BusyLoadingError``, a ``ConnectionError`` subclass (counted);
kombu wraps it in ``OperationalError`` (counted by the Redis error it wraps).
The dataset it loads holds the pre-fault value of the key written during the
outage: the journal must delete it before Redis serves that key again.
``key-load-delay`` (a Redis testing setting) makes the load last seconds.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.harness import RedisServer

from .conftest import Stack, build_stack, running_server, wait_for

KEYS = 60_000
DELAY_US = 100  # per key: about six seconds of LOADING


@pytest.fixture
def server() -> Iterator[RedisServer]:
    yield from running_server(extra_args=("--enable-debug-command", "local",
                                          "--loading-process-events-interval-bytes", "1024"))


@pytest.fixture
def stack(settings: Any, server: RedisServer, clock: Any, transactional_db: None
          ) -> Iterator[Stack]:
    yield from build_stack(settings, server, clock)


def answers_loading(server: RedisServer) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"-LOADING")
    except OSError:
        return False


def test_loading_after_restart(stack: Stack) -> None:
    """Restarted with a big dataset: LOADING trips it, the load ends, everything is handed back."""
    stack.warm_up()
    admin = stack.server.client()
    admin.execute_command("DEBUG", "POPULATE", KEYS, "filler")
    admin.config_set("key-load-delay", DELAY_US)  # saved in no file: passed again below
    admin.close()
    stack.fault_begins()
    stack.server.stop(save=True)
    stack.server.extra_args = (*stack.server.extra_args, "--key-load-delay", str(DELAY_US))
    starting = threading.Thread(target=lambda: stack.server.start(timeout=60), daemon=True)
    starting.start()
    try:
        wait_for(lambda: answers_loading(stack.server), "Redis to answer LOADING")
        client = stack.server.client()
        with pytest.raises(redis.exceptions.BusyLoadingError):
            client.get("any")
        client.close()
        stack.discover()
        assert "BusyLoadingError" in (stack.breaker.stats().last_error or "")
        stack.assert_open_skips_redis()
        assert answers_loading(stack.server), "the load ended too soon for the test to mean much"
    finally:
        starting.join(60)
    assert stack.server.ping()
    stack.recover()
    stack.assert_kept()
