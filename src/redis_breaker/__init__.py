"""redis-breaker: one shared circuit breaker per Redis endpoint."""

from __future__ import annotations

from typing import Any

from ._breaker import Breaker
from ._client import client
from ._config import BreakerConfig
from ._errors import BreakerOpenError
from ._guard import guard
from ._registry import all_breakers, get_breaker
from ._state import State, StateChange, Stats

__all__ = [
    "Breaker",
    "BreakerConfig",
    "BreakerOpenError",
    "State",
    "StateChange",
    "Stats",
    "all_breakers",
    "client",
    "get_breaker",
    "guard",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from ._version import __version__

        return __version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
