"""Health checks for load balancers, dashboards and the ``redis_breaker status`` command.

Every surface here shows the host's state, whichever process asks: a breaker
whose state is host-wide is read from its state file, and a breaker with no
``URL`` of its own is first given the URL its integrations would adopt on first
use (``adopt_integration_urls``), since that URL names its state file. None of
them raises because of a state file: a breaker whose file cannot be used
keeps its state in the process (``host_shared`` is then false).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from types import ModuleType
from typing import TYPE_CHECKING, Any

import redis

from . import _registry
from ._breaker import Breaker
from ._probe import answered, ping_url, probe_client
from ._probe import ping as ping_client
from ._redact import describe_error
from ._registry import configured_names, get_breaker
from ._sentinel import is_sentinel_url
from ._state import State

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["adopt_integration_urls", "celery_outbox", "check_redis_health", "get_redis_status",
           "outbox_status", "status_breaker", "status_breakers"]

_CACHE = "redis_breaker.cache.BreakerCache"
_LAYER = "redis_breaker.channels.BreakerChannelLayer"
#: Broker URLs whose breaker ``breaker_for`` gives a probe URL (redis_breaker.celery.publish).
_CELERY_REDIS = ("redis://", "rediss://", "unix://", "sentinel://")


# ------------------------------------------------------------------ the URLs
def _django_configured() -> bool:
    conf = sys.modules.get("django.conf")
    return conf is not None and bool(conf.settings.configured)


def adopt_integration_urls() -> None:
    """Give each breaker the URL its integrations adopt on first use, from the settings.

    A breaker without a ``URL`` setting takes one from the first integration
    that uses it, and its host-wide state is keyed by that URL: a process that
    never used the cache, the channel layer or Celery (a fresh ``manage.py``,
    a web process that has not served a request yet) would otherwise read
    another state file. In the order a breaker adopts: every ``BreakerCache``
    alias in ``CACHES`` (its primary's ``LOCATION``), every
    ``BreakerChannelLayer`` in ``CHANNEL_LAYERS`` (built as Channels builds
    it), then the broker URL of Celery's current app (or of every app this
    process created) when Celery is imported. Nothing connects to Redis, and
    a breaker that already has a URL keeps it. Never raises: a setting that
    cannot be used is the system checks' to report.
    """
    if not _django_configured():
        return
    for adopt in (_adopt_cache_urls, _adopt_channel_layer_urls, _adopt_celery_urls):
        try:
            adopt()
        except Exception:  # the checks report the setting; the status goes on
            continue


def _aliases(setting: Any, backend: str) -> list[str]:
    """Aliases of ``setting`` (``CACHES``, ``CHANNEL_LAYERS``) whose BACKEND is ``backend``."""
    from .checks_common import is_subclass

    if not isinstance(setting, Mapping):
        return []
    return [str(alias) for alias, entry in setting.items()
            if isinstance(entry, Mapping) and is_subclass(entry.get("BACKEND"), (backend,))]


def _adopt_cache_urls() -> None:
    from django.core.cache import caches

    from .cache.backend import BreakerCache
    from .conf import conf

    for alias in _aliases(conf.CACHES, _CACHE):
        try:
            cache = caches[alias]
            if isinstance(cache, BreakerCache):
                cache.adopt_breaker_url()
        except Exception:
            continue


def _adopt_channel_layer_urls() -> None:
    from importlib.util import find_spec

    from .conf import conf

    aliases = _aliases(conf.CHANNEL_LAYERS, _LAYER)
    if not aliases or find_spec("channels_redis") is None:
        return
    from channels.layers import channel_layers

    for alias in aliases:
        try:
            channel_layers[alias]  # the layer adopts its first host's URL as it is built
        except Exception:
            continue


def _celery_apps() -> list[Celery]:
    """Celery's current app for this thread, else every app of the process; not the fallback."""
    from celery import _state

    fallback = getattr(_state, "default_app", None)
    # The app Celery makes up when asked for one that nobody created: it would read
    # a ``celeryconfig`` module, and it is no app of this project.
    made_up = fallback if getattr(fallback, "main", None) == "default" else None
    current = getattr(getattr(_state, "_tls", None), "current_app", None)
    candidates: list[Celery]
    if current is not None:
        candidates = [current]
    else:
        active = getattr(_state, "_get_active_apps", None)
        candidates = list(active()) if active is not None else []
    return [app for app in candidates if app is not made_up]


