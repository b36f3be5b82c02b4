"""Host-wide state, in one process: two breakers on one state file behave as two processes do.

Two ``Breaker`` objects with the same name, URL and state directory map the
same file and lock it through file descriptions of their own, exactly as two
processes do; the real-process tests are in ``test_host_shared.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, State, StateChange, _shared
from redis_breaker._breaker import FOLLOW_EVERY_S, LEASE_S, REPLACED_CHECK_EVERY_S
from redis_breaker.testing import capture_events
from tests.harness import RedisServer

URL = "redis://127.0.0.1:1/0"


def refused() -> None:
    raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


def ok() -> str:
    return "ok"


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time("2026-01-01 00:00:00") as frozen:
        yield frozen


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return str(path)


def pair(state_dir: str, **overrides: Any) -> tuple[Breaker, Breaker]:
    overrides.setdefault("url", URL)
    overrides.setdefault("probe", False)
    config = BreakerConfig(state_dir=state_dir, **overrides)
    first, second = Breaker("s", config), Breaker("s", config)
    assert first.host_shared
    assert second.host_shared
    assert first.state_file == second.state_file
    return first, second


def trip(breaker: Breaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(redis.ConnectionError):
            breaker.call(refused)


def test_one_discovery_opens_the_breaker_everywhere(state_dir: str) -> None:
    """A trip in one opens the other: its next call is rejected without running."""
    first, second = pair(state_dir)
    heard: list[StateChange] = []
    second.add_listener(heard.append)
    with capture_events() as events:
        trip(first)
        ran: list[int] = []
        with pytest.raises(BreakerOpenError):
            second.call(lambda: ran.append(1))
    assert ran == []
    assert second.state is State.OPEN
    # Logged once, by the process that made the transition; the other one's
    # listeners still hear of it.
    assert [e["to_state"] for e in events if e["event"] == "breaker_state_changed"] == ["open"]
    assert [(c.to_state, c.remote) for c in heard] == [(State.OPEN, True)]
    assert heard[0].reason == "5 consecutive failures"
    assert "Connection refused" in (heard[0].last_error or "")


def test_consecutive_failures_add_up_across_processes(state_dir: str) -> None:
    """Five failures spread over two processes trip the breaker, as five in one would."""
    first, second = pair(state_dir, failure_rate=None)
    for breaker in (first, second, first, second):
        with pytest.raises(redis.ConnectionError):
            breaker.call(refused)
    assert first.stats().consecutive_failures == 4
    with pytest.raises(redis.ConnectionError):
        second.call(refused)
    assert first.state is State.OPEN
    assert second.state is State.OPEN


def test_a_success_anywhere_resets_the_consecutive_count(state_dir: str) -> None:
    first, second = pair(state_dir, failure_rate=None)
    for _ in range(4):
        with pytest.raises(redis.ConnectionError):
            first.call(refused)
    assert second.call(ok) == "ok"
    assert first.stats().consecutive_failures == 0
    for _ in range(4):
        with pytest.raises(redis.ConnectionError):
            first.call(refused)
    assert first.state is State.CLOSED


def test_a_failure_while_closed_writes_only_the_count(state_dir: str) -> None:
    """A counted failure that trips nothing changes the consecutive count and the hot word;
    every other byte of the record but the last error (the backoff step a flapping Redis
    built up, the times of the last transitions, the last change) stays as the last
    transition left it."""
    first, second = pair(state_dir, failure_rate=None)
    trip(first)
    first.reset()  # a transition: the section writes the whole record
    path = first.state_file
    assert path is not None
    before = Path(path).read_bytes()
    with pytest.raises(redis.ConnectionError):
        second.call(refused)
    after = Path(path).read_bytes()
    changed = {i // 8 for i in range(len(before)) if before[i] != after[i]}
    start, size = _shared.ERROR_TEXT
    error = {_shared.ERR_LEN, *range(start // 8, (start + size) // 8)}  # reset cleared it
    assert changed - error == {_shared.HOT, _shared.CONSEC}, changed
    assert first.last_change is not None
    assert first.last_change.to_state is State.CLOSED
    assert first.stats().consecutive_failures == 1


def test_a_transition_elsewhere_between_two_failures_is_not_missed(state_dir: str) -> None:
    """Another process's reset (closed to closed: only the generation tells) zeroes the
    count this process goes on from, and its force_open is seen by the next failure."""
    first, second = pair(state_dir, failure_rate=None)
    for _ in range(4):
        with pytest.raises(redis.ConnectionError):
            first.call(refused)
    second.reset()
    for _ in range(4):
        with pytest.raises(redis.ConnectionError):
            first.call(refused)
    assert first.state is State.CLOSED
    assert second.stats().consecutive_failures == 4
    second.force_open("maintenance")
    with pytest.raises(BreakerOpenError):
        first.call(refused)
    assert first.state is State.FORCED_OPEN
    second.reset()
    with pytest.raises(redis.ConnectionError):
        first.call(refused)
    assert second.stats().consecutive_failures == 1


def test_a_reset_elsewhere_clears_this_process_failure_window(state_dir: str) -> None:
    """The failure-rate window is each process's own; another process's reset (closed to
    closed: only the new generation tells) clears it, so old failures cannot trip it."""
    first, second = pair(state_dir, failure_rate=0.5, minimum_calls=4, failure_threshold=100)
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            first.call(refused)
    second.reset()
    with pytest.raises(redis.ConnectionError):
        first.call(refused)
    assert first.state is State.CLOSED
    assert first.stats().window_calls == 1


def test_half_open_permits_are_host_wide(state_dir: str, clock: FrozenDateTimeFactory) -> None:
    """While one process runs the trial call, the other is rejected."""
    first, second = pair(state_dir)
    trip(first)
    clock.tick(1)

    def trial() -> str:
        with pytest.raises(BreakerOpenError):
            second.call(ok)
        return "ok"

    assert first.call(trial) == "ok"
    assert first.state is State.HALF_OPEN
    assert second.call(ok) == "ok"
    assert first.state is State.CLOSED
    assert second.state is State.CLOSED


def test_reset_and_force_open_reach_every_process(state_dir: str) -> None:
    first, second = pair(state_dir)
    first.force_open("maintenance")
    with pytest.raises(BreakerOpenError):
        second.call(ok)
    assert second.last_change is not None
    assert second.last_change.reason == "maintenance"
    second.reset()
    assert first.call(ok) == "ok"
    assert first.state is State.CLOSED


def test_one_probe_per_host_and_the_lease_moves_when_it_lapses(
        state_dir: str, clock: FrozenDateTimeFactory) -> None:
    """The first to plan holds the lease and PINGs; the other follows the record."""
    first, second = pair(state_dir)
    trip(first)
    second.state  # noqa: B018 - catches up with the record
    assert first.probe_plan() == 0.0
    assert second.probe_plan() == FOLLOW_EVERY_S
    assert first.stats().probe_pid == os.getpid()
    # The holder stops renewing (its process hangs or died): the lease lapses.
    clock.tick(LEASE_S + first.config.probe_timeout + 0.01)
    assert second.probe_plan() == 0.0
    assert first.probe_plan() == FOLLOW_EVERY_S


def test_the_probe_closes_the_breaker_for_every_process(
        state_dir: str, clock: FrozenDateTimeFactory, redis_server: RedisServer) -> None:
    """A PING after the open interval, then two trial PINGs: closed, everywhere, no traffic."""
    first, second = pair(state_dir, url=redis_server.url)
    heard: list[StateChange] = []
    second.add_listener(heard.append)
    trip(first)
    assert second.state is State.OPEN
    clock.tick(first.config.reset_timeout)
    assert first.probe_now()  # PONG: half-open
    assert first.state is State.HALF_OPEN
    assert first.probe_now()
    clock.tick(first.config.probe_interval)
    assert first.probe_now()
    assert first.state is State.CLOSED
    assert second.state is State.CLOSED
    # The second process looked only twice: it hears open, then closed (the half-open
    # step in between happened while it was not looking).
    assert [c.to_state for c in heard] == [State.OPEN, State.CLOSED]
    assert all(c.remote for c in heard)
    assert heard[-1].open_for_s is not None


def test_a_failed_ping_does_not_back_off_detection(
        state_dir: str, clock: FrozenDateTimeFactory) -> None:
    """Whatever the outage's length, the next PING is one PROBE_INTERVAL away."""
    (breaker, _) = pair(state_dir, probe=True)
    trip(breaker)
    for _ in range(20):
        clock.tick(breaker.config.probe_interval * 1.2)
        assert breaker.probe_plan() == 0.0
        assert not breaker.probe_now()
        delay = breaker.probe_plan()
        assert delay is not None
        assert delay <= breaker.config.probe_interval * 1.2


