"""Fixtures shared by every test module: a real redis-server, clean breakers."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from redis_breaker import _registry, _shared
from tests.harness import RedisNotInstalled, RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port, torn down after the test."""
    try:
        server = RedisServer()
    except RedisNotInstalled as exc:
        # Never a silent skip: a suite without Redis shows nothing about outages.
        pytest.fail(str(exc), pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _fresh_registry(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no shared breakers, and host-wide state files of its own."""
    state_dir = str(tmp_path_factory.mktemp("state"))
    os.chmod(state_dir, 0o700)
    monkeypatch.setattr(_shared, "default_state_dir", lambda: state_dir)
    _registry._breakers.clear()
    yield
    for breaker in list(_registry._breakers.values()):
        breaker.reset()
    _registry._breakers.clear()


#: redis-py before 5.1 leaves the socket of a failed unix-socket connect open (its
#: UnixDomainSocketConnection._connect does not close it): for tests that make such
#: connects on purpose, with the ``collect_leaked_sockets`` fixture.
UNCLOSED_UNIX_SOCKETS = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket fd=[0-9]+, family=AddressFamily.AF_UNIX"
    ":pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def collect_leaked_sockets() -> Iterator[None]:
    """Collect after the test, so sockets it leaked are reported (or ignored) in it."""
    yield
    gc.collect()


def pytest_report_header() -> list[str]:
    return [f"root: {os.geteuid() == 0}"]
