"""Celery task dispatch through the breaker: ``BreakerTask`` and the task outbox.

``dispatch`` publishes with bounded timeouts or takes the configured fallback,
``outbox`` keeps the tasks that could not be published and relays them,
``worker_relay`` relays from inside Celery workers.
"""

from __future__ import annotations

from .dispatch import (
    FALLBACKS,
    BreakerTask,
    bounded_transport_options,
    dispatch,
    execute_task_sync,
    publish_outboxed,
    sentinel_probe_url,
)

__all__ = [
    "FALLBACKS",
    "BreakerTask",
    "bounded_transport_options",
    "dispatch",
    "execute_task_sync",
    "publish_outboxed",
    "sentinel_probe_url",
]
