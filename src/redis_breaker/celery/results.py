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

A result's subscription (``AsyncResult.then()``, what a group's barrier makes of
each member as it is dispatched) is deferred instead while the breaker is open
or when its ``SUBSCRIBE`` fails on a connection error the breaker counts: the
task is kept in Celery's ``subscribed_to`` and subscribed (after reading the
results stored meanwhile) at the next ``get()``, join or subscription made
while the breaker is not open. So a group dispatched during an outage goes to
the outbox whole. A chord's setup (``apply_chord``) and its size
(``set_chord_size``) go to the chord's unit (``chords``) when its header cannot
be published: the chord is one outbox row, relayed whole, and so do the
header's structure (what ``apply_chord`` stores for a header holding a chain
ending in a group) and a nested chord's own setup. A header the unit cannot
hold is refused (``CanvasRefused``) while the breaker is open.

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

from redis_breaker._breaker import Breaker
from redis_breaker._errors import BreakerOpenError
from redis_breaker._redact import describe_error

from . import chords

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
    """A ``chord`` not dispatched: it needs the result backend, which is down.

    A chord dispatched while that backend is down goes to the outbox as one unit
    (``chords``). Refused, nothing of it stored, while the breaker is open: a header
    the unit cannot hold (a chain holding two groups in a row, say), a member that asks
    to raise once something of the chord is kept, or a member outside a unit (without
    ``protect(app)``).
    The caller can dispatch it again later. A ``RuntimeError``, as Celery's own error for it was.
    """

    def __str__(self) -> str:
        return (f"chord not dispatched, nothing of it stored: it needs the Celery result "
                f"backend on the broker's Redis, and redis breaker {self.name!r} found that "
                f"Redis unavailable ({self.state})")


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
    """Whether a chord of ``app`` stores to a result backend on the broker's Redis when it
    is dispatched (a Redis result backend on the broker's server)."""
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


def _broker_breaker(app: Celery) -> Breaker:
    from .appconf import _app_settings, _breaker

    settings = _app_settings(app)
    return _breaker(app, settings, settings.breaker_name)


def _count_failure(b: Breaker, cause: BaseException) -> None:
    """Count ``cause`` against ``b`` as a failure of no duration (never timed)."""
    def failed() -> None:
        raise cause

    with contextlib.suppress(BaseException):
        b.call(failed)


def _counted_cause(b: Breaker, exc: BaseException) -> BaseException | None:
    """The Redis error under ``exc`` (itself, or what Celery's ``RuntimeError`` carries)
    when ``b`` counts it, else ``None``."""
    cause = exc.__cause__ if isinstance(exc, RuntimeError) else exc
    if isinstance(cause, rex.RedisError) and b.counts(cause):
        return cause
    return None


