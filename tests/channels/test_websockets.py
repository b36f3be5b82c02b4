"""Real consumers on real Redis through WebsocketCommunicator: healthy, Redis gone, Redis back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from redis_breaker import State
from tests.harness import RedisServer

from .conftest import Process
from .consumers import ROOM, app_for

DEADLINE_S = 10.0


async def connect(process: Process) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(app_for(process.alias), "/ws/chat/")
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def say(communicator: WebsocketCommunicator, text: str) -> None:
    await communicator.send_json_to({"say": text})


async def heard(communicator: WebsocketCommunicator, timeout: float = 2.0) -> str:
    event: dict[str, Any] = await communicator.receive_json_from(timeout)
    return str(event["text"])


async def until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_cross_process_delivery_while_healthy(two_processes: tuple[Process, Process]) -> None:
    """A message said on process A reaches the members on A and on B through Redis."""
    a, b = two_processes
    alice, bob = await connect(a), await connect(b)
    await say(alice, "hello")
    assert await heard(alice) == "hello"
    assert await heard(bob) == "hello"
    assert a.breaker.stats().fallback_calls == 0
    await alice.disconnect()
    await bob.disconnect()


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
async def test_outage_keeps_local_members_served_and_sockets_open(
    two_processes: tuple[Process, Process], redis_server: RedisServer, fault: str
) -> None:
    """With Redis stopped or hung, group messages still reach this process's members and no socket closes."""
    a, b = two_processes
    alice, carol, bob = await connect(a), await connect(a), await connect(b)
    if fault == "stopped":
        redis_server.stop()
    else:
        redis_server.freeze()

    # The first calls discover the outage; every one of them is still delivered locally.
    for n in range(8):
        await say(alice, f"during-{n}")
        assert await heard(alice) == f"during-{n}"
        assert await heard(carol) == f"during-{n}"
    assert a.breaker.is_open
    assert a.layer.redis.receive_count >= 0  # layer still usable
    # Nobody on B hears A while Redis is down, and no socket was closed anywhere.
    assert await bob.receive_nothing(0.2)
    assert await alice.receive_nothing(0.05)
    assert await carol.receive_nothing(0.05)
    for communicator in (alice, carol, bob):
        await communicator.disconnect()


async def test_redis_restarted_empty_cross_process_delivery_resumes_without_reconnect(
    two_processes: tuple[Process, Process], redis_server: RedisServer
) -> None:
    """After Redis comes back empty, memberships are re-applied and A reaches B on the same sockets."""
    a, b = two_processes
    alice, bob = await connect(a), await connect(b)
    redis_server.stop()
    for n in range(6):
        await say(alice, f"down-{n}")
        assert await heard(alice) == f"down-{n}"
    await say(bob, "bob-down")
    assert await heard(bob) == "bob-down"
    assert a.breaker.is_open

    redis_server.restart(empty=True)
    client = redis_server.client()
    # No user traffic: the probe finds Redis, the listener re-joins both processes' members.
    # (Half-open is not enough: a group_send rejected there is served in-process only.)
    await until(lambda: a.breaker.state is State.CLOSED and b.breaker.state is State.CLOSED,
                "breakers to close")
    await until(lambda: client.zcard(f"asgi:group:{ROOM}") == 2, "memberships re-applied")

    # A consumer may first meet a pooled connection that died with the old server.
    await say(alice, "back")
    assert await heard(alice, DEADLINE_S) == "back"
    assert await heard(bob, DEADLINE_S) == "back"
    await say(bob, "reply")
    assert await heard(alice, DEADLINE_S) == "reply"
    assert await heard(bob, DEADLINE_S) == "reply"
    client.close()
    await alice.disconnect()
    await bob.disconnect()
