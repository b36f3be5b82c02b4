"""One breaker per name per process.

Configured from Django's ``REDIS_BREAKERS`` when Django is in use and
configured, else from defaults. Django is never imported here: only looked up
if the application already imported it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from ._breaker import Breaker
from ._config import BreakerConfig

__all__ = ["all_breakers", "get_breaker", "reload_breakers", "reset_breakers"]

_breakers: dict[str, Breaker] = {}
_lock = threading.Lock()


def _settings_for(name: str) -> dict[str, Any] | None:
    conf = sys.modules.get("django.conf")
    if conf is None:
        return None
    settings = conf.settings
    if not settings.configured:
        return None
    breakers = getattr(settings, "REDIS_BREAKERS", None) or {}
    entry = breakers.get(name) if isinstance(breakers, dict) else None
    return dict(entry) if isinstance(entry, dict) else None


def configured_names() -> list[str]:
    """Names in ``REDIS_BREAKERS`` (empty without Django)."""
    conf = sys.modules.get("django.conf")
    if conf is None or not conf.settings.configured:
        return []
    breakers = getattr(conf.settings, "REDIS_BREAKERS", None) or {}
    return [str(n) for n in breakers] if isinstance(breakers, dict) else []


def config_for(name: str) -> BreakerConfig:
    return BreakerConfig.from_settings(_settings_for(name))


def get_breaker(name: str = "default") -> Breaker:
    """The process-wide breaker called ``name``, created on first use."""
    breaker = _breakers.get(name)
    if breaker is not None:
        return breaker
    with _lock:
        breaker = _breakers.get(name)
        if breaker is None:
            breaker = Breaker(name, config_for(name))
            _breakers[name] = breaker
        return breaker


def all_breakers() -> dict[str, Breaker]:
    """Every breaker in use, plus every one named in ``REDIS_BREAKERS``."""
    for name in configured_names():
        get_breaker(name)
    with _lock:
        return dict(_breakers)


def reload_breakers() -> None:
    """Re-read the settings of every existing breaker (after ``override_settings``)."""
    with _lock:
        breakers = list(_breakers.values())
    for breaker in breakers:
        breaker.configure(config_for(breaker.name))


def reset_breakers() -> None:
    """Close every breaker and clear its counters (tests)."""
    with _lock:
        breakers = list(_breakers.values())
    for breaker in breakers:
        breaker.reset()
