"""Corrupted outbox rows: reported, marked failed and skipped; nothing is ever unpickled.

(A row naming an unknown task is covered in test_relay.py.)
"""

from __future__ import annotations

import base64
import pickle
from typing import Any

import pytest
from celery import Celery
from django.db import connections, router

from redis_breaker.models import OutboxMessage
from redis_breaker.outbox import drain, outbox_status, write_message
from redis_breaker.testing import capture_events
from tests.harness import RedisServer

from .conftest import queued

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbox_db")]

UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("unpickled")
    return "pwned"


class _Payload:
    """Unpickling this calls _record_unpickling: the proof that something unpickled it."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_record_unpickling, ())


def _row(task_id: str, **fields: Any) -> OutboxMessage:
    return write_message(breaker="default", task_id=task_id, task_name=fields.pop("name", "t.add"),
                         args=fields.pop("args", [1, 2]), kwargs=fields.pop("kwargs", {}),
                         options={}, eta=None, expires=None)


def _corrupt_args(row: OutboxMessage, raw: str) -> None:
    """Write ``raw`` into the args column as is, as a broken writer or a bad migration would.

    SQLite stores the invalid JSON itself (its check constraint turned off);
    PostgreSQL's jsonb refuses invalid JSON, so there the text lands as a JSON string.
    """
    connection = connections[router.db_for_write(OutboxMessage)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("UPDATE redis_breaker_outboxmessage SET args = to_jsonb(%s::text) "
                           "WHERE id = %s", [raw, row.id])
            return
        cursor.execute("PRAGMA ignore_check_constraints = 1")
        try:
            cursor.execute("UPDATE redis_breaker_outboxmessage SET args = %s WHERE id = %s",
                           [raw, row.id])
        finally:
            cursor.execute("PRAGMA ignore_check_constraints = 0")


def test_corrupted_rows_are_reported_and_skipped(celery_app: Celery,
                                                 redis_server: RedisServer) -> None:
    """Invalid JSON, a wrong shape and a pickle payload each fail their own row; the rest go out in order."""
    UNPICKLED.clear()
    pickled = base64.b64encode(pickle.dumps(_Payload())).decode()
    _row("first")
    _corrupt_args(_row("bad-json"), "[1, 2")
    OutboxMessage.objects.filter(id=_row("not-a-list").id).update(args={"x": 1})
    OutboxMessage.objects.filter(id=_row("pickle").id).update(
        kwargs={"obj": {"__type__": "pickle", "__value__": pickled}})
    _row("last")
    with capture_events() as events:
        result = drain(app=celery_app)
    assert (result["published"], result["failed"]) == (2, 3)
    assert [m["id"] for m in queued(redis_server)] == ["first", "last"]
    assert UNPICKLED == []
    failed = {r.task_id: r for r in OutboxMessage.objects.all()}
    assert set(failed) == {"bad-json", "not-a-list", "pickle"}
    assert {r.status for r in failed.values()} == {"failed"}
    # Celery refuses them (its argument check against the task's signature; on
    # PostgreSQL the broken text is a JSON string, refused as arguments that are no list).
    assert failed["bad-json"].last_error.startswith("TypeError: ")
    assert failed["not-a-list"].last_error.startswith("TypeError: add()")
    assert "Unsupported type" in failed["pickle"].last_error
    reported = [e["task_id"] for e in events if e["event"] == "outbox_publish_failed"]
    assert reported == ["bad-json", "not-a-list", "pickle"]
    assert all(e["log_level"] == "error" for e in events if e["event"] == "outbox_publish_failed")
    assert outbox_status()["failed"] == 3
    assert drain(app=celery_app)["failed"] == 0  # failed rows stay put, never retried
    assert UNPICKLED == []



def test_args_that_are_not_a_list_are_never_published(celery_app: Celery,
                                                      redis_server: RedisServer) -> None:
    """A JSON string in args whose length fits the task's arity is refused, not spread into arguments."""
    OutboxMessage.objects.filter(id=_row("string-args").id).update(args="ab")
    OutboxMessage.objects.filter(id=_row("list-kwargs").id).update(kwargs=["x", "y"])
    result = drain(app=celery_app)
    assert queued(redis_server) == []
    assert result["failed"] == 2
    errors = dict(OutboxMessage.objects.values_list("task_id", "last_error"))
    assert errors["string-args"] == "TypeError: task args must be a list or tuple"
    assert errors["list-kwargs"].startswith("TypeError")
