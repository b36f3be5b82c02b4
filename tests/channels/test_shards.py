"""Sharded layers (several ``hosts``): one breaker per host, one dead host leaves the others alone."""

from __future__ import annotations

import asyncio
import itertools

from channels_redis.utils import _consistent_hash

from redis_breaker import State
from redis_breaker.channels import BreakerChannelLayer
from tests.harness import RedisServer

from .conftest import eventually, fast_breaker, hosts


async def _channel_on(layer: BreakerChannelLayer, index: int) -> str:
    """A new channel of ``layer`` whose messages live on host ``index``."""
    for n in itertools.count():
        name = await layer.new_channel(prefix=f"on{n}")
        if _consistent_hash(layer.redis.non_local_name(name), 2) == index:
            return name
    raise AssertionError("unreachable")


def _group_on(index: int) -> str:
    return next(f"room{n}" for n in itertools.count() if _consistent_hash(f"room{n}", 2) == index)


async def test_one_dead_shard_leaves_the_others_on_redis() -> None:
    """Host 1 stopped: traffic for host 0 keeps going through Redis (its breaker stays
    closed), host 1's is kept and reaches the other process once host 1 is back."""
    with RedisServer() as first, RedisServer() as second:
        both = hosts(first) + hosts(second)
        a = BreakerChannelLayer(both, breaker=fast_breaker("shards-a"))
        b = BreakerChannelLayer(both, breaker=fast_breaker("shards-b"))
        try:
            assert [br.name for br in a.breakers] == ["shards-a", "shards-a-shard1"]
            live, dead = await _channel_on(b, 0), await _channel_on(b, 1)
            group = _group_on(0)
            await b.group_add(group, live)
            await b.group_add(group, dead)

            second.stop()
            for n in range(6):  # host 1's messages: kept, and (forwarding fails) its breaker opens
                await a.send(dead, {"type": "kept", "n": n})
            assert await eventually(lambda: a.breakers[1].is_open)

            await a.send(live, {"type": "direct"})
            assert await asyncio.wait_for(b.receive(live), 10) == {"type": "direct"}
            # Not every member got it (the one on host 1 is another process's): False, but
            # the member on host 0 gets it through Redis.
            assert await a.send_to_group(group, {"type": "grouped"}) is False
            assert await asyncio.wait_for(b.receive(live), 10) == {"type": "grouped"}
            # A general channel goes to a host that answers.
            for n in range(3):
                await a.send("work", {"type": "job", "n": n})
            got = [await asyncio.wait_for(b.receive("work"), 10) for _ in range(3)]
            assert sorted(m["n"] for m in got) == [0, 1, 2]
            assert a.breakers[0].state is State.CLOSED
            assert await eventually(lambda: len(a.pending) == 6)  # none lost, none sent

            second.start()
            received = [await asyncio.wait_for(b.receive(dead), 30) for _ in range(6)]
            assert received == [{"type": "kept", "n": n} for n in range(6)]
            assert a.breakers[0].state is State.CLOSED
            # The last one counts as kept until the forwarder's write has returned.
            assert await eventually(lambda: len(a.pending) == 0)
        finally:
            for layer in (a, b):
                for breaker in layer.breakers:
                    breaker.reset()
                await layer.close()


def test_shard_breakers_are_in_the_registry_and_follow_their_settings() -> None:
    """Each other host's breaker is a registry breaker (the status, health checks and
    metrics list it) with the layer's breaker's settings and its host's URL; a settings
    change reaches it and keeps that URL; another layer over the same hosts shares it."""
    from django.test import override_settings

    from redis_breaker import all_breakers, get_breaker
    from redis_breaker.health import status_breakers

    with RedisServer() as first, RedisServer() as second, override_settings(
            REDIS_BREAKERS={"sharded": {"FAILURE_THRESHOLD": 7, "PROBE": False}}):
        both = hosts(first) + hosts(second)
        layer = BreakerChannelLayer(both, breaker="sharded")
        again = BreakerChannelLayer(both, breaker="sharded")
        try:
            shard = layer.breakers[1]
            assert shard.name == "sharded-shard1"
            assert again.breakers[1] is shard
            assert all_breakers()["sharded-shard1"] is shard
            assert shard.url == second.url
            assert get_breaker("sharded").url == first.url
            assert shard.config.failure_threshold == 7
            listed, unusable = status_breakers()  # what the status command, view and metrics show
            assert listed["sharded-shard1"] is shard
            assert unusable == {}
            with override_settings(REDIS_BREAKERS={"sharded": {"FAILURE_THRESHOLD": 3,
                                                               "PROBE": False}}):
                assert shard.config.failure_threshold == 3
                assert shard.url == second.url
        finally:
            for layer_ in (layer, again):
                asyncio.run(layer_.close_pools())
