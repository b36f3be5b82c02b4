"""Fixtures shared by every test module: a real redis-server, clean breakers."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from redis_breaker import _background, _breaker, _registry, _shared
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
    _retire_breakers()
    _registry._breakers.clear()


def _retire_breakers() -> None:
    """Leave no breaker of a finished test able to act in the next one.

    A breaker outlives its test while anything refers to it (a guarded client,
    a cache the test made), and so does a cache journal's replay thread, which
    waits while the breaker is open. Closing the breaker then would let that
    thread (or the journal's listener) replay into the test's dead server,
    reopen the breaker and leave its probe polling that port, until a later
    test's server reuses the port and receives the replay. So: journals are
    emptied (their threads end), recovery passes under way finish, every
    breaker's own listeners are dropped, then the breaker is closed (its probe
    stops).
    """
    from redis_breaker.cache import journal

    for per_breaker in list(journal._journals.values()):
        for each in list(per_breaker.values()):
            each.active = False
    for job in list(_background._JOBS):
        job.join(5)
    for breaker in _breaker.all_instances():
        events = breaker._events
        for listener in events.listeners:
            events.remove_listener(listener)
        for pb_listener in list(events.pybreaker.listeners):
            events.remove_listener(pb_listener)
        breaker.reset("test over")


#: redis-py before 5.1 leaves the socket of a failed unix-socket connect open (its
#: UnixDomainSocketConnection._connect does not close it): for tests that make such
#: connects on purpose, with the ``collect_leaked_sockets`` fixture.
UNCLOSED_UNIX_SOCKETS = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket fd=[0-9]+, family=AddressFamily.AF_UNIX"
    ":pytest.PytestUnraisableExceptionWarning")


def _redis_py_leaks_unix_sockets() -> bool:
    import redis

    try:
        major, minor = (int(part) for part in redis.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (5, 1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With redis-py before 5.1, such a socket may stay referenced past its test (by an
    error a breaker keeps as its last one) and be collected in any later test: there the
    warning is redis-py's, in every test. Later releases close it; their runs still
    report every unclosed socket."""
    if _redis_py_leaks_unix_sockets():
        for item in items:
            item.add_marker(UNCLOSED_UNIX_SOCKETS)


@pytest.fixture
def collect_leaked_sockets() -> Iterator[None]:
    """Collect after the test, so sockets it leaked are reported (or ignored) in it."""
    yield
    gc.collect()


def pytest_report_header() -> list[str]:
    return [f"root: {os.geteuid() == 0}"]
