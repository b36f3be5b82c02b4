"""Dispatch whatever the result backend, and AsyncResult while Redis is down.

Celery subscribes to a task's result on a Redis result backend before it
publishes (``backend.on_task_call``), on a connection that retries 20 times a
second apart: with the backend down, ``delay()`` would block and lose the task.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.backends.redis import RedisBackend

from redis_breaker import BreakerOpenError, State, get_breaker
from redis_breaker.celery import BreakerTask, ResultBackendUnavailable, protect
from redis_breaker.models import OutboxMessage
from tests.harness import RedisServer

from .conftest import join_relays, queued, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def other_redis() -> Iterator[RedisServer]:
    """A second redis-server, for a result backend that is not the broker's."""
    with RedisServer() as server:
        yield server


def _app(broker: str, backend: str | None) -> Celery:
    app = Celery("rb-results", broker=broker, backend=backend, task_cls=BreakerTask,
                 set_as_current=False)

    @app.task(name="t.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def _close(app: Celery) -> None:
    join_relays()
    cached = app.__dict__.pop("_redis_breaker_producers", None)
    if cached is not None:
        cached[1].connections.force_close_all()
    app.close()


@pytest.mark.parametrize("backend", ["same Redis", "another Redis", "file", "none"])
def test_dispatch_with_the_broker_down_goes_to_the_outbox_whatever_the_backend(
        redis_server: RedisServer, other_redis: RedisServer, tmp_path: Path,
        backend: str) -> None:
    """With the broker (and a backend on its server) stopped, delay() raises nothing, the
    breaker opens and every task is in the outbox, then in the queue after recovery."""
    url = {"same Redis": redis_server.url.replace("/0", "/1"),
           "another Redis": other_redis.url,
           "file": f"file://{tmp_path}",
           "none": None}[backend]
    app = _app(redis_server.url, url)
    try:
        redis_server.stop()
        ids = [app.tasks["t.add"].delay(i, 1).id for i in range(7)]
        assert get_breaker().state is State.OPEN
        assert list(OutboxMessage.objects.order_by("id").values_list("task_id", flat=True)) == ids
        redis_server.start()
        wait_for(lambda: OutboxMessage.objects.count() == 0, what="the relay")
        assert [m["id"] for m in queued(redis_server)] == ids
        # The header the worker reads still says the result is wanted.
        assert {m["ignore_result"] for m in queued(redis_server)} == {False}
    finally:
        _close(app)


def _client_ids(server: RedisServer) -> set[str]:
    """The ids of the server's client connections, but the asking one."""
    client = server.client()
    try:
        me = str(client.client_id())
        return {str(c["id"]) for c in client.client_list()} - {me}
    finally:
        client.close()


def test_the_relay_leaves_no_result_backend_connection_open(
        redis_server: RedisServer, other_redis: RedisServer) -> None:
    """A relay pass publishes in a thread of its own, with the result backend Celery makes
    for that thread; Celery's own publish would SUBSCRIBE there to each result (the Redis
    backend's on_task_call). The relay's publishes leave that to AsyncResult.get(), as
    dispatch does: the pass leaves no connection to the backend open behind it."""
    app = _app(redis_server.url, other_redis.url)
    try:
        redis_server.stop()
        for i in range(7):
            app.tasks["t.add"].delay(i, 1)
        assert get_breaker().state is State.OPEN  # its recovery starts the relay
        before = _client_ids(other_redis)  # this thread's backend subscribed meanwhile
        redis_server.start()
        wait_for(lambda: OutboxMessage.objects.count() == 0, what="the relay")
        join_relays()
        assert _client_ids(other_redis) <= before
    finally:
        _close(app)


def test_a_dead_result_backend_does_not_stop_dispatch(redis_server: RedisServer,
                                                      other_redis: RedisServer) -> None:
    """With the broker up and the result backend's own server stopped, delay() publishes."""
    app = _app(redis_server.url, other_redis.url)
    try:
        other_redis.stop()
        result = app.tasks["t.add"].delay(1, 2)
        assert [m["id"] for m in queued(redis_server)] == [result.id]
        assert OutboxMessage.objects.count() == 0
        assert get_breaker().state is State.CLOSED
        assert not result.ignored
    finally:
        _close(app)


def test_protect_bounds_the_result_backend(redis_server: RedisServer) -> None:
    """protect(app) gives a Redis backend the dispatch timeout and no reconnect loop;
    settings the app made itself win."""
    app = protect(_app(redis_server.url, redis_server.url.replace("/0", "/1")))
    mine = Celery("rb-mine", broker=redis_server.url, set_as_current=False)
    mine.conf.update(result_backend=redis_server.url, redis_socket_timeout=7.0,
                     result_backend_transport_options={"retry_policy": {"max_retries": 3}})
    protect(mine)
    try:
        assert app.backend.connparams["socket_timeout"] == 1.0
        assert app.backend.connparams["socket_connect_timeout"] == 1.0
        assert app.backend.retry_policy["max_retries"] == 0
        assert mine.backend.connparams["socket_timeout"] == 7.0
        assert mine.backend.retry_policy["max_retries"] == 3
        assert protect(app) is app
        # The guarded backend pickles as Celery's own class.
        assert type(pickle.loads(pickle.dumps(app.backend))) is RedisBackend
    finally:
        _close(app)
        mine.close()


@pytest.mark.parametrize("fault", ["refused", "hung"])
def test_async_result_while_redis_is_down(redis_server: RedisServer, settings: Any,
                                          fault: str) -> None:
    """With protect(app) and the result backend on the broker's server: reads that find the
    outage raise Celery's own errors after one attempt each and count against the breaker;
    once it is open, state, ready(), successful(), failed(), get() and forget() raise
    ResultBackendUnavailable at once (a redis-py ConnectionError, a RuntimeError and a
    BreakerOpenError, naming the breaker)."""
    # No probe or trial call during the test: the breaker stays open once open.
    settings.REDIS_BREAKERS = {"default": {"RESET_TIMEOUT": 600, "MAX_RESET_TIMEOUT": 600}}
    app = _app(redis_server.url, redis_server.url.replace("/0", "/1"))
    # Hung, each read that finds the outage waits one socket timeout: a short one.
    app.conf.redis_breaker_timeout = 0.5
    protect(app)
    try:
        result = app.tasks["t.add"].delay(1, 2)
        ignored = app.tasks["t.add"].apply_async((1, 2), ignore_result=True)
        assert result.state == "PENDING"
        breaker = get_breaker()
        (redis_server.stop if fault == "refused" else redis_server.freeze)()
        found: list[BaseException] = []
        reads = [lambda: result.state, lambda: result.get(timeout=5)]
        while not breaker.is_open:
            assert len(found) < 20, found
            try:
                reads[len(found) % 2]()
            except Exception as exc:
                found.append(exc)
            else:
                pytest.fail("a read answered while Redis was down")
        # Celery's own errors: state raises redis-py's, get() Celery's RuntimeError
        # ("Retry limit exceeded", 5.5+) or redis-py's (5.3); none of them ours.
        expected = redis.ConnectionError if fault == "refused" else redis.TimeoutError
        assert all(isinstance(e, (expected, RuntimeError)) for e in found), found
        assert not any(isinstance(e, ResultBackendUnavailable) for e in found), found
        for label, read in [("state", lambda: result.state), ("ready", result.ready),
                            ("successful", result.successful), ("failed", result.failed),
                            ("get", lambda: result.get(timeout=5)), ("forget", result.forget)]:
            with pytest.raises(ResultBackendUnavailable) as info:
                read()
            error = info.value
            assert isinstance(error, redis.ConnectionError), label
            assert isinstance(error, RuntimeError), label
            assert isinstance(error, BreakerOpenError), label
            assert str(error).startswith(
                "Celery result backend unavailable: redis breaker 'default' is open"), label
            assert str(redis_server.port) not in str(error), label
        assert ignored.get(timeout=5) is None
    finally:
        if redis_server.frozen:
            redis_server.thaw()
        _close(app)


def test_a_result_stored_after_celery_dropped_its_pubsub_is_heard(
        redis_server: RedisServer) -> None:
    """Redis stops while a ``get()`` waits: Celery's reconnect fails and leaves its result
    consumer with no pubsub, the task still subscribed (the breaker, below its threshold,
    stays closed). After recovery the next ``get()`` subscribes again before it waits: a
    result stored while it waits is heard, not missed until the timeout (Celery's
    ``drain_events`` with no pubsub only sleeps)."""
    app = _app(redis_server.url, redis_server.url.replace("/0", "/1"))
    protect(app)
    try:
        backend = app.backend
        waited = app.AsyncResult("rb-waited")
        consumer = backend.result_consumer
        read = consumer.on_wait_for_pending

        def read_then(act: Callable[[], object]) -> Callable[..., None]:
            def hook(result: Any, **kwargs: Any) -> None:
                read(result, **kwargs)  # get() has read the task's state: still pending
                act()  # then, before it waits on the pubsub
            return hook

        dropped: list[Any] = []

        def stop() -> None:
            dropped.append(consumer._pubsub)
            redis_server.stop()

        consumer.on_wait_for_pending = read_then(stop)
        with pytest.raises((redis.ConnectionError, RuntimeError)):
            waited.get(timeout=5)
        assert get_breaker().state is State.CLOSED  # one failure: below the threshold
        assert consumer._pubsub is None
        # Celery dropped its pubsub unclosed: closed here, not by the GC in a later test
        # (redis-py 5.0's PubSub.__del__ raises on it).
        with contextlib.suppress(Exception):
            dropped[0].close()
        assert consumer.subscribed_to
        redis_server.start()
        # As a worker does when the task ends: SET, then PUBLISH.
        consumer.on_wait_for_pending = read_then(
            lambda: backend.store_result(waited.id, 42, "SUCCESS"))
        assert waited.get(timeout=5) == 42
    finally:
        _close(app)


def test_a_result_backend_on_another_server_is_not_under_the_brokers_breaker(
        redis_server: RedisServer, other_redis: RedisServer) -> None:
    """The broker's breaker speaks for the broker's server only: with the broker down and its
    breaker open, a result backend on another server still answers."""
    app = protect(_app(redis_server.url, other_redis.url))
    try:
        result = app.tasks["t.add"].delay(1, 2)
        redis_server.stop()
        get_breaker().force_open()
        assert result.state == "PENDING"
    finally:
        _close(app)
