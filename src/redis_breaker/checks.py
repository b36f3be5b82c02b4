"""System checks for ``REDIS_BREAKERS`` and the integrations' settings.

Ids are stable; each is documented in docs/configuration.md and asserted by a test.

- ``redis_breaker.E001``: ``REDIS_BREAKERS`` is not a dict.
- ``redis_breaker.E002``: a breaker's name is not a string or its entry is not a dict.
- ``redis_breaker.E003``: unknown key in a breaker's entry.
- ``redis_breaker.E004``: a value of the wrong type.
- ``redis_breaker.E005``: a value out of range or malformed (``URL``).
- ``redis_breaker.E006``: values that contradict each other.
- ``redis_breaker.E007``: an exception path that cannot be imported.
- ``redis_breaker.E010``: a ``BreakerCache`` whose ``PRIMARY`` is missing or names no alias.
- ``redis_breaker.E011``: a ``BreakerCache`` ``PRIMARY`` that is not a Redis cache.
- ``redis_breaker.E012``: a ``BreakerCache`` ``FALLBACK`` that names no alias.
- ``redis_breaker.E013``: a ``BreakerCache`` ``FALLBACK`` that is a Redis cache or the primary.
- ``redis_breaker.E014``: a ``BreakerCache`` ``OPTIONS`` that is not a dict or has an unknown key.
- ``redis_breaker.E015``: a ``BreakerCache`` ``BREAKER`` that is not a string.
- ``redis_breaker.E016``: a ``BreakerCache`` ``JOURNAL_MAX_KEYS`` that is not a positive integer.
- ``redis_breaker.E017``: a django-redis ``PRIMARY`` that ignores exceptions.
- ``redis_breaker.E018``: a Sentinel ``PRIMARY`` from which no probe URL can be built, and no ``URL``.
- ``redis_breaker.E020``: a ``BreakerChannelLayer`` ``breaker`` that is not a breaker name.
- ``redis_breaker.E021``: a ``BreakerChannelLayer`` ``CONFIG`` without usable ``hosts``.
- ``redis_breaker.E022``: a Sentinel host from which no probe URL can be built, and no ``URL``.
- ``redis_breaker.E030``: ``CELERY_REDIS_BREAKER_FALLBACK`` is not a fallback policy.
- ``redis_breaker.E031``: ``CELERY_REDIS_BREAKER_NAME`` is not a string.
- ``redis_breaker.E032``: ``CELERY_REDIS_BREAKER_TIMEOUT`` is not a positive number.
- ``redis_breaker.E033``: ``CELERY_REDIS_BREAKER_RELAY_INTERVAL`` is not a number of seconds.
- ``redis_breaker.W001``: a ``BreakerCache`` primary without socket timeouts.
- ``redis_breaker.W002``: a ``BreakerChannelLayer`` host without socket timeouts.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register

from ._config import validate_settings
from .cache.checks import check_caches
from .conf import conf

__all__ = ["check_breakers", "check_caches", "check_celery", "check_channel_layers"]

_IDS = {
    "unknown": "redis_breaker.E003",
    "type": "redis_breaker.E004",
    "value": "redis_breaker.E005",
    "consistency": "redis_breaker.E006",
    "import": "redis_breaker.E007",
}

# The BreakerCache checks live with the cache (redis_breaker.cache.checks); registered here.
register(check_caches, Tags.caches)


@register(Tags.caches)
def check_breakers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    breakers = conf.REDIS_BREAKERS
    if breakers is None:
        return []
    if not isinstance(breakers, dict):
        return [Error(
            f"REDIS_BREAKERS is {type(breakers).__name__}, not a dict.",
            hint='Set REDIS_BREAKERS = {"default": {"URL": "redis://..."}}, '
                 "one entry per breaker name.",
            id="redis_breaker.E001",
        )]
    errors: list[CheckMessage] = []
    for name, entry in breakers.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            errors.append(Error(
                f"REDIS_BREAKERS[{name!r}] must map a breaker name (str) to a dict of settings; "
                f"got {type(entry).__name__}.",
                hint=f'Write REDIS_BREAKERS["{name}"] = {{"URL": "redis://...", ...}}.',
                id="redis_breaker.E002",
            ))
            continue
        for problem in validate_settings(entry):
            errors.append(Error(
                f'REDIS_BREAKERS["{name}"]["{problem.key}"]: {problem.message()}.',
                hint=problem.fix(),
                id=_IDS[problem.kind],
            ))
    return errors


# ------------------------------------------------------------------ Channels
@register()
def check_channel_layers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every ``BreakerChannelLayer`` in ``CHANNEL_LAYERS`` (``redis_breaker.channels.checks``)."""
    from importlib.util import find_spec

    if find_spec("channels_redis") is None:  # Channels is not installed: no such layer can run
        return []
    from .channels.checks import check_channel_layers as check_layers

    return check_layers()


# ------------------------------------------------------------------ Celery
@register()
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The ``CELERY_REDIS_BREAKER_*`` Django settings (Celery's ``CELERY`` namespace)."""
    from .health import celery_outbox

    if celery_outbox() is None:  # Celery is not installed: the settings mean nothing
        return []
    from .celery.checks import check_settings

    return check_settings()
