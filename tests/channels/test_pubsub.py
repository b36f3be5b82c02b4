"""BreakerPubSubChannelLayer on a real redis-server: healthy, open, real faults, recovery.

Two layers on one Redis stand for two server processes (each has its own
subscriptions, as a process has); the fault tests stop, freeze or restart the
server for real. ``test_pubsub_workers.py`` runs two real processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from channels_redis.pubsub import RedisPubSubChannelLayer
from freezegun import freeze_time

from redis_breaker import Breaker, State
from redis_breaker.channels import BreakerPubSubChannelLayer, metrics, safe_group_send
from redis_breaker.testing import capture_events
from tests.harness import RedisServer

from .conftest import fast_breaker, hosts
from .consumers import app_for

DEADLINE_S = 15.0


async def until(predicate: Any, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def nothing(layer: BreakerPubSubChannelLayer, channel: str, timeout: float = 0.5) -> bool:
    try:
        await asyncio.wait_for(layer.receive(channel), timeout)
    except asyncio.TimeoutError:
        return True
    return False


@pytest.fixture
def make_layer(redis_server: RedisServer) -> Iterator[Any]:
    made: list[tuple[str, BreakerPubSubChannelLayer, Breaker]] = []

    def make(alias: str, server: RedisServer | None = None,
             **config: Any) -> BreakerPubSubChannelLayer:
        breaker = fast_breaker(alias)
        layer = BreakerPubSubChannelLayer(hosts(server or redis_server), breaker=breaker,
                                          **config)
        channel_layers.set(alias, layer)
        made.append((alias, layer, breaker))
        return layer

    yield make
    for alias, _layer, breaker in made:
        channel_layers.backends.pop(alias, None)
        breaker.reset()


@pytest.fixture
async def pair(make_layer: Any) -> AsyncIterator[tuple[BreakerPubSubChannelLayer,
                                                      BreakerPubSubChannelLayer]]:
    a, b = make_layer("pubsub-a"), make_layer("pubsub-b")
    yield a, b
    for layer in (a, b):
        await layer.close()


# ----------------------------------------------------------------- healthy
async def test_healthy_is_channels_redis(pair: Any) -> None:
    """Closed: send, receive, groups across two processes go through Redis, nothing counted."""
    a, b = pair
    mine, theirs = await a.new_channel(), await b.new_channel()
    assert mine.startswith("asgispecific.")
    await b.send(mine, {"type": "hello", "n": 1})
    assert await asyncio.wait_for(a.receive(mine), 5) == {"type": "hello", "n": 1}
    await a.group_add("room", mine)
    await b.group_add("room", theirs)
    await a.group_send("room", {"type": "chat"})
    assert await asyncio.wait_for(a.receive(mine), 5) == {"type": "chat"}
    assert await asyncio.wait_for(b.receive(theirs), 5) == {"type": "chat"}
    assert a.breaker.stats().fallback_calls == 0
    assert (a.local_only, a.uncertain, len(a.pending)) == (0, 0, 0)
    await a.group_discard("room", mine)
    await b.group_send("room", {"type": "again"})
    assert await asyncio.wait_for(b.receive(theirs), 5) == {"type": "again"}
    assert await nothing(a, mine)


async def test_close_ends_a_receive_task_that_lost_its_cancellation(make_layer: Any) -> None:
    """close() returns although the receive task took its cancellation for a read timeout.

    Before Python 3.11, redis-py's read timeout (``async_timeout``) turns a
    cancellation that lands as the timeout fires into that timeout, and
    ``get_message(timeout=...)`` answers None: the task reads on as if never
    cancelled (a teardown of the oldest session waited 120 s on it). The
    wrapper below loses one cancellation the same way, on every Python.
    """
    layer = make_layer("pubsub-lost-cancel")
    await layer.new_channel()
    pubsub = layer._get_layer()._shards[0]._pubsub
    real = pubsub.get_message
    reading = asyncio.Event()
    lost: list[bool] = []

    async def loses_one_cancellation(**kwargs: Any) -> Any:
        reading.set()
        try:
            return await real(**kwargs)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(True)
            return None

    pubsub.get_message = loses_one_cancellation
    await asyncio.wait_for(reading.wait(), DEADLINE_S)
    closing = asyncio.ensure_future(layer.close())
    # Not wait_for: cancelling a close() stuck on the task would cancel the task too.
    await asyncio.wait((closing,), timeout=DEADLINE_S)
    stuck = not closing.done()
    pubsub.get_message = real
    if stuck:
        closing.cancel()  # its second cancellation ends the task
        await asyncio.wait((closing,))
    assert (stuck, lost) == (False, [True])


async def test_parity_attributes(make_layer: Any) -> None:
    """channels_redis's public surface is there: extensions, serializer, per-loop layer, shards."""
    layer = make_layer("pubsub-parity")
    assert {"groups", "flush"} <= set(layer.extensions)
    message = {"a": True, "b": None, "c": {"d": []}}
    plain = RedisPubSubChannelLayer(hosts=layer.hosts)
    assert layer.serialize(message) == plain.serialize(message)
    assert layer.deserialize(layer.serialize(message)) == message
    loop_layer = layer._get_layer()
    assert loop_layer.channel_layer is layer
    assert layer._shards is loop_layer._shards  # delegated as channels_redis does
    assert layer.prefix == "asgi"
    await layer.flush()
    await layer.close()


