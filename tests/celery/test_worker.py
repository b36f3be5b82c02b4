"""A real Celery worker on a real Redis: 500 tasks dispatched across an outage, none lost.

Run once with the outbox on SQLite and once on PostgreSQL (``outbox_db``). The worker is
a Django project's worker on the test's database: its own relay (every 0.5 s) drains the
outbox alongside this process's, the two claiming rows from each other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_breaker import State, get_breaker
from redis_breaker.models import OutboxMessage
from tests.harness import RedisServer

from .conftest import celery_worker, join_relays, wait_for, worker_database
from .test_calling import _xfail_if_the_old_worker_stalled
from .workers import worker_state_dir

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbox_db")]

TOTAL = 500
OUTAGE = (150, 350)  # dispatch indexes where the broker stops and comes back


@pytest.fixture
def worker(broker: RedisServer, recorder: RedisServer, tmp_path: Path, outbox_db: str
           ) -> Iterator[Path]:
    """``celery worker --pool=solo`` in a subprocess, consuming from ``broker``, its Django
    ``default`` database the test's outbox database."""
    with celery_worker("tests.celery.django_worker", RB_BROKER_URL=broker.url,
                       RB_RECORD_URL=recorder.url, RB_DATABASE=worker_database(outbox_db),
                       RB_STATE_DIR=worker_state_dir(tmp_path)) as log:
        yield log


def test_500_tasks_across_an_outage_all_run_once(broker: RedisServer, recorder: RedisServer,
                                                 worker: Path) -> None:
    """Every one of 500 tasks dispatched across a mid-stream broker outage runs, exactly once."""
    from tests.celery.app import app, record

    app.conf.broker_url = broker.url
    app.__dict__.pop("_redis_breaker_producers", None)
    runs = recorder.client()
    try:
        canary = record.delay(-1).id
        wait_for(lambda: runs.hexists("runs", canary), timeout=30,
                 what=f"the worker to start (log: {worker})")
        ids: list[str] = []
        # This test's breaker's own transitions: a breaker left by an earlier test may
        # still log events under the same name.
        breaker = get_breaker("default")
        transitions: list[str] = []
        breaker.add_listener(lambda change: transitions.append(change.to_state.value))
        for i in range(TOTAL):
            if i == OUTAGE[0]:
                # The worker catches up first. A task the worker was taking off the
                # queue as the broker stopped never reached it (seen twice on a busy
                # machine, where the worker lags): that hop is between kombu and the
                # broker, after dispatch, and not what this test is about.
                wait_for(lambda i=i: runs.hlen("runs") >= i + 1, timeout=60,
                         what=f"the worker to run the tasks sent before the outage (log: {worker})")
                broker.stop()
            elif i == OUTAGE[1]:
                broker.start()
            ids.append(record.delay(i).id)
            # Spread the stream so the probe finds Redis again while tasks still flow.
            time.sleep(0.004)
        wait_for(lambda: OutboxMessage.objects.count() == 0, timeout=60,
                 what="the relay to empty the outbox")
        try:
            wait_for(lambda: runs.hlen("runs") >= TOTAL + 1, timeout=90,
                     what=f"the worker to run every task (log: {worker})")
        except pytest.fail.Exception:
            # kombu before 5.4: its worker may stop consuming after the broker restart
            # (docs/celery.md); every row relayed and the rest still queued in Redis.
            _xfail_if_the_old_worker_stalled(app, f"{TOTAL + 1 - runs.hlen('runs')} tasks")
            raise
        # On a loaded machine a publish may time out after recovery and open the
        # breaker once more; what matters is that it ends closed with nothing lost.
        wait_for(lambda: breaker.state is State.CLOSED, timeout=60,
                 what="the breaker to end closed")
        counts = {k.decode(): int(v) for k, v in runs.hgetall("runs").items()}
    finally:
        runs.close()
        join_relays()
        cached = app.__dict__.pop("_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
    outboxed = breaker.totals().fallbacks.get("celery", 0)
    missing = [t for t in ids if t not in counts]
    duplicates = sum(counts.get(t, 0) - 1 for t in ids if counts.get(t, 0) > 1)
    print(f"transitions={transitions} outboxed={outboxed} missing={len(missing)} "
          f"duplicates={duplicates}")
    assert "open" in transitions
    assert transitions[-1] == "closed"
    assert outboxed >= OUTAGE[1] - OUTAGE[0] - 5
    assert missing == []
    assert duplicates == 0
