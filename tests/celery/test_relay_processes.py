"""Relays in separate processes draining one outbox at once never publish a row twice.

On PostgreSQL the claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` then a
conditional UPDATE; on SQLite one conditional UPDATE statement (SQLite has a
single writer). Real processes, real database, real broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from redis_breaker.models import OutboxMessage
from redis_breaker.outbox import write_message
from tests.harness import RedisServer

from .conftest import ROOT, queued
from .test_worker_relay import state_dir, worker_database

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbox_db")]

ROWS = 600
RELAYS = 3


def test_relay_processes_share_the_outbox_without_duplicates(
        redis_server: RedisServer, outbox_db: str, tmp_path: Path) -> None:
    """Three relay processes started together publish each of 600 rows exactly once (each
    task id once on the broker), in batches they claimed, and leave the outbox empty."""
    for i in range(ROWS):
        write_message(breaker="default", task_id=f"id-{i:04d}", task_name="tests.record",
                      args=[i], kwargs={}, options={}, eta=None, expires=None)
    start = tmp_path / "start"
    env = dict(os.environ, RB_DATABASE=worker_database(outbox_db), RB_BROKER_URL=redis_server.url,
               RB_RECORD_URL=redis_server.url, RB_START=str(start), RB_BATCH="10", RB_STATE_DIR=state_dir(tmp_path),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.celery.relay_process"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(RELAYS)]
    for proc in procs:  # all set up (Django, the app, the database) before any starts
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
    start.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    ids = [m["id"] for m in queued(redis_server)]
    assert len(ids) == ROWS, results
    assert len(set(ids)) == ROWS
    assert sum(r["published"] for r in results) == ROWS
    # They ran at the same time: more than one of them found rows to claim.
    assert sum(1 for r in results if r["published"]) >= 2, results
    assert OutboxMessage.objects.count() == 0
