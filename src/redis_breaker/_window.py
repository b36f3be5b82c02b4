"""Calls and failures over a sliding time window, in fixed buckets."""

from __future__ import annotations

from ._counter import Counter

__all__ = ["Window"]


class Window:
    """Counts over the last ``length`` seconds, kept in ``buckets`` slots.

    Successes are the hot path: while the current bucket is live, recording one
    is ``window.current.step()`` (atomic in CPython), with no lock. Everything
    else (rotation, failures, totals) runs under the
    breaker's lock.
    """

    __slots__ = ("_fail", "_index", "_slots", "_succ", "_width", "bucket_end", "current",
                 "retired")

    def __init__(self, length: float, buckets: int = 10) -> None:
        self._slots = buckets
        self._width = length / buckets
        #: Successes of the buckets that were dropped (rotation, clear): with the
        #: live buckets, every success ever recorded, so the hot path steps one counter.
        self.retired = 0
        self._succ = [Counter() for _ in range(self._slots)]
        self.clear()

    def clear(self) -> None:
        self.retired += sum(counter.value for counter in self._succ)
        self._succ = [Counter() for _ in range(self._slots)]
        self._fail = [0] * self._slots
        self._index = [-(2**62)] * self._slots
        self.current = self._succ[0]
        #: Successes recorded at or after this time take the slow path (rotation).
        self.bucket_end = float("-inf")

    def _rotate(self, now: float) -> int:
        index = int(now // self._width)
        slot = index % self._slots
        held = self._index[slot]
        if held < index:
            self.retired += self._succ[slot].value
            self._succ[slot] = Counter()
            self._fail[slot] = 0
            self._index[slot] = index
        elif held > index:
            # The clock stepped back (tests moving frozen time): use the newest bucket.
            index = max(self._index)
            slot = index % self._slots
        self.current = self._succ[slot]
        self.bucket_end = (index + 1) * self._width
        return slot

    def success(self, now: float) -> None:
        (self.current if now < self.bucket_end else self._succ[self._rotate(now)]).step()

    def failure(self, now: float) -> None:
        self._fail[self._rotate(now)] += 1

    def successes(self) -> int:
        """Every success recorded since the window was made (caller holds the lock)."""
        return self.retired + sum(counter.value for counter in self._succ)

    def totals(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the window ending at ``now``."""
        newest = int(now // self._width)
        calls = failures = 0
        for slot in range(self._slots):
            if 0 <= newest - self._index[slot] < self._slots:
                failed = self._fail[slot]
                calls += self._succ[slot].value + failed
                failures += failed
        return calls, failures