def _waited(app: Celery, fn: Callable[..., T], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> T:
    """``fn(*args, **kwargs)`` when the broker's breaker is not open; its Redis errors count.

    For the calls that wait for the task (``get()``, a group's join) or may not touch
    Redis at all (a subscription made by a background drainer): their length is the
    task's, not Redis's, so they are not timed by the breaker and their successes are
    not counted, only their failures.
    """
    b = _broker_breaker(app)
    if b.is_open:
        raise ResultBackendUnavailable(b.name, None, b.state.value)
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        cause = _counted_cause(b, exc)
        if cause is not None:
            # Counted, never timed; the caller gets the original error below.
            _count_failure(b, cause)
        raise


def _refused_when_open(app: Celery, fn: Callable[..., T], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> T:
    """``fn(*args, **kwargs)`` (a chord's setup), or ``CanvasRefused`` when the breaker is
    open: nothing of the chord is stored yet."""
    b = _broker_breaker(app)
    if b.is_open:
        raise CanvasRefused(b.name, None, b.state.value)
    return fn(*args, **kwargs)


def _locked(consumer: Any) -> Any:
    """Celery 5.5+'s lock around its pubsub operations (none before)."""
    locked = getattr(consumer, "_locked", None)
    return locked() if locked is not None else contextlib.nullcontext()


_consumer_classes: dict[type, type] = {}


def _guarded_consumer_class(cls: type) -> type:
    """``cls`` (Celery's Redis ``ResultConsumer``) with subscriptions deferred while the
    broker's breaker is open."""
    guarded = _consumer_classes.get(cls)
    if guarded is not None:
        return guarded

    class GuardedConsumer(cls):  # type: ignore[misc]
        _redis_breaker_app: Celery
        #: Tasks in ``subscribed_to`` that this consumer's pubsub never subscribed.
        _redis_breaker_deferred: bool = False

        def consume_from(self, task_id: str) -> Any:
            b = _broker_breaker(self._redis_breaker_app)
            if b.is_open:
                self._redis_breaker_defer(task_id)
                return None
            if self._redis_breaker_deferred:
                self._redis_breaker_defer(task_id)
                try:
                    self.redis_breaker_resubscribe()
                except Exception as exc:
                    cause = _counted_cause(b, exc)
                    if cause is None:
                        raise
                    _count_failure(b, cause)
                return None
            try:
                return super().consume_from(task_id)
            except Exception as exc:
                # Celery kept the task in subscribed_to, on no pubsub: deferred.
                cause = _counted_cause(b, exc)
                if cause is None:
                    raise
                _count_failure(b, cause)
                self._redis_breaker_defer(task_id)
                return None

        def _reconnect_pubsub(self) -> Any:
            # Celery's reconnect (its own after a connection error, and ours above) resets
            # the client's pool, dropping its connections without closing them: the idle
            # ones (a result read just before, such as a chord's parents read by get())
            # are closed first, not left open until the GC finds them.
            with contextlib.suppress(Exception):
                self.backend.client.connection_pool.disconnect(inuse_connections=False)
            return super()._reconnect_pubsub()

        def _redis_breaker_defer(self, task_id: str) -> None:
            with _locked(self):
                self.subscribed_to.add(self._get_key_for_task(task_id))
                self._redis_breaker_deferred = True

        def redis_breaker_resubscribe(self) -> None:
            """Subscribe to every task in ``subscribed_to``, as Celery's own reconnect
            does: the results stored meanwhile are read first (``MGET``), then one
            ``SUBSCRIBE`` on a new pubsub connection."""
            with _locked(self):
                old = self._pubsub
                if old is not None:
                    with contextlib.suppress(Exception):
                        old.close()
                self._reconnect_pubsub()
                self._redis_breaker_deferred = False

    GuardedConsumer.__name__ = GuardedConsumer.__qualname__ = f"Breaker{cls.__name__}"
    GuardedConsumer.__module__ = __name__
    _consumer_classes[cls] = GuardedConsumer
    return GuardedConsumer


def _resubscribed(backend: Any) -> None:
    """Subscribe the tasks whose subscription was deferred (the breaker is not open).

    Also when Celery itself dropped the consumer's pubsub: a ``get()`` whose wait met
    the outage (its reconnect failed) leaves ``_pubsub`` None with tasks still in
    ``subscribed_to``, and no deferral recorded. Celery's ``drain_events`` then only
    sleeps: a result stored after the next ``get()`` began would never be heard.
    """
    consumer: Any = getattr(backend, "result_consumer", None)
    resubscribe = getattr(consumer, "redis_breaker_resubscribe", None)
    if resubscribe is not None and (consumer._redis_breaker_deferred or (
            consumer._pubsub is None and consumer.subscribed_to)):
        resubscribe()


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
            # Never refused: the consumer defers the subscription while the breaker is
            # open (a group's barrier subscribes to each member as it is dispatched).
            # get() is refused by wait_for_pending.
            return super().add_pending_result(*args, **kwargs)

        def forget(self, *args: Any, **kwargs: Any) -> Any:
            return _through(self._redis_breaker_app, super().forget, args, kwargs)

        def wait_for_pending(self, *args: Any, **kwargs: Any) -> Any:
            def wait() -> Any:
                _resubscribed(self)
                return super(Guarded, self).wait_for_pending(*args, **kwargs)

            return _waited(self._redis_breaker_app, wait, (), {})

        def iter_native(self, *args: Any, **kwargs: Any) -> Any:
            # A generator: the breaker is consulted (and the deferred subscriptions
            # made) when the join starts.
            def join() -> Any:
                _resubscribed(self)
                return super(Guarded, self).iter_native(*args, **kwargs)

            return _waited(self._redis_breaker_app, join, (), {})

        def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> Any:
            # Celery's chord setup, its ids frozen, before its header is dispatched: the
            # header's unit starts here (chords.py). A header it cannot store is refused
            # while the breaker is open, nothing of it dispatched.
            app = self._redis_breaker_app
            b = _broker_breaker(app)
            unit = chords.begin(app, b, header_result_args, body)
            if unit is None:
                if b.is_open:
                    raise CanvasRefused(b.name, None, b.state.value)
                return super().apply_chord(header_result_args, body, **kwargs)
            if unit.saved is None and b.is_open:
                # A header of tasks, chains of tasks and chords: Celery's Redis backend
                # stores nothing here for it (5.3 to 5.7), nothing is left for the relay.
                return None
            if unit.saved is not None and (b.is_open or (unit.parent is not None
                                                         and unit.parent.keeping)):
                # The header's structure, kept in the unit (with everything after it when
                # something of the chord holding this one is kept): the relay stores it first.
                return None
            try:
                written = super().apply_chord(header_result_args, body, **kwargs)
            except BaseException as exc:
                cause = _counted_cause(b, exc) if isinstance(exc, Exception) else None
                if cause is None or unit.saved is None:
                    # The chord's dispatch ends here: nothing of it is stored.
                    chords.abandon(unit, describe_error(exc))
                    raise
                # Counted; the header's structure stays in the unit, and so does every
                # member after it: the relay stores it first.
                _count_failure(b, cause)
                return None
            unit.save_written = True
            return written

        def set_chord_size(self, group_id: Any, chord_size: Any) -> Any:
            app = self._redis_breaker_app
            unit = chords.current()
            if unit is None or unit.group_id != str(group_id):
                return _refused_when_open(app, super().set_chord_size, (group_id, chord_size),
                                          {})
            b = _broker_breaker(app)
            keep = unit.keeping or b.is_open
            unit.size = int(chord_size)
            if keep:
                # Kept in the chord's unit: its relay writes it before the members it keeps.
                unit.size_written = False
                return None
            try:
                written = super().set_chord_size(group_id, chord_size)
            except Exception as exc:
                cause = _counted_cause(b, exc)
                if cause is None:
                    # The chord's dispatch ends here: nothing of the unit is stored.
                    chords.abandon(unit, describe_error(exc))
                    raise
                _count_failure(b, cause)
                unit.size_written = False
                return None
            unit.size_written = True
            return written

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
        consumer = getattr(backend, "result_consumer", None)
        if consumer is not None and type(consumer) not in _consumer_classes.values():
            consumer.__class__ = _guarded_consumer_class(type(consumer))
            consumer._redis_breaker_app = app
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
