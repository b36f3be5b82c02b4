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
        # The message is built only when shown: rejections are a hot path.
        super().__init__(name)
        self.name = name
        #: Seconds until the breaker lets a probe or trial call through (None: unknown or forced).
        self.retry_in = retry_in
        self.state = state

    def __str__(self) -> str:
        when = "" if self.retry_in is None else f"; next attempt in {self.retry_in:.3f}s"
        return f"redis breaker {self.name!r} is {self.state}{when}"

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.retry_in, self.state))
