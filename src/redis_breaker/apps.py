"""Django app: ``INSTALLED_APPS += ["redis_breaker"]``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Reconfigure the breakers in place; never raise from a signal handler.

    A breaker whose new settings are invalid keeps its configuration: one
    WARNING ``breaker_settings_invalid`` names them all, and ``manage.py check``
    says what to fix.
    """
    if setting != "REDIS_BREAKERS":
        return
    try:
        from ._registry import reload_breakers

        kept = reload_breakers()
    except Exception as exc:  # nothing a setting holds may raise from here
        from ._redact import describe_error

        kept = {"*": describe_error(exc)}
    if kept:
        import logging

        from ._events import emit

        emit(logging.WARNING, "breaker_settings_invalid", breakers=sorted(kept),
             errors="; ".join(f"{name}: {why}" for name, why in sorted(kept.items())),
             action="kept the previous settings",
             hint="Run manage.py check: each problem is a redis_breaker.E0xx error.")


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
