"""Dispatching into the outbox from concurrent transactions: no "database is locked".

On SQLite a transaction that reads and then writes an outbox row must hold the
write lock from its start (``transaction_mode = "IMMEDIATE"``, docs/celery.md);
the suite's settings are the documented ones. PostgreSQL has row locks and
needs nothing.
"""

from __future__ import annotations

import threading

import pytest
from celery import Celery
from django.db import OperationalError, connections, transaction

from redis_breaker.models import OutboxMessage
from redis_breaker.testing import forced_open

pytestmark = [pytest.mark.django_db(transaction=True)]

THREADS = 4
DISPATCHES = 60


def _dispatch_in_transactions(app: Celery, alias: str, errors: list[BaseException],
                              start: threading.Barrier) -> None:
    add = app.tasks["t.add"]
    try:
        start.wait(30)
        for i in range(DISPATCHES):
            with transaction.atomic(using=alias):
                # The read first: on SQLite a deferred transaction now holds a read
                # lock, which the outbox's INSERT must upgrade.
                OutboxMessage.objects.using(alias).filter(task_name="t.add").exists()
                add.delay(i, 0)
    except BaseException as exc:  # counted by the test
        errors.append(exc)
    finally:
        connections.close_all()


def test_concurrent_dispatches_inside_atomic_after_a_read(celery_app: Celery,
                                                          outbox_db: str) -> None:
    """Four threads, each dispatching in its own transactions after a read while the breaker
    is open: every dispatch lands in the outbox, none raises "database is locked"."""
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)
    with forced_open():
        threads = [threading.Thread(target=_dispatch_in_transactions,
                                    args=(celery_app, outbox_db, errors, start))
                   for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert OutboxMessage.objects.count() == THREADS * DISPATCHES


def _row(task_id: str) -> None:
    OutboxMessage.objects.using("default").create(task_id=task_id, task_name="t.add")


@pytest.mark.parametrize(("mode", "locked"), [("DEFERRED", True), ("IMMEDIATE", False)])
def test_why_sqlite_needs_immediate_transactions(mode: str, locked: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-then-write transaction meets another writer that committed after its read:
    deferred (SQLite's default), SQLite refuses the write at once ("database is locked", no
    waiting); immediate (the suite's setting), the other writer waits for the lock and both
    transactions commit."""
    sqlite_alias = "default"
    # New connections (this thread's after close(), the other thread's) take the mode.
    monkeypatch.setitem(connections[sqlite_alias].settings_dict["OPTIONS"], "transaction_mode",
                        mode)
    connections[sqlite_alias].close()
    read_done = threading.Event()
    other: list[BaseException | str] = []

    def other_writer() -> None:
        try:
            read_done.wait(30)
            _row("other")
            other.append("committed")
        except BaseException as exc:
            other.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_writer)
    thread.start()
    outcome: BaseException | None = None
    try:
        with transaction.atomic(using=sqlite_alias):
            OutboxMessage.objects.using(sqlite_alias).exists()
            read_done.set()
            if not locked:
                # The other writer is now waiting for this transaction's lock.
                thread.join(0.5)
            else:
                thread.join(30)  # it commits while this transaction only read
            _row("mine")
    except OperationalError as exc:
        outcome = exc
    thread.join(60)
    connections[sqlite_alias].close()  # the next connection takes the suite's mode again
    assert other == ["committed"]
    if locked:
        assert outcome is not None
        assert "database is locked" in str(outcome)
        assert list(OutboxMessage.objects.using(sqlite_alias).values_list("task_id", flat=True)) == ["other"]
    else:
        assert outcome is None
        assert sorted(OutboxMessage.objects.using(sqlite_alias).values_list("task_id", flat=True)) == ["mine", "other"]


def test_outbox_commit_settings_stay_with_the_outbox_row(celery_app: Celery,
                                                         outbox_db: str) -> None:
    """Outside a transaction the row is committed on its own: on PostgreSQL without waiting
    for the WAL flush (set_config(..., true) in the INSERT: that transaction only); inside
    the caller's transaction the outbox changes nothing about how it commits."""
    from django.test.utils import CaptureQueriesContext

    connection = connections[outbox_db]
    add = celery_app.tasks["t.add"]

    def synchronous_commit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return str(cursor.fetchone()[0])

    if connection.vendor == "postgresql":
        # The suite's server runs with synchronous_commit off; this session with it on.
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO on")
    with forced_open():
        with CaptureQueriesContext(connection) as alone:
            add.delay(1, 1)
        with transaction.atomic(using=outbox_db), CaptureQueriesContext(connection) as inside:
            add.delay(2, 2)
            if connection.vendor == "postgresql":
                assert synchronous_commit() == "on"
    sent = [q["sql"] for q in alone.captured_queries]
    assert [q["sql"].split()[0] for q in inside.captured_queries][:1] == ["INSERT"]
    if connection.vendor == "postgresql":
        assert len(sent) == 1
        assert "set_config('synchronous_commit', 'off', true)" in sent[0]
        assert "set_config" not in inside.captured_queries[0]["sql"]
        assert synchronous_commit() == "on"  # the session's setting is untouched
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")
    else:
        assert [sql.split()[0] for sql in sent] == ["INSERT"]
    assert OutboxMessage.objects.count() == 2
