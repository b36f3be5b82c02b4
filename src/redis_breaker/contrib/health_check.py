"""A django-health-check (4.x) check reporting every breaker.

    from health_check.views import HealthCheckView

    path("ht/", HealthCheckView.as_view(checks=[
        "health_check.checks.Database",
        "redis_breaker.contrib.health_check.RedisBreakerCheck",
    ]))

Open or forced open: unavailable. Half-open: a warning (Redis answered a
probe, trial calls are running). The Celery outbox holding rows marked failed:
a warning. The state is the host's, whichever process runs the check.
Messages carry breaker names, reasons and errors with passwords removed,
never a URL.
"""

from __future__ import annotations

import dataclasses

from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from redis_breaker._breaker import Breaker
from redis_breaker._state import State
from redis_breaker.health import celery_outbox, status_breaker, status_breakers

__all__ = ["RedisBreakerCheck"]


@dataclasses.dataclass
class RedisBreakerCheck(HealthCheck):  # type: ignore[misc]
    """Fails while a breaker is open; ``breaker`` limits the check to one name."""

    breaker: str | None = None

    def run(self) -> None:
        if self.breaker:
            one, error = status_breaker(self.breaker)
            breakers = [] if one is None else [one]
            unusable = {} if error is None else {self.breaker: error}
        else:
            found, unusable = status_breakers()
            breakers = list(found.values())
        down = [f"breaker {name!r} cannot be used: {error}"
                for name, error in sorted(unusable.items())]
        warnings = []
        for b in sorted(breakers, key=lambda b: b.name):
            state = b.state
            if state in (State.OPEN, State.FORCED_OPEN):
                down.append(f"breaker {b.name!r} is {state.value}{_why(b)}")
            elif state is State.HALF_OPEN:
                warnings.append(f"breaker {b.name!r} is half-open: Redis is coming back")
        if down:
            raise ServiceUnavailable("; ".join(down))
        failed = _failed_outbox_rows()
        if failed:
            warnings.append(f"{failed} Celery outbox message(s) failed; see `manage.py redis_breaker status`")
        if warnings:
            raise ServiceWarning("; ".join(warnings))


def _why(b: Breaker) -> str:
    """`` (reason; last error: ...)`` of the breaker's last transition, or nothing."""
    try:
        change = b.last_change
        error = b.stats().last_error
    except Exception:  # the state is known; the details are a bonus
        return ""
    return f" ({change.reason}; last error: {error})" if change else ""


def _failed_outbox_rows() -> int:
    outbox = celery_outbox()
    if outbox is None:
        return 0
    return int(outbox.outbox_status().get("failed") or 0)
