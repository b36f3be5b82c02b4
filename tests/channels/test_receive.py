"""receive(): idle blocking pops on a healthy Redis, and Redis errors, never reach the consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.exceptions as rex
from channels_redis.core import RedisChannelLayer

from redis_breaker.channels import BreakerChannelLayer
from redis_breaker.channels.loops import cancel_and_wait
from redis_breaker.channels.remote import read_timeout
from tests.harness import RedisServer

from .conftest import fast_breaker, hosts

READ_TIMEOUT = 1.0
IDLE_S = 2.5  # longer than the socket read timeout
DEADLINE_S = 10.0


def _address_entry(server: RedisServer) -> dict[str, object]:
    return hosts(server, READ_TIMEOUT)[0]


def _host_port_entry(server: RedisServer) -> dict[str, object]:
    return {"host": server.host, "port": server.port, "socket_timeout": READ_TIMEOUT,
            "socket_connect_timeout": READ_TIMEOUT}


@pytest.mark.parametrize("entry", [_address_entry, _host_port_entry], ids=["address", "host-port"])
async def test_plain_channels_redis_idle_receive_times_out(
    redis_server: RedisServer, entry: Callable[[RedisServer], dict[str, object]]
) -> None:
    """The hazard itself: channels_redis's 5 s blocking pop on a 1 s read timeout raises on a healthy, idle Redis.

    Only where channels_redis applies the entry's read timeout to its pool:
    channels_redis 4.0 builds an ``address`` entry's pool from the URL alone
    (redis-py's default read timeout: none in redis-py 5), so there the
    idle receive just waits, with no error (and no timeout at all if Redis hangs).
    """
    layer = RedisChannelLayer(hosts=[entry(redis_server)])
    applied = read_timeout(layer.create_pool(0))
    channel = await layer.new_channel()
    receiving = asyncio.ensure_future(layer.receive(channel))
    if applied is not None and applied < layer.brpop_timeout:
        with pytest.raises(rex.TimeoutError):
            await asyncio.wait_for(receiving, IDLE_S + 2)
    else:
        done, _ = await asyncio.wait((receiving,), timeout=IDLE_S)
        assert not done, receiving.result() if done else None
        receiving.cancel()
        await asyncio.wait((receiving,))
    await layer.close_pools()


async def test_idle_receive_beyond_socket_timeout_is_no_error(redis_server: RedisServer) -> None:
    """An idle receive that outlasts the read timeout raises nothing, counts nothing, then gets its message."""
    breaker = fast_breaker("idle")
    layer = BreakerChannelLayer(hosts(redis_server, READ_TIMEOUT), breaker=breaker)
    assert layer.redis.brpop_timeout < READ_TIMEOUT
    channel = await layer.new_channel()
    receiving = asyncio.ensure_future(layer.receive(channel))
    done, _ = await asyncio.wait((receiving,), timeout=IDLE_S)
    assert not done, receiving.result() if done else None
    await layer.send(channel, {"type": "late.hello"})
    assert await asyncio.wait_for(receiving, 2) == {"type": "late.hello"}
    stats = breaker.stats()
    assert (stats.consecutive_failures, stats.window_failures, stats.fallback_calls) == (0, 0, 0)
    await layer.close()
    breaker.reset()


async def test_pop_longer_than_read_timeout_is_checked_not_counted(redis_server: RedisServer) -> None:
    """When a pop does time out (pop longer than the read timeout), a PING tells idle from down: no failure."""
    breaker = fast_breaker("idle-ping")
    layer = BreakerChannelLayer(hosts(redis_server, READ_TIMEOUT), breaker=breaker)
    layer.redis.brpop_timeout = 5  # what channels_redis does by default
    channel = await layer.new_channel()
    receiving = asyncio.ensure_future(layer.receive(channel))
    done, _ = await asyncio.wait((receiving,), timeout=IDLE_S)
    assert not done, receiving.result() if done else None
    await layer.send(channel, {"type": "late.hello"})
    assert await asyncio.wait_for(receiving, 7) == {"type": "late.hello"}
    stats = breaker.stats()
    assert (stats.consecutive_failures, stats.window_failures, stats.fallback_calls) == (0, 0, 0)
    await layer.close()
    breaker.reset()


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
async def test_receive_survives_outage_and_serves_local_messages(
    redis_server: RedisServer, fault: str
) -> None:
    """A receive pending when Redis goes away raises nothing and returns the next message sent in-process."""
    breaker = fast_breaker("recv")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker)
    channel = await layer.new_channel()
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0.1)  # the blocking pop is in flight
    if fault == "stopped":
        redis_server.stop()
    else:
        redis_server.freeze()
    breaker.force_open("test: outage")
    await layer.send(channel, {"type": "local.hello"})
    assert await asyncio.wait_for(receiving, 3) == {"type": "local.hello"}
    # And again, with no pop in flight: the next receive waits on the local queue.
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0.7)
    assert not receiving.done()
    await layer.send(channel, {"type": "local.again"})
    assert await asyncio.wait_for(receiving, 3) == {"type": "local.again"}
    if fault == "frozen":
        redis_server.thaw()
    breaker.reset()
    await layer.close()


async def test_receive_failures_open_the_breaker_without_raising(redis_server: RedisServer) -> None:
    """An idle consumer whose blocking pop keeps failing trips the breaker and never sees an error."""
    breaker = fast_breaker("recv-trip")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker)
    channel = await layer.new_channel()
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0.1)
    redis_server.stop()
    for _ in range(200):
        if breaker.is_open:
            break
        await asyncio.sleep(0.02)
    assert breaker.is_open
    assert not receiving.done()
    receiving.cancel()
    await asyncio.wait((receiving,))
    await layer.close()
    breaker.reset()



async def test_cancel_ends_receive_even_as_a_transition_wakes_it(redis_server: RedisServer) -> None:
    """Cancelling a receive in any tick around a breaker transition ends it, instead of leaving it waiting forever."""
    breaker = fast_breaker("recv-cancel")
    layer = BreakerChannelLayer(hosts(redis_server), breaker=breaker)
    channel = await layer.new_channel()
    breaker.force_open("test: outage")
    # The transition wakes the Redis side of receive through its loop a few ticks later;
    # the cancellation lands in each of those ticks in turn.
    for ticks in range(8):
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0.05)  # waiting for the breaker to change
        breaker.force_open("test: another transition")
        for _ in range(ticks):
            await asyncio.sleep(0)
        receiving.cancel()
        done, _ = await asyncio.wait((receiving,), timeout=10)
        assert done, f"receive ignored its cancellation {ticks} ticks after a transition"
        assert receiving.cancelled()
    breaker.reset()
    await layer.close()


async def test_backup_cleanup_cut_by_a_hung_redis_is_retried_not_leaked(
    redis_server: RedisServer,
) -> None:
    """The task channels_redis starts after a receive to pop the message's backup copy,
    cut by a frozen Redis: it waits for Redis instead of failing unretrieved (the copy
    would be delivered again), and close() does not wait for it during an outage."""
    layer = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("backup"))
    probe = redis_server.client()
    try:
        channel = await layer.new_channel()
        key = "asgi" + layer.redis.non_local_name(channel)
        backup = layer.redis._backup_channel_name(key)
        await layer.send(channel, {"type": "warm"})  # a pooled connection for the cleanup
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "warm"}
        await asyncio.wait_for(layer.redis.wait_received(), 5)
        probe.zadd(backup, {b"received already": 1.0})
        redis_server.freeze()
        cleanup = asyncio.ensure_future(layer.redis._clean_receive_backup(0, key))
        await asyncio.sleep(1.5)  # past the 0.5 s read timeout: a first attempt failed
        assert not cleanup.done()
        redis_server.thaw()
        await asyncio.wait_for(cleanup, 10)
        assert probe.zcard(backup) == 0

        # During an outage, close() gives a waiting cleanup up instead of hanging.
        probe.zadd(backup, {b"received already": 1.0})
        redis_server.freeze()
        layer.redis.receive_cleaners.append(
            asyncio.ensure_future(layer.redis._clean_receive_backup(0, key)))
        await asyncio.sleep(1.5)
        await asyncio.wait_for(layer.redis.close_pools(), 10)
        redis_server.thaw()
    finally:
        probe.close()
        layer.breaker.reset()
        await layer.close()


async def test_a_receive_cancelled_as_its_message_arrives_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """A consumer's receive cancelled (a wait_for that timed out) just as its Redis read
    took the message: the channel's next receive returns that message."""
    layer = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("cancelled"))
    sender = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("cancelled-sender"))
    try:
        waiting = asyncio.ensure_future(layer.receive("jobs"))
        state = layer._loops.get(asyncio.get_running_loop())
        for _ in range(200):
            if state is not None and "jobs" in state.pending:
                break
            await asyncio.sleep(0.01)
            state = layer._loops.get(asyncio.get_running_loop())
        assert state is not None
        # Cancel the consumer the moment its Redis read finishes, before it is handed over.
        state.pending["jobs"].add_done_callback(lambda _task: waiting.cancel())
        await sender.send("jobs", {"type": "job", "n": 1})
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await asyncio.wait_for(layer.receive("jobs"), 10) == {"type": "job", "n": 1}
    finally:
        await sender.close()
        await layer.close()


