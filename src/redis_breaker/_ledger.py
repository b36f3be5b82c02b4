"""The fallback ledger: calls served by a fallback, per integration, per outage.

Fallback use is logged once per outage per integration (WARNING), then
summarized when the outage ends (INFO), never once per call: an outage at
thousands of requests a second must not flood the logs. The ledger also keeps
the running totals that metrics export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ._counter import Counter
from ._events import emit

__all__ = ["FALLBACK_WARN_EVERY", "FallbackLedger", "Summary"]

#: While the breaker is closed (failures below the threshold), warn at most this often.
FALLBACK_WARN_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Summary:
    """Fallback use per integration over one outage, logged once when it ends."""

    counts: tuple[tuple[str, int], ...]
    open_for_s: float | None

    def log(self, breaker: str) -> None:
        for integration, count in self.counts:
            emit(logging.INFO, "fallback_summary", breaker=breaker, integration=integration,
                 fallback_calls=count,
                 open_for_s=None if self.open_for_s is None else round(self.open_for_s, 3))


class FallbackLedger:
    """Fallback calls of one breaker. The breaker's lock guards every method but ``step``."""

    __slots__ = ("_current", "_done", "_warned")

    def __init__(self) -> None:
        # Calls in the current outage, folded into ``_done`` when it ends.
        self._current: dict[str, Counter] = {}
        self._done: dict[str, int] = {}
        self._warned: dict[str, float] = {}

    def step(self, integration: str) -> bool:
        """Count one call without a lock; False when ``integration`` has no counter yet."""
        counter = self._current.get(integration)
        if counter is None:
            return False
        counter.step()
        return True

    def step_quiet(self, integration: str, now: float) -> bool:
        """Count one call without a lock when no warning can be due (warned less than
        ``FALLBACK_WARN_EVERY`` ago); False when the caller must ``count`` under the lock."""
        last = self._warned.get(integration)
        if last is None or now - last >= FALLBACK_WARN_EVERY:
            return False
        return self.step(integration)

    def count(self, integration: str, now: float) -> bool:
        """Count one call (caller holds the lock); True when it should be logged."""
        counter = self._current.get(integration)
        if counter is None:
            counter = self._current[integration] = Counter()
        counter.step()
        last = self._warned.get(integration)
        # Once per outage; while closed (failures below the threshold), once a minute.
        if last is None or now - last >= FALLBACK_WARN_EVERY:
            self._warned[integration] = now
            return True
        return False

    def current_total(self) -> int:
        """Fallback calls in the current outage."""
        return sum(c.value for c in list(self._current.values()))

    def start_outage(self) -> None:
        """Fallback calls made while closed (below the threshold) belong to no outage."""
        self._fold()

    def end_outage(self, open_for: float | None) -> Summary | None:
        """Fold the outage into the totals; its summary, if anything fell back."""
        counts = self._fold()
        self._warned = {}
        return Summary(counts, open_for) if counts else None

    def _fold(self) -> tuple[tuple[str, int], ...]:
        counts = tuple((k, c.value) for k, c in self._current.items())
        for integration, count in counts:
            self._done[integration] = self._done.get(integration, 0) + count
        self._current = {}
        return counts

    def totals(self) -> dict[str, int]:
        """Fallback calls per integration since the breaker was created."""
        totals = dict(self._done)
        for integration, counter in self._current.items():
            totals[integration] = totals.get(integration, 0) + counter.value
        return totals