def test_per_process_state_when_not_shared(state_dir: str) -> None:
    config = BreakerConfig(url=URL, probe=False, host_shared=False, state_dir=state_dir)
    first, second = Breaker("s", config), Breaker("s", config)
    assert not first.host_shared
    assert first.state_file is None
    trip(first)
    assert second.call(ok) == "ok"
    assert second.state is State.CLOSED
    assert os.listdir(state_dir) == []


def test_adopting_a_url_moves_to_that_urls_state(state_dir: str) -> None:
    """The state is keyed by name and URL; a forced state set before adoption carries over."""
    config = BreakerConfig(probe=False, state_dir=state_dir)
    early, other = Breaker("a", config), Breaker("a", config)
    early.force_open("before adoption")
    early.adopt_url(URL)
    other.adopt_url(URL)
    assert early.state_file == other.state_file
    assert other.state is State.FORCED_OPEN
    assert Breaker("a", config.replace(url="redis://127.0.0.1:2/0")).state is State.CLOSED


def test_a_corrupt_file_degrades_to_process_state(state_dir: str) -> None:
    """Garbage in the state file: one WARNING, the breaker works on its own."""
    path = Breaker("s", BreakerConfig(url=URL, probe=False, state_dir=state_dir)).state_file
    assert path is not None
    Path(path).write_bytes(b"\xff" * 4096)
    with capture_events() as events:
        breaker = Breaker("s", BreakerConfig(url=URL, probe=False, state_dir=state_dir))
        trip(breaker)
    assert not breaker.host_shared
    assert breaker.state is State.OPEN
    warnings = [e for e in events if e["event"] == "host_state_unavailable"]
    assert len(warnings) == 1
    assert "not a redis-breaker state file" in warnings[0]["error"]


def test_a_removed_state_file_is_noticed_and_the_host_shares_again(
        state_dir: str, clock: FrozenDateTimeFactory) -> None:
    """A temp cleaner removed the file under a running process: within a few seconds of
    activity it moves to the file the host's new processes use."""
    old, _ = pair(state_dir)
    path = old.state_file
    assert path is not None
    os.unlink(path)
    newcomer = Breaker("s", BreakerConfig(url=URL, probe=False, state_dir=state_dir))
    assert newcomer.state_file == path
    newcomer.force_open("maintenance")
    clock.tick(REPLACED_CHECK_EVERY_S + 1)
    old.stats()  # a locked section notices the removal, and the breaker moves over
    with pytest.raises(BreakerOpenError):
        old.call(ok)
    assert old.state is State.FORCED_OPEN