async def _cancel_as_redis_hands_over(layer: Any, probe: Any) -> None:
    """Start a receive of "jobs", let Redis pop a message for it, cancel it before its loop
    reads the reply."""
    waiting = asyncio.ensure_future(layer.receive("jobs"))
    deadline = time.monotonic() + DEADLINE_S
    while int(probe.info("clients")["blocked_clients"]) < 1:  # its BZPOPMIN waits in Redis
        assert time.monotonic() < deadline, "the receive never blocked in Redis"
        await asyncio.sleep(0.01)
    # From this loop's thread, without yielding to it: Redis pops the message for the
    # blocked consumer and answers it; the loop has not read that answer yet.
    payload = layer.serialize({"type": "job", "n": 1})
    assert probe.zadd(layer.prefix + "jobs", {payload: time.time()}) == 1
    assert probe.zcard(layer.prefix + "jobs") == 0  # taken by the pop
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_plain_channels_redis_loses_a_message_its_cancelled_receive_was_handed(
    redis_server: RedisServer,
) -> None:
    """The hazard itself: channels_redis cancels the pop, redis-py drops the connection and
    the reply, and the message is in no queue of Redis any more."""
    layer = RedisChannelLayer(hosts=hosts(redis_server, 5.0))
    probe = redis_server.client()
    try:
        await _cancel_as_redis_hands_over(layer, probe)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive("jobs"), 2.0)
        backup = layer._backup_channel_name(layer.prefix + "jobs")
        assert probe.zcard(layer.prefix + "jobs") == probe.zcard(backup) == 0
    finally:
        probe.close()
        await layer.flush()
        await layer.close_pools()


