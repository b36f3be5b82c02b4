"""Prometheus metrics (``pip install "redis-breaker[prometheus]"``).

Read at scrape time from each breaker's counters, so they cost nothing on the
call path. Registered on the default registry by the Django app when
``prometheus_client`` is installed; elsewhere call ``register()``.

- ``redis_breaker_state{breaker, state}``: 1 for the current state, 0 for the
  others; the host's state, whichever process is scraped.
- ``redis_breaker_host_shared{breaker}``: 1 while the state is shared by the
  host's processes, 0 while this process keeps its own.
- ``redis_breaker_calls_total{breaker, outcome}``: outcome is success, failure,
  rejected, or fallback (this process's calls).
- ``redis_breaker_fallback_calls_total{breaker, integration}`` (this process's).
- ``redis_breaker_transitions_total{breaker, from_state, to_state}``: the
  transitions this process saw, its own and the other processes'.
- ``redis_breaker_outbox_messages{status}``: pending and failed outbox rows (Celery).

Labels carry breaker names, states and integration names only: never a URL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from ._breaker import Breaker, all_instances
from ._state import State
from .health import celery_outbox, status_breakers

__all__ = ["BreakerCollector", "register"]

_registered: set[int] = set()
_lock = threading.Lock()


def _every_breaker() -> list[Breaker]:
    """Shared breakers first (with their integrations' URLs); then others created directly, one per name."""
    found, _ = status_breakers()  # a breaker that cannot be created has no metrics
    chosen = list(found.values())
    seen = {b.name for b in chosen}
    for breaker in all_instances():
        if breaker.name not in seen:
            seen.add(breaker.name)
            chosen.append(breaker)
    return chosen


def _outbox_counts() -> dict[str, int] | None:
    outbox = celery_outbox()
    if outbox is None:
        return None
    try:
        status = outbox.outbox_status()
    except Exception:  # no table yet, database down: the breaker metrics still matter
        return None
    return {k: int(v) for k, v in status.items() if k in ("pending", "failed") and v is not None}


class BreakerCollector(Collector):
    def __init__(self, breakers: Callable[[], Iterable[Breaker]] = _every_breaker) -> None:
        self._breakers = breakers

    def describe(self) -> Iterator[Metric]:
        """The metric names, without touching a breaker or the database (registration calls it)."""
        yield GaugeMetricFamily("redis_breaker_state", "", labels=["breaker", "state"])
        yield GaugeMetricFamily("redis_breaker_host_shared", "", labels=["breaker"])
        yield CounterMetricFamily("redis_breaker_calls", "", labels=["breaker", "outcome"])
        yield CounterMetricFamily("redis_breaker_fallback_calls", "",
                                  labels=["breaker", "integration"])
        yield CounterMetricFamily("redis_breaker_transitions", "",
                                  labels=["breaker", "from_state", "to_state"])
        yield GaugeMetricFamily("redis_breaker_outbox_messages", "", labels=["status"])

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("redis_breaker_state", "Current state of each breaker (1 = in it).",
                                  labels=["breaker", "state"])
        shared = GaugeMetricFamily("redis_breaker_host_shared",
                                   "1 while the breaker's state is shared by the host's processes.",
                                   labels=["breaker"])
        calls = CounterMetricFamily("redis_breaker_calls", "Calls through each breaker by outcome.",
                                    labels=["breaker", "outcome"])
        fallbacks = CounterMetricFamily("redis_breaker_fallback_calls",
                                        "Calls served by a fallback, per integration.",
                                        labels=["breaker", "integration"])
        transitions = CounterMetricFamily("redis_breaker_transitions",
                                          "State transitions of each breaker.",
                                          labels=["breaker", "from_state", "to_state"])
        for breaker in self._breakers():
            try:
                current = breaker.state
                totals = breaker.totals()
            except Exception:  # a scrape shows the other breakers
                continue
            for s in State:
                state.add_metric([breaker.name, s.value], 1.0 if s is current else 0.0)
            shared.add_metric([breaker.name], 1.0 if breaker.host_shared else 0.0)
            calls.add_metric([breaker.name, "success"], totals.successes)
            calls.add_metric([breaker.name, "failure"], totals.failures)
            calls.add_metric([breaker.name, "rejected"], totals.rejected)
            calls.add_metric([breaker.name, "fallback"], sum(totals.fallbacks.values()))
            for integration, count in sorted(totals.fallbacks.items()):
                fallbacks.add_metric([breaker.name, integration], count)
            for (source, target), count in sorted(totals.transitions.items()):
                transitions.add_metric([breaker.name, source, target], count)
        yield from (state, shared, calls, fallbacks, transitions)
        outbox = _outbox_counts()
        if outbox is not None:
            depth = GaugeMetricFamily("redis_breaker_outbox_messages",
                                      "Celery dispatches waiting in the outbox, by status.",
                                      labels=["status"])
            for status, count in sorted(outbox.items()):
                depth.add_metric([status], count)
            yield depth


def register(registry: CollectorRegistry = REGISTRY) -> BreakerCollector | None:
    """Register the collector once per registry; returns it, or None if already there."""
    with _lock:
        if id(registry) in _registered:
            return None
        collector = BreakerCollector()
        registry.register(collector)
        _registered.add(id(registry))
        return collector


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
