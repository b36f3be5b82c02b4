"""The drill's Celery app. The worker runs it with ``-A drill_app.celery_app``.

Tasks record each execution in a ledger Redis that the drill never faults, so
the drill can count what ran, what was lost and what ran twice.
"""

from __future__ import annotations

import os

import redis
from celery import Celery, Task

from redis_breaker.celery import BreakerTask

app = Celery("drill", broker=os.environ["DRILL_REDIS_URL"])
app.conf.update(
    task_default_queue="drill",
    task_ignore_result=True,
    worker_prefetch_multiplier=16,
    broker_connection_retry_on_startup=True,
    # Same timeouts as every other contestant; plain Celery still retries the connection.
    broker_transport_options={"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
    redis_breaker_name="drill",
)
_ledger = redis.Redis.from_url(os.environ["DRILL_LEDGER_URL"])


def _record(contestant: str, task_id: str) -> None:
    _ledger.hincrby(f"executed:{contestant}", task_id, 1)


@app.task(base=BreakerTask, bind=True, name="drill.protected")
def protected(self: Task, n: int) -> None:
    _record("redis-breaker", self.request.id)


@app.task(bind=True, name="drill.plain")
def plain(self: Task, n: int) -> None:
    _record("celery", self.request.id)


@app.task(bind=True, name="drill.pybreaker")
def guarded(self: Task, n: int) -> None:
    _record("pybreaker", self.request.id)
