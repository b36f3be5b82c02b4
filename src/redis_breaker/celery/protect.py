"""``protect(app)``: the app-level hook for what ``BreakerTask`` cannot reach alone.

* ``app.send_task`` goes through the breaker with the outbox fallback: calls
  by task name, Celery beat's entries for tasks its process has not imported,
  and tasks that are not ``BreakerTask``\\s (their ``apply_async`` ends in
  ``send_task``).
* A Redis result backend gets bounded sockets and no reconnect loop, unless
  the app sets its own: ``redis_socket_timeout`` and
  ``redis_socket_connect_timeout`` take ``redis_breaker_timeout`` when they
  hold Celery's defaults, and ``result_backend_transport_options`` gets
  ``retry_policy = {"max_retries": 0}`` when it has no ``retry_policy``. Then
  ``AsyncResult.state`` and ``.get()`` answer or raise within the socket
  timeout instead of retrying 20 times a second apart.
* That backend, when it is on the broker's Redis server, reads through the
  broker's breaker (``results``): once the breaker is open, ``AsyncResult``'s
  reads raise ``ResultBackendUnavailable`` at once.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import Celery

from .config import TIMEOUT
from .dispatch import send_task
from .results import guard_result_backend

__all__ = ["bound_result_backend", "protect"]

# Celery's own defaults for the result backend's sockets (5.3: None and None; 5.7: 120 s and None).
_CELERY_DEFAULTS = (None, 120.0)


def bound_result_backend(app: Celery) -> None:
    """Give ``app``'s Redis result backend bounded sockets and no retry loop (the app's own win)."""
    conf = app.conf
    timeout = float(TIMEOUT.checked(TIMEOUT.read(app)))
    for key in ("redis_socket_timeout", "redis_socket_connect_timeout"):
        if conf.get(key) in _CELERY_DEFAULTS:
            conf[key] = timeout
    options = dict(conf.get("result_backend_transport_options") or {})
    if "retry_policy" not in options:
        options["retry_policy"] = {"max_retries": 0}
        conf["result_backend_transport_options"] = options


def _on_after_configure(sender: Celery, **kwargs: Any) -> None:
    bound_result_backend(sender)


def protect(app: Celery) -> Celery:
    """Send ``app``'s tasks through the breaker whatever their class, bound its result backend.

    Call it where the app is made, after its configuration (``config_from_object``)::

        app = Celery("proj", task_cls="redis_breaker.celery:BreakerTask")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        redis_breaker.celery.protect(app)

    Returns ``app``. Calling it again changes nothing.
    """
    if getattr(app, "_redis_breaker_protected", False):
        return app
    app.send_task = partial(send_task, app)
    app._redis_breaker_protected = True
    guard_result_backend(app)
    if app.configured:
        bound_result_backend(app)
    else:
        app.on_after_configure.connect(_on_after_configure, sender=app, weak=False)
    return app
