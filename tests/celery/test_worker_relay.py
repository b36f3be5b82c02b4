"""Outbox rows left by a process that never saw the recovery are relayed by a Celery worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery
from django.db import connections

from redis_breaker import get_breaker
from redis_breaker.celery import worker_relay as _worker_relay
from redis_breaker.models import OutboxMessage
from tests.harness import RedisServer

from .conftest import celery_worker, join_relays, wait_for, worker_database

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbox_db")]

TASKS = 40



def state_dir(tmp_path: Path) -> str:
    """A breaker state directory for a subprocess: another host's, not this test's."""
    folder = tmp_path / "subprocess-state"
    folder.mkdir(mode=0o700)
    return str(folder)


def test_worker_relays_rows_a_dead_process_left(redis_server: RedisServer,
                                                recorder: RedisServer, outbox_db: str,
                                                tmp_path: Path) -> None:
    """Rows written during an outage by a process that then stops probing reach the broker via
    a worker started after the outage, each task running once, and the worker says so."""
    from tests.celery.app import app, record

    app.conf.broker_url = redis_server.url
    app.__dict__.pop("_redis_breaker_producers", None)
    redis_server.stop()
    try:
        ids = [record.delay(i).id for i in range(TASKS)]
        breaker = get_breaker("default")
        assert breaker.is_open
        # This process goes quiet (as if it had died): it will never probe or relay again.
        breaker.force_open()
        assert OutboxMessage.objects.count() == TASKS
        redis_server.start()
        runs = recorder.client()
        with celery_worker("tests.celery.django_worker", RB_BROKER_URL=redis_server.url,
                           RB_RECORD_URL=recorder.url,
                           RB_DATABASE=worker_database(outbox_db),
                           RB_STATE_DIR=state_dir(tmp_path)) as log:
            wait_for(lambda: runs.hlen("runs") >= TASKS, timeout=60,
                     what=f"the worker to relay and run every task (log: {log})")
            wait_for(lambda: OutboxMessage.objects.count() == 0, timeout=20,
                     what="the worker relay to delete the rows it published")
            wait_for(lambda: "outbox_relayed" in log.read_text(), timeout=20,
                     what=f"the worker relay's log line (log: {log})")
            output = log.read_text()
        counts = {k.decode(): int(v) for k, v in runs.hgetall("runs").items()}
        runs.close()
    finally:
        join_relays()
        cached = app.__dict__.pop("_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}
    assert "outbox_worker_relay_started" in output
    assert f"outbox_relayed source=worker published={TASKS}" in output


def test_relay_interval_zero_turns_the_worker_relay_off() -> None:
    """``CELERY_REDIS_BREAKER_RELAY_INTERVAL = 0`` starts no thread; a bad value is refused."""
    app = Celery("rb-relay-off", set_as_current=False)
    try:
        app.conf.redis_breaker_relay_interval = 0
        _worker_relay._on_worker_ready(sender=type("Consumer", (), {"app": app})())
        assert not _worker_relay._relays
        app.conf.redis_breaker_relay_interval = "10s"
        with pytest.raises(ValueError, match="CELERY_REDIS_BREAKER_RELAY_INTERVAL"):
            _worker_relay.relay_interval(app)
    finally:
        app.close()


def test_failing_pass_is_logged_once_and_retried(redis_server: RedisServer,
                                                 outbox_db: str) -> None:
    """A relay pass that fails (the outbox table missing) logs one error per distinct cause
    and keeps going; once the cause is gone the next pass works."""
    from redis_breaker.testing import capture_events
    app = Celery("rb-relay-fail", broker=redis_server.url, set_as_current=False)
    relay = _worker_relay.WorkerRelay(app, interval=0.01)
    connection = connections[outbox_db]
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE redis_breaker_outboxmessage RENAME TO rb_hidden")
    try:
        with capture_events() as events:
            relay.start()
            wait_for(lambda: relay.failures >= 5, what="five failed relay passes")
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE rb_hidden RENAME TO redis_breaker_outboxmessage")
            wait_for(lambda: relay.passes >= 2, what="relay passes after the table is back")
            relay.stop()
        assert not relay.running
    finally:
        relay.stop()
        with connection.cursor() as cursor:
            tables = connection.introspection.table_names(cursor)
            if "rb_hidden" in tables:
                cursor.execute("ALTER TABLE rb_hidden RENAME TO redis_breaker_outboxmessage")
        app.close()
    failed = [e for e in events if e["event"] == "outbox_relay_failed"]
    assert len(failed) == 1, failed
    assert "redis_breaker_outboxmessage" in failed[0]["error"]
    assert failed[0]["source"] == "worker"
