"""Publishing to the broker without blocking on it: the broker's breaker, bounded producers.

Dispatch publishes on a producer pool of its own whose connections try once,
with bounded socket timeouts: kombu's ``default_channel`` otherwise loops in
``ensure_connection`` (``broker_connection_max_retries`` = 100) even with
``retry=False``. The breaker is the retry policy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from celery import Celery, Task
from celery.result import AsyncResult
from kombu.pools import ProducerPool

from redis_breaker._breaker import Breaker
from redis_breaker._registry import get_breaker
from redis_breaker._sentinel import DEFAULT_SENTINEL_PORT, sentinel_url

from .config import TIMEOUT

__all__ = ["bounded_transport_options", "breaker_for", "publish", "publish_outboxed",
           "sentinel_probe_url"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "socket://")
_pool_lock = threading.Lock()


def _broker_url(app: Celery) -> str:
    return str(app.conf.broker_write_url or app.conf.broker_url or "")


def breaker_for(app: Celery, name: str) -> Breaker:
    """The shared breaker ``name``, probing the broker when its settings name no URL."""
    breaker = get_breaker(name)
    url = _broker_url(app)
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


def bounded_transport_options(app: Celery) -> dict[str, Any]:
    """The broker transport options for dispatch: the user's, one connect attempt, bounded sockets."""
    options = dict(app.conf.broker_transport_options or {})
    # The breaker is the retry policy: one connection attempt per dispatch.
    options["max_retries"] = 0
    if _broker_url(app).startswith((*_REDIS_SCHEMES, "sentinel://")):
        timeout = float(TIMEOUT.checked(TIMEOUT.read(app)))
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


def publish(task: Task, args: Any, kwargs: Any, task_id: str, options: Mapping[str, Any]
            ) -> AsyncResult:
    """Publish ``task`` once on the bounded producers (the caller goes through the breaker)."""
    app = task._get_app()
    with _producers(app).acquire(block=True) as producer:  # type: ignore[no-untyped-call]
        # Task.apply_async, not BreakerTask's override: this is the real publish.
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
    return publish(app.tasks[name], args, kwargs, task_id, extra)


def _after_fork_in_child() -> None:
    # The producer pool is per pid already (``_producers``); the lock that builds it is not.
    global _pool_lock
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
