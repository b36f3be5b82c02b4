"""Effectively-once runs: a worker claims each task id in Redis before running it.

A publish that times out may still have reached Redis; dispatch cannot tell,
so the task also goes to the outbox, and the relay publishes it again with the
same id. Before a ``BreakerTask`` runs, the worker sets
``redis_breaker:once:<task id>:<retries>`` with ``SET NX EX`` on the broker's
Redis: the first copy claims it and runs, a later copy finds it and is skipped
(``Ignore``: acknowledged, no result stored). The retry count is part of the
key, so ``self.retry()`` (same id, one more retry) runs; a message Redis gives
back after a worker died (``redelivered``) runs too, as Celery would run it.

A claim that cannot be made (Redis unreachable) lets the task run: a lost
claim may cost a duplicate, never a task.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

import redis
from celery.exceptions import Ignore

from redis_breaker._events import emit
from redis_breaker._redact import describe_error

from .config import ONCE, ONCE_TTL, TIMEOUT

if TYPE_CHECKING:
    from celery import Celery, Task

__all__ = ["claim_key", "claim_once"]

_PREFIX = "redis_breaker:once:"
_lock = threading.Lock()
_OWNER = f"{socket.gethostname()}:{os.getpid()}"
_last_error: str | None = None


def claim_key(task_id: str, retries: int = 0) -> str:
    """The Redis key of the claim on one run of ``task_id``."""
    return f"{_PREFIX}{task_id}:{retries}"


def _client(app: Celery) -> redis.Redis | None:
    """This process's client of the broker's Redis for claims (None: not a redis:// broker)."""
    cached = getattr(app, "_redis_breaker_once_client", None)
    pid = os.getpid()
    if cached is not None and cached[0] == pid:
        client: redis.Redis | None = cached[1]
        return client
    with _lock:
        url = str(app.conf.broker_write_url or app.conf.broker_url or "")
        client = None
        if url.startswith(("redis://", "rediss://", "unix://")):
            timeout = float(TIMEOUT.checked(TIMEOUT.read(app)))
            options = app.conf.broker_transport_options or {}
            client = redis.Redis.from_url(
                url, socket_timeout=options.get("socket_timeout", timeout),
                socket_connect_timeout=options.get("socket_connect_timeout", timeout))
        app._redis_breaker_once_client = (pid, client)
        return client


def claim_once(task: Task, task_id: str) -> None:
    """Claim this run of ``task_id``; raise ``Ignore`` when another copy claimed it first."""
    request = task.request
    app = task._get_app()
    # A direct call or an eager run (task_always_eager, the sync fallback) has no message
    # that could have been published twice.
    if request.called_directly or request.is_eager or not ONCE.checked(ONCE.read(app)):
        return
    delivery = request.delivery_info or {}
    if delivery.get("redelivered"):
        return
    client = _client(app)
    if client is None:
        return
    ttl = max(1, round(float(ONCE_TTL.checked(ONCE_TTL.read(app)))))
    key = claim_key(task_id, int(request.retries or 0))
    global _last_error
    try:
        # Not through the breaker: the worker has just taken this message from this
        # Redis, and a claim that fails must let the task run whatever the breaker says.
        claimed = client.set(key, _OWNER, nx=True, ex=ttl)
    except Exception as exc:
        # Run it: a claim that cannot be made may cost a duplicate, never the task.
        # Logged once per distinct error, not once per task.
        error = describe_error(exc)
        if error != _last_error:
            emit(logging.WARNING, "task_claim_skipped", task_id=task_id, task_name=task.name,
                 error=error)
        _last_error = error
        return
    _last_error = None
    if not claimed:
        emit(logging.WARNING, "task_duplicate_skipped", task_id=task_id, task_name=task.name,
             retries=int(request.retries or 0))
        raise Ignore(f"{task.name}[{task_id}] already ran (a second copy of one dispatch)")


def _after_fork_in_child() -> None:
    global _lock, _OWNER
    _lock = threading.Lock()
    _OWNER = f"{socket.gethostname()}:{os.getpid()}"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

