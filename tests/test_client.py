"""``redis_breaker.client()``: a redis-py client whose every command goes through a breaker."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

import redis_breaker
from redis_breaker import BreakerOpenError, State, get_breaker
from redis_breaker.testing import forced_open
from tests.harness import RedisServer

TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def _commands(client: Any) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_commands_pipelines_scripts_and_locks_pass_while_closed(redis_server: RedisServer) -> None:
    """Everything redis-py does reaches Redis through the breaker, and succeeds."""
    client = redis_breaker.client(redis_server.url, **TIMEOUTS)
    assert redis_breaker._client.is_guarded(client)
    client.set("k", 1)
    pipe = client.pipeline()
    pipe.incr("k").get("k")
    assert pipe.execute() == [2, b"2"]
    def transfer(p: Any) -> None:
        p.multi()
        p.set("t", "x")

    assert client.transaction(transfer, "k") == [True]
    assert client.register_script("return redis.call('GET', KEYS[1])")(keys=["t"]) == b"x"
    lock = client.lock("job", timeout=5)
    assert lock.acquire(blocking=False)
    lock.release()
    assert get_breaker().stats().consecutive_failures == 0
    assert get_breaker().url == redis_server.url  # adopted: the probe PINGs it


def test_nothing_reaches_redis_while_open(redis_server: RedisServer) -> None:
    """While open, commands, pipelines, locks and subscriptions raise and send nothing."""
    client = redis_breaker.client(redis_server.url, **TIMEOUTS)
    watcher = redis_server.client()
    with forced_open(get_breaker()):
        before = _commands(watcher)
        calls = [lambda: client.get("k"), lambda: client.pipeline().set("k", 1).execute(),
                 lambda: client.lock("job").acquire(blocking=False),
                 lambda: client.pubsub().subscribe("news"),
                 lambda: client.register_script("return 1")()]
        for call in calls:
            with pytest.raises(BreakerOpenError):
                call()
        assert _commands(watcher) - before == 1  # the INFO itself
    assert not watcher.exists("job")


def test_connection_errors_are_counted_and_open_the_breaker(redis_server: RedisServer) -> None:
    """A stopped Redis: each call raises its ConnectionError and counts; then the breaker opens."""
    client = redis_breaker.client(redis_server.url, retry=None, **TIMEOUTS)
    client.ping()
    redis_server.stop()
    breaker = get_breaker()
    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(redis.ConnectionError):
            client.get("k")
    assert breaker.state is State.OPEN
    with pytest.raises(BreakerOpenError):
        client.get("k")


def test_a_view_leaves_the_original_alone(redis_server: RedisServer) -> None:
    """Guarding an existing client neither guards it nor closes what it shares when collected."""
    raw = redis.Redis.from_url(redis_server.url, **TIMEOUTS)
    raw.set("k", "v")
    view = redis_breaker.client(raw)
    assert view is not raw
    assert view.connection_pool is raw.connection_pool
    with forced_open(get_breaker()):
        with pytest.raises(BreakerOpenError):
            view.get("k")
        assert raw.get("k") == b"v"  # the original is not guarded
    del view
    gc.collect()
    assert raw.get("k") == b"v"  # its pool is still open


def test_wrong_targets_are_refused() -> None:
    """Neither a URL nor a client, or options for an existing client, are errors."""
    with pytest.raises(ValueError, match="no URL"):
        redis_breaker.client(breaker="nameless")
    with pytest.raises(TypeError, match="expected a Redis URL or a redis-py client"):
        redis_breaker.client(42)
    with pytest.raises(TypeError, match="keyword options"):
        redis_breaker.client(redis.Redis(), socket_timeout=1)


async def test_asyncio_client_pipeline_and_open_state(redis_server: RedisServer) -> None:
    """redis.asyncio: commands and pipelines go through the breaker; while open they raise."""
    client = redis_breaker.client(redis_server.url, asyncio=True, **TIMEOUTS)
    assert isinstance(client, aioredis.Redis)
    await client.set("k", 1)
    async with client.pipeline() as pipe:
        pipe.incr("k").get("k")
        assert await pipe.execute() == [2, b"2"]
    with forced_open(get_breaker()):
        with pytest.raises(BreakerOpenError):
            await client.get("k")
        with pytest.raises(BreakerOpenError):
            await client.pipeline().set("k", 3).execute()
    original = aioredis.Redis.from_url(redis_server.url)
    view = redis_breaker.client(original)
    assert await view.get("k") == b"2"
    await original.aclose()
    await client.aclose()
