"""Celery dispatch that never blocks on a dead broker.

``BreakerTask.apply_async`` publishes through the broker's breaker on a
producer pool of its own whose connections try once, with bounded socket
timeouts: kombu's ``default_channel`` otherwise loops in ``ensure_connection``
(``broker_connection_max_retries`` = 100) even with ``retry=False``. The
breaker is the retry policy. When the breaker is open, or a publish fails on
a connection error, the task's fallback runs: the outbox (a database row
relayed once Redis is back), ``sync`` (run in-process) or ``raise``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from urllib.parse import unquote, urlsplit

from celery import Celery, Task
from celery.result import AsyncResult, EagerResult
from kombu.pools import ProducerPool

from redis_breaker._breaker import Breaker
from redis_breaker._registry import get_breaker
from redis_breaker._sentinel import DEFAULT_SENTINEL_PORT, sentinel_url

__all__ = [
    "FALLBACKS",
    "BreakerTask",
    "dispatch",
    "execute_task_sync",
    "publish_outboxed",
    "sentinel_probe_url",
]

FALLBACKS = ("outbox", "sync", "raise")
DEFAULT_TIMEOUT = 1.0
# Options that only mean something in the calling process; never stored.
_LOCAL_OPTIONS = frozenset({"producer", "connection", "publisher", "router", "result_cls",
                            "add_to_parent", "retry", "retry_policy", "serializer",
                            "compression"})
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "socket://")
_pool_lock = threading.Lock()


# ------------------------------------------------------------------ settings
def _conf(app: Celery, key: str, default: Any) -> Any:
    value = app.conf.get(key)
    return default if value is None else value


def breaker_name_for(task: Task) -> str:
    name = getattr(task, "breaker_name", None) or _conf(task._get_app(), "redis_breaker_name",
                                                         "default")
    return str(name)


def fallback_for(task: Task) -> str:
    fallback = getattr(task, "breaker_fallback", None) or _conf(
        task._get_app(), "redis_breaker_fallback", "outbox")
    return _check_fallback(str(fallback))


def _check_fallback(fallback: str) -> str:
    if fallback not in FALLBACKS:
        raise ValueError(f"redis_breaker fallback must be one of {', '.join(FALLBACKS)}, "
                         f"not {fallback!r}")
    return fallback


def bounded_transport_options(app: Celery) -> dict[str, Any]:
    """The broker transport options for dispatch: the user's, one connect attempt, bounded sockets."""
    options = dict(app.conf.broker_transport_options or {})
    # The breaker is the retry policy: one connection attempt per dispatch.
    options["max_retries"] = 0
    url = str(app.conf.broker_write_url or app.conf.broker_url or "")
    if url.startswith((*_REDIS_SCHEMES, "sentinel://")):
        timeout = float(_conf(app, "redis_breaker_timeout", DEFAULT_TIMEOUT))
        options.setdefault("socket_connect_timeout", timeout)
        options.setdefault("socket_timeout", timeout)
    return options


def _producers(app: Celery) -> ProducerPool:
    """This process's bounded producer pool for ``app`` (rebuilt after fork)."""
    cached = getattr(app, "_redis_breaker_producers", None)
    pid = os.getpid()
    if cached is not None and cached[0] == pid:
        pool: ProducerPool = cached[1]
        return pool
    with _pool_lock:
        cached = getattr(app, "_redis_breaker_producers", None)
        if cached is not None and cached[0] == pid:
            pool = cached[1]
            return pool
        options = bounded_transport_options(app)
        connect_timeout = options.get("socket_connect_timeout", app.conf.broker_connection_timeout)
        connection = app.connection_for_write(transport_options=options,
                                              connect_timeout=connect_timeout)
        limit = app.conf.broker_pool_limit or 10
        pool = ProducerPool(connection.Pool(limit), limit=limit,  # type: ignore[no-untyped-call]
                            Producer=app.amqp.Producer)
        app._redis_breaker_producers = (pid, pool)
        return pool


