"""What dispatch and result reads read of a Celery app's configuration, cached per configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery

from redis_breaker import _registry
from redis_breaker._breaker import Breaker

from .config import BREAKER_NAME, FALLBACK
from .publish import breaker_for

__all__: list[str] = []


@dataclass(slots=True)
class _AppSettings:
    """What dispatch reads of an app's configuration, read once per configuration.

    Celery's settings lookup costs about 10 us each on a small machine (a
    healthy ``delay()`` is a few hundred): dispatch reads them again only when
    the configuration changes (``app.conf.x = ...``, ``conf.update``, a new
    ``config_from_object``).
    """

    token: tuple[int, ...]
    fallback: str
    breaker_name: str
    eager: bool
    breakers: dict[str, Breaker] = field(default_factory=dict)


def _app_settings(app: Celery) -> _AppSettings:
    conf = app.conf
    changes = conf.changes
    token = (id(conf), len(changes), *map(id, changes.values()))
    cached: _AppSettings | None = app.__dict__.get("_redis_breaker_settings")
    if cached is not None and cached.token == token:
        return cached
    fresh = _AppSettings(token, FALLBACK.read(app), BREAKER_NAME.read(app),
                         bool(conf.task_always_eager))
    app.__dict__["_redis_breaker_settings"] = fresh
    return fresh


def _breaker(app: Celery, settings: _AppSettings, name: str) -> Breaker:
    """The breaker ``name`` of ``app`` (its probe URL adopted once per configuration)."""
    b = settings.breakers.get(name)
    # The registry's own object: a registry reset (tests) makes new breakers.
    if b is None or _registry._breakers.get(name) is not b:
        b = settings.breakers[name] = breaker_for(app, name)
    return b
