"""One breaker per name per process.

Configured from Django's ``REDIS_BREAKERS`` when Django is in use and
configured, else from defaults. Django is never imported here: only looked up
if the application already imported it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import weakref
from typing import Any

from ._breaker import Breaker
from ._config import BreakerConfig

__all__ = ["all_breakers", "derived_breaker", "get_breaker", "reload_breakers", "reset_breakers"]

_breakers: dict[str, Breaker] = {}
_lock = threading.Lock()
#: Breakers made by ``derived_breaker``: the breaker whose settings each takes, and its URL.
_derived: weakref.WeakKeyDictionary[Breaker, tuple[str, str | None]] = weakref.WeakKeyDictionary()


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


def derived_breaker(base: Breaker, suffix: str, url: str | None) -> Breaker:
    """A breaker of the registry with ``base``'s settings and its own ``url``.

    For an integration that needs one breaker per Redis server where the user
    configured one (a sharded channel layer: a breaker per host). It is named
    ``<base>-<suffix>``, listed by ``all_breakers`` (so the status, health
    checks and metrics show it), and re-reads ``base``'s settings when they
    change. A name already taken by a breaker for another URL gets ``-2``,
    ``-3``... appended. A ``REDIS_BREAKERS`` entry under the derived name
    configures it instead (its ``URL`` defaults to ``url``).
    """
    stem = f"{base.name}-{suffix}"
    with _lock:
        for n in range(1, 1000):
            name = stem if n == 1 else f"{stem}-{n}"
            breaker = _breakers.get(name)
            if breaker is None:
                if _settings_for(name) is not None:
                    breaker = Breaker(name, config_for(name))
                    breaker.adopt_url(url)
                else:
                    breaker = Breaker(name, dataclasses.replace(base.config, url=url))
                    _derived[breaker] = (base.name, url)
                _breakers[name] = breaker
                return breaker
            if breaker.url == url:
                return breaker
    raise RuntimeError(f"more than 999 breakers derived from {base.name!r} ({suffix})")


def all_breakers() -> dict[str, Breaker]:
    """Every breaker in use, plus every one named in ``REDIS_BREAKERS``."""
    for name in configured_names():
        get_breaker(name)
    with _lock:
        return dict(_breakers)


def reload_breakers() -> dict[str, str]:
    """Re-read the settings of every existing breaker (after ``override_settings``).

    Never raises: a breaker whose new settings are invalid (or whose entry, or
    ``REDIS_BREAKERS`` itself, is not a dict) keeps its configuration, and is
    returned by name with the reason (credentials removed). The system checks
    report such settings.
    """
    from ._redact import describe_error

    with _lock:
        breakers = list(_breakers.values())
    kept: dict[str, str] = {}
    for breaker in breakers:
        try:
            derived = _derived.get(breaker)
            if derived is None:
                breaker.configure(_reloaded_config(breaker.name))
            else:
                base, url = derived
                breaker.configure(dataclasses.replace(_reloaded_config(base), url=url))
        except Exception as exc:
            kept[breaker.name] = describe_error(exc)
    return kept


def _reloaded_config(name: str) -> BreakerConfig:
    conf = sys.modules.get("django.conf")
    if conf is not None and conf.settings.configured:
        breakers = getattr(conf.settings, "REDIS_BREAKERS", None)
        if breakers is not None and not isinstance(breakers, dict):
            raise ValueError(f"REDIS_BREAKERS is {type(breakers).__name__}, not a dict")
        entry = breakers.get(name) if breakers else None
        if entry is not None and not isinstance(entry, dict):
            raise ValueError(f"REDIS_BREAKERS[{name!r}] is {type(entry).__name__}, not a dict")
    return config_for(name)


def reset_breakers() -> None:
    """Close every breaker and clear its counters (tests)."""
    with _lock:
        breakers = list(_breakers.values())
    for breaker in breakers:
        breaker.reset()


def _after_fork_in_child() -> None:
    # The breakers stay (each renews its own locks); the lock a parent's thread may have
    # held while creating one does not.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