def breaker_for(app: Celery, name: str) -> Breaker:
    """The shared breaker ``name``, probing the broker when its settings name no URL."""
    breaker = get_breaker(name)
    url = str(app.conf.broker_write_url or app.conf.broker_url or "")
    if url.startswith(("redis://", "rediss://", "unix://")):
        breaker.adopt_url(url)
    elif url.startswith("sentinel://"):
        breaker.adopt_url(sentinel_probe_url(url, app.conf.broker_transport_options or {}))
    return breaker


def sentinel_probe_url(broker_url: str, transport_options: Mapping[str, Any]) -> str | None:
    """``redis+sentinel://`` URL for kombu's ``sentinel://h:p;sentinel://h:p`` broker URL.

    The master group is ``broker_transport_options["master_name"]``; the
    password in the first URL is the master's, ``sentinel_kwargs``'s the
    sentinels' own. None when it cannot be built (no ``master_name``).
    """
    master_name = transport_options.get("master_name")
    sentinel_kwargs = transport_options.get("sentinel_kwargs") or {}
    if not isinstance(master_name, str) or not isinstance(sentinel_kwargs, Mapping):
        return None
    try:
        parts = [urlsplit(u.strip()) for u in broker_url.split(";") if u.strip()]
        sentinels = [(p.hostname or "", p.port or DEFAULT_SENTINEL_PORT) for p in parts]
        first = parts[0]
        db_text = first.path.strip("/") or "0"
        return sentinel_url(
            sentinels, master_name, db=int(db_text) if db_text.isdigit() else 0,
            username=unquote(first.username) if first.username else None,
            password=unquote(first.password) if first.password else None,
            sentinel_username=sentinel_kwargs.get("username"),
            sentinel_password=sentinel_kwargs.get("password"),
        )
    except (IndexError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------ publishing
def _publish(task: Task, args: Any, kwargs: Any, task_id: str, options: Mapping[str, Any]
             ) -> AsyncResult:
    app = task._get_app()
    with _producers(app).acquire(block=True) as producer:  # type: ignore[no-untyped-call]
        # Task.apply_async, not the override: this is the real publish.
        return Task.apply_async(task, args, kwargs, task_id=task_id, producer=producer,
                                retry=False, **options)


def publish_outboxed(app: Celery, name: str, args: Any, kwargs: Any, *, task_id: str,
                     eta: datetime | None, expires: datetime | None,
                     options: Mapping[str, Any]) -> AsyncResult:
    """Publish one outbox row as the original dispatch would have (the relay calls this)."""
    extra = dict(options)
    if eta is not None:
        extra["eta"] = eta
    if expires is not None:
        extra["expires"] = expires
    return _publish(app.tasks[name], args, kwargs, task_id, extra)


def _absolute_times(app: Celery, options: dict[str, Any]) -> tuple[datetime | None,
                                                                   datetime | None]:
    """Pop ``countdown``/``eta``/``expires`` and return them as absolute UTC datetimes."""
    now = datetime.now(dt_timezone.utc)
    countdown = options.pop("countdown", None)
    eta = options.pop("eta", None)
    expires = options.pop("expires", None)
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    if countdown is not None and eta is None:
        eta = now + timedelta(seconds=float(countdown))
    if isinstance(expires, (int, float)):
        expires = now + timedelta(seconds=float(expires))
    elif isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    tz = app.timezone
    if isinstance(eta, datetime) and eta.tzinfo is None:
        eta = eta.replace(tzinfo=tz)
    if isinstance(expires, datetime) and expires.tzinfo is None:
        expires = expires.replace(tzinfo=tz)
    return eta, expires


def _to_outbox(task: Task, breaker: Breaker, args: Any, kwargs: Any, task_id: str,
               options: dict[str, Any]) -> AsyncResult:
    from .outbox import relay_for, write_message

    stored = {k: v for k, v in options.items() if k not in _LOCAL_OPTIONS and v is not None}
    eta, expires = _absolute_times(task._get_app(), stored)
    write_message(breaker=breaker.name, task_id=task_id, task_name=task.name, args=args,
                  kwargs=kwargs, options=stored, eta=eta, expires=expires)
    relay_for(breaker, task._get_app())
    return task.AsyncResult(task_id)


def _check_outboxable(task: Task, args: Any, kwargs: Any, options: Mapping[str, Any]) -> None:
    """Refuse non-JSON arguments at every dispatch, not only during an outage."""
    from .outbox import _to_json

    _to_json(list(args or ()), "arguments", task.name)
    _to_json(dict(kwargs or {}), "keyword arguments", task.name)
    stored = {k: v for k, v in options.items() if k not in _LOCAL_OPTIONS and v is not None}
    _to_json(stored, "options", task.name)


def dispatch(task: Task, args: Any = None, kwargs: Any = None, *, fallback: str | None = None,
             breaker: str | None = None, task_id: str | None = None,
             **options: Any) -> AsyncResult:
    """``task.apply_async`` through the broker's breaker, with ``fallback`` when Redis is down.

    Works for any Celery task, not only ``BreakerTask`` subclasses.
    """
    from celery.utils import uuid

    app = task._get_app()
    mode = _check_fallback(fallback) if fallback else fallback_for(task)
    b = breaker_for(app, breaker or breaker_name_for(task))
    task_id = task_id or uuid()
    if app.conf.task_always_eager:
        return Task.apply_async(task, args, kwargs, task_id=task_id, **options)
    if mode == "outbox":
        _check_outboxable(task, args, kwargs, options)

    def publish() -> AsyncResult:
        return _publish(task, args, kwargs, task_id, options)

    if mode == "raise":
        return b.call(publish)
    if mode == "sync":
        def run_here() -> EagerResult:
            local = {k: v for k, v in options.items() if k in ("link", "link_error", "headers")}
            return task.apply(args, kwargs, task_id=task_id, **local)

        return b.call_with_fallback(publish, run_here, integration="celery")

    def outbox() -> AsyncResult:
        return _to_outbox(task, b, args, kwargs, task_id, dict(options))

    return b.call_with_fallback(publish, outbox, integration="celery")


class BreakerTask(Task):  # type: ignore[misc]
    """A Celery task whose dispatch goes through the broker's circuit breaker.

    ``Celery(..., task_cls="redis_breaker.celery:BreakerTask")`` or
    ``@app.task(base=BreakerTask)``. Per task: ``@app.task(breaker_fallback="sync",
    breaker_name="jobs")``; per app: the ``redis_breaker_fallback`` and
    ``redis_breaker_name`` settings (``CELERY_REDIS_BREAKER_*`` in Django);
    per call: ``apply_async(..., breaker_fallback="raise")``.
    """

    breaker_name: str | None = None
    breaker_fallback: str | None = None

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None,
                    producer: Any = None, link: Any = None, link_error: Any = None,
                    shadow: str | None = None, **options: Any) -> AsyncResult:
        fallback = options.pop("breaker_fallback", None)
        if producer is not None or options.get("connection") is not None:
            # The caller manages its own broker connection; still count its failures.
            b = breaker_for(self._get_app(), breaker_name_for(self))
            return b.call(super().apply_async, args, kwargs, task_id=task_id,
                          producer=producer, link=link, link_error=link_error, shadow=shadow,
                          **options)
        for key, value in (("link", link), ("link_error", link_error), ("shadow", shadow)):
            if value is not None:
                options[key] = value
        return dispatch(self, args, kwargs, fallback=fallback, task_id=task_id, **options)


def execute_task_sync(task: Task, *args: Any, **kwargs: Any) -> AsyncResult:
    """Dispatch ``task(*args, **kwargs)`` normally while Redis is healthy, run it here when not."""
    return dispatch(task, args, kwargs, fallback="sync")
