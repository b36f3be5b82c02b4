"""The Celery app the real worker subprocess runs (``celery -A tests.celery.app worker``).

The broker is the Redis under test; each run is recorded in a second Redis
that is never faulted (``RB_RECORD_URL``), so the test can count executions.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

if os.environ.get("RB_STATE_DIR"):
    # The worker's breaker state in the test's directory (the subprocess has none of the
    # test's settings), not in the user's default one, where other runs leave theirs.
    from redis_breaker import _shared

    _shared.default_state_dir = lambda: os.environ["RB_STATE_DIR"]

app = Celery(
    "rb-worker-tests",
    broker=os.environ.get("RB_BROKER_URL", "redis://127.0.0.1:6379/15"),
    task_cls="redis_breaker.celery:BreakerTask",
)
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    # Messages a worker held when the broker vanished come back quickly.
    broker_transport_options={"visibility_timeout": 10},
    worker_hijack_root_logger=False,
    # test_once.py turns the workers' claims off to show the duplicate they prevent.
    redis_breaker_once=os.environ.get("RB_ONCE", "1") == "1",
)

_recorder: redis.Redis | None = None


def recorder() -> redis.Redis:
    global _recorder
    if _recorder is None:
        _recorder = redis.Redis.from_url(os.environ["RB_RECORD_URL"], socket_timeout=5)
    return _recorder


@app.task(bind=True, name="tests.record")
def record(self: object, n: int) -> int:
    """Count one execution of this task id."""
    request = self.request  # type: ignore[attr-defined]
    recorder().hincrby("runs", request.id, 1)
    recorder().rpush("order", n)
    return n
