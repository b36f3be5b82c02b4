"""The project's test harness: real Redis servers and Sentinel clusters, their faults, and PostgreSQL."""

from __future__ import annotations

from .garbage import collected_garbage
from .postgres import PostgresNotInstalled, PostgresServer
from .sentinel import RedisSentinelCluster
from .server import RedisNotInstalled, RedisServer, free_port, wait_until

__all__ = ["PostgresNotInstalled", "PostgresServer", "RedisNotInstalled", "RedisSentinelCluster", "RedisServer", "collected_garbage", "free_port", "wait_until"]
