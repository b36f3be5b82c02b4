"""Exceptions, in their own module so that every other module can import them."""

from __future__ import annotations

import pybreaker

__all__ = ["BreakerOpenError"]


class BreakerOpenError(pybreaker.CircuitBreakerError):
    """A call was rejected without touching Redis because its breaker is open.

    A subclass of ``pybreaker.CircuitBreakerError``, so code that already
    catches pybreaker's error keeps working.
    """

    def __init__(self, name: str, retry_in: float | None, state: str = "open") -> None:
        self.name = name
        #: Seconds until the breaker lets a probe or trial call through (None: unknown or forced).
        self.retry_in = retry_in
        self.state = state
        when = "" if retry_in is None else f"; next attempt in {retry_in:.3f}s"
        super().__init__(f"redis breaker {name!r} is {state}{when}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.retry_in, self.state))
