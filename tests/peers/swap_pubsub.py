"""A pytest plugin for channels_redis's pub/sub suite: its layer, swapped for ``BreakerPubSubChannelLayer``.

Loaded (``-p swap_pubsub``) into a run of channels_redis's ``tests/test_pubsub.py``
by ``tests/peers/run.py``, in a process of its own. Both modes point
``localhost:6379`` (written in the suite, and channels_redis's default host)
at the run's own redis-server (``PEERS_REDIS_PORT``). With
``PEERS_MODE=breaker``, ``channels_redis.pubsub.RedisPubSubChannelLayer``
becomes a ``BreakerPubSubChannelLayer`` taking the same arguments, with a
breaker of its own, before the suite imports it. Outcomes go to
``PEERS_REPORT`` (``swap.py``'s hooks).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from swap import pytest_runtest_logreport, pytest_sessionfinish
from swap_channels import _relocate

__all__ = ["pytest_configure", "pytest_runtest_logreport", "pytest_sessionfinish"]


def _moved(hosts: Any, port: str) -> list[Any]:
    from redis_breaker.channels.pubsub import decode_hosts

    return _relocate(decode_hosts(hosts), port)


def pytest_configure(config: pytest.Config) -> None:
    import channels_redis.pubsub as pubsub

    port = os.environ["PEERS_REDIS_PORT"]
    if os.environ.get("PEERS_MODE") != "breaker":
        plain = pubsub.RedisPubSubChannelLayer

        class PlainLayer(plain):  # type: ignore[misc,valid-type]
            def __init__(self, *args: Any, hosts: Any = None, **kwargs: Any) -> None:
                super().__init__(*args, hosts=_moved(hosts, port), **kwargs)

        PlainLayer.__name__ = PlainLayer.__qualname__ = "RedisPubSubChannelLayer"
        pubsub.RedisPubSubChannelLayer = PlainLayer  # type: ignore[misc]
        return
    from redis_breaker import Breaker, BreakerConfig
    from redis_breaker.channels import BreakerPubSubChannelLayer

    breaker = Breaker("peers-pubsub", BreakerConfig())

    class RedisPubSubChannelLayer(BreakerPubSubChannelLayer):
        def __init__(self, hosts: Any = None, **config: Any) -> None:
            super().__init__(_moved(hosts, port), breaker=breaker, **config)

    pubsub.RedisPubSubChannelLayer = RedisPubSubChannelLayer  # type: ignore[misc]
