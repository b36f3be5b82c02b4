"""The outbox relay: recovery without user traffic, expiry, unknown tasks, concurrent relays."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery

from redis_breaker import State, get_breaker
from redis_breaker.models import OutboxMessage
from redis_breaker.outbox import drain, outbox_status, write_message
from redis_breaker.testing import capture_events, forced_open
from tests.harness import RedisServer

from .conftest import join_relays, queued, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbox_db")]


def _row(name: str = "t.add", *, task_id: str, expires: datetime | None = None) -> None:
    write_message(breaker="default", task_id=task_id, task_name=name, args=[1, 2], kwargs={},
                  options={}, eta=None, expires=expires)


def test_relay_publishes_in_order_after_the_probe_finds_redis(
        celery_app: Celery, redis_server: RedisServer) -> None:
    """After a refused outage the probe alone closes the breaker and the relay publishes every row in order."""
    add = celery_app.tasks["t.add"]
    redis_server.stop()
    ids = [add.delay(i, 0).id for i in range(12)]
    breaker = get_breaker()
    assert breaker.state is State.OPEN
    assert OutboxMessage.objects.count() == 12
    redis_server.start()
    # No user call from here on: the probe thread and the relay do the work.
    wait_for(lambda: OutboxMessage.objects.count() == 0, what="the relay to empty the outbox")
    assert [m["id"] for m in queued(redis_server)] == ids
    wait_for(lambda: breaker.state is State.CLOSED, what="the breaker to close")


def test_relay_stops_while_redis_is_still_down(celery_app: Celery,
                                               redis_server: RedisServer) -> None:
    """A relay pass on a dead broker stops after its trial call fails and keeps every row."""
    add = celery_app.tasks["t.add"]
    with forced_open():
        for i in range(3):
            add.delay(i, 0)
        redis_server.stop()
    # Leaving forced_open closes the breaker, which starts this process's relay
    # on its own; let that pass finish (it meets the dead broker too) first.
    join_relays()
    result = drain(app=celery_app)
    assert result["published"] == 0
    assert result["stopped"]
    assert OutboxMessage.objects.filter(status="pending").count() == 3
    assert OutboxMessage.objects.exclude(claimed_by="").count() == 0


def test_expired_rows_are_dropped_with_a_log_line(celery_app: Celery,
                                                  redis_server: RedisServer) -> None:
    """A row whose expires has passed is deleted unpublished and logged; the rest go out."""
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    _row(task_id="old", expires=past)
    _row(task_id="fresh")
    with capture_events() as events:
        result = drain(app=celery_app)
    assert (result["published"], result["expired"]) == (1, 1)
    assert [m["id"] for m in queued(redis_server)] == ["fresh"]
    assert [e["task_id"] for e in events if e["event"] == "outbox_expired"] == ["old"]
    assert OutboxMessage.objects.count() == 0


def test_unknown_task_is_marked_failed_and_does_not_block(celery_app: Celery,
                                                          redis_server: RedisServer) -> None:
    """A row naming a task no worker knows is kept as failed and reported; rows behind it go out."""
    _row(task_id="a")
    _row("gone.renamed", task_id="ghost")
    _row(task_id="b")
    result = drain(app=celery_app)
    assert (result["published"], result["failed"]) == (2, 1)
    assert [m["id"] for m in queued(redis_server)] == ["a", "b"]
    ghost = OutboxMessage.objects.get()
    assert (ghost.task_id, ghost.status) == ("ghost", "failed")
    assert "gone.renamed" in ghost.last_error
    status = outbox_status()
    assert (status["pending"], status["failed"]) == (0, 1)
    assert status["failed_tasks"][0]["task_id"] == "ghost"
    assert drain(app=celery_app)["published"] == 0  # failed rows are not retried forever


def test_full_redis_keeps_rows_pending_until_it_has_room(celery_app: Celery,
                                                         redis_server: RedisServer) -> None:
    """Redis out of memory (noeviction) refuses the publishes: not counted, and not the rows'
    fault, so they stay pending (not failed) and all go out, in order, once there is room."""
    for task_id in ("a", "b", "c"):
        _row(task_id=task_id)
    client = redis_server.client()
    try:
        client.set("filler", "x" * 1_500_000)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1mb")
        with capture_events() as events:
            result = drain(app=celery_app)
        assert (result["published"], result["failed"]) == (0, 0)
        assert "maxmemory" in result["stopped"]
        assert get_breaker().state is State.CLOSED
        assert list(OutboxMessage.objects.values_list("status", flat=True)) == ["pending"] * 3
        assert OutboxMessage.objects.exclude(claimed_by="").count() == 0
        paused = [e for e in events if e["event"] == "outbox_relay_paused"]
        assert [(e["reason"], e["pending_from_task_id"]) for e in paused] == [
            ("redis out of memory", "a")]
        client.delete("filler")
        client.config_set("maxmemory", "0")
    finally:
        client.close()
    assert drain(app=celery_app)["published"] == 3
    assert [m["id"] for m in queued(redis_server)] == ["a", "b", "c"]


def test_concurrent_relays_never_publish_a_row_twice(celery_app: Celery,
                                                     redis_server: RedisServer) -> None:
    """Four relays draining one outbox at once publish each of its 300 rows exactly once."""
    for i in range(300):
        _row(task_id=f"id-{i}")
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def relay() -> None:
        from django.db import connections

        try:
            results.append(drain(app=celery_app, batch_size=25))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    ids = [m["id"] for m in queued(redis_server)]
    assert len(ids) == 300
    assert len(set(ids)) == 300
    assert sum(r["published"] for r in results) == 300


def test_outbox_status_counts_pending_and_age(celery_app: Celery) -> None:
    """outbox_status reports the pending count and the age of the oldest pending row."""
    assert outbox_status()["pending"] == 0
    assert outbox_status()["oldest_pending_age_s"] is None
    with forced_open():
        celery_app.tasks["t.add"].delay(1, 1)
        celery_app.tasks["t.add"].delay(2, 2)
        status = outbox_status()
    assert status["pending"] == 2
    assert status["failed"] == 0
    assert status["error"] is None
    assert 0 <= status["oldest_pending_age_s"] < 60
