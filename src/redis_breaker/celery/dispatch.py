"""Celery dispatch that never blocks on a dead broker.

``BreakerTask.apply_async`` (and ``app.send_task`` once ``protect(app)`` guards
it) publishes through the broker's breaker with bounded timeouts
(``publish``). When the breaker is open, or a publish fails on a connection
error, the task's fallback runs: the outbox (a database row relayed once Redis
is back), ``sync`` (run in-process) or ``raise``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.result import AsyncResult, EagerResult
from celery.utils import uuid

from redis_breaker._breaker import Breaker

from . import chords
from .appconf import _app_settings, _breaker
from .chords import ChordUnit
from .config import BREAKER_NAME, FALLBACK
from .once import claim_once
from .outbox import relay_for
from .publish import publish, publishing, send_by_name
from .results import CanvasRefused, canvas_needs_backend
from .rows import check_storable, write_dispatch

__all__ = [
    "BreakerTask",
    "dispatch",
    "execute_task_sync",
    "send_task",
]

# Options that only mean something in the calling process: never stored in the outbox.
_LOCAL = frozenset({"producer", "connection", "publisher", "router", "result_cls", "task_type",
                    "add_to_parent", "retry", "retry_policy"})


def breaker_name_for(task: Task) -> str:
    """The breaker ``task`` dispatches through: its own ``breaker_name``, else the app's."""
    name = getattr(task, "breaker_name", None) or _app_settings(task._get_app()).breaker_name
    BREAKER_NAME.checked(name)
    return str(name)


def fallback_for(task: Task) -> str:
    """The fallback of ``task``: its own ``breaker_fallback``, else the app's."""
    fallback = getattr(task, "breaker_fallback", None) or _app_settings(task._get_app()).fallback
    FALLBACK.checked(fallback)
    return str(fallback)


_PLAIN = (str, int, float, bool, type(None))


