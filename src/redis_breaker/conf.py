"""Settings, read lazily so ``override_settings`` just works."""

from __future__ import annotations

from typing import Any

from django.conf import settings

__all__ = ["conf"]


class Settings:
    @property
    def REDIS_BREAKERS(self) -> Any:
        return getattr(settings, "REDIS_BREAKERS", {})


conf = Settings()
