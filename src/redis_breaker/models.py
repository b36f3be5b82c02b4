"""The task outbox: Celery dispatches written while the broker's breaker is open."""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.utils import timezone

__all__ = ["OutboxMessage"]


class OutboxMessage(models.Model):
    """One task dispatch waiting for its broker, published later with the same task id.

    Arguments are stored as JSON (kombu's JSON, so datetimes, UUIDs and
    decimals round-trip); nothing is ever pickled into this table.
    """

    PENDING = "pending"
    FAILED = "failed"
    STATUS_CHOICES: ClassVar[list[tuple[str, str]]] = [(PENDING, "pending"), (FAILED, "failed")]

    breaker = models.CharField(max_length=100, default="default")
    task_id = models.CharField(max_length=255, db_index=True)
    task_name = models.CharField(max_length=255)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    options = models.JSONField(default=dict)
    eta = models.DateTimeField(null=True, blank=True)
    expires = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=PENDING)
    last_error = models.TextField(blank=True, default="")
    # A relay claims rows before publishing them; an expired claim (crashed
    # relay) is taken over, so delivery is at-least-once.
    claimed_by = models.CharField(max_length=64, blank=True, default="")
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]
        indexes: ClassVar[list[models.Index]] = [models.Index(fields=["breaker", "status", "id"], name="rb_outbox_pending")]
        verbose_name = "outbox message"

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] ({self.status})"