def test_sync_send_and_loop_close(make_layer: Any) -> None:
    """async_to_sync senders work, and a closed loop's per-loop layer is dropped."""
    layer = make_layer("pubsub-sync")
    loop = asyncio.new_event_loop()
    channel = loop.run_until_complete(layer.new_channel())
    async_to_sync(layer.send)(channel, {"type": "sync"})
    assert loop.run_until_complete(asyncio.wait_for(layer.receive(channel), 5)) == {
        "type": "sync"}
    loop.close()
    assert len(layer._layers) == 0


# -------------------------------------------------------------------- open
async def test_open_own_channels_and_groups_are_served_here(pair: Any) -> None:
    """Open: sends and group sends reach this process's channels at once; nothing raises."""
    a, _b = pair
    first, second = await a.new_channel(), await a.new_channel()
    await a.group_add("room", first)
    await a.group_add("room", second)
    a.breaker.force_open()
    started = time.perf_counter()
    await a.send(first, {"type": "direct"})
    await a.group_send("room", {"type": "all"})
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0  # no Redis wait at all (deliberately loose: not a speed assertion)
    assert await asyncio.wait_for(a.receive(first), 1) == {"type": "direct"}
    assert await asyncio.wait_for(a.receive(first), 1) == {"type": "all"}
    assert await asyncio.wait_for(a.receive(second), 1) == {"type": "all"}
    # New channels and memberships work while open too.
    third = await a.new_channel()
    await a.group_add("room", third)
    assert not await a.send_to_group("room", {"type": "late"})
    assert await asyncio.wait_for(a.receive(third), 1) == {"type": "late"}
    assert a.local_only == 2
    assert metrics.counts()[(a.breaker.name, "local_only")] >= 2


async def test_open_send_to_another_process_is_kept_and_published_on_recovery(
        pair: Any, redis_server: RedisServer) -> None:
    """Redis stopped: sends to B's channel are kept by A, then reach B once, in order."""
    a, b = pair
    theirs = await b.new_channel()
    redis_server.stop()
    for n in range(30):
        await a.send(theirs, {"type": "m", "n": n})  # the first finds the outage
    # The others queue behind it, without waiting for Redis (the forwarder may hold
    # one while it tries Redis again).
    assert len(a.pending) >= 29
    redis_server.start()
    got = [(await asyncio.wait_for(b.receive(theirs), DEADLINE_S))["n"] for _ in range(30)]
    assert got == list(range(30))
    assert await nothing(b, theirs, 1.0)
    await until(lambda: a.forwarded == 30, "forwarded count")
    assert len(a.pending) == 0


async def test_kept_messages_wait_for_a_subscriber(make_layer: Any) -> None:
    """A kept message nobody is subscribed to yet is published again until someone is."""
    a, b = make_layer("pubsub-wait-a"), make_layer("pubsub-wait-b")
    a.breaker.force_open()
    await a.send("worker", {"type": "job", "n": 1})
    a.breaker.reset()
    a.forward_soon()
    await asyncio.sleep(0.5)
    assert len(a.pending) == 1  # PUBLISH reached nobody: still kept
    receive = asyncio.ensure_future(b.receive("worker"))
    assert await asyncio.wait_for(receive, DEADLINE_S) == {"type": "job", "n": 1}
    await a.close()
    await b.close()


