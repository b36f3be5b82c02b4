"""Celery task dispatch through the breaker: ``BreakerTask`` and the task outbox.

A dispatch reads one way: ``dispatch`` decides (publish, or the fallback),
``publish`` publishes with bounded timeouts (``protect`` puts ``app.send_task``
and the result backend under the same bounds), ``once`` keeps a task published
twice from running twice, ``rows`` stores what could not be
published, ``outbox`` relays it after recovery (``worker_relay`` from inside
Celery workers). ``config`` is the table of the ``CELERY_REDIS_BREAKER_*``
settings, which ``checks`` turns into Django system checks.
"""

from __future__ import annotations

from .config import FALLBACKS
from .dispatch import BreakerTask, dispatch, execute_task_sync, send_task
from .once import claim_key
from .protect import bound_result_backend, protect
from .publish import bounded_transport_options, publish_outboxed, sentinel_probe_url
from .results import CanvasRefused, ResultBackendUnavailable

__all__ = [
    "FALLBACKS",
    "BreakerTask",
    "CanvasRefused",
    "ResultBackendUnavailable",
    "bound_result_backend",
    "bounded_transport_options",
    "claim_key",
    "dispatch",
    "execute_task_sync",
    "protect",
    "publish_outboxed",
    "send_task",
    "sentinel_probe_url",
]
