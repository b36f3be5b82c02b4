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

from collections.abc import Mapping
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning

from ._config import validate_settings
from .cache.checks import check_caches
from .checks_common import EXAMPLE_TIMEOUT as _EXAMPLE_TIMEOUT
from .checks_common import SENTINEL_URL_EXAMPLE as _SENTINEL_URL_EXAMPLE
from .checks_common import TIMEOUTS as _TIMEOUTS
from .checks_common import breaker_has_url as _breaker_has_url
from .checks_common import given as _given
from .checks_common import is_subclass as _is_subclass
from .checks_common import setting_path as _path
from .checks_common import shown as _shown
from .checks_common import url_sets as _url_sets
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
    """Every ``BreakerChannelLayer`` in ``CHANNEL_LAYERS``: its breaker and hosts."""
    layers = conf.CHANNEL_LAYERS
    if not isinstance(layers, Mapping):
        return []
    found: list[CheckMessage] = []
    for alias, entry in layers.items():
        if isinstance(entry, Mapping) and _is_subclass(
                entry.get("BACKEND"), ("redis_breaker.channels.BreakerChannelLayer",)):
            found += _check_layer(str(alias), entry)
    return found


def _check_layer(alias: str, entry: Mapping[str, Any]) -> list[CheckMessage]:
    config = entry.get("CONFIG", {})
    where = _path("CHANNEL_LAYERS", alias, "CONFIG")
    example = (f'[{{"address": "redis://...", "socket_timeout": {_EXAMPLE_TIMEOUT}, '
               f'"socket_connect_timeout": {_EXAMPLE_TIMEOUT}}}]')
    if not isinstance(config, Mapping):
        return [Error(f"{where} is {_shown(config)}, not a dict.",
                      hint=f'Set {where} = {{"hosts": {example}}}.', id="redis_breaker.E021")]
    found: list[CheckMessage] = []
    breaker = config.get("breaker", "default")
    if not isinstance(breaker, str):
        from ._breaker import Breaker

        if not isinstance(breaker, Breaker):
            path = _path("CHANNEL_LAYERS", alias, "CONFIG", "breaker")
            found.append(Error(f"{path} is {_shown(breaker)}, not a breaker name.",
                               hint=f'Set {path} to the name of a breaker (a string such as '
                                    f'"default", a key of REDIS_BREAKERS).',
                               id="redis_breaker.E020"))
    hosts = config.get("hosts")
    path = _path("CHANNEL_LAYERS", alias, "CONFIG", "hosts")
    if not hosts or not isinstance(hosts, (list, tuple)):
        why = ("is missing: channels_redis would use redis://localhost:6379 without timeouts"
               if not hosts else f"is {_shown(hosts)}, not a list of hosts")
        found.append(Error(f"{path} {why}.", hint=f"Set {path} = {example}.",
                           id="redis_breaker.E021"))
        return found
    for i, host in enumerate(hosts):
        found += _check_host(_path("CHANNEL_LAYERS", alias, "CONFIG", "hosts", i), host, example)
    found += _check_sentinel_host(alias, breaker, hosts[0])
    return found


def _check_sentinel_host(alias: str, breaker: Any, host: Any) -> list[CheckMessage]:
    """A Sentinel first host whose sentinels the probe cannot be pointed at (E022)."""
    from .channels.remote import sentinel_probe_url

    if not isinstance(host, Mapping) or "master_name" not in host:
        return []
    name = breaker if isinstance(breaker, str) else getattr(breaker, "name", None)
    if isinstance(breaker, str) and _breaker_has_url(name):
        return []
    if not isinstance(breaker, str) and getattr(breaker, "url", None):
        return []
    if sentinel_probe_url(dict(host)):
        return []
    path = _path("CHANNEL_LAYERS", alias, "CONFIG", "hosts", 0)
    return [Error(
        f"{path} finds its master through Redis Sentinel, but no probe URL can be built from "
        f"it (\"sentinels\" must be (host, port) pairs and \"master_name\" a string), and the "
        f"breaker {name!r} has no URL: it could not find the master again after a failover.",
        hint=f'Set REDIS_BREAKERS["{name}"]["URL"] = "{_SENTINEL_URL_EXAMPLE}" (your '
             f'sentinels and master group), or fix {path}["sentinels"].',
        id="redis_breaker.E022",
    )]


def _check_host(path: str, host: Any, example: str) -> list[CheckMessage]:
    if isinstance(host, str):
        given = {k: _url_sets(host, k) for k in _TIMEOUTS}
    elif isinstance(host, (list, tuple)) and len(host) == 2:
        given = dict.fromkeys(_TIMEOUTS, False)
    elif isinstance(host, Mapping) and ({"address", "host", "sentinels"} & host.keys()):
        address = host.get("address")
        given = {k: _given(host, k) or (isinstance(address, str) and _url_sets(address, k))
                 for k in _TIMEOUTS}
    else:
        return [Error(f"{path} is {_shown(host)}, not a Redis host.",
                      hint=f"Give each host as a dict with an address and socket timeouts, "
                           f"as in {example}.",
                      id="redis_breaker.E021")]
    missing = [k for k in _TIMEOUTS if not given[k]]
    if not missing:
        return []
    return [CheckWarning(
        f"{path} sets no {' / '.join(missing)}: a hung or unreachable Redis holds every "
        "channel layer call until the operating system gives up, before the breaker can "
        "count a failure.",
        hint=f"Write the host as a dict with socket timeouts (seconds), as in {example}.",
        id="redis_breaker.W002",
    )]


# ------------------------------------------------------------------ Celery
@register()
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The ``CELERY_REDIS_BREAKER_*`` Django settings (Celery's ``CELERY`` namespace)."""
    from .health import celery_outbox

    if celery_outbox() is None:  # Celery is not installed: the settings mean nothing
        return []
    from .celery.checks import check_settings

    return check_settings()
