"""Every Django setting redis-breaker reads, one lazy property each.

Read at call time, never cached, so ``override_settings`` just works. The
engine itself imports nothing of Django: ``_registry`` looks ``REDIS_BREAKERS``
up only when the application has imported Django already.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

__all__ = ["conf"]


class Settings:
    @property
    def REDIS_BREAKERS(self) -> Any:
        """The breakers, by name (see ``BreakerConfig``); validated by the system checks."""
        return getattr(settings, "REDIS_BREAKERS", {})

    @property
    def CACHES(self) -> Any:
        return getattr(settings, "CACHES", {})

    @property
    def CHANNEL_LAYERS(self) -> Any:
        return getattr(settings, "CHANNEL_LAYERS", {})

    @property
    def DJANGO_REDIS_CONNECTION_FACTORY(self) -> Any:
        """django-redis's global connection factory (a ``BreakerCache`` primary may use it)."""
        return getattr(settings, "DJANGO_REDIS_CONNECTION_FACTORY", None)

    @property
    def DJANGO_REDIS_IGNORE_EXCEPTIONS(self) -> Any:
        return getattr(settings, "DJANGO_REDIS_IGNORE_EXCEPTIONS", False)

    @property
    def REDIS_BREAKER_STATUS_TOKEN(self) -> Any:
        """The bearer token ``redis_breaker.views.status`` asks for (None: no token)."""
        return getattr(settings, "REDIS_BREAKER_STATUS_TOKEN", None)

    @property
    def USE_TZ(self) -> bool:
        """Django's own: whether the outbox's datetime columns hold aware datetimes."""
        return bool(settings.USE_TZ)

    # Celery's own settings, as the Django project holds them (``CELERY_`` namespace).
    # A Celery app reads them through ``app.conf``; the system checks read them here.
    @property
    def CELERY_REDIS_BREAKER_FALLBACK(self) -> Any:
        return getattr(settings, "CELERY_REDIS_BREAKER_FALLBACK", None)

    @property
    def CELERY_REDIS_BREAKER_NAME(self) -> Any:
        return getattr(settings, "CELERY_REDIS_BREAKER_NAME", None)

    @property
    def CELERY_REDIS_BREAKER_TIMEOUT(self) -> Any:
        return getattr(settings, "CELERY_REDIS_BREAKER_TIMEOUT", None)

    @property
    def CELERY_REDIS_BREAKER_RELAY_INTERVAL(self) -> Any:
        return getattr(settings, "CELERY_REDIS_BREAKER_RELAY_INTERVAL", None)


conf = Settings()
