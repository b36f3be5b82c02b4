"""Nothing the breaker opens to the sentinels outlives its use, on every redis-py version.

redis-py 5.0's ``Sentinel`` has neither ``close()`` nor (asyncio) ``aclose()``:
the clients it made for each sentinel are closed one by one.
"""

from __future__ import annotations

import time

from redis_breaker import Breaker, BreakerConfig
from redis_breaker._sentinel import ping_sentinel, resolve_master
from redis_breaker.channels import BreakerChannelLayer
from tests.harness import RedisSentinelCluster

from .conftest import SOCKET_TIMEOUT


def _foreign_clients(cluster: RedisSentinelCluster) -> list[str]:
    """Connections to the sentinels other than their links to each other (named
    ``sentinel-<id>-cmd``) and the one asking."""
    found: list[str] = []
    for port in cluster.sentinel_ports:
        for line in str(cluster._ask(port, "CLIENT", "LIST")).splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("name") or fields.get("cmd", "").startswith("client"):
                continue
            found.append(f"sentinel {port}: {line}")
    return found


def _none_left(cluster: RedisSentinelCluster) -> None:
    # The server notices a closed socket on its next event loop turn.
    deadline = time.monotonic() + 5.0
    while (left := _foreign_clients(cluster)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, "connections to the sentinels left open"


def test_the_probe_closes_its_connections_to_the_sentinels(
        sentinel_cluster: RedisSentinelCluster) -> None:
    cluster = sentinel_cluster
    _none_left(cluster)
    master = cluster.master
    for _ in range(3):
        assert resolve_master(cluster.url, 0.5) == (master.host, master.port)
        assert ping_sentinel(cluster.url, 0.5) == (master.host, master.port)
    _none_left(cluster)


async def test_the_channel_layer_closes_its_connections_to_the_sentinels(
        sentinel_cluster: RedisSentinelCluster) -> None:
    """channels_redis closes its pools, never its ``Sentinel`` managers: the layer does."""
    cluster = sentinel_cluster
    host = {"sentinels": cluster.sentinels, "master_name": cluster.master_name,
            "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}
    layer = BreakerChannelLayer([host], breaker=Breaker("sentinel-conns", BreakerConfig()))
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        assert await layer.send_to_group("room", {"type": "m"}) is True
        assert await layer.receive(channel) == {"type": "m"}
        assert _foreign_clients(cluster), "the layer never asked the sentinels"
    finally:
        await layer.close()
    _none_left(cluster)
