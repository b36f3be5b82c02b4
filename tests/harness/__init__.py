"""The project's test harness: real Redis servers and Sentinel clusters, and their faults."""

from __future__ import annotations

from .sentinel import RedisSentinelCluster
from .server import RedisNotInstalled, RedisServer, free_port, wait_until

__all__ = ["RedisNotInstalled", "RedisSentinelCluster", "RedisServer", "free_port", "wait_until"]
