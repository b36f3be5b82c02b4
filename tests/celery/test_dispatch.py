"""BreakerTask dispatch against a real redis-server: closed, refused, hung, forced open."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.result import AsyncResult, EagerResult
from django.db import transaction

from redis_breaker import BreakerOpenError, State, get_breaker
from redis_breaker.celery import BreakerTask, bounded_transport_options, execute_task_sync
from redis_breaker.models import OutboxMessage
from redis_breaker.outbox import OutboxSerializationError
from redis_breaker.testing import capture_events, forced_open
from tests.harness import RedisServer

from .conftest import queued, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _connections_received(server: RedisServer) -> int:
    client = server.client(single_connection_client=True)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def test_closed_publishes_with_bounded_transport(celery_app: Celery,
                                                 redis_server: RedisServer) -> None:
    """While closed, delay() publishes to Redis with the returned task id and writes no row."""
    result = celery_app.tasks["t.add"].delay(2, 3)
    assert [m["id"] for m in queued(redis_server)] == [result.id]
    assert OutboxMessage.objects.count() == 0
    options = bounded_transport_options(celery_app)
    assert options["max_retries"] == 0
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 1.0


def test_user_transport_timeouts_are_kept(celery_app: Celery) -> None:
    """Timeouts the user set in broker_transport_options win over the bounded defaults."""
    celery_app.conf.broker_transport_options = {"socket_timeout": 3.0, "max_retries": 7}
    options = bounded_transport_options(celery_app)
    assert options["socket_timeout"] == 3.0
    assert options["socket_connect_timeout"] == 1.0
    assert options["max_retries"] == 0


def test_refused_broker_takes_the_outbox_and_opens(celery_app: Celery,
                                                   redis_server: RedisServer) -> None:
    """On a refused port every dispatch returns an AsyncResult backed by a row; the fifth opens."""
    redis_server.stop()
    add = celery_app.tasks["t.add"]
    ids = [add.delay(i, 1).id for i in range(7)]
    assert get_breaker().state is State.OPEN
    rows = list(OutboxMessage.objects.order_by("id"))
    assert [r.task_id for r in rows] == ids
    assert rows[0].task_name == "t.add"
    assert rows[3].args == [3, 1]
    assert rows[0].breaker == "default"


def test_hung_broker_failure_counts_and_is_outboxed(celery_app: Celery,
                                                    redis_server: RedisServer) -> None:
    """A publish that times out on a SIGSTOPped server counts as a failure and writes a row."""
    redis_server.freeze()
    result = celery_app.tasks["t.add"].delay(1, 1)
    assert isinstance(result, AsyncResult)
    assert OutboxMessage.objects.get().task_id == result.id
    assert get_breaker().stats().consecutive_failures == 1


def test_open_breaker_makes_no_broker_contact(celery_app: Celery,
                                              redis_server: RedisServer) -> None:
    """While open, dispatch opens no connection to the broker at all."""
    add = celery_app.tasks["t.add"]
    add.delay(0, 0)  # warm the producer pool
    before = _connections_received(redis_server)
    with forced_open():
        for i in range(20):
            add.delay(i, i)
        assert _connections_received(redis_server) == before + 1  # only the INFO client itself
        assert OutboxMessage.objects.count() == 20
        assert len(queued(redis_server)) == 1


def test_rollback_discards_the_outbox_row(celery_app: Celery) -> None:
    """A dispatch inside transaction.atomic() that rolls back leaves no row."""
    add = celery_app.tasks["t.add"]
    with forced_open():
        try:
            with transaction.atomic():
                add.delay(1, 2)
                assert OutboxMessage.objects.count() == 1
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        assert OutboxMessage.objects.count() == 0
        with transaction.atomic():
            kept = add.delay(3, 4)
    assert OutboxMessage.objects.get().task_id == kept.id


def test_countdown_eta_expires_and_routing_survive_the_outbox(
        celery_app: Celery, redis_server: RedisServer) -> None:
    """countdown, eta, expires, queue, priority and headers reach the broker as absolute times."""
    add = celery_app.tasks["t.add"]
    eta = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with forced_open():
        sent_at = datetime.now(timezone.utc)
        first = add.apply_async((1, 2), countdown=120, expires=600, priority=3,
                                headers={"tenant": "acme"})
        second = add.apply_async((3, 4), eta=eta, queue="slow")
    # Closing the breaker (the reset) starts the relay: no user call needed.
    wait_for(lambda: OutboxMessage.objects.count() == 0, what="the relay")
    # kombu's Redis transport keeps one list per priority step: celery\x06\x16<priority>.
    (m1,) = queued(redis_server, "celery\x06\x163")
    (m2,) = queued(redis_server, "slow")
    assert (m1["id"], m2["id"]) == (first.id, second.id)
    eta1 = datetime.fromisoformat(m1["eta"])
    assert timedelta(seconds=119) < eta1 - sent_at < timedelta(seconds=125)
    expires1 = datetime.fromisoformat(m1["expires"])
    assert timedelta(seconds=599) < expires1 - sent_at < timedelta(seconds=605)
    assert m1["tenant"] == "acme"
    assert datetime.fromisoformat(m2["eta"]) == eta


def test_sync_fallback_runs_in_process(celery_app: Celery, redis_server: RedisServer) -> None:
    """A task with breaker_fallback='sync' runs in-process while open and returns its result."""
    with forced_open():
        result = celery_app.tasks["t.add_sync"].delay(20, 22)
    assert isinstance(result, EagerResult)
    assert result.get() == 42
    assert OutboxMessage.objects.count() == 0
    assert queued(redis_server) == []


def test_raise_fallback_and_per_call_override(celery_app: Celery) -> None:
    """breaker_fallback='raise' (per task or per call) raises BreakerOpenError while open."""
    with forced_open():
        with pytest.raises(BreakerOpenError):
            celery_app.tasks["t.add_raise"].delay(1, 1)
        with pytest.raises(BreakerOpenError):
            celery_app.tasks["t.add"].apply_async((1, 1), breaker_fallback="raise")
        sync = celery_app.tasks["t.add"].apply_async((1, 1), breaker_fallback="sync")
    assert sync.get() == 2
    assert OutboxMessage.objects.count() == 0


def test_non_json_argument_is_refused_at_dispatch(celery_app: Celery,
                                                  redis_server: RedisServer) -> None:
    """An argument the outbox cannot store as JSON fails at dispatch, even while closed."""
    add = celery_app.tasks["t.add"]
    with pytest.raises(OutboxSerializationError, match=r"t\.add.*not JSON-serializable"):
        add.delay(object(), 1)
    with forced_open(), pytest.raises(OutboxSerializationError):
        add.apply_async((1, 2), kwargs={"when": {1, 2}})
    assert queued(redis_server) == []
    assert OutboxMessage.objects.count() == 0


def test_kombu_json_types_round_trip(celery_app: Celery, redis_server: RedisServer) -> None:
    """Datetimes and other kombu-JSON types in arguments come back unchanged from the outbox."""
    from kombu.utils import json as kombu_json

    when = datetime(2030, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    with forced_open():
        celery_app.tasks["t.add"].apply_async((when, 1))
    wait_for(lambda: OutboxMessage.objects.count() == 0, what="the relay")
    client = redis_server.client()
    try:
        message = json.loads(client.lrange("celery", 0, -1)[0])
    finally:
        client.close()
    args, _kwargs, _embed = kombu_json.loads(base64.b64decode(message["body"]))
    assert args == [when, 1]


def test_execute_task_sync(celery_app: Celery, redis_server: RedisServer) -> None:
    """execute_task_sync publishes while healthy and runs the task here while open."""
    add = celery_app.tasks["t.add"]
    sent = execute_task_sync(add, 1, 2)
    assert [m["id"] for m in queued(redis_server)] == [sent.id]
    with forced_open():
        local = execute_task_sync(add, 5, 6)
    assert isinstance(local, EagerResult)
    assert local.get() == 11


def test_breaker_name_and_fallback_from_celery_config(celery_app: Celery) -> None:
    """redis_breaker_name and redis_breaker_fallback in the Celery config pick breaker and
    fallback."""
    celery_app.conf.redis_breaker_name = "jobs"
    add = celery_app.tasks["t.add"]
    with forced_open("jobs"):
        add.delay(1, 2)
        assert OutboxMessage.objects.get().breaker == "jobs"
        celery_app.conf.redis_breaker_fallback = "sync"
        assert add.delay(2, 2).get() == 4
        celery_app.conf.redis_breaker_fallback = "bogus"
        with pytest.raises(ValueError, match="outbox, sync, raise"):
            add.delay(1, 1)
    assert get_breaker("default").state is State.CLOSED


def test_decorator_base_and_fallback_event(redis_server: RedisServer) -> None:
    """@app.task(base=BreakerTask) works on a plain app and fallback use is logged once."""
    app = Celery("plain", broker=redis_server.url, set_as_current=False)

    @app.task(base=BreakerTask, name="p.mul", shared=False)
    def mul(x: int, y: int) -> int:
        return x * y

    with capture_events() as events, forced_open():
        for i in range(5):
            mul.delay(i, 2)
    assert OutboxMessage.objects.count() == 5
    used = [e for e in events if e["event"] == "fallback_used"]
    assert [e["integration"] for e in used] == ["celery"]
    app.close()

