"""A real ``celery beat`` publishing through a broker outage lands its tasks in the outbox.

Beat publishes a registered task with the task's ``apply_async`` (a
``BreakerTask``) and a task it does not know with ``app.send_task`` (guarded by
``protect(app)``), both on its own producer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from django.db import connections

from redis_breaker.celery import BreakerTask
from redis_breaker.models import OutboxMessage
from redis_breaker.outbox import drain
from tests.harness import RedisServer

from .conftest import ROOT, join_relays, queued, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbox_db")]


@contextlib.contextmanager
def celery_beat(tmp_path: Path, **env: str) -> Iterator[Path]:
    """``celery -A tests.celery.beat_app beat`` in a subprocess; yields its log file."""
    log = tmp_path / "beat.log"
    environ = dict(os.environ, **env,
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery.beat_app", "beat",
             "--loglevel=INFO", "-s", str(tmp_path / "schedule")],
            cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _identity(n: int) -> int:
    return n


def _names(server: RedisServer) -> list[str]:
    return [m["task"] for m in queued(server)]


def test_beat_through_an_outage_lands_both_paths_in_the_outbox(
        redis_server: RedisServer, outbox_db: str, tmp_path: Path) -> None:
    """Beat's entries reach Redis while it is up, the outbox while it is stopped (both the
    registered task and the one sent by name), and Redis again from the outbox after."""
    state = tmp_path / "beat-state"
    state.mkdir(mode=0o700)
    table = OutboxMessage.objects.using(outbox_db)
    with celery_beat(tmp_path, RB_BROKER_URL=redis_server.url, RB_STATE_DIR=str(state),
                     RB_DATABASE=json.dumps(connections[outbox_db].settings_dict,
                                            default=str)) as log:
        wait_for(lambda: {"tests.beat.registered", "tests.beat.remote"} <= set(
            _names(redis_server)), timeout=60, what=f"beat's first publishes (log: {log})")
        redis_server.stop()
        wait_for(lambda: set(table.filter(task_name="tests.beat.registered")
                             .values_list("task_name", flat=True)[:1])
                 and table.filter(task_name="tests.beat.remote").count() >= 2,
                 timeout=60, what=f"beat's entries in the outbox (log: {log})")
        # Read before beat is stopped: Celery's SIGTERM handler raises SystemExit wherever
        # beat's main thread is, and one that lands in an object's __del__ (a redis-py
        # client collected then) is printed as an ignored exception and lost, so beat
        # ticks on with its schedule closed and logs that too.
        during = log.read_text()
    rows = list(table.order_by("id").values_list("task_id", "task_name", "args"))
    assert {name for _, name, _ in rows} == {"tests.beat.registered", "tests.beat.remote"}
    assert all(args == ([1] if name.endswith("registered") else [2]) for _, name, args in rows)
    assert "Traceback" not in during
    redis_server.start()
    client = redis_server.client()
    try:
        client.delete("celery")
    finally:
        client.close()
    app = Celery("rb-beat-relay", broker=redis_server.url, task_cls=BreakerTask,
                 set_as_current=False)
    for name in ("tests.beat.registered", "tests.beat.remote"):
        app.task(name=name, shared=False)(_identity)
    try:
        assert drain(app=app, using=outbox_db)["published"] == len(rows)
        assert [m["id"] for m in queued(redis_server)] == [task_id for task_id, _, _ in rows]
    finally:
        join_relays()
        cached = app.__dict__.pop("_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
        app.close()
