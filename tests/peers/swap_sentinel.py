"""A pytest plugin for channels_redis's Sentinel suites: its layers, swapped for ours.

Loaded (``-p swap_sentinel``) into a run of channels_redis's
``tests/test_sentinel.py`` or ``tests/test_pubsub_sentinel.py`` by
``tests/peers/run.py``, in a process of its own, next to a Sentinel setup of
its own (master group ``sentinel``, sentinel password ``channels_redis``, as
the suites expect). Both modes point the suites' sentinel ``localhost:26379``
at that setup's sentinels (``PEERS_SENTINELS``, ``host:port`` pairs), and a
layer on channels_redis's default host at its master (``PEERS_REDIS_PORT``). With
``PEERS_MODE=breaker``, ``RedisChannelLayer`` becomes a ``BreakerChannelLayer``
and ``RedisPubSubChannelLayer`` a ``BreakerPubSubChannelLayer``, each taking
the same arguments, with a breaker of its own. Outcomes go to
``PEERS_REPORT`` (``swap.py``'s hooks).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from swap import pytest_runtest_logreport, pytest_sessionfinish
from swap_channels import _relocate as _relocate_default

__all__ = ["pytest_configure", "pytest_runtest_logreport", "pytest_sessionfinish"]


def _sentinels() -> list[tuple[str, int]]:
    pairs = []
    for entry in os.environ["PEERS_SENTINELS"].split(","):
        host, _, port = entry.rpartition(":")
        pairs.append((host, int(port)))
    return pairs


def _relocate(hosts: list[Any]) -> list[Any]:
    """Sentinel hosts to the run's sentinels, ``localhost:6379`` to the run's master."""
    sentinels = _sentinels()
    moved = _relocate_default(hosts, os.environ["PEERS_REDIS_PORT"])
    return [{**host, "sentinels": sentinels} if isinstance(host, dict) and "sentinels" in host
            else host for host in moved]


def pytest_configure(config: pytest.Config) -> None:
    import channels_redis.core as core
    import channels_redis.pubsub as pubsub

    from redis_breaker.channels.pubsub import decode_hosts

    decode = core.decode_hosts

    def decode_relocated(hosts: Any) -> list[Any]:
        return _relocate(decode(hosts))

    core.decode_hosts = decode_relocated  # RedisChannelLayer's, and BreakerChannelLayer's
    if hasattr(pubsub, "decode_hosts"):
        pubsub.decode_hosts = decode_relocated
    if os.environ.get("PEERS_MODE") != "breaker":
        return
    from redis_breaker import Breaker, BreakerConfig
    from redis_breaker.channels import BreakerChannelLayer, BreakerPubSubChannelLayer

    breakers: dict[str, Breaker] = {}

    def breaker_for(hosts: list[Any]) -> Breaker:
        """One breaker per Redis, as a deployment has: some tests of these suites make
        a layer on channels_redis's default host, where nothing listens here."""
        key = repr(hosts[0])
        if key not in breakers:
            breakers[key] = Breaker(f"peers-sentinel-{len(breakers)}", BreakerConfig())
        return breakers[key]

    class RedisChannelLayer(BreakerChannelLayer):
        def __init__(self, hosts: Any = None, **config: Any) -> None:
            super().__init__(hosts, breaker=breaker_for(decode_relocated(hosts)), **config)

    class RedisPubSubChannelLayer(BreakerPubSubChannelLayer):
        def __init__(self, hosts: Any = None, **config: Any) -> None:
            moved = _relocate(decode_hosts(hosts))
            super().__init__(moved, breaker=breaker_for(moved), **config)

    core.RedisChannelLayer = RedisChannelLayer  # type: ignore[misc]
    pubsub.RedisPubSubChannelLayer = RedisPubSubChannelLayer  # type: ignore[misc]
