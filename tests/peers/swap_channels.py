"""A pytest plugin for channels_redis's own suite: its layer, swapped for ``BreakerChannelLayer``.

Loaded (``-p swap_channels``) into a run of channels_redis's ``tests/`` by
``tests/peers/run.py``, in a process of its own. Both modes point
``localhost:6379`` (written in the suite, and channels_redis's default host)
at the run's own redis-server (``PEERS_REDIS_PORT``). With
``PEERS_MODE=breaker``, ``channels_redis.core.RedisChannelLayer`` becomes a
``BreakerChannelLayer`` taking the same arguments, with a breaker of its own,
before the suite imports it. Outcomes go to ``PEERS_REPORT`` (``swap.py``'s
hooks).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from swap import pytest_runtest_logreport, pytest_sessionfinish

__all__ = ["pytest_configure", "pytest_runtest_logreport", "pytest_sessionfinish"]


def _relocate(hosts: list[Any], port: str) -> list[Any]:
    moved = []
    for host in hosts:
        if isinstance(host, dict) and isinstance(host.get("address"), str):
            host = {**host, "address": host["address"].replace("localhost:6379",
                                                               f"127.0.0.1:{port}")}
        moved.append(host)
    return moved


def pytest_configure(config: pytest.Config) -> None:
    import channels_redis.core as core

    port = os.environ["PEERS_REDIS_PORT"]
    decode = core.decode_hosts

    def decode_hosts(hosts: Any) -> list[Any]:
        return _relocate(decode(hosts), port)

    core.decode_hosts = decode_hosts
    if os.environ.get("PEERS_MODE") != "breaker":
        return
    from redis_breaker import Breaker, BreakerConfig
    from redis_breaker.channels import BreakerChannelLayer

    breaker = Breaker("peers-channels", BreakerConfig())

    class RedisChannelLayer(BreakerChannelLayer):
        def __init__(self, hosts: Any = None, **config: Any) -> None:
            super().__init__(hosts, breaker=breaker, **config)

    core.RedisChannelLayer = RedisChannelLayer  # type: ignore[misc]
