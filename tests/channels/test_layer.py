"""The channel layer specification, closed and open: extensions, capacity, expiry, flush, close."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from freezegun import freeze_time

from redis_breaker import Breaker, BreakerOpenError
from redis_breaker.channels import BreakerChannelLayer
from redis_breaker.testing import capture_events
from tests.harness import RedisServer

from .conftest import eventually, fast_breaker, hosts


@pytest.fixture
async def layer(redis_server: RedisServer) -> AsyncIterator[BreakerChannelLayer]:
    """A layer with a capacity of 2 and its own breaker."""
    breaker = fast_breaker("spec")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker, capacity=2, expiry=30)
    yield layer
    breaker.reset()
    await layer.close()


def test_extensions_and_names(redis_server: RedisServer) -> None:
    """The layer offers groups and flush, and its channel names come from channels_redis."""
    layer = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("names"))
    assert {"groups", "flush"} <= set(layer.extensions)
    name = async_to_sync(layer.new_channel)()
    assert name.startswith("specific.")
    assert f"{layer.redis.client_prefix}!" in name


async def test_capacity_closed_raises_channel_full_from_redis(layer: BreakerChannelLayer) -> None:
    """Closed, a third message on a channel of capacity 2 raises ChannelFull and counts no failure."""
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m", "n": 1})
    await layer.send(channel, {"type": "m", "n": 2})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "m", "n": 3})
    assert layer.breaker.stats().consecutive_failures == 0
    assert len(layer.local) == 0


async def test_capacity_open_is_kept_locally(layer: BreakerChannelLayer) -> None:
    """Open, send raises ChannelFull past capacity and group_send drops the excess, as on Redis."""
    channel = await layer.new_channel()
    await layer.group_add("full", channel)
    layer.breaker.force_open()
    await layer.send(channel, {"type": "m", "n": 1})
    await layer.group_send("full", {"type": "m", "n": 2})
    await layer.group_send("full", {"type": "m", "n": 3})  # dropped, no error
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "m", "n": 4})
    assert [await layer.receive(channel) for _ in range(2)] == [
        {"type": "m", "n": 1}, {"type": "m", "n": 2}
    ]


def test_local_messages_expire(redis_server: RedisServer) -> None:
    """Open, a message nobody received within ``expiry`` is gone, and its channel leaves local groups."""
    breaker = fast_breaker("expiry")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker, expiry=10)
    breaker.force_open()

    async def scenario(frozen: object) -> None:
        stale, fresh = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("g", stale)
        await layer.group_add("g", fresh)
        await layer.send(stale, {"type": "old"})
        frozen.tick(11)  # type: ignore[attr-defined]
        await layer.send(fresh, {"type": "new"})
        assert layer.local.pop(stale) is None
        assert layer.mirror.members("g") == [fresh]
        assert await layer.receive(fresh) == {"type": "new"}

    with freeze_time("2025-01-01 12:00:00") as frozen:
        asyncio.run(scenario(frozen))
    breaker.reset()


async def test_open_send_to_another_process_is_kept_then_forwarded(
    layer: BreakerChannelLayer, redis_server: RedisServer
) -> None:
    """Open, a message for a channel of another process is kept, never raised, and reaches it on recovery."""
    other = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("other"))
    elsewhere = await other.new_channel()
    layer.breaker.force_open()
    await layer.send(elsewhere, {"type": "kept"})
    assert (len(layer.pending), len(layer.local), layer.dropped) == (1, 0, 0)
    layer.breaker.reset()
    assert await asyncio.wait_for(other.receive(elsewhere), 10) == {"type": "kept"}
    # The forwarder's thread counts it once the write has returned there.
    assert await eventually(lambda: (len(layer.pending), layer.forwarded) == (0, 1), 10)
    await other.close()


async def test_open_general_channel_is_served_in_process(layer: BreakerChannelLayer) -> None:
    """Open, a general channel (no "!") a worker of this process reads still gets its messages."""
    layer.breaker.force_open()
    await layer.send("thumbnails", {"type": "make", "id": 7})
    assert await asyncio.wait_for(layer.receive("thumbnails"), 2) == {"type": "make", "id": 7}


async def test_a_kept_message_being_forwarded_is_not_overtaken(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the forwarder writes kept message 0 of a general channel, a receive here and a
    send here both wait behind it: the receive gets 0, then 1, then 2."""
    loop = asyncio.get_running_loop()
    breaker = fast_breaker("spec-order")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker)
    real_trial = breaker.acall_as_trial
    during: list[asyncio.Future[object]] = []

    async def receive_and_send() -> None:
        during.append(asyncio.ensure_future(layer.receive("jobs")))
        await asyncio.sleep(0.2)  # the receive looked at the kept messages
        await layer.send("jobs", {"type": "job", "n": 2})

    async def trial(fn: object, /, *args: object, **kwargs: object) -> object:
        if getattr(fn, "__name__", "") == "forward" and not during:
            asyncio.run_coroutine_threadsafe(receive_and_send(), loop).result(10)
        return await real_trial(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(breaker, "acall_as_trial", trial)
    breaker.force_open()
    await layer.send("jobs", {"type": "job", "n": 0})
    await layer.send("jobs", {"type": "job", "n": 1})
    breaker.reset()
    deadline = loop.time() + 10
    while not during:
        assert loop.time() < deadline, "the forwarder never wrote"
        await asyncio.sleep(0.02)
    got = [await asyncio.wait_for(during[0], 10)]
    got += [await asyncio.wait_for(layer.receive("jobs"), 10) for _ in range(2)]
    assert [m["n"] for m in got] == [0, 1, 2]  # type: ignore[index]
    # Counted in the forwarder's thread once its writes returned; 2 was kept behind 1.
    assert await eventually(lambda: (layer.forwarded, len(layer.pending)) == (3, 0), 10)
    breaker.reset()
    await layer.close()


async def test_a_receive_waiting_behind_the_forwarder_takes_kept_messages_when_it_opens(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis is back and the forwarder is busy with another channel: a receive here waits
    for "jobs"'s kept message to come through Redis. The breaker opens again before the
    forwarder gets to it: the receive takes it here, at once."""
    breaker = fast_breaker("spec-reopen")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker)
    real_trial = breaker.acall_as_trial
    writing, release = threading.Event(), threading.Event()

    async def trial(fn: object, /, *args: object, **kwargs: object) -> object:
        if args and args[0] == "other":
            writing.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return await real_trial(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(breaker, "acall_as_trial", trial)
    breaker.force_open()
    await layer.send("other", {"type": "job", "n": 0})
    await layer.send("jobs", {"type": "job", "n": 0})
    breaker.reset()
    assert await asyncio.get_running_loop().run_in_executor(None, writing.wait, 10)
    receive = asyncio.ensure_future(layer.receive("jobs"))
    await asyncio.sleep(0.3)
    assert not receive.done()  # Redis is usable: "jobs" is forwarded, then read from it
    breaker.force_open()
    try:
        assert await asyncio.wait_for(receive, 5) == {"type": "job", "n": 0}
    finally:
        release.set()
    assert "jobs" not in layer.pending
    breaker.reset()
    await layer.close()


async def test_connection_that_died_with_a_restarted_redis_does_not_divert_a_send(
    layer: BreakerChannelLayer, redis_server: RedisServer
) -> None:
    """After Redis restarts while the layer is idle, the next send reaches Redis, not the local path."""
    other = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("other"))
    elsewhere = await other.new_channel()
    await layer.send(elsewhere, {"type": "before"})  # leaves an idle connection in the pool
    assert await asyncio.wait_for(other.receive(elsewhere), 5) == {"type": "before"}
    redis_server.restart(empty=True)
    await layer.send(elsewhere, {"type": "after"})
    assert (layer.dropped, layer.breaker.stats().fallback_calls) == (0, 0)
    assert await asyncio.wait_for(other.receive(elsewhere), 5) == {"type": "after"}
    await other.close()


async def test_idle_consumer_rejoins_its_groups_after_an_unnoticed_empty_restart(
    layer: BreakerChannelLayer, redis_server: RedisServer
) -> None:
    """Redis restarts empty while a consumer waits in receive: no error, no transition, yet
    the consumer's blocking pop reconnects, the layer re-writes its group memberships, and a
    group_send from another process reaches it again."""
    other = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("other"))
    mine = await layer.new_channel()
    await layer.group_add("room", mine)
    waiting = asyncio.ensure_future(layer.receive(mine))
    await asyncio.sleep(0.1)  # the pop is blocked in Redis
    with capture_events() as events:
        redis_server.restart(empty=True)
        client = redis_server.client()
        try:
            key = layer.redis._group_key("room")
            for _ in range(200):  # the reconnect and the re-write run on this loop
                if client.zscore(key, mine) is not None:
                    break
                await asyncio.sleep(0.02)
            assert client.zscore(key, mine) is not None
        finally:
            client.close()
    assert layer.breaker.state.value == "closed"
    assert [e["event"] for e in events if e["event"] == "channels_groups_resynced"]
    await other.group_send("room", {"type": "after.restart"})
    assert await asyncio.wait_for(waiting, 5) == {"type": "after.restart"}
    await other.close()


async def test_flush_clears_redis_and_local_state(
    layer: BreakerChannelLayer, redis_server: RedisServer
) -> None:
    """flush() empties Redis (groups and messages) and the local queues and mirror."""
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    await layer.send(channel, {"type": "m"})
    client = redis_server.client()
    assert client.keys("asgi*")
    await layer.flush()
    assert client.keys("asgi*") == []
    assert len(layer.mirror) == 0
    client.close()


async def test_flush_raises_while_open(layer: BreakerChannelLayer) -> None:
    """flush() is an admin call: it says so when Redis could not be flushed."""
    layer.breaker.force_open()
    with pytest.raises(BreakerOpenError):
        await layer.flush()


async def test_close_detaches_from_the_breaker(redis_server: RedisServer) -> None:
    """After close() the shared breaker no longer calls into the layer."""
    breaker = fast_breaker("close")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m"})
    assert await layer.receive(channel) == {"type": "m"}
    await layer.close()
    assert layer._listener not in breaker._events.listeners
    breaker.force_open()
    breaker.reset()


async def test_transition_queued_before_close_starts_no_work(redis_server: RedisServer) -> None:
    """A breaker change already on its way to the loop when close() runs starts no resync afterwards."""
    breaker = fast_breaker("close-race")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker)
    await layer.group_add("g", await layer.new_channel())
    breaker.force_open()
    breaker.reset()  # the layer hears of it on its loop, a tick later: after close()
    await layer.close()
    for _ in range(5):
        await asyncio.sleep(0)
    names = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]
    assert not [n for n in names if n.startswith("BreakerChannelLayer.")], names
    assert layer.mirror.groups  # nothing was forgotten, only no work started


async def test_discard_during_outage_reaches_redis_on_recovery(
    layer: BreakerChannelLayer, redis_server: RedisServer
) -> None:
    """A member that leaves while Redis is down is removed from the Redis group once it is back."""
    stay, leave = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", stay)
    await layer.group_add("g", leave)
    redis_server.stop()
    layer.breaker.force_open()
    await layer.group_discard("g", leave)
    redis_server.start()
    client = redis_server.client()
    with capture_events() as events:
        layer.breaker.reset()  # back to closed: the resync runs
        for _ in range(250):
            if any(e["event"] == "channels_groups_resynced" for e in events):
                break
            await asyncio.sleep(0.02)
    assert [m.decode() for m in client.zrange("asgi:group:g", 0, -1)] == [stay]
    resynced = [e for e in events if e["event"] == "channels_groups_resynced"]
    assert (resynced[0]["memberships"], resynced[0]["discards"]) == (1, 1)
    client.close()


async def test_fallback_logged_once_per_outage(layer: BreakerChannelLayer) -> None:
    """Many calls served in-process during one outage log one fallback_used warning."""
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    with capture_events() as events:
        layer.breaker.force_open()
        for _ in range(50):
            await layer.group_send("g", {"type": "m"})
            await layer.receive(channel)
    warnings = [e for e in events if e["event"] == "fallback_used"]
    assert len(warnings) == 1
    assert warnings[0]["integration"] == "channels"
    assert layer.breaker.stats().fallback_calls >= 50


def test_breaker_by_name_is_the_shared_one(redis_server: RedisServer) -> None:
    """CONFIG "breaker" names the process-wide breaker, which adopts the layer's Redis URL for its probe."""
    from redis_breaker import get_breaker

    layer = BreakerChannelLayer(hosts(redis_server), breaker="channels-shared")
    assert layer.breaker is get_breaker("channels-shared")
    assert isinstance(layer.breaker, Breaker)
    assert layer.breaker.url == redis_server.url


async def test_local_delivery_from_another_thread_wakes_the_consumer(
    layer: BreakerChannelLayer,
) -> None:
    """Open, a group_send made on another thread's event loop reaches a consumer waiting on this one."""
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    layer.breaker.force_open()
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0.05)
    sender = threading.Thread(
        target=lambda: asyncio.run(layer.group_send("g", {"type": "from.thread"}))
    )
    sender.start()
    assert await asyncio.wait_for(receiving, 2) == {"type": "from.thread"}
    sender.join()


def test_kept_messages_honour_capacity_and_expiry(redis_server: RedisServer) -> None:
    """Open, a channel of another process takes its capacity of kept messages; they expire, counted."""
    from redis_breaker.channels import metrics

    breaker = fast_breaker("kept")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker, capacity=2, expiry=10,
                                channel_capacity={"big": 3})
    breaker.force_open()

    async def scenario(frozen: object) -> None:
        with capture_events() as events:
            await layer.send("small", {"n": 1})
            await layer.send("small", {"n": 2})
            with pytest.raises(ChannelFull):
                await layer.send("small", {"n": 3})
            for n in range(3):
                await layer.send("big", {"n": n})
            with pytest.raises(ChannelFull):
                await layer.send("big", {"n": 3})
            frozen.tick(11)  # type: ignore[attr-defined]
            await layer.send("small", {"n": 4})  # room again: the two before expired
            layer.pending.sweep()
        assert (len(layer.pending), layer.expired) == (1, 5)
        expired = [e for e in events if e["event"] == "channels_messages_expired"]
        assert sorted((e["channel"], e["messages"]) for e in expired) == [
            ("big", 3), ("small", 2)]
        assert metrics.counts()[("kept", "expired")] >= 5

    with freeze_time("2025-01-01 12:00:00") as frozen:
        asyncio.run(scenario(frozen))
    breaker.reset()
