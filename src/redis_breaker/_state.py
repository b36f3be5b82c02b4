"""States and the transition record every listener receives."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["State", "StateChange", "Stats"]


class State(str, enum.Enum):
    """Where a breaker is. ``str`` values are what logs and metrics show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value

    @property
    def rejects(self) -> bool:
        """True when calls in this state skip Redis."""
        return self in (State.OPEN, State.FORCED_OPEN)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition, as logged and as passed to listeners."""

    breaker: str
    from_state: State
    to_state: State
    reason: str
    #: ``time.monotonic()`` when it happened.
    at: float
    #: Consecutive counted failures when it happened.
    failures: int
    #: Type and message of the last counted failure, credentials removed.
    last_error: str | None
    #: Seconds since the breaker left ``closed`` (on the way back to closed), else None.
    open_for_s: float | None
    #: Calls served by a fallback since the breaker left ``closed`` (in this process).
    fallback_calls: int
    #: True when another process of the host made this transition (and logged it);
    #: this process's listeners still hear of it.
    remote: bool = False


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of one breaker, from ``Breaker.stats()``."""

    name: str
    state: State
    #: ``time.monotonic()`` when the breaker entered ``state``.
    since: float
    #: Seconds spent in ``state`` when the snapshot was taken.
    in_state_for_s: float
    consecutive_failures: int
    window_calls: int
    window_failures: int
    rejected: int
    fallback_calls: int
    last_error: str | None
    #: Seconds until the next probe or trial call is allowed (open only).
    retry_in_s: float | None
    url: str | None
    #: True when the state is shared by the processes of the host (a state file).
    host_shared: bool = False
    #: PID of the process whose probe watches Redis for the host, if any.
    probe_pid: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state.value,
            "since": self.since,
            "in_state_for_s": round(self.in_state_for_s, 3),
            "consecutive_failures": self.consecutive_failures,
            "window_calls": self.window_calls,
            "window_failures": self.window_failures,
            "rejected": self.rejected,
            "fallback_calls": self.fallback_calls,
            "last_error": self.last_error,
            "retry_in_s": None if self.retry_in_s is None else round(self.retry_in_s, 3),
            "url": self.url,
            "host_shared": self.host_shared,
            "probe_pid": self.probe_pid,
        }