async def test_a_send_made_while_a_kept_message_is_forwarded_queues_behind_it(
        make_layer: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forwarder's PUBLISH of message 0 reached nobody (its consumer had not subscribed
    again yet); the consumer subscribes and message 1 is sent before that PUBLISH has
    returned. Message 1 waits behind 0: the consumer gets 0, then 1."""
    a, b = make_layer("pubsub-order-a"), make_layer("pubsub-order-b")
    loop = asyncio.get_running_loop()
    breaker = a.breakers[0]
    real_trial = breaker.acall_as_trial
    first: list[Any] = []
    receiving: list[asyncio.Future[Any]] = []
    admin = redis_server.client()

    async def subscribe_and_send() -> None:
        receiving.append(asyncio.ensure_future(b.receive("worker")))
        await until(lambda: admin.pubsub_numsub("worker")[0][1] == 1, "B's subscription")
        await a.send("worker", {"type": "job", "n": 1})

    async def trial(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        result = await real_trial(fn, *args, **kwargs)
        if getattr(fn, "__name__", "") == "publish" and not first:
            first.append(result)
            asyncio.run_coroutine_threadsafe(subscribe_and_send(), loop).result(DEADLINE_S)
        return result

    monkeypatch.setattr(breaker, "acall_as_trial", trial)
    breaker.force_open()
    await a.send("worker", {"type": "job", "n": 0})
    breaker.reset()
    a.forward_soon()
    await until(lambda: receiving, "the forwarder's first PUBLISH")
    assert first == [0]  # nobody was subscribed yet
    got = [await asyncio.wait_for(receiving[0], DEADLINE_S),
           await asyncio.wait_for(b.receive("worker"), DEADLINE_S)]
    assert [m["n"] for m in got] == [0, 1]
    assert await nothing(b, "worker", 1.0)
    await until(lambda: a.forwarded == 2 and not a.pending, "both forwarded")
    admin.close()
    await a.close()
    await b.close()


async def test_kept_message_taken_by_a_local_receiver_is_not_published(make_layer: Any) -> None:
    a = make_layer("pubsub-local-take")
    a.breaker.force_open()
    await a.send("jobs", {"type": "job"})
    assert await asyncio.wait_for(a.receive("jobs"), 1) == {"type": "job"}
    assert len(a.pending) == 0
    await a.close()


def test_kept_messages_expire_counted(make_layer: Any) -> None:
    layer = make_layer("pubsub-expiry", expiry=10, capacity=2)
    layer.breaker.force_open()

    async def scenario(frozen: Any) -> None:
        with capture_events() as events:
            await layer.send("far", {"type": "old"})
            await layer.send("far", {"type": "old2"})
            with pytest.raises(ChannelFull):
                await layer.send("far", {"type": "over"})
            frozen.tick(11)
            await layer.send("far", {"type": "new"})
        assert layer.expired == 2
        assert any(e["event"] == "channels_messages_expired" for e in events)
        assert len(layer.pending) == 1

    with freeze_time("2026-01-01 00:00:00") as frozen:
        async_to_sync(scenario)(frozen)


async def test_receive_never_raises_and_resubscribes_after_an_empty_restart(
        pair: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Consumers waiting through a stop and an empty restart get later messages on the same channels.

    The receive task counts its failures against the breaker and waits while it is
    open, instead of logging an exception and reconnecting every second.
    """
    a, b = pair
    mine = await a.new_channel()
    await a.group_add("room", mine)
    theirs = await b.new_channel()
    waiting = asyncio.ensure_future(a.receive(mine))
    await asyncio.sleep(0.2)
    redis_server.stop()
    await a.group_send("room", {"type": "during"})  # served here
    assert await asyncio.wait_for(waiting, 5) == {"type": "during"}
    waiting = asyncio.ensure_future(a.receive(mine))
    # B subscribes while Redis is down: applied on recovery.
    await b.group_add("room", theirs)
    await until(lambda: a.breaker.state is not State.CLOSED, "A's breaker to open")
    redis_server.restart(empty=True)
    await until(lambda: a.breaker.state is State.CLOSED and b.breaker.state is State.CLOSED,
                "breakers to close")
    client = redis_server.client()
    await until(lambda: len(client.pubsub_channels()) >= 3, "subscriptions re-applied")
    client.close()
    await b.group_send("room", {"type": "after"})
    assert await asyncio.wait_for(waiting, DEADLINE_S) == {"type": "after"}
    assert await asyncio.wait_for(b.receive(theirs), DEADLINE_S) == {"type": "after"}
    assert not waiting.cancelled()
    assert not [r for r in caplog.records if "receive task" in r.getMessage()]


async def test_a_publish_that_ran_after_a_thaw_is_received_once(
        make_layer: Any, redis_server: RedisServer) -> None:
    """A publish that timed out on a frozen server is served here; Redis's copy on thawing is dropped."""
    layer = make_layer("pubsub-thaw")
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "warm"})
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "warm"}
    redis_server.freeze()
    await layer.send(channel, {"type": "once"})  # written, then timed out
    assert layer.breaker.stats().fallback_calls >= 1
    assert await asyncio.wait_for(layer.receive(channel), 1) == {"type": "once"}
    redis_server.thaw()
    await until(lambda: layer.breaker.state is State.CLOSED, "breaker to close")
    assert await nothing(layer, channel, 2.0)
    await layer.close()


