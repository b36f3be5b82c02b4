"""Calls and failures over a sliding time window, in fixed buckets."""

from __future__ import annotations

__all__ = ["Window"]


class Window:
    """Counts over the last ``length`` seconds, kept in ``buckets`` slots.

    Recording is O(1) amortized: totals are kept up to date as buckets age out,
    so a failure-rate check never sums the slots. Not thread-safe: the breaker
    holds its lock around every use.
    """

    __slots__ = ("_calls", "_failures", "_newest", "_slots", "_width", "calls", "failures")

    def __init__(self, length: float, buckets: int = 10) -> None:
        self._slots = buckets
        self._width = length / buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._newest: int | None = None
        self.calls = 0
        self.failures = 0

    def clear(self) -> None:
        self._calls = [0] * self._slots
        self._failures = [0] * self._slots
        self._newest = None
        self.calls = 0
        self.failures = 0

    def _slot(self, now: float) -> int:
        index = int(now // self._width)
        newest = self._newest
        if newest is None or index - newest >= self._slots:
            self.clear()
            self._newest = index
        elif index > newest:
            for i in range(newest + 1, index + 1):
                slot = i % self._slots
                self.calls -= self._calls[slot]
                self.failures -= self._failures[slot]
                self._calls[slot] = 0
                self._failures[slot] = 0
            self._newest = index
        # A clock that steps back (tests moving frozen time) lands in the newest bucket.
        assert self._newest is not None
        return self._newest % self._slots

    def record(self, now: float, failed: bool) -> None:
        slot = self._slot(now)
        self._calls[slot] += 1
        self.calls += 1
        if failed:
            self._failures[slot] += 1
            self.failures += 1

    def totals(self, now: float) -> tuple[int, int]:
        self._slot(now)
        return self.calls, self.failures
