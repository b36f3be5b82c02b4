"""The outbox relay inside Celery workers.

A web process relays its outbox when it sees its breaker recover. Rows can
still be left behind: the process died or was recycled during the outage, or
it handles no traffic and never probes. A Celery worker of the project is the
one process that is sure to be running and connected to the broker, so on
``worker_ready`` it starts a thread that drains every breaker's pending rows
now and then every ``CELERY_REDIS_BREAKER_RELAY_INTERVAL`` seconds (default
10; ``0`` turns it off). Claims keep it from publishing a row that another
relay is publishing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from celery import Celery, signals
from django.db import connections

from redis_breaker._events import emit
from redis_breaker._redact import describe_error

from .config import RELAY_INTERVAL
from .outbox import drain

__all__ = ["WorkerRelay", "connect", "relay_interval"]


def relay_interval(app: Celery) -> float:
    """The worker relay interval of ``app`` in seconds; ``0`` means off."""
    return float(RELAY_INTERVAL.checked(RELAY_INTERVAL.read(app)))


class WorkerRelay:
    """One thread draining the outbox of every breaker until ``stop()``."""

    def __init__(self, app: Celery, interval: float) -> None:
        self.app = app
        self.interval = interval
        self.passes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="redis-breaker-worker-relay")

    def start(self) -> WorkerRelay:
        emit(logging.INFO, "outbox_worker_relay_started", interval_s=self.interval)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run_once(self) -> dict[str, Any]:
        try:
            result = drain(app=self.app)
        finally:
            # This thread's own database connection, never another thread's.
            with contextlib.suppress(Exception):
                connections.close_all()
        self.passes += 1
        if result["published"] or result["expired"] or result["failed"]:
            emit(logging.INFO, "outbox_relayed", source="worker",
                 **{k: v for k, v in result.items() if k != "by_breaker"})
        return result

    def _run(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception as exc:
                # Logged once per distinct error (a missing table would otherwise
                # be reported every few seconds), then tried again next pass.
                self.failures += 1
                error = describe_error(exc)
                if error != self._last_error:
                    emit(logging.ERROR, "outbox_relay_failed", source="worker", error=error)
                self._last_error = error
            else:
                self._last_error = None
            if self._stop.wait(self.interval):
                return


_relays: dict[int, WorkerRelay] = {}
_lock = threading.Lock()


def _app_of(sender: Any) -> Celery:
    app = getattr(sender, "app", None)
    if app is None:
        from celery import current_app

        app = current_app._get_current_object()
    return app


def _on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    app = _app_of(sender)
    interval = relay_interval(app)
    if interval <= 0:
        return
    with _lock:
        relay = _relays.get(id(app))
        if relay is not None and relay.running:
            return
        _relays[id(app)] = WorkerRelay(app, interval).start()


def _on_worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    with _lock:
        relays = list(_relays.values())
        _relays.clear()
    for relay in relays:
        relay.stop()


def connect() -> None:
    """Connect the worker relay to Celery's worker signals (idempotent)."""
    signals.worker_ready.connect(_on_worker_ready, weak=False,
                                 dispatch_uid="redis_breaker_worker_relay")
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False,
                                    dispatch_uid="redis_breaker_worker_relay_stop")


def _after_fork_in_child() -> None:
    # A child of a worker (the prefork pool) runs no relay: the parent's are the parent's.
    global _lock
    _lock = threading.Lock()
    _relays.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
