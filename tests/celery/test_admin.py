"""The outbox's Django admin through the real test client, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.test import Client

from redis_breaker.admin import OutboxMessageAdmin, format_age
from redis_breaker.models import OutboxMessage
from redis_breaker.outbox import drain, write_message
from tests.harness import RedisServer

from .conftest import queued

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbox_db"),
              pytest.mark.urls("tests.celery.admin_urls")]

CHANGELIST = "/admin/redis_breaker/outboxmessage/"
PERSONAL = "alice@example.com"


def _row(task_id: str, name: str = "t.add", *, failed: str = "",
         age: timedelta = timedelta(0)) -> OutboxMessage:
    row = write_message(breaker="default", task_id=task_id, task_name=name, args=[1, 2],
                        kwargs={"email": PERSONAL} if name == "t.mail" else {},
                        options={}, eta=None, expires=None)
    fields: dict[str, object] = {"created_at": datetime.now(timezone.utc) - age}
    if failed:
        fields.update(status=OutboxMessage.FAILED, last_error=failed)
    OutboxMessage.objects.filter(id=row.id).update(**fields)
    return row


@pytest.fixture
def client() -> Client:
    user = User.objects.create_superuser("ops", "ops@example.com", "pw")
    c = Client()
    c.force_login(user)
    return c


def test_changelist_shows_rows_with_age_name_and_error_not_arguments(client: Client) -> None:
    """Pending and failed rows with their age, task name and error; no arguments anywhere."""
    _row("p-1", "t.mail", age=timedelta(minutes=3, seconds=12))
    bad = _row("f-1", "gone.renamed", failed="unregistered task 'gone.renamed'",
               age=timedelta(hours=2, minutes=5))
    page = client.get(CHANGELIST).content.decode()
    assert "t.mail" in page
    assert "gone.renamed" in page
    assert "unregistered task" in page
    assert "3m 1" in page  # 3m 12s, a second or two later
    assert "2h 5m" in page
    assert PERSONAL not in page
    failed_only = client.get(CHANGELIST, {"status__exact": "failed"}).content.decode()
    assert "f-1" in failed_only
    assert "p-1" not in failed_only
    detail = client.get(f"{CHANGELIST}{bad.id}/change/").content.decode()
    assert "unregistered task" in detail
    mail = OutboxMessage.objects.get(task_id="p-1")
    detail = client.get(f"{CHANGELIST}{mail.id}/change/").content.decode()
    assert "p-1" in detail
    assert PERSONAL not in detail
    assert client.get(f"{CHANGELIST}add/").status_code == 403


def test_show_arguments_opt_in(client: Client) -> None:
    """Registered with a subclass that sets show_arguments (tests/celery/admin_urls.py), the
    row's page shows its arguments; the list still does not."""
    mail = _row("p-1", "t.mail")
    assert isinstance(admin.site._registry[OutboxMessage], OutboxMessageAdmin)
    shown = "/admin-with-arguments/redis_breaker/outboxmessage/"
    assert PERSONAL in client.get(f"{shown}{mail.id}/change/").content.decode()
    assert PERSONAL not in client.get(shown).content.decode()


def test_retry_sends_failed_rows_back_to_the_relay(client: Client, celery_app: Celery,
                                                  redis_server: RedisServer) -> None:
    """The retry action makes failed rows pending again (error and claim cleared); the next
    relay pass publishes them. Pending rows selected with them are left alone."""
    failed = _row("f-1", failed="ConnectionError: refused")
    OutboxMessage.objects.filter(id=failed.id).update(claimed_by="dead-relay")
    pending = _row("p-1")
    response = client.post(CHANGELIST, {"action": "retry_failed",
                                        "_selected_action": [failed.id, pending.id]},
                           follow=True)
    text = response.content.decode()
    assert "1 failed row(s) will be published" in text
    assert "1 selected row(s) were not failed" in text
    row = OutboxMessage.objects.get(id=failed.id)
    assert (row.status, row.last_error, row.claimed_by) == ("pending", "", "")
    assert drain(app=celery_app)["published"] == 2
    assert [m["id"] for m in queued(redis_server)] == ["f-1", "p-1"]


def test_delete_action_removes_the_selected_rows(client: Client) -> None:
    """Django's delete action, through its confirmation page, deletes only the selected rows."""
    gone = _row("f-1", failed="TypeError: add() takes 2 positional arguments")
    kept = _row("p-1")
    confirm = client.post(CHANGELIST, {"action": "delete_selected",
                                       "_selected_action": [gone.id]})
    assert "Are you sure" in confirm.content.decode()
    client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [gone.id],
                             "post": "yes"})
    assert list(OutboxMessage.objects.values_list("id", flat=True)) == [kept.id]


def test_view_only_staff_cannot_retry(client: Client) -> None:
    """A staff user with only the view permission sees the rows but gets no retry action."""
    _row("f-1", failed="boom")
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_outboxmessage"))
    c = Client()
    c.force_login(viewer)
    page = c.get(CHANGELIST).content.decode()
    assert "f-1" in page
    assert "retry_failed" not in page
    c.post(CHANGELIST, {"action": "retry_failed",
                        "_selected_action": [OutboxMessage.objects.get().id]})
    assert OutboxMessage.objects.get().status == "failed"


def test_format_age() -> None:
    now = datetime(2026, 1, 2, 12, 0, 0, tzinfo=timezone.utc)
    assert format_age(now - timedelta(seconds=8), now) == "8s"
    assert format_age(now - timedelta(days=4, hours=3, minutes=1), now) == "4d 3h"
    assert format_age((now - timedelta(minutes=1)).replace(tzinfo=None), now) == "1m 0s"
    assert format_age(None, now) == "-"
