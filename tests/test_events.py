"""Log events reach stdlib logging (Django's LOGGING) and structlog, never with a password."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
import structlog

from redis_breaker import Breaker, BreakerConfig
from redis_breaker._redact import redact
from redis_breaker.testing import capture_events

SECRET = "hunter2"


def trip(breaker: Breaker) -> None:
    def refused() -> None:
        raise redis.ConnectionError(f"Error connecting to redis://app:{SECRET}@db:6379/0")

    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(redis.ConnectionError):
            breaker.call(refused)


def test_transition_reaches_stdlib_handlers(caplog: pytest.LogCaptureFixture) -> None:
    """Without structlog configured, the event is a stdlib record with the fields as extra."""
    breaker = Breaker("logs", BreakerConfig(probe=False, url=f"redis://:{SECRET}@db:6379/0"))
    with caplog.at_level(logging.INFO, logger="redis_breaker"):
        trip(breaker)
    (record,) = [r for r in caplog.records if r.name == "redis_breaker"]
    assert record.levelno == logging.ERROR
    assert record.event == "breaker_state_changed"  # type: ignore[attr-defined]
    assert record.to_state == "open"  # type: ignore[attr-defined]
    assert record.reason == "5 consecutive failures"  # type: ignore[attr-defined]
    assert "breaker=logs" in record.getMessage()
    assert SECRET not in caplog.text
    assert SECRET not in repr(record.__dict__)


@pytest.fixture
def structlog_configured() -> Iterator[list[dict[str, object]]]:
    seen: list[dict[str, object]] = []

    def keep(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
        seen.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[structlog.processors.add_log_level, keep])
    try:
        yield seen
    finally:
        structlog.reset_defaults()


def test_transition_goes_through_structlog_when_configured(
    structlog_configured: list[dict[str, object]],
) -> None:
    """An application that configured structlog gets the event through its own pipeline."""
    breaker = Breaker("logs", BreakerConfig(probe=False))
    trip(breaker)
    (event,) = structlog_configured
    assert event["event"] == "breaker_state_changed"
    assert event["level"] == "error"
    assert event["breaker"] == "logs"
    assert SECRET not in repr(event)


def test_capture_events_collects_dicts() -> None:
    """capture_events() hands users the events as dicts for their own assertions."""
    breaker = Breaker("logs", BreakerConfig(probe=False))
    with capture_events() as events:
        trip(breaker)
    assert events[0]["event"] == "breaker_state_changed"
    assert events[0]["log_level"] == "error"
    assert events[0]["breaker"] == "logs"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:pw@h:6379", "rediss://***:***@h:6379"),
        ("redis://token@h", "redis://***@h"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("{'password': 'pw', 'host': 'h'}", "{'password': '***', 'host': 'h'}"),
        ("password=pw host=h", "password=*** host=h"),
        ("sentinel://:pw@a:26379;sentinel://:pw@b:26379", "sentinel://:***@a:26379;sentinel://:***@b:26379"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    """Credentials in URLs and password pairs are masked, the rest is kept."""
    assert redact(text) == expected
