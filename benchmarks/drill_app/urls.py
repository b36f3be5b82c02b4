"""URLs of the drill's project."""

from __future__ import annotations

from django.urls import path

from redis_breaker.views import status

from . import views

urlpatterns = [
    path("cache/", views.cache_view),
    path("task/", views.task_view),
    path("group-send/", views.group_send_view),
    path("process/", views.process_view),
    path("redis-breaker/status/", status),
]
