"""Counts of the messages ``BreakerChannelLayer`` kept for other processes, per breaker.

``redis_breaker_channels_kept_messages_total{breaker, outcome}``: outcome is
``kept`` (a send while Redis was unusable, for a channel this process does
not own), ``forwarded`` (written to Redis on recovery), ``received_here`` (a
consumer of this process took it first) or ``expired`` (dropped unsent after
the layer's expiry); ``BreakerPubSubChannelLayer`` adds ``uncertain`` (a
publish that failed after it may have reached Redis, not published again) and
``local_only`` (a group message that reached this process's members only);
``BreakerChannelLayer`` also counts ``duplicate``: a second copy of a message
this process had received, dropped (a send that failed after it reached Redis,
then forwarded again).
This process's counts; labels carry breaker names only.

Counting costs a dict update on the outage path only. The collector is
registered on the default Prometheus registry when the first layer is made,
if ``prometheus_client`` is installed (``register()`` for another registry).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

__all__ = ["OUTCOMES", "count", "counts", "register", "register_default"]

OUTCOMES = ("kept", "forwarded", "received_here", "expired", "uncertain", "local_only",
            "duplicate")
_counts: Counter[tuple[str, str]] = Counter()
_lock = threading.Lock()
_registered: set[int] = set()


def count(breaker: str, outcome: str, messages: int = 1) -> None:
    with _lock:
        _counts[(breaker, outcome)] += messages


def counts() -> dict[tuple[str, str], int]:
    """(breaker, outcome) -> messages, since the process started."""
    with _lock:
        return dict(_counts)


def _collector() -> Any:
    from prometheus_client.core import CounterMetricFamily, Metric
    from prometheus_client.registry import Collector

    class ChannelsCollector(Collector):
        def describe(self) -> Iterator[Metric]:
            yield CounterMetricFamily("redis_breaker_channels_kept_messages", "",
                                      labels=["breaker", "outcome"])

        def collect(self) -> Iterator[Metric]:
            family = CounterMetricFamily(
                "redis_breaker_channels_kept_messages",
                "Channel messages kept while Redis was unusable, by what became of them.",
                labels=["breaker", "outcome"])
            for (breaker, outcome), value in sorted(counts().items()):
                family.add_metric([breaker, outcome], value)
            yield family

    return ChannelsCollector()


def register(registry: Any) -> bool:
    """Register the collector on ``registry`` once; False if it was already there."""
    with _lock:
        if id(registry) in _registered:
            return False
        _registered.add(id(registry))
    registry.register(_collector())
    return True


def register_default() -> None:
    """Register on Prometheus's default registry, if ``prometheus_client`` is installed."""
    try:
        from prometheus_client.registry import REGISTRY
    except ImportError:
        return
    register(REGISTRY)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
