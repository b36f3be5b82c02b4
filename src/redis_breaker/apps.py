"""Django app: ``INSTALLED_APPS += ["redis_breaker"]``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "REDIS_BREAKERS":
        from ._registry import reload_breakers

        reload_breakers()


class RedisBreakerConfig(AppConfig):
    name = "redis_breaker"
    verbose_name = "Redis breaker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from ._breaker import add_global_listener
        from .health import celery_outbox
        from .signals import send_state_changed

        setting_changed.connect(_on_setting_changed, dispatch_uid="redis_breaker_settings")
        add_global_listener(send_state_changed)
        if celery_outbox() is not None:
            from .celery.worker_relay import connect

            connect()
        try:
            from .prometheus import register
        except ImportError:  # the [prometheus] extra is not installed
            return
        register()
