"""READONLY: after a failover the endpoint is a replica; reads work, writes get ``READONLY``.

``ReadOnlyError`` counts (this node cannot serve us), directly from redis-py
and wrapped by kombu. The replica holds the pre-fault value of the key written
during the outage; once the endpoint is a primary again the journal deletes it
before Redis serves that key.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.harness import RedisServer

from .conftest import STALE_KEY, Stack, running_server, wait_for


@pytest.fixture
def other() -> Iterator[RedisServer]:
    yield from running_server()


def synced(replica: redis.Redis) -> bool:
    info = replica.info("replication")
    return bool(info.get("master_link_status") == "up")


def test_readonly_replica(stack: Stack, other: RedisServer) -> None:
    """The endpoint demoted to a replica trips the breaker; promoted again, it is handed back."""
    stack.warm_up()
    ours, theirs = stack.server.client(), other.client()
    try:
        # Failover: the other node (a copy of ours) becomes primary, ours its replica.
        theirs.replicaof("127.0.0.1", stack.server.port)
        wait_for(lambda: synced(theirs), "the other node to copy ours")
        theirs.replicaof("no", "one")
        stack.fault_begins()
        ours.replicaof("127.0.0.1", other.port)
        wait_for(lambda: synced(ours), "our node to become a replica")
        with pytest.raises(redis.exceptions.ReadOnlyError):
            ours.set("k", "v")
        assert stack.raw_get(STALE_KEY) is not None  # the replica serves the old value
        stack.discover()
        assert "ReadOnly" in (stack.breaker.stats().last_error or "") or "read only" in (
            stack.breaker.stats().last_error or "")
        stack.assert_open_skips_redis()
        # Failed back: our node is a primary again, with the pre-fault value.
        ours.replicaof("no", "one")
        assert stack.raw_get(STALE_KEY) is not None
    finally:
        ours.close()
        theirs.close()
    stack.recover()
    stack.assert_kept()