async def test_an_uncertain_publish_for_another_process_is_counted_not_repeated(
        pair: Any, redis_server: RedisServer) -> None:
    a, b = pair
    theirs = await b.new_channel()
    await a.send(theirs, {"type": "warm"})
    assert await asyncio.wait_for(b.receive(theirs), 5) == {"type": "warm"}
    redis_server.freeze()
    with capture_events() as events:
        await a.send(theirs, {"type": "maybe"})
    assert a.uncertain == 1
    assert any(e["event"] == "channels_message_uncertain" for e in events)
    redis_server.thaw()
    # The frozen server runs it on thawing: B gets it once (it is not published again).
    assert await asyncio.wait_for(b.receive(theirs), DEADLINE_S) == {"type": "maybe"}
    assert await nothing(b, theirs, 2.0)


async def test_a_publish_the_server_ended_unanswered_is_published_again(
        pair: Any, redis_server: RedisServer) -> None:
    """A PUBLISH held by the server (``CLIENT PAUSE WRITE``) when it is killed never ran:
    the connection ends unanswered, the message is kept, and B gets it once after the restart."""
    a, b = pair
    theirs = await b.new_channel()
    await a.send(theirs, {"type": "warm"})
    assert await asyncio.wait_for(b.receive(theirs), 5) == {"type": "warm"}
    admin = redis_server.client()
    admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    sending = asyncio.ensure_future(a.send(theirs, {"type": "again"}))
    # The PUBLISH waits in Redis behind the pause (a postponed client counts as blocked).
    await until(lambda: int(admin.info("clients")["blocked_clients"]) >= 1, "PUBLISH held")
    admin.close()
    with capture_events() as events:
        redis_server.kill()
        await asyncio.wait_for(sending, DEADLINE_S)
    assert a.uncertain == 0, events  # kept (the forwarder may be trying it right now)
    redis_server.start()
    assert await asyncio.wait_for(b.receive(theirs), DEADLINE_S) == {"type": "again"}
    await until(lambda: len(a.pending) == 0, "the kept message published")
    assert await nothing(b, theirs, 2.0)


