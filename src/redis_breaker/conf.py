"""Settings, read lazily so ``override_settings`` just works."""

from __future__ import annotations

from typing import Any

from django.conf import settings

__all__ = ["conf"]


class Settings:
    @property
    def REDIS_BREAKERS(self) -> Any:  # noqa: N802 (the setting's name)
        return getattr(settings, "REDIS_BREAKERS", {})


conf = Settings()
