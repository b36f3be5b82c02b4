"""The task outbox; it lives in ``redis_breaker.celery.outbox`` (this path keeps working)."""

from __future__ import annotations

from .celery.outbox import (
    DrainResult,
    OutboxSerializationError,
    drain,
    outbox_status,
    relay_for,
    write_message,
)

__all__ = [
    "DrainResult",
    "OutboxSerializationError",
    "drain",
    "outbox_status",
    "relay_for",
    "write_message",
]
