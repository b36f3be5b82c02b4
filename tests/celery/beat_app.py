"""The Celery app test_beat.py runs with a real ``celery beat`` (``-A tests.celery.beat_app``).

Two schedule entries: one for a task this process has registered (beat calls its
``apply_async``) and one for a task only the workers know (beat calls
``app.send_task``); ``protect(app)`` guards the latter.
"""

from __future__ import annotations

import os

import django
from celery import Celery

from redis_breaker.celery import protect

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.celery.worker_settings")
django.setup()

app = Celery("rb-beat", task_cls="redis_breaker.celery:BreakerTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.beat_schedule = {
    "registered": {"task": "tests.beat.registered", "schedule": 0.3, "args": (1,)},
    "by-name": {"task": "tests.beat.remote", "schedule": 0.3, "args": (2,),
                "options": {"queue": "celery"}},
}
protect(app)


@app.task(name="tests.beat.registered")
def registered(n: int) -> int:
    """A task beat's process knows."""
    return n