async def test_a_receive_cancelled_while_redis_hands_it_a_message_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """Redis has popped the message for the consumer's blocking pop and written the reply,
    and the consumer is cancelled before its loop reads it (a wait_for that timed out
    then). Cancelling the pop there drops the connection and the message with it: it is
    in no queue of Redis any more. The channel's next receive returns it."""
    layer = BreakerChannelLayer(hosts(redis_server, 5.0), breaker=fast_breaker("in-flight"))
    probe = redis_server.client()
    try:
        await _cancel_as_redis_hands_over(layer, probe)
        assert await asyncio.wait_for(layer.receive("jobs"), DEADLINE_S) == {"type": "job", "n": 1}
        # Nothing left behind: no second copy, no backup copy.
        await asyncio.wait_for(layer.redis.wait_received(), DEADLINE_S)
        assert probe.zcard(layer.redis._backup_channel_name(layer.redis.prefix + "jobs")) == 0
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive("jobs"), 1.0)
    finally:
        probe.close()
        await layer.close()


async def test_a_pop_that_took_its_cancellation_for_a_timeout_is_not_cut_again(
    redis_server: RedisServer,
) -> None:
    """A consumer's receive cancelled while its pop takes that cancellation for a read
    timeout (Python 3.10's async_timeout can) and pops on: the pop is left to end, and
    a message Redis hands it goes to the channel's next receive.

    Cancelling it again could land as Redis answers, and a pop cut there loses its
    message (see the plain channels_redis test above). The wrapper below loses one
    cancellation the same way, on every Python.
    """
    layer = BreakerChannelLayer(hosts(redis_server, 5.0), breaker=fast_breaker("lost-cancel"))
    sender = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("lost-cancel-sender"))
    probe = redis_server.client()
    real = layer.redis.receive_at
    cancels: list[str] = []

    async def loses_one_cancellation(channel: str, index: int) -> Any:
        try:
            return await real(channel, index)
        except asyncio.CancelledError:
            cancels.append("cancelled")
            if len(cancels) > 1:
                raise
        return await real(channel, index)  # pops on, as after a read timeout

    layer.redis.receive_at = loses_one_cancellation
    try:
        channel = await layer.new_channel()
        waiting = asyncio.ensure_future(layer.receive(channel))
        deadline = time.monotonic() + DEADLINE_S
        while int(probe.info("clients")["blocked_clients"]) < 1:
            assert time.monotonic() < deadline, "the receive never blocked in Redis"
            await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # The pop lives on, blocked in Redis again; a message sent now is handed to it.
        while int(probe.info("clients")["blocked_clients"]) < 1:
            assert time.monotonic() < deadline, "the pop did not pop on"
            await asyncio.sleep(0.01)
        await sender.send(channel, {"type": "job", "n": 1})
        assert await asyncio.wait_for(layer.receive(channel), DEADLINE_S) == {"type": "job",
                                                                             "n": 1}
        assert cancels == ["cancelled"]  # never cut a second time
    finally:
        probe.close()
        await sender.close()
        await layer.close()


async def test_stopping_a_task_that_took_its_cancellation_for_a_timeout() -> None:
    """The layers' tasks end when stopped, even one that lost a cancellation.

    Before Python 3.11 redis-py's read timeout turns a cancellation landing
    as it fires into that timeout; a loop that reads on after a timeout then
    carries on. Stopping cancels again until the task has ended.
    """
    lost: list[bool] = []

    async def reads_on() -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(True)

    task = asyncio.ensure_future(reads_on())
    await asyncio.sleep(0)
    # wait_for cancels only cancel_and_wait's own wait: a stuck stop fails here.
    await asyncio.wait_for(cancel_and_wait((task,)), DEADLINE_S)
    assert task.cancelled()
    assert lost == [True]
