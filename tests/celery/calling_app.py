"""The Celery app of test_calling.py's worker: a Redis result backend on the broker's server.

``celery -A tests.celery.calling_app worker``. Every task records each run of
its task id (and what the worker saw of the message) in a second Redis that
is never faulted (``RB_RECORD_URL``), so the test counts executions.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from redis_breaker.celery import BreakerTask, protect

BROKER = os.environ.get("RB_BROKER_URL", "redis://127.0.0.1:6379/15")

if os.environ.get("RB_STATE_DIR"):
    # The worker's breaker state in the test's directory (the subprocess has none of the
    # test's settings), not in the user's default one, where other runs leave theirs.
    from redis_breaker import _shared

    _shared.default_state_dir = lambda: os.environ["RB_STATE_DIR"]

app = Celery("rb-calling-tests", task_cls=BreakerTask, set_as_current=False)
app.conf.update(
    broker_url=BROKER,
    # The result backend on the broker's own server: the most common setup.
    result_backend=os.environ.get("RB_BACKEND_URL", BROKER),
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 10},
    worker_hijack_root_logger=False,
    task_queues=[Queue("celery"), Queue("other")],
    result_expires=600,
)
protect(app)

_recorder: redis.Redis | None = None


def recorder() -> redis.Redis:
    global _recorder
    if _recorder is None:
        _recorder = redis.Redis.from_url(os.environ["RB_RECORD_URL"], socket_timeout=5)
    return _recorder


def _record(task: Any, **seen: Any) -> None:
    request = task.request
    recorder().hincrby("runs", f"{request.id}:{request.retries}", 1)
    seen.update(name=task.name, queue=(request.delivery_info or {}).get("routing_key"),
                priority=(request.delivery_info or {}).get("priority"),
                tenant=getattr(request, "tenant", None)
                or (getattr(request, "headers", None) or {}).get("tenant"),
                group=request.group, root=request.root_id, parent=request.parent_id)
    recorder().hset("seen", request.id, json.dumps(seen, default=str))


@app.task(bind=True, name="tests.add")
def add(self: Any, x: int, y: int) -> int:
    """x + y, recorded."""
    _record(self, args=[x, y])
    return x + y


@app.task(bind=True, name="tests.total")
def total(self: Any, values: list[int]) -> int:
    """The sum of a chord header's results, recorded."""
    _record(self, args=[values])
    return sum(values)


@app.task(bind=True, name="tests.fail")
def fail(self: Any, why: str) -> None:
    """Raises, recorded."""
    _record(self, args=[why])
    raise ValueError(why)


@app.task(name="tests.errback")
def errback(request: Any, exc: Any, traceback: Any) -> str:
    """A link_error callback: records the failed task's id.

    Celery calls an errback that takes (request, exc, traceback) in the worker, in-process.
    """
    recorder().hset("seen", f"errback:{request.id}",
                    json.dumps({"failed": request.id, "error": str(exc)}))
    return str(request.id)


@app.task(bind=True, name="tests.flaky", max_retries=3)
def flaky(self: Any, n: int) -> int:
    """Retries itself once (same task id, one more retry), then returns n."""
    _record(self, args=[n])
    if self.request.retries == 0:
        raise self.retry(countdown=0.2)
    return n
