"""Publishing to the broker without blocking on it: the broker's breaker, bounded producers.

Dispatch publishes on a producer pool of its own whose connections try once,
with bounded socket timeouts: kombu's ``default_channel`` otherwise loops in
``ensure_connection`` (``broker_connection_max_retries`` = 100) even with
``retry=False``. The breaker is the retry policy.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import threading
from collections.abc import Mapping
from contextvars import ContextVar
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

__all__ = ["bounded_transport_options", "breaker_for", "celery_options", "publish",
           "publish_outboxed", "publishing", "send_by_name", "sentinel_probe_url"]

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


#: Set while this module publishes: a ``send_task`` that ``protect`` guards passes straight
#: through to Celery's (the dispatch around it already holds the breaker).
publishing: ContextVar[bool] = ContextVar("redis_breaker_publishing", default=False)

_REDIS_ON_TASK_CALL: Any = None


def _subscribes_elsewhere(app: Celery) -> bool:
    """Whether Celery would subscribe to the result on the result backend's own Redis.

    The Redis result backend's ``on_task_call`` SUBSCRIBEs to the task's key
    before publishing, on a connection that retries 20 times a second apart and
    then raises ``RuntimeError``: a dead backend would block the dispatch and
    lose the task. ``AsyncResult.get()`` subscribes by itself (and reads the
    stored result first), so dispatch leaves the subscription to it. Other
    backends keep theirs: the database ones have none, ``rpc://`` declares its
    reply queue on the broker channel this publish already holds.
    """
    global _REDIS_ON_TASK_CALL
    if _REDIS_ON_TASK_CALL is None:
        try:
            from celery.backends.redis import RedisBackend
        except ImportError:  # pragma: no cover - redis-py is a dependency
            _REDIS_ON_TASK_CALL = False
        else:
            _REDIS_ON_TASK_CALL = RedisBackend.on_task_call
    return getattr(type(app.backend), "on_task_call", None) is _REDIS_ON_TASK_CALL


def celery_options(app: Celery, options: Mapping[str, Any],
                   ignore_result: Any) -> tuple[dict[str, Any], Any]:
    """``options`` as this module publishes them, and the ``ignore_result`` the caller asked.

    ``retry`` is honoured only when the call asks for it (``retry=True``, with its
    ``retry_policy``): the app-wide ``task_publish_retry`` would hide retries
    behind every dispatch, and the breaker with its fallback is the retry policy.
    """
    opts = dict(options)
    opts["retry"] = opts.get("retry") is True
    if not ignore_result and _subscribes_elsewhere(app):
        # Celery subscribes unless ignore_result; the header the worker reads is the caller's.
        opts["headers"] = {**(opts.get("headers") or {}), "ignore_result": ignore_result}
        opts["ignore_result"] = True
    return opts, ignore_result


def _published(result: AsyncResult, ignore_result: Any) -> AsyncResult:
    result.ignored = ignore_result
    return result


def publish(task: Task, args: Any, kwargs: Any, task_id: str, options: Mapping[str, Any],
            producer: Any = None) -> AsyncResult:
    """Publish ``task`` once, on the bounded producers unless the caller gave its own.

    The caller goes through the breaker.
    """
    app = task._get_app()
    ignore = options.get("ignore_result")
    opts, ignore = celery_options(app, options, task.ignore_result if ignore is None else ignore)
    token = publishing.set(True)
    try:
        if producer is not None or opts.get("connection") is not None:
            return _published(Task.apply_async(task, args, kwargs, task_id=task_id,
                                               producer=producer, **opts), ignore)
        with _producers(app).acquire(block=True) as bounded:  # type: ignore[no-untyped-call]
            # Task.apply_async, not BreakerTask's override: this is the real publish.
            return _published(Task.apply_async(task, args, kwargs, task_id=task_id,
                                               producer=bounded, **opts), ignore)
    finally:
        publishing.reset(token)


def send_by_name(app: Celery, name: str, args: Any, kwargs: Any, task_id: str,
                 options: Mapping[str, Any], producer: Any = None) -> AsyncResult:
    """``Celery.send_task`` once, on the bounded producers unless the caller gave its own."""
    opts, ignore = celery_options(app, options, options.get("ignore_result"))
    token = publishing.set(True)
    try:
        if producer is not None or opts.get("connection") is not None:
            return _published(Celery.send_task(app, name, args, kwargs, task_id=task_id,
                                               producer=producer, **opts), ignore)
        with _producers(app).acquire(block=True) as bounded:  # type: ignore[no-untyped-call]
            return _published(Celery.send_task(app, name, args, kwargs, task_id=task_id,
                                               producer=bounded, **opts), ignore)
    finally:
        publishing.reset(token)


def publish_outboxed(app: Celery, name: str, args: Any, kwargs: Any, *, task_id: str,
                     eta: datetime | None, expires: datetime | None,
                     options: Mapping[str, Any]) -> AsyncResult:
    """Publish one outbox row as the original dispatch would have (the relay calls this).

    A task this app knows goes through its ``apply_async`` preparation again
    (its routing and options, the stored ones winning); any other name is sent
    with ``send_task`` as it was dispatched.
    """
    extra = dict(options)
    if eta is not None:
        extra["eta"] = eta
    if expires is not None:
        extra["expires"] = expires
    task = app.tasks.get(name)
    if task is None:
        return send_by_name(app, name, args, kwargs, task_id, extra)
    return publish(task, args, kwargs, task_id, extra)


#: The ``cached_property`` descriptors of the process (kombu's and Celery's among them),
#: found before the first fork (see ``_renew_property_locks``).
_properties: list[functools.cached_property[Any]] | None = None


def _before_fork() -> None:
    global _properties
    if _properties is None:
        with contextlib.suppress(Exception):
            # type(), not isinstance(): that reads __class__, which a proxy (Celery's
            # current_app...) answers by evaluating itself.
            _properties = [o for o in gc.get_objects()
                           if issubclass(type(o), functools.cached_property)]


def _renew_property_locks() -> None:
    """Fresh locks for the ``cached_property`` descriptors in a forked child.

    kombu's ``cached_property`` takes its descriptor's lock on every read
    (``app.amqp``, on every dispatch), and Python's before 3.12 while it
    computes a value. One lock per descriptor, for every instance: a thread of
    the parent that held one at the fork (dispatching, relaying) left it held
    forever, and the child's first dispatch waited on it (seen in the fork
    test). Found once, in the parent, before its first fork (a scan of the
    objects, some ms); descriptors of classes defined after it are not renewed.
    """
    for prop in _properties or ():
        if getattr(prop, "lock", None) is not None:
            prop.lock = threading.RLock()  # type: ignore[attr-defined]


def _after_fork_in_child() -> None:
    # The producer pool is per pid already (``_producers``); the lock that builds it is not.
    global _pool_lock
    _pool_lock = threading.Lock()
    _renew_property_locks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
