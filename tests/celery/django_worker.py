"""A Celery app set up the way a Django project sets one up (``proj/celery.py``).

Run by test_worker_relay.py as ``celery -A tests.celery.django_worker worker``.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.celery.worker_settings")

app = Celery("rb-django-worker", task_cls="redis_breaker.celery:BreakerTask")
app.config_from_object("django.conf:settings", namespace="CELERY")

_recorder: redis.Redis | None = None


@app.task(bind=True, name="tests.record")
def record(self: object, n: int) -> int:
    """Count one execution of this task id in the never-faulted recorder Redis."""
    global _recorder
    if _recorder is None:
        _recorder = redis.Redis.from_url(os.environ["RB_RECORD_URL"], socket_timeout=5)
    request = self.request  # type: ignore[attr-defined]
    _recorder.hincrby("runs", request.id, 1)
    return n
