"""A counter the hot paths step without a lock."""

from __future__ import annotations

import itertools

__all__ = ["Counter"]


class Counter:
    """Counts events from any thread; stepping it takes no lock.

    ``step()`` is ``next()`` on an ``itertools.count``, which is atomic in
    CPython. An ``itertools.count`` cannot be read without stepping it, so a
    read steps it too and ``value`` subtracts the reads made so far. Reads are
    rare (stats, metrics, transitions) and must be made under the owner's lock:
    two unlocked readers could subtract the same read twice.
    """

    __slots__ = ("_count", "_reads", "step")

    def __init__(self) -> None:
        self._count = itertools.count()
        self._reads = 0
        #: Count one event (bound ``__next__``: one C call, no lock).
        self.step = self._count.__next__

    @property
    def value(self) -> int:
        """Events counted so far."""
        n = next(self._count) - self._reads
        self._reads += 1
        return n

    def __repr__(self) -> str:
        return f"<Counter {self.value}>"
