"""Django system checks of the ``CELERY_REDIS_BREAKER_*`` settings (E030 to E033).

Registered by ``redis_breaker.checks.check_celery``; the accepted values, the
messages and the ids come from the settings table in ``config``.
"""

from __future__ import annotations

from django.core.checks import CheckMessage, Error

from redis_breaker.conf import conf

from .config import SETTINGS

__all__ = ["check_settings"]


def check_settings() -> list[CheckMessage]:
    """One error per ``CELERY_REDIS_BREAKER_*`` setting that its row of the table refuses."""
    found: list[CheckMessage] = []
    for setting in SETTINGS:
        # Celery's settings as the Django project holds them (the CELERY namespace).
        message = setting.problem(getattr(conf, setting.name))
        if message is not None:
            found.append(Error(message, hint=setting.hint, id=setting.id))
    return found