def _adopt_celery_urls() -> None:
    if "celery" not in sys.modules:
        return
    try:
        from .celery.config import BREAKER_NAME
        from .celery.publish import breaker_for
    except ImportError:
        return
    for app in _celery_apps():
        try:
            broker = str(app.conf.broker_write_url or app.conf.broker_url or "")
            if not broker.startswith(_CELERY_REDIS):
                continue
            names = [BREAKER_NAME.read(app)]
            if app.finalized:
                names += [task.breaker_name for task in list(app.tasks.values())
                          if isinstance(getattr(task, "breaker_name", None), str)]
            for name in dict.fromkeys(names):
                if isinstance(name, str):
                    breaker_for(app, name)
        except Exception:
            continue


def status_breakers() -> tuple[dict[str, Breaker], dict[str, str]]:
    """What a status shows: every breaker in use or named in ``REDIS_BREAKERS``, by name,
    with the URLs its integrations would adopt; and, by name, why a breaker could not
    be created at all (the error, credentials removed) instead of raising it.
    """
    adopt_integration_urls()
    unusable: dict[str, str] = {}
    for name in configured_names():
        try:
            get_breaker(name)
        except Exception as exc:
            unusable[name] = describe_error(exc)
    with _registry._lock:
        breakers = dict(_registry._breakers)
    return breakers, unusable


def status_breaker(name: str) -> tuple[Breaker | None, str | None]:
    """The breaker ``name`` with its integrations' URL, or None and why it cannot be created."""
    adopt_integration_urls()
    try:
        return get_breaker(name), None
    except Exception as exc:
        return None, describe_error(exc)


# ------------------------------------------------------------------- the PING
class _NotEvidence(Exception):
    """A PING that failed for the status's own reason: not counted against the breaker."""


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (redis.exceptions.TimeoutError, TimeoutError))


def _connect(url: str, timeout: float) -> redis.Redis:
    """A client on one fresh connection, connected now (as ``ping_url`` makes one)."""
    return probe_client(url, timeout)


def _ping(b: Breaker, timeout: float | None) -> float | None:
    """PING the breaker's Redis through the breaker; the round trip in ms, or None.

    Through the breaker: a failed PING is evidence of an outage, and an open
    breaker answers at once instead of waiting on a timeout. But the status
    must not count failures a normal caller would not meet, since the count
    is the host's: the connection is made before the call (a caller's pooled
    connection does not pay a connect, and ``SLOW_CALL_THRESHOLD`` judges the
    PING alone), and a timeout shorter than the breaker's ``PROBE_TIMEOUT`` is
    reported but not counted (the probe would find that Redis up and close
    the breaker again; through Sentinel, where a timeout looks like a refusal,
    such a PING counts nothing). A refused or reset connection counts, once.
    """
    url = b.url
    if url is None or b.is_open:
        return None
    config = b.config
    limit = config.probe_timeout if timeout is None else float(timeout)
    impatient = limit < config.probe_timeout
    client: redis.Redis | None = None
    setup_error: Exception | None = None
    sentinel = is_sentinel_url(url)
    if not sentinel:
        try:
            client = _connect(url, limit)
        except Exception as exc:
            setup_error = exc
    took: list[float] = []

    def ping() -> None:
        try:
            started = time.perf_counter()
            if setup_error is not None:
                if not answered(setup_error):
                    raise setup_error
                # NOPERM while connecting (an ACL user denied SELECT): Redis answered.
            elif client is None:
                ping_url(url, limit)  # Sentinel: the master is found on every PING
            else:
                ping_client(client)  # NOPERM (an ACL user denied PING) is an answer
            took.append(time.perf_counter() - started)
        except Exception as exc:
            # Through sentinels, a timeout shows as "no master found", like a refusal.
            if impatient and (sentinel or _is_timeout(exc)):
                raise _NotEvidence(describe_error(exc)) from None
            raise

    try:
        b.call(ping)
    except Exception:  # rejected, a counted failure, or nothing the breaker counts
        return None
    finally:
        if client is not None:
            with contextlib.suppress(Exception):  # a connection that cannot close is gone
                client.close()
    return took[0] * 1000.0 if took else None


