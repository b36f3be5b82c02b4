"""Helpers for your own tests: capture redis-breaker's events, force a breaker's state.

```python
from redis_breaker.testing import capture_events, forced_open

def test_view_survives_an_outage(client):
    with forced_open("default"), capture_events() as events:
        assert client.get("/").status_code == 200
    assert events[0]["event"] == "fallback_used"
```
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ._breaker import Breaker
from ._events import capture
from ._registry import get_breaker, reset_breakers

__all__ = ["capture_events", "forced_open", "reset_breakers"]


def capture_events() -> contextlib.AbstractContextManager[list[dict[str, Any]]]:
    """Collect the events redis-breaker emits inside a ``with`` block, as dicts.

    Each dict has ``event``, ``log_level`` and the event's fields::

        with capture_events() as events:
            ...
        assert events[0]["to_state"] == "open"
    """
    return capture()


@contextlib.contextmanager
def forced_open(breaker: str | Breaker = "default") -> Iterator[Breaker]:
    """Force a breaker open for the block, then reset it to closed."""
    b = breaker if isinstance(breaker, Breaker) else get_breaker(breaker)
    b.force_open("forced by test")
    try:
        yield b
    finally:
        b.reset("test block ended")
