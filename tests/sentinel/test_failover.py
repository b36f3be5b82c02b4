"""Kill the Sentinel master under the cache, the channel layer and Celery dispatch.

Each integration is configured the way its own library does Sentinel (django-redis
SentinelClient, channels_redis sentinel hosts, kombu's sentinel:// broker) and the
breaker gets no URL: it derives redis+sentinel:// from those settings. Callers see
no exception through the failover, the breaker opens and closes again on the
promoted replica, and nothing is lost: no stale cache value, every channel
message delivered, every task on the new master's queue exactly once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from django.core.cache import caches
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_breaker import Breaker, BreakerConfig, State, get_breaker
from redis_breaker._sentinel import parse_sentinel_url
from redis_breaker.cache import BreakerCache
from redis_breaker.celery import BreakerTask
from redis_breaker.channels import BreakerChannelLayer
from redis_breaker.testing import capture_events
from tests.harness import RedisSentinelCluster, RedisServer

from .conftest import FAST, SOCKET_TIMEOUT, wait_for


def assert_probes_the_sentinels(breaker: Breaker, cluster: RedisSentinelCluster) -> None:
    """The breaker has no URL of its own and adopted the sentinels of the integration."""
    assert breaker.config.url is None
    assert breaker.url is not None
    target = parse_sentinel_url(breaker.url)
    assert list(target.sentinels) == cluster.sentinels
    assert target.master_name == cluster.master_name


def transitions(events: list[dict[str, Any]], breaker: str = "default") -> list[tuple[str, str]]:
    return [(e["from_state"], e["to_state"]) for e in events
            if e["event"] == "breaker_state_changed" and e["breaker"] == breaker]


class Failover:
    """``wait_for_failover`` in a thread, so the test keeps calling through the failover."""

    def __init__(self, cluster: RedisSentinelCluster, old: RedisServer) -> None:
        self.new: RedisServer | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._wait, args=(cluster, old), daemon=True)
        self._thread.start()

    def _wait(self, cluster: RedisSentinelCluster, old: RedisServer) -> None:
        try:
            self.new = cluster.wait_for_failover(old)
        except BaseException as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> RedisServer:
        self._thread.join(90)
        if self.error is not None:
            raise self.error
        assert self.new is not None
        return self.new


# ------------------------------------------------------------------- cache
def test_cache_rides_through_a_failover(settings: Any,
                                        sentinel_cluster: RedisSentinelCluster) -> None:
    """django-redis SentinelClient behind a BreakerCache: writes during the failover go to
    the fallback and the journal, a key changed then never reads its pre-failover value,
    and the journal is replayed on the new master."""
    cluster = sentinel_cluster
    settings.REDIS_BREAKERS = {"default": FAST}
    settings.CACHES = {
        "redis": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://{cluster.master_name}/0",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                "SENTINELS": cluster.sentinels,
                "SOCKET_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT,
                # The breaker is the retry policy.
                "CONNECTION_POOL_KWARGS": {"retry": Retry(NoBackoff(), 0)},
            },
        },
        "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                    "OPTIONS": {"PRIMARY": "redis"}},
    }
    cache = caches["default"]
    assert isinstance(cache, BreakerCache)
    cache.set("changed", "old")
    cache.set("kept", "kept")
    breaker = cache.breaker
    assert_probes_the_sentinels(breaker, cluster)
    cluster.wait_for_replication()

    with capture_events() as events:
        old = cluster.kill_master()
        failover = Failover(cluster, old)
        n = 0
        written: dict[str, int] = {}
        while not failover.done or n < 10:
            key = f"during-{n}"
            cache.set(key, n)  # never raises
            written[key] = n
            n += 1
            if n == 5:
                # Five refused writes opened the breaker; the sentinels still name the
                # dead master for at least down-after-milliseconds.
                assert breaker.state is State.OPEN
                cache.set("changed", "new")
                assert cache.get("changed") == "new"  # the fallback, the journal covers it
            time.sleep(0.02)
        new = failover.result()
        seen: list[Any] = []

        def recovered() -> bool:
            seen.append(cache.get("changed"))
            return breaker.state is State.CLOSED and not cache._bind().journal.active

        wait_for(recovered, what="the breaker to close and the journal to be replayed")

    assert "old" not in seen
    assert cache.get("changed") is None  # replayed: deleted on the new master
    assert cache.get("kept") == "kept"   # replicated before the kill, served by the new master
    assert all(cache.get(key) in (None, value) for key, value in written.items())
    steps = transitions(events)
    assert steps[0] == ("closed", "open")
    assert steps[-1] == ("half_open", "closed")
    cache.set("after", 1)
    client = new.client()
    try:
        assert client.exists(":1:after") == 1
    finally:
        client.close()


# ----------------------------------------------------------------- channels
def sentinel_layer(cluster: RedisSentinelCluster, name: str) -> BreakerChannelLayer:
    breaker = Breaker(name, BreakerConfig(reset_timeout=0.05, max_reset_timeout=0.5,
                                          probe_timeout=0.5, failure_rate=None))
    host = {"sentinels": cluster.sentinels, "master_name": cluster.master_name,
            "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}
    return BreakerChannelLayer([host], breaker=breaker)


async def _until(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def test_channel_layer_rides_through_a_failover(
        sentinel_cluster: RedisSentinelCluster) -> None:
    """channels_redis Sentinel hosts behind BreakerChannelLayer: group_send never raises,
    this process's members get every message (in-process while the master is away),
    and delivery across processes resumes through the new master."""
    cluster = sentinel_cluster
    a, b = sentinel_layer(cluster, "proc-a"), sentinel_layer(cluster, "proc-b")
    try:
        for layer in (a, b):
            assert_probes_the_sentinels(layer.breaker, cluster)
        channel = await a.new_channel()
        await a.group_add("room", channel)
        assert await b.send_to_group("room", {"type": "m", "n": 0}) is True
        assert (await asyncio.wait_for(a.receive(channel), 10))["n"] == 0
        await asyncio.to_thread(cluster.wait_for_replication)

        with capture_events() as events:
            old = await asyncio.to_thread(cluster.kill_master)
            failover = Failover(cluster, old)
            sent: list[int] = []
            in_process: list[int] = []
            n = 1
            while not failover.done or n < 10:
                if not await a.send_to_group("room", {"type": "m", "n": n}):  # never raises
                    in_process.append(n)
                sent.append(n)
                n += 1
                await asyncio.sleep(0.05)
            await asyncio.to_thread(failover.result)

            async def closed() -> bool:
                return a.breaker.state is State.CLOSED

            await _until(closed, "proc-a's breaker to close on the new master")

            async def across() -> bool:
                return await b.send_to_group("room", {"type": "m", "n": -1})

            await _until(across, "proc-b to reach the new master")
            received: list[int] = []
            while -1 not in received:
                received.append((await asyncio.wait_for(a.receive(channel), 10))["n"])

        assert in_process, "no group_send met the failover"
        # Every message reached the member: in-process while the master was away,
        # through Redis before and after.
        assert sorted(x for x in received if x != -1) == sent
        assert ("closed", "open") in transitions(events, "proc-a")
        assert transitions(events, "proc-a")[-1] == ("half_open", "closed")
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------- Celery
@pytest.fixture
def sentinel_celery(settings: Any, sentinel_cluster: RedisSentinelCluster) -> Iterator[Celery]:
    settings.REDIS_BREAKERS = {"default": FAST}
    app = Celery("rb-sentinel", broker=sentinel_cluster.kombu_url, task_cls=BreakerTask,
                 set_as_current=False)
    app.conf.broker_transport_options = {"master_name": sentinel_cluster.master_name}
    app.conf.task_ignore_result = True

    @app.task(name="t.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    from redis_breaker.celery import outbox

    try:
        yield app
    finally:
        for relay in list(outbox._relays.values()):
            if relay.thread is not None:
                relay.thread.join(10)
        cached = getattr(app, "_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
        app.close()


def queued_ids(server: RedisServer, queue: str = "celery") -> list[str]:
    client = server.client()
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    return [json.loads(item)["headers"]["id"] for item in raw]


@pytest.mark.django_db(transaction=True)
def test_celery_dispatch_loses_no_task_through_a_failover(
        sentinel_celery: Celery, sentinel_cluster: RedisSentinelCluster) -> None:
    """A sentinel:// broker: dispatch never raises, tasks that meet the failover go to the
    outbox, and once the breaker closes on the new master every task is on its queue
    exactly once."""
    from redis_breaker.models import OutboxMessage

    cluster = sentinel_cluster
    add = sentinel_celery.tasks["t.add"]
    ids = [add.delay(i, 0).id for i in range(5)]
    breaker = get_breaker()
    assert_probes_the_sentinels(breaker, cluster)
    cluster.wait_for_replication()

    with capture_events() as events:
        old = cluster.kill_master()
        failover = Failover(cluster, old)
        n = 5
        while not failover.done or n < 15:
            ids.append(add.delay(n, 0).id)  # never raises
            n += 1
            time.sleep(0.05)
        new = failover.result()
        assert breaker.totals().fallbacks.get("celery"), "no dispatch met the failover"
        # No more dispatches: the probe finds the new master, the relay empties the outbox.
        wait_for(lambda: breaker.state is State.CLOSED
                 and not OutboxMessage.objects.exists(),
                 what="the breaker to close and the relay to empty the outbox")
    ids.append(add.delay(99, 0).id)
    on_new_master = queued_ids(new)
    assert sorted(on_new_master) == sorted(ids)  # every task, none twice
    steps = transitions(events)
    assert steps[0] == ("closed", "open")
    assert steps[-1] == ("half_open", "closed")
