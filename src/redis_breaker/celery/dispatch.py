"""Celery dispatch that never blocks on a dead broker.

``BreakerTask.apply_async`` publishes through the broker's breaker with
bounded timeouts (``publish``). When the breaker is open, or a publish fails
on a connection error, the task's fallback runs: the outbox (a database row
relayed once Redis is back), ``sync`` (run in-process) or ``raise``.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.result import AsyncResult, EagerResult
from celery.utils import uuid

from redis_breaker._breaker import Breaker

from .config import BREAKER_NAME, FALLBACK
from .outbox import relay_for
from .publish import breaker_for, publish
from .rows import check_storable, write_dispatch

__all__ = [
    "BreakerTask",
    "dispatch",
    "execute_task_sync",
]


def breaker_name_for(task: Task) -> str:
    """The breaker ``task`` dispatches through: its own ``breaker_name``, else the app's."""
    name = getattr(task, "breaker_name", None) or BREAKER_NAME.read(task._get_app())
    BREAKER_NAME.checked(name)
    return str(name)


def fallback_for(task: Task) -> str:
    """The fallback of ``task``: its own ``breaker_fallback``, else the app's."""
    fallback = str(getattr(task, "breaker_fallback", None) or FALLBACK.read(task._get_app()))
    FALLBACK.checked(fallback)
    return fallback


def _to_outbox(task: Task, breaker: Breaker, args: Any, kwargs: Any, task_id: str,
               options: dict[str, Any]) -> AsyncResult:
    app = task._get_app()
    write_dispatch(app, breaker=breaker.name, task_name=task.name, args=args, kwargs=kwargs,
                   task_id=task_id, options=options)
    relay_for(breaker, app)
    return task.AsyncResult(task_id)


def dispatch(task: Task, args: Any = None, kwargs: Any = None, *, fallback: str | None = None,
             breaker: str | None = None, task_id: str | None = None,
             **options: Any) -> AsyncResult:
    """``task.apply_async`` through the broker's breaker, with ``fallback`` when Redis is down.

    Works for any Celery task, not only ``BreakerTask`` subclasses.
    """
    app = task._get_app()
    if fallback:
        FALLBACK.checked(fallback)
    mode = fallback or fallback_for(task)
    b = breaker_for(app, breaker or breaker_name_for(task))
    task_id = task_id or uuid()
    if app.conf.task_always_eager:
        return Task.apply_async(task, args, kwargs, task_id=task_id, **options)
    if mode == "outbox":
        check_storable(task.name, args, kwargs, options)

    def publish_now() -> AsyncResult:
        return publish(task, args, kwargs, task_id, options)

    if mode == "raise":
        return b.call(publish_now)
    if mode == "sync":
        def run_here() -> EagerResult:
            local = {k: v for k, v in options.items() if k in ("link", "link_error", "headers")}
            return task.apply(args, kwargs, task_id=task_id, **local)

        return b.call_with_fallback(publish_now, run_here, integration="celery")

    def outbox() -> AsyncResult:
        return _to_outbox(task, b, args, kwargs, task_id, dict(options))

    return b.call_with_fallback(publish_now, outbox, integration="celery")


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
