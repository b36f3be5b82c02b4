"""The Celery integration's settings: one table for the runtime error and the system check.

A Celery app reads them from ``app.conf`` (``redis_breaker_fallback`` ...); a
Django project writes them with Celery's ``CELERY`` namespace
(``CELERY_REDIS_BREAKER_FALLBACK`` ...), where ``redis_breaker.E030`` to ``E035``
check them. Each row says which values it accepts, what the check reports and
what the runtime error says, so the two can never disagree about a value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis_breaker._config import MAX_SECONDS, MIN_SECONDS
from redis_breaker._redact import shown

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["BREAKER_NAME", "FALLBACK", "FALLBACKS", "ONCE", "ONCE_TTL", "RELAY_INTERVAL",
           "SETTINGS", "TIMEOUT", "CelerySetting"]

FALLBACKS = ("outbox", "sync", "raise")


@dataclass(frozen=True, slots=True)
class CelerySetting:
    """One ``CELERY_REDIS_BREAKER_*`` setting."""

    #: The Django setting; the Celery key is its lower-case tail (``redis_breaker_...``).
    name: str
    default: Any
    accepts: Callable[[Any], bool]
    #: The check's message ends "..., not <expected>."
    expected: str
    hint: str
    id: str
    #: The runtime error reads "<subject> must be <requirement>, not <value>".
    subject: str
    requirement: str

    @property
    def key(self) -> str:
        return self.name.removeprefix("CELERY_").lower()

    def read(self, app: Celery) -> Any:
        """The value ``app`` is configured with, or the default (unchecked)."""
        value = app.conf.get(self.key)
        return self.default if value is None else value

    def checked(self, value: Any) -> Any:
        """``value``, or ``ValueError`` when this setting does not accept it."""
        if not self.accepts(value):
            raise ValueError(f"{self.subject} must be {self.requirement}, not {value!r}")
        return value

    def problem(self, value: Any) -> str | None:
        """The check's message for ``value`` (None: unset or accepted)."""
        if value is None or self.accepts(value):
            return None
        return f"{self.name} is {shown(value)}, not {self.expected}."


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    # Finite and in range: an infinite or subnormal socket timeout cannot be given to a socket.
    return _seconds(value) and bool(MIN_SECONDS <= value <= MAX_SECONDS)


def _not_negative(value: Any) -> bool:
    # 0 turns the relay off; anything else is a finite interval a thread can wait.
    return _seconds(value) and (value == 0 or bool(MIN_SECONDS <= value <= MAX_SECONDS))


FALLBACK = CelerySetting(
    "CELERY_REDIS_BREAKER_FALLBACK", "outbox", lambda v: v in FALLBACKS,
    expected="a fallback policy",
    hint="Set CELERY_REDIS_BREAKER_FALLBACK to one of "
         f"{', '.join(repr(f) for f in FALLBACKS)} (default 'outbox').",
    id="redis_breaker.E030",
    # Also the per-task and per-call fallbacks, hence no setting's name.
    subject="redis_breaker fallback", requirement=f"one of {', '.join(FALLBACKS)}",
)
BREAKER_NAME = CelerySetting(
    "CELERY_REDIS_BREAKER_NAME", "default", lambda v: isinstance(v, str),
    expected="a breaker name",
    hint='Set CELERY_REDIS_BREAKER_NAME to the name of a breaker (a string such as '
         '"default", a key of REDIS_BREAKERS).',
    id="redis_breaker.E031",
    subject="redis_breaker breaker name", requirement="a string",
)
TIMEOUT = CelerySetting(
    "CELERY_REDIS_BREAKER_TIMEOUT", 1.0, _positive,
    expected=f"a number of seconds from {MIN_SECONDS} to {MAX_SECONDS:.0f}",
    hint="Set CELERY_REDIS_BREAKER_TIMEOUT to the dispatch socket timeout in seconds "
         f"(greater than 0: from {MIN_SECONDS} to {MAX_SECONDS:.0f}; default 1.0), "
         "or remove it.",
    id="redis_breaker.E032",
    subject="CELERY_REDIS_BREAKER_TIMEOUT",
    requirement=f"a number of seconds greater than 0 (from {MIN_SECONDS} to {MAX_SECONDS:.0f})",
)
RELAY_INTERVAL = CelerySetting(
    "CELERY_REDIS_BREAKER_RELAY_INTERVAL", 10.0, _not_negative,
    expected=f"0 or a number of seconds from {MIN_SECONDS} to {MAX_SECONDS:.0f}",
    hint="Set CELERY_REDIS_BREAKER_RELAY_INTERVAL to how often Celery workers relay "
         f"outbox rows left behind, in seconds (from {MIN_SECONDS} to {MAX_SECONDS:.0f}; "
         "default 10; 0 turns it off), or remove it.",
    id="redis_breaker.E033",
    subject="CELERY_REDIS_BREAKER_RELAY_INTERVAL",
    requirement=f"a number of seconds from {MIN_SECONDS} to {MAX_SECONDS:.0f} "
                "(0 turns the worker relay off)",
)

ONCE = CelerySetting(
    "CELERY_REDIS_BREAKER_ONCE", True, lambda v: isinstance(v, bool),
    expected="True or False",
    hint="Set CELERY_REDIS_BREAKER_ONCE to True (default: a BreakerTask's worker claims each "
         "task id in Redis and skips a second copy) or False (no claim; a publish that timed "
         "out after reaching Redis may then run twice), or remove it.",
    id="redis_breaker.E034",
    subject="CELERY_REDIS_BREAKER_ONCE", requirement="True or False",
)
ONCE_TTL = CelerySetting(
    "CELERY_REDIS_BREAKER_ONCE_TTL", 86400.0, _positive,
    expected=f"a number of seconds from {MIN_SECONDS} to {MAX_SECONDS:.0f}",
    hint="Set CELERY_REDIS_BREAKER_ONCE_TTL to how long a worker's claim on a task id lasts, "
         f"in seconds (from {MIN_SECONDS} to {MAX_SECONDS:.0f}; default 86400: longer than "
         "an outbox is expected to hold a task), or remove it.",
    id="redis_breaker.E035",
    subject="CELERY_REDIS_BREAKER_ONCE_TTL",
    requirement=f"a number of seconds from {MIN_SECONDS} to {MAX_SECONDS:.0f}",
)

#: Every Celery setting, in the order of their check ids.
SETTINGS: tuple[CelerySetting, ...] = (FALLBACK, BREAKER_NAME, TIMEOUT, RELAY_INTERVAL, ONCE,
                                       ONCE_TTL)
