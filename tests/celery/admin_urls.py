"""URLs of tests/celery/test_admin.py: the Django admin, where the outbox's admin registers,
and a second admin site showing the outbox's arguments (``show_arguments``)."""

from django.contrib import admin
from django.urls import path

from redis_breaker.admin import OutboxMessageAdmin
from redis_breaker.models import OutboxMessage


class OutboxWithArguments(OutboxMessageAdmin):
    show_arguments = True


with_arguments = admin.AdminSite(name="with_arguments")
with_arguments.register(OutboxMessage, OutboxWithArguments)

urlpatterns = [
    path("admin/", admin.site.urls),
    path("admin-with-arguments/", with_arguments.urls),
]
