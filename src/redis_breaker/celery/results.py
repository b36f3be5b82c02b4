"""``AsyncResult`` while the broker's Redis is down: answers through the breaker.

``protect(app)`` bounds a Redis result backend's sockets and turns its
reconnect loop off (``protect.bound_result_backend``). When the result backend
is on the broker's Redis server (the most common setup), it also puts the
backend's reads under the broker's breaker: ``AsyncResult.state`` (and
``ready()``, ``successful()``, ``failed()``, ``info``...), ``get()``,
``forget()`` and a group's ``join_native()``. A read that finds Redis
unreachable counts against the breaker like any other call on that server;
once the breaker is open, each of them raises ``ResultBackendUnavailable`` at
once, without touching Redis.

The worker's writes (``store_result``, a chord's counter) are left as Celery
has them: a worker has nothing to consume while its broker's Redis is down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.exceptions as rex
from celery import Celery

from redis_breaker._errors import BreakerOpenError

__all__ = ["CanvasRefused", "ResultBackendUnavailable", "canvas_needs_backend",
           "guard_result_backend"]

T = TypeVar("T")


class ResultBackendUnavailable(BreakerOpenError, rex.ConnectionError, RuntimeError):
    """A result read refused at once: the breaker of the result backend's Redis is open.

    It is the error Celery's own calls raise when that Redis is down, so code that
    already handles them keeps working: redis-py's ``ConnectionError`` (what
    ``AsyncResult.state`` raises, and ``get()`` on Celery 5.3), ``RuntimeError``
    (what ``get()`` raises on Celery 5.5 and later, "Retry limit exceeded"), and
    ``BreakerOpenError``/``pybreaker.CircuitBreakerError``. The message names the
    breaker, never the server's URL.
    """

    def __str__(self) -> str:
        when = "" if self.retry_in is None else f"; next attempt in {self.retry_in:.3f}s"
        return (f"Celery result backend unavailable: redis breaker {self.name!r} is "
                f"{self.state}{when}")


class CanvasRefused(ResultBackendUnavailable):
    """A ``group`` or ``chord`` not dispatched: it needs the result backend, which is down.

    A group subscribes to its members' results and a chord stores its size on a Redis
    result backend as they are dispatched; with that Redis on the broker's server and the
    broker unreachable, the canvas cannot be started whole. Dispatch refuses its first
    member that would go to the outbox, before anything of it is stored: nothing of the
    canvas runs, and the caller can dispatch it again later. A ``RuntimeError``, as
    Celery's own error for it was.
    """

    def __str__(self) -> str:
        return (f"group or chord not dispatched, nothing of it stored: it needs the Celery "
                f"result backend on the broker's Redis, and redis breaker {self.name!r} "
                f"found that Redis unavailable ({self.state})")


class _Counted(rex.ConnectionError):
    """Carries Celery's ``RuntimeError`` (its reconnect loop gave up on a Redis error) through
    the breaker, so that the Redis error under it counts."""


def _server(url: str) -> tuple[str, str, int] | None:
    """(kind, host or socket path, port) of a ``redis://``, ``rediss://`` or ``unix://`` URL."""
    try:
        parts = urlsplit(url.split(";")[0].strip())
        if parts.scheme in ("redis", "rediss"):
            return ("tcp", (parts.hostname or "localhost").lower(), parts.port or 6379)
        if parts.scheme in ("unix", "socket", "redis+socket"):
            return ("unix", parts.path, 0)
    except ValueError:
        return None
    return None


def _on_broker_server(app: Celery, backend_url: str | None) -> bool:
    broker = str(app.conf.broker_write_url or app.conf.broker_url or "")
    mine = _server(backend_url or "")
    return mine is not None and mine == _server(broker)


def canvas_needs_backend(app: Celery) -> bool:
    """Whether a group or chord of ``app`` stores to a result backend on the broker's Redis
    when it is dispatched (a Redis result backend on the broker's server)."""
    try:
        from celery.backends.redis import RedisBackend
    except ImportError:  # pragma: no cover - redis-py is a dependency
        return False
    backend = app.backend
    return isinstance(backend, RedisBackend) and _on_broker_server(
        app, getattr(backend, "url", None) or str(app.conf.result_backend or ""))


