"""The Django admin of the task outbox: what waits for the broker, what failed, and why.

Registered when ``django.contrib.admin`` is installed. Rows are listed with
their status, age, task name, breaker and last error; failed rows can be
sent back to the relay ("Retry") and rows deleted. Task arguments may hold
personal data, so the admin does not show them; to show them to the users
who may see the outbox, register the admin again with ``show_arguments``::

    from django.contrib import admin
    from redis_breaker.admin import OutboxMessageAdmin
    from redis_breaker.models import OutboxMessage

    class OutboxWithArguments(OutboxMessageAdmin):
        show_arguments = True

    admin.site.unregister(OutboxMessage)
    admin.site.register(OutboxMessage, OutboxWithArguments)
"""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import OutboxMessage

__all__ = ["OutboxMessageAdmin", "format_age"]

# Fields shown on a row's page; the arguments only with show_arguments.
_FIELDS = ("task_name", "task_id", "breaker", "status", "created_at", "age", "eta", "expires",
           "last_error", "claimed_by", "claimed_until")
_ARGUMENTS = ("args", "kwargs", "options")


def format_age(created_at: datetime | None, now: datetime | None = None) -> str:
    """``created_at``'s age as "4d 3h", "2h 5m", "3m 12s" or "8s"."""
    if created_at is None:
        return "-"
    if created_at.tzinfo is None:  # USE_TZ off: the column holds naive UTC
        created_at = created_at.replace(tzinfo=dt_timezone.utc)
    seconds = int(max(0.0, ((now or datetime.now(dt_timezone.utc)) - created_at)
                      .total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Pending and failed outbox rows; read-only, with retry and delete actions."""

    #: Show the task's args, kwargs and options on a row's page (off: personal data).
    show_arguments: bool = False

    list_display = ("id", "task_name", "status", "age", "breaker", "task_id", "error")
    list_filter = ("status", "breaker")
    search_fields = ("task_id", "task_name")
    ordering = ("id",)
    list_per_page = 100
    actions = ("retry_failed",)

    @admin.display(description="age", ordering="created_at")
    def age(self, row: OutboxMessage) -> str:
        return format_age(row.created_at)

    @admin.display(description="last error")
    def error(self, row: OutboxMessage) -> str:
        text = row.last_error or ""
        return text if len(text) <= 120 else text[:119] + "…"

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return _FIELDS + _ARGUMENTS if self.show_arguments else _FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return self.get_fields(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from dispatches, never from a form

    @admin.action(description="Retry the selected failed rows", permissions=["change"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        """Send failed rows back to the relay: pending again, their error and claim cleared."""
        retried = queryset.filter(status=OutboxMessage.FAILED).update(
            status=OutboxMessage.PENDING, last_error="", claimed_by="", claimed_until=None)
        skipped = queryset.count() - retried
        text = (f"{retried} failed row(s) will be published by the next relay pass "
                "(a Celery worker's, or `manage.py redis_breaker drain`).")
        if skipped:
            text += f" {skipped} selected row(s) were not failed and were left as they are."
        self.message_user(request, text, messages.SUCCESS if retried else messages.WARNING)