def check_redis_health(breaker: str = "default", timeout: float | None = None) -> bool:
    """True when the breaker is closed and its Redis answers a PING within ``timeout``.

    ``timeout`` defaults to the breaker's ``PROBE_TIMEOUT``. A breaker with no
    URL (none configured, none adopted from an integration) cannot be pinged;
    it is healthy while closed. The state read is the host's.
    """
    b, _ = status_breaker(breaker)
    if b is None or b.is_open:
        return False
    if b.url is None:
        return b.state in (State.CLOSED, State.DISABLED)
    return _ping(b, timeout) is not None


# ------------------------------------------------------------------ the outbox
def celery_outbox() -> ModuleType | None:
    """``redis_breaker.celery.outbox``, or None when Celery is not installed.

    The one place that asks: the status, the metrics, the health-check plugin,
    the management command, the system checks and the app's ``ready()`` call it
    rather than import Celery themselves.
    """
    try:
        from .celery import outbox
    except ImportError:
        return None
    return outbox


def outbox_status() -> dict[str, Any] | None:
    """The Celery outbox's counts when the outbox is installed and its table exists."""
    outbox = celery_outbox()
    if outbox is None:
        return None
    from django.db import DatabaseError

    try:
        result: dict[str, Any] = dict(outbox.outbox_status())
    except DatabaseError:
        return None
    if result.get("pending") is None and result.get("error"):
        return None  # the outbox's table does not exist here (migrations not applied)
    return result


# ------------------------------------------------------------------ the status
def _wall(age: float) -> str | None:
    """The wall-clock time ``age`` seconds ago (ISO 8601, UTC), None if it cannot be one."""
    if not math.isfinite(age):
        return None
    try:
        at = datetime.now(timezone.utc).timestamp() - age
        return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 3)


def _entry(b: Breaker, timeout: float | None, ping: bool) -> dict[str, Any]:
    latency = _ping(b, timeout) if ping else None
    stats = b.stats()
    change = b.last_change
    now = stats.since + stats.in_state_for_s  # the breaker's clock when stats() read it
    if not math.isfinite(now):  # a record with impossible times
        now = time.monotonic()
    return {
        "state": stats.state.value,
        "reason": change.reason if change is not None else None,
        "since": _wall(stats.in_state_for_s),
        "in_state_for_s": _rounded(stats.in_state_for_s),
        "failures": stats.consecutive_failures,
        "last_error": stats.last_error,
        "latency_ms": _rounded(latency),
        "fallback_calls": stats.fallback_calls,
        "url": stats.url,
        "host_shared": stats.host_shared,
        "probe_pid": stats.probe_pid,
        "state_file": b.state_file,
        "last_transition": None if change is None else {
            "from": change.from_state.value, "to": change.to_state.value,
            "reason": change.reason,
            "at": _wall(max(0.0, now - change.at)),
            "remote": change.remote,
        },
    }


#: Keys of a breaker's entry, in the order the JSON documents them.
_KEYS = ("state", "reason", "since", "in_state_for_s", "failures", "last_error", "latency_ms",
         "fallback_calls", "url", "host_shared", "probe_pid", "state_file", "last_transition")


def _unreadable(b: Breaker, exc: Exception) -> dict[str, Any]:
    """The entry of a breaker whose details could not be read: its state, and why."""
    entry: dict[str, Any] = dict.fromkeys(_KEYS)
    try:
        state = b.state
    except Exception:
        state = State.CLOSED
    entry.update(state=state.value, host_shared=b.host_shared, status_error=describe_error(exc))
    return entry


def get_redis_status(timeout: float | None = None, *, ping: bool = True) -> dict[str, Any]:
    """Per breaker: state, why, since, failures, last error (no credentials), PING latency or None.

    The state is the host's (``host_shared``), whichever process asks; the
    PING (``timeout`` defaults to each breaker's ``PROBE_TIMEOUT``) is made
    from this process.
    """
    found, unusable = status_breakers()
    breakers: dict[str, Any] = {}
    for name in sorted({*found, *unusable}):
        b = found.get(name)
        if b is None:
            # The breaker cannot even be created: its integrations fail on every call.
            breakers[name] = {**dict.fromkeys(_KEYS), "status_error": unusable[name]}
            continue
        try:
            breakers[name] = _entry(b, timeout, ping)
        except Exception as exc:
            breakers[name] = _unreadable(b, exc)
    status: dict[str, Any] = {
        "healthy": not any(v["state"] is None or State(v["state"]).rejects
                           for v in breakers.values()),
        "breakers": breakers,
    }
    outbox = outbox_status()
    if outbox is not None:
        status["outbox"] = outbox
    return status

