"""Celery task dispatch through the breaker: ``BreakerTask`` and the task outbox.

A dispatch reads one way: ``dispatch`` decides (publish, or the fallback),
``publish`` publishes with bounded timeouts, ``rows`` stores what could not be
published, ``outbox`` relays it after recovery (``worker_relay`` from inside
Celery workers). ``config`` is the table of the ``CELERY_REDIS_BREAKER_*``
settings, which ``checks`` turns into Django system checks.
"""

from __future__ import annotations

from .config import FALLBACKS
from .dispatch import BreakerTask, dispatch, execute_task_sync
from .publish import bounded_transport_options, publish_outboxed, sentinel_probe_url

__all__ = [
    "FALLBACKS",
    "BreakerTask",
    "bounded_transport_options",
    "dispatch",
    "execute_task_sync",
    "publish_outboxed",
    "sentinel_probe_url",
]
