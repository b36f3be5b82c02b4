"""A wrong password: Redis is up but refuses our credentials. A configuration error, loudly.

Decided in the engine (docs/engine.md): it counts (Redis is unusable to this
client, the fallbacks keep the application serving), and it is loud: one ERROR
``redis_misconfigured`` event per minute at most, and the open transition says
"authentication failed: a configuration error". Fixing the password is the
recovery.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from redis_breaker.testing import capture_events
from tests.harness import RedisServer

from .conftest import TASK, Stack, build_stack, running_server


@pytest.fixture
def server() -> Iterator[RedisServer]:
    yield from running_server(password="right")


@pytest.fixture
def stack(settings: Any, server: RedisServer, clock: Any, transactional_db: None
          ) -> Iterator[Stack]:
    yield from build_stack(settings, server, clock,
                           url=f"redis://:wrong@127.0.0.1:{server.port}/0")


def loud(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "redis_misconfigured"]


def test_wrong_password_is_loud_and_served_by_fallbacks(stack: Stack) -> None:
    """All three refused: one loud event, the breaker opens, fallbacks serve, fixed: handed back."""
    stack.member = stack.loop.run(stack.layer.new_channel())
    with capture_events() as events:
        stack.loop.run(stack.layer.group_add("room", stack.member))  # mirrored, rejoined later
        stack.fault_begins()
        stack.discover()
        stack.assert_open_skips_redis()
    assert len(loud(events)) == 1
    assert loud(events)[0]["log_level"] == "error"
    assert "check the password" in loud(events)[0]["hint"]
    opened = [e for e in events if e["event"] == "breaker_state_changed"]
    assert "authentication failed: a configuration error" in opened[0]["reason"]
    assert "wrong" not in repr(events)
    assert "right" not in repr(events)
    # The operator fixes it (here: the server takes the password the application has).
    admin = stack.server.client()
    admin.config_set("requirepass", "wrong")
    admin.close()
    stack.server.password = "wrong"
    stack.recover()
    stack.assert_kept()


def test_wrong_password_seen_only_by_celery_is_loud(stack: Stack) -> None:
    """A process that only dispatches tasks still says it is a configuration error
    (regression: kombu wraps AuthenticationError in OperationalError)."""
    with capture_events() as events:
        for n in range(5):
            stack.app.tasks[TASK].delay(n)
    assert stack.breaker.is_open
    assert len(loud(events)) == 1
    opened = [e for e in events if e["event"] == "breaker_state_changed"]
    assert "authentication failed" in opened[0]["reason"]
