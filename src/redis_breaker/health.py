"""Health checks for load balancers, dashboards and the ``redis_breaker status`` command."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from types import ModuleType
from typing import Any

from ._breaker import Breaker
from ._errors import BreakerOpenError
from ._probe import ping_url
from ._registry import all_breakers, get_breaker
from ._state import State

__all__ = ["celery_outbox", "check_redis_health", "get_redis_status", "outbox_status"]


def _ping(b: Breaker, timeout: float) -> float | None:
    """PING the breaker's Redis through the breaker; latency in ms, or None."""
    url = b.url
    if url is None or b.is_open:
        return None
    started = time.perf_counter()
    try:
        # Through the breaker: a failed health check is evidence of an outage,
        # and an open breaker answers at once instead of waiting on a timeout.
        b.call(ping_url, url, timeout)
    except BreakerOpenError:
        return None
    except Exception as exc:
        if not b.counts(exc):
            raise
        return None
    return (time.perf_counter() - started) * 1000.0


def check_redis_health(breaker: str = "default", timeout: float = 0.2) -> bool:
    """True when the breaker is closed and its Redis answers a PING within ``timeout``.

    A breaker with no URL (none configured, none adopted from an integration)
    cannot be pinged; it is healthy while closed.
    """
    b = get_breaker(breaker)
    if b.is_open:
        return False
    if b.url is None:
        return b.state in (State.CLOSED, State.DISABLED)
    return _ping(b, timeout) is not None


def celery_outbox() -> ModuleType | None:
    """``redis_breaker.celery.outbox``, or None when Celery is not installed.

    The one place that asks: the status, the metrics, the health-check plugin,
    the management command, the system checks and the app's ``ready()`` call it
    rather than import Celery themselves.
    """
    try:
        from .celery import outbox
    except ImportError:
        return None
    return outbox


def outbox_status() -> dict[str, Any] | None:
    """The Celery outbox's counts when the outbox is installed and its table exists."""
    outbox = celery_outbox()
    if outbox is None:
        return None
    from django.db import DatabaseError

    try:
        result: dict[str, Any] = dict(outbox.outbox_status())
    except DatabaseError:
        return None
    if result.get("pending") is None and result.get("error"):
        return None  # the outbox's table does not exist here (migrations not applied)
    return result


def _wall(since_monotonic_age: float) -> str:
    at = datetime.now(timezone.utc).timestamp() - since_monotonic_age
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def get_redis_status(timeout: float = 0.2, *, ping: bool = True) -> dict[str, Any]:
    """Per breaker: state, why, since, failures, last error (no credentials), PING latency or None."""
    breakers: dict[str, Any] = {}
    for name, b in sorted(all_breakers().items()):
        latency = _ping(b, timeout) if ping else None
        stats = b.stats()
        change = getattr(b, "last_change", None)
        breakers[name] = {
            "state": stats.state.value,
            "reason": change.reason if change is not None else None,
            "since": _wall(stats.in_state_for_s),
            "in_state_for_s": round(stats.in_state_for_s, 3),
            "failures": stats.consecutive_failures,
            "last_error": stats.last_error,
            "latency_ms": None if latency is None else round(latency, 3),
            "fallback_calls": stats.fallback_calls,
            "url": stats.url,
            "last_transition": None if change is None else {
                "from": change.from_state.value, "to": change.to_state.value,
                "reason": change.reason,
                "at": _wall(max(0.0, stats.since + stats.in_state_for_s - change.at)),
            },
        }
    status: dict[str, Any] = {
        "healthy": not any(State(v["state"]).rejects for v in breakers.values()),
        "breakers": breakers,
    }
    outbox = outbox_status()
    if outbox is not None:
        status["outbox"] = outbox
    return status