def _through(app: Celery, fn: Callable[..., T], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> T:
    """``fn(*args, **kwargs)`` through the broker's breaker; open: ``ResultBackendUnavailable``."""
    from .appconf import _app_settings, _breaker

    settings = _app_settings(app)
    b = _breaker(app, settings, settings.breaker_name)

    def run() -> T:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            if isinstance(exc.__cause__, rex.RedisError) and b.counts(exc.__cause__):
                raise _Counted(exc) from exc.__cause__
            raise

    try:
        return b.call(run)
    except _Counted as carried:
        raise carried.args[0] from carried.__cause__
    except BreakerOpenError as exc:
        if isinstance(exc, ResultBackendUnavailable):
            raise
        raise ResultBackendUnavailable(exc.name, exc.retry_in, exc.state) from None


def _waited(app: Celery, fn: Callable[..., T], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> T:
    """``fn(*args, **kwargs)`` when the broker's breaker is not open; its Redis errors count.

    For the calls that wait for the task (``get()``, a group's join) or may not touch
    Redis at all (a subscription made by a background drainer): their length is the
    task's, not Redis's, so they are not timed by the breaker and their successes are
    not counted, only their failures.
    """
    from .appconf import _app_settings, _breaker

    settings = _app_settings(app)
    b = _breaker(app, settings, settings.breaker_name)
    if b.is_open:
        raise ResultBackendUnavailable(b.name, None, b.state.value)
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, RuntimeError) else exc
        if isinstance(cause, rex.RedisError) and b.counts(cause):
            def failed() -> None:
                raise cause

            # A failure of no duration through the breaker: counted, never timed. The
            # caller gets the original error below.
            with contextlib.suppress(BaseException):
                b.call(failed)
        raise


_classes: dict[type, type] = {}


def _guarded_class(cls: type) -> type:
    guarded = _classes.get(cls)
    if guarded is not None:
        return guarded

    class Guarded(cls):  # type: ignore[misc]
        _redis_breaker_app: Celery

        def get_task_meta(self, *args: Any, **kwargs: Any) -> Any:
            return _through(self._redis_breaker_app, super().get_task_meta, args, kwargs)

        def add_pending_result(self, *args: Any, **kwargs: Any) -> Any:
            return _waited(self._redis_breaker_app, super().add_pending_result, args, kwargs)

        def forget(self, *args: Any, **kwargs: Any) -> Any:
            return _through(self._redis_breaker_app, super().forget, args, kwargs)

        def wait_for_pending(self, *args: Any, **kwargs: Any) -> Any:
            return _waited(self._redis_breaker_app, super().wait_for_pending, args, kwargs)

        def iter_native(self, *args: Any, **kwargs: Any) -> Any:
            # A generator: the breaker is consulted when the join starts.
            return _waited(self._redis_breaker_app, super().iter_native, args, kwargs)

        def __reduce__(self, args: Any = (), kwargs: Any = None) -> Any:
            # Pickled as Celery's own class (this one is made at run time): unguarded.
            unpickle, (_, args, kwargs) = super().__reduce__(args, kwargs)
            return unpickle, (cls, args, kwargs)

    Guarded.__name__ = Guarded.__qualname__ = f"Breaker{cls.__name__}"
    Guarded.__module__ = __name__
    _classes[cls] = Guarded
    return Guarded


def _guard(app: Celery, backend: Any) -> Any:
    try:
        from celery.backends.redis import RedisBackend, SentinelBackend
    except ImportError:  # pragma: no cover - redis-py is a dependency
        return backend
    if (isinstance(backend, RedisBackend) and not isinstance(backend, SentinelBackend)
            and type(backend) not in _classes.values()
            and _on_broker_server(app, getattr(backend, "url", None)
                                  or str(app.conf.result_backend or ""))):
        backend.__class__ = _guarded_class(type(backend))
        backend._redis_breaker_app = app
    return backend


def guard_result_backend(app: Celery) -> None:
    """Put ``app``'s Redis result backend on the broker's server under the broker's breaker
    (the backend made now, if any, and every one the app makes later)."""
    if getattr(app, "_redis_breaker_results_guarded", False):
        return
    make = app._get_backend

    def _get_backend() -> Any:
        return _guard(app, make())

    app._get_backend = _get_backend
    app._redis_breaker_results_guarded = True
    current = getattr(app, "_backend", None)
    if current is not None:
        _guard(app, current)
