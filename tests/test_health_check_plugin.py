"""The django-health-check plugin reports open breakers as unavailable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis
from freezegun import freeze_time
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from redis_breaker import BreakerConfig, State, get_breaker
from redis_breaker.contrib.health_check import RedisBreakerCheck

pytestmark = pytest.mark.django_db


def test_all_closed_is_healthy() -> None:
    """With every breaker closed, the check passes."""
    get_breaker("hc")
    RedisBreakerCheck().run()


def test_open_breaker_is_unavailable_without_credentials() -> None:
    """An open breaker makes the check fail, naming breaker and reason, never the password."""
    breaker = get_breaker("hc")
    breaker.configure(BreakerConfig(probe=False, url="redis://:hunter2@h:6379/0", failure_threshold=1))

    def refused() -> None:
        raise redis.ConnectionError("Error connecting to redis://:hunter2@h:6379/0")

    with pytest.raises(redis.ConnectionError):
        breaker.call(refused)
    with pytest.raises(ServiceUnavailable) as info:
        RedisBreakerCheck().run()
    assert "'hc' is open" in str(info.value)
    assert "1 consecutive failures" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(RedisBreakerCheck(breaker="hc"))


def test_half_open_is_a_warning() -> None:
    """A half-open breaker (one trial succeeded, one to go) is a warning, not an outage."""
    breaker = get_breaker("hc")
    breaker.configure(BreakerConfig(probe=False, failure_threshold=1))

    def refused() -> None:
        raise redis.ConnectionError("down")

    with freeze_time("2026-01-01") as clock:
        with pytest.raises(redis.ConnectionError):
            breaker.call(refused)
        clock.tick(1)
        breaker.call(lambda: None)  # the first of two trial calls
        assert breaker.state is State.HALF_OPEN
        with pytest.raises(ServiceWarning, match="half-open"):
            RedisBreakerCheck(breaker="hc").run()


def test_runs_through_the_plugin_machinery() -> None:
    """get_result() (what HealthCheckView calls) reports the open breaker as an error."""
    breaker = get_breaker("hc")
    breaker.force_open()
    result = asyncio.run(RedisBreakerCheck(breaker="hc").get_result())
    assert isinstance(result.error, ServiceUnavailable)


def test_reports_a_breaker_another_process_opened(settings: Any, tmp_path: Path) -> None:
    """The state is the host's: a breaker forced open elsewhere fails the check here."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    url = "redis://127.0.0.1:6399/0"
    settings.REDIS_BREAKERS = {"hc": {"URL": url, "STATE_DIR": str(state_dir)}}
    RedisBreakerCheck(breaker="hc").run()
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from redis_breaker import Breaker, BreakerConfig
        b = Breaker("hc", BreakerConfig(url={url!r}, state_dir={str(state_dir)!r}, probe=False))
        b.force_open("maintenance")
    """)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with pytest.raises(ServiceUnavailable, match=r"'hc' is forced_open \(maintenance"):
        RedisBreakerCheck(breaker="hc").run()
    with pytest.raises(ServiceUnavailable, match="'hc' is forced_open"):
        RedisBreakerCheck().run()