def _plain_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON as it is (str, numbers, None, lists and str-keyed dicts of them).

    Most task arguments are: then the outbox's full kombu-JSON check is skipped.
    """
    if isinstance(value, _PLAIN):
        return True
    if depth > 8:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain_json(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v, depth + 1) for k, v in value.items())
    return False


def _check_storable(name: str, args: Any, kwargs: Any, options: dict[str, Any]) -> None:
    if not (_plain_json(args) and _plain_json(kwargs) and _plain_json(options)):
        check_storable(name, args, kwargs, options)


def _stored(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _LOCAL}


def _fallen_back(app: Celery, b: Breaker, mode: str, name: str, task: Task | None,
                 publish_now: Callable[[], AsyncResult], args: Any, kwargs: Any, task_id: str,
                 options: dict[str, Any], unit: ChordUnit | None = None) -> AsyncResult:
    """Publish through ``b``; on an open breaker or a counted failure, take ``mode``.

    ``unit``: the chord whose header this task is a member of (``chords``): the outbox
    keeps it in the chord's unit instead of a row of its own.
    """
    def result_for() -> AsyncResult:
        result_cls = options.get("result_cls") or (task.AsyncResult if task is not None
                                                   else app.AsyncResult)
        result: AsyncResult = result_cls(task_id)
        ignore = options.get("ignore_result")
        result.ignored = task.ignore_result if ignore is None and task is not None else ignore
        return result

    if unit is not None:
        def kept() -> AsyncResult:
            if mode == "raise":
                # Asked to raise, and something of the chord is kept already: refused whole.
                raise CanvasRefused(b.name, None, b.state.value)
            # ``outbox``, and ``sync`` too: a member run here could not count towards its
            # chord (whose counter is on the Redis that is away); it is kept with the rest
            # of the chord and runs on a worker after the relay.
            unit.add(name, args, kwargs, task_id, _stored(options))
            return result_for()

        if unit.keeping:
            # Something of the chord is kept already: the rest follows it, unpublished.
            return kept()
        if mode == "raise":
            return b.call(publish_now)
        return b.call_with_fallback(publish_now, kept, integration="celery")

    if mode == "raise":
        return b.call(publish_now)
    if mode == "sync" and task is not None:
        def run_here() -> EagerResult:
            local = {k: v for k, v in options.items() if k in ("link", "link_error", "headers")}
            return task.apply(args, kwargs, task_id=task_id, **local)

        return b.call_with_fallback(publish_now, run_here, integration="celery")

    def outbox() -> AsyncResult:
        if options.get("chord") is not None and canvas_needs_backend(app):
            # A chord's header member outside a unit (a header of groups or chords, or
            # without protect(app)): the chord's size goes to the result backend as the
            # header is dispatched, and would be missing when the relayed header finishes.
            raise CanvasRefused(b.name, None, b.state.value)
        write_dispatch(app, breaker=b.name, task_name=name, args=args, kwargs=kwargs,
                       task_id=task_id, options=_stored(options))
        relay_for(b, app)
        return result_for()

    return b.call_with_fallback(publish_now, outbox, integration="celery")


def dispatch(task: Task, args: Any = None, kwargs: Any = None, *, fallback: str | None = None,
             breaker: str | None = None, task_id: str | None = None, producer: Any = None,
             **options: Any) -> AsyncResult:
    """``task.apply_async`` through the broker's breaker, with ``fallback`` when Redis is down.

    Works for any Celery task, not only ``BreakerTask`` subclasses. A ``producer``
    or ``connection`` the caller passes is used to publish (the caller's own
    broker connection, with its own timeouts); without one, dispatch publishes
    on bounded producers of its own.
    """
    app = task._get_app()
    settings = _app_settings(app)
    mode = str(FALLBACK.checked(fallback or getattr(task, "breaker_fallback", None)
                                or settings.fallback))
    name = breaker or getattr(task, "breaker_name", None) or settings.breaker_name
    b = _breaker(app, settings, str(BREAKER_NAME.checked(name)))
    task_id = task_id or uuid()
    if settings.eager:
        return Task.apply_async(task, args, kwargs, task_id=task_id, producer=producer,
                                **options)
    if mode == "outbox":
        _check_storable(task.name, args, kwargs, _stored(options) if options else options)

    def publish_now() -> AsyncResult:
        return publish(task, args, kwargs, task_id, options, producer)

    if chords.current() is None:
        return _fallen_back(app, b, mode, task.name, task, publish_now, args, kwargs, task_id,
                            options)
    return chords.through_unit(task_id, options, lambda unit: _fallen_back(
        app, b, mode, task.name, task, publish_now, args, kwargs, task_id, options, unit))


def send_task(app: Celery, name: str, args: Any = None, kwargs: Any = None,
              **options: Any) -> AsyncResult:
    """``app.send_task`` through the broker's breaker (what ``protect(app)`` installs).

    Takes every argument of Celery's ``send_task``, plus ``breaker_fallback``
    (``outbox`` or ``raise``; ``sync`` runs the task here when this app has it).
    """
    if publishing.get():
        # Called by Celery's own Task.apply_async inside a dispatch that holds the breaker.
        return Celery.send_task(app, name, args, kwargs, **options)
    task = options.get("task_type")
    fallback = options.pop("breaker_fallback", None)
    settings = _app_settings(app)
    if task is None:
        task = app.tasks.get(name)
    mode = str(FALLBACK.checked(fallback or getattr(task, "breaker_fallback", None)
                                or settings.fallback))
    breaker_name = getattr(task, "breaker_name", None) or settings.breaker_name
    b = _breaker(app, settings, str(BREAKER_NAME.checked(breaker_name)))
    task_id = options.pop("task_id", None) or uuid()
    producer = options.pop("producer", None) or options.pop("publisher", None)
    if mode == "outbox":
        _check_storable(name, args, kwargs, _stored(options))

    def publish_now() -> AsyncResult:
        return send_by_name(app, name, args, kwargs, task_id, options, producer)

    if chords.current() is None:
        return _fallen_back(app, b, mode, name, task, publish_now, args, kwargs, task_id,
                            options)
    return chords.through_unit(task_id, options, lambda unit: _fallen_back(
        app, b, mode, name, task, publish_now, args, kwargs, task_id, options, unit))


class BreakerTask(Task):  # type: ignore[misc]
    """A Celery task whose dispatch goes through the broker's circuit breaker.

    ``Celery(..., task_cls="redis_breaker.celery:BreakerTask")`` or
    ``@app.task(base=BreakerTask)``. Per task: ``@app.task(breaker_fallback="sync",
    breaker_name="jobs")``; per app: the ``redis_breaker_fallback`` and
    ``redis_breaker_name`` settings (``CELERY_REDIS_BREAKER_*`` in Django);
    per call: ``apply_async(..., breaker_fallback="raise")``.

    In the worker, each run first claims its task id in Redis (``once``), so a
    message published twice (a publish that timed out after reaching Redis,
    then relayed from the outbox) runs once.
    """

    breaker_name: str | None = None
    breaker_fallback: str | None = None

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None,
                    producer: Any = None, link: Any = None, link_error: Any = None,
                    shadow: str | None = None, **options: Any) -> AsyncResult:
        fallback = options.pop("breaker_fallback", None)
        if link is not None:
            options["link"] = link
        if link_error is not None:
            options["link_error"] = link_error
        if shadow is not None:
            options["shadow"] = shadow
        return dispatch(self, args, kwargs, fallback=fallback, task_id=task_id,
                        producer=producer, **options)

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        claim_once(self, task_id)


def execute_task_sync(task: Task, *args: Any, **kwargs: Any) -> AsyncResult:
    """Dispatch ``task(*args, **kwargs)`` normally while Redis is healthy, run it here when not."""
    return dispatch(task, args, kwargs, fallback="sync")