async def _publish_error(answer: str) -> BaseException:
    """The error redis-py raises for a PUBLISH to a server that ``answer``s it that way
    (every command before it, redis-py's connection handshake, gets ``+OK``)."""
    import socket
    import struct

    from redis import asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        peer, _ = await loop.sock_accept(listener)
        try:
            while True:
                data = await loop.sock_recv(peer, 65536)
                if b"PUBLISH" in data.upper():
                    break
                # One +OK per command (redis-py may send two in one packet).
                commands = sum(line.startswith(b"*") for line in data.split(b"\r\n"))
                await loop.sock_sendall(peer, b"+OK\r\n" * commands)
            if answer == "reset":
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif answer == "silence":
                await asyncio.sleep(5)  # never answers
        finally:
            peer.close()

    server = asyncio.ensure_future(serve())
    client = aioredis.Redis(port=port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    try:
        await client.publish("asgi.x", b"m")
    except Exception as exc:
        return exc
    finally:
        server.cancel()
        await asyncio.wait((server,))
        listener.close()
        await client.connection_pool.disconnect()
    raise AssertionError("the PUBLISH did not fail")


@pytest.mark.parametrize(("answer", "maybe"), [("reset", False), ("close", False),
                                               ("silence", True)])
async def test_what_a_failed_publish_may_have_done(answer: str, maybe: bool) -> None:
    """Real redis-py errors: a server ending the connection unanswered ran nothing worth
    a doubt (published again); a read timeout may have (never again)."""
    from redis_breaker.channels.pubsub import _maybe_sent

    exc = await _publish_error(answer)
    assert _maybe_sent(exc) is maybe, repr(exc)


# ------------------------------------------------------------- consumers
async def test_websocket_consumers_stay_open_through_an_outage(
        pair: Any, redis_server: RedisServer) -> None:
    """A chat consumer on A keeps talking to A's members while Redis is down; B resumes after."""
    a, b = pair
    alice = WebsocketCommunicator(app_for("pubsub-a"), "/ws/chat/")
    carol = WebsocketCommunicator(app_for("pubsub-a"), "/ws/chat/")
    bob = WebsocketCommunicator(app_for("pubsub-b"), "/ws/chat/")
    for communicator in (alice, carol, bob):
        assert (await communicator.connect())[0]
    await alice.send_json_to({"say": "hi"})
    for communicator in (alice, carol, bob):
        assert (await communicator.receive_json_from(5))["text"] == "hi"
    redis_server.stop()
    for n in range(5):
        await alice.send_json_to({"say": f"down-{n}"})
        assert (await alice.receive_json_from(5))["text"] == f"down-{n}"
        assert (await carol.receive_json_from(5))["text"] == f"down-{n}"
    assert a.breaker.is_open
    assert await bob.receive_nothing(0.2)
    redis_server.start()
    await until(lambda: a.breaker.state is State.CLOSED and b.breaker.state is State.CLOSED,
                "breakers to close")
    client = redis_server.client()
    await until(lambda: client.pubsub_numsub("asgi__group__room")[0][1] == 2, "re-subscribed")
    client.close()
    await alice.send_json_to({"say": "back"})
    for communicator in (alice, carol, bob):
        assert (await communicator.receive_json_from(DEADLINE_S))["text"] == "back"
    for communicator in (alice, carol, bob):
        assert await communicator.receive_nothing(0.3)
        await communicator.disconnect()


def test_safe_group_send_says_whether_redis_took_it(make_layer: Any,
                                                    redis_server: RedisServer) -> None:
    make_layer("default")
    assert safe_group_send("room", {"type": "x"}, alias="default") is True
    redis_server.stop()
    results = [safe_group_send("room", {"type": "x"}, alias="default") for _ in range(6)]
    assert results[-1] is False


# ----------------------------------------------------------------- shards
async def test_one_dead_shard_leaves_the_other_on_redis(make_layer: Any,
                                                        redis_server: RedisServer) -> None:
    other = RedisServer().start()
    try:
        both = hosts(redis_server) + hosts(other)
        a = BreakerPubSubChannelLayer(both, breaker=fast_breaker("pubsub-shards-a"))
        b = BreakerPubSubChannelLayer(both, breaker=fast_breaker("pubsub-shards-b"))
        assert [x.name for x in a.breakers] == ["pubsub-shards-a", "pubsub-shards-a-shard1"]
        names = [await b.new_channel() for _ in range(12)]
        on = {i: [n for n in names if a._get_layer()._index(n) == i] for i in (0, 1)}
        assert on[0]
        assert on[1]
        other.stop()
        for name in names:
            await a.send(name, {"type": "m", "to": name})
        # The dead host's failures are its own breaker's; the live host's breaker saw none.
        # Each send to the dead host fails once (later sends to a channel queue behind its
        # kept message), and the forwarder, kicked by a failure below the threshold, may
        # fail its trial publishes too, until the breaker opens: at most the threshold,
        # plus the one publish that may be in flight in the forwarder's thread when it
        # does. Counted since the breakers were made: ``stats().fallback_calls`` is the
        # current outage's, counted again from zero when the breaker opens.
        dead, live = a.breakers[1].totals(), a.breakers[0].totals()
        threshold = a.breakers[1].config.failure_threshold
        assert 1 <= dead.failures <= threshold + 1
        assert sum(dead.fallbacks.values()) == len(on[1])
        assert (live.failures, sum(live.fallbacks.values())) == (0, 0)
        assert not a.breakers[0].is_open
        for name in on[0]:  # the live host's traffic went through Redis
            assert await asyncio.wait_for(b.receive(name), 5) == {"type": "m", "to": name}
        assert len(a.pending) == len(on[1])
        other.start()
        for name in on[1]:
            assert await asyncio.wait_for(b.receive(name), DEADLINE_S) == {"type": "m",
                                                                           "to": name}
        for breaker in a.breakers + b.breakers:
            breaker.reset()
        await a.close()
        await b.close()
    finally:
        other.close()


# ----------------------------------------------------------------- checks
def test_system_checks_judge_the_pubsub_hosts() -> None:
    """The pub/sub backend's hosts get the core layer's checks (E023, W002), password masked."""
    from django.test import override_settings

    from redis_breaker.checks import check_channel_layers

    secret = "s3cr3t-Pa55"
    layers = {"default": {"BACKEND": "redis_breaker.channels.BreakerPubSubChannelLayer",
                          "CONFIG": {"hosts": [
                              {"address": f"redis://:{secret}@127.0.0.1:99999/0",
                               "socket_timeout": 0.5, "socket_connect_timeout": 0.5},
                              f"redis://:{secret}@127.0.0.1:6379/0"]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        found = check_channel_layers()
    assert [m.id for m in found] == ["redis_breaker.E023", "redis_breaker.W002"]
    assert 'CONFIG"]["hosts"][0]["address"]' in found[0].msg
    assert all(secret not in f"{m.msg} {m.hint}" for m in found)
