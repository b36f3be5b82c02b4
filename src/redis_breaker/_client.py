"""Guarded redis-py clients: every command through a breaker.

``client(...)`` gives a redis-py client, sync or ``redis.asyncio``, whose
every command goes through a breaker: ``BreakerOpenError`` while it is open,
connection errors and timeouts counted. Pipelines (their ``execute`` and the
commands a ``WATCH`` runs at once), transactions, scripts, locks and the
commands of a pub/sub object made from it are guarded too: they all reach
Redis through the guarded client. A lock is therefore never acquired,
extended or released while the breaker refuses calls.

A client built here is guarded in place (its class swapped for a guarded
subclass). An existing client is guarded through a *view*: a shallow copy of
a guarded class that shares the original's connection pool, so the original
keeps working unguarded and nothing is connected twice. A view never closes
what it shares (its pool, its connection).
"""

from __future__ import annotations

import copy
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.client import Pipeline, PubSub

from ._breaker import Breaker
from ._registry import get_breaker

__all__ = ["client", "guard_client", "guarded_view", "is_guarded"]

C = TypeVar("C")



class ClassCache:
    """Guarded subclasses, made once per class and named ``Guarded<name>``.

    Made under a lock (double-checked); the lock is renewed after ``fork``, in
    case another thread of the parent held it.
    """

    def __init__(self) -> None:
        self._made: dict[type, type] = {}
        self._lock = threading.Lock()
        _CLASS_CACHES.add(self)

    def get(self, cls: type) -> type | None:
        return self._made.get(cls)

    def make(self, cls: type, factory: Callable[[Any], type]) -> type:
        found = self._made.get(cls)
        if found is None:
            with self._lock:
                found = self._made.get(cls)
                if found is None:
                    found = factory(cls)
                    found.__name__ = found.__qualname__ = f"Guarded{cls.__name__}"
                    self._made[cls] = found
        return found

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


_CLASS_CACHES: weakref.WeakSet[ClassCache] = weakref.WeakSet()


def _renew_class_caches() -> None:
    for cache in list(_CLASS_CACHES):
        cache._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_class_caches)

_classes = ClassCache()


# Each guarded class subclasses the original class alone (a mixin base would
# change the instance layout, and ``__class__`` could not be swapped), so the
# classes are made by these factories, once per original class.
def _sync_redis(base: Any) -> type:
    class GuardedRedis(base):  # type: ignore[misc]
        _rb_guarded = True

        def execute_command(self, *args: Any, **options: Any) -> Any:
            return self._rb_breaker.call(super().execute_command, *args, **options)

        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            return guard_client(super().pipeline(transaction, shard_hint), self._rb_breaker)

        def pubsub(self, **kwargs: Any) -> Any:
            return guard_client(super().pubsub(**kwargs), self._rb_breaker)

        def client(self) -> Any:
            # redis-py builds it with self.__class__; this one is owned, not a view.
            made = base(connection_pool=self.connection_pool, single_connection_client=True)
            return guard_client(made, self._rb_breaker)

        def __del__(self) -> None:
            if not self._rb_view:
                super().__del__()

    return GuardedRedis


def _sync_pipeline(base: Any) -> type:
    class GuardedPipeline(base):  # type: ignore[misc]
        """What reaches Redis is guarded; queuing a command is not."""

        _rb_guarded = True

        def execute(self, raise_on_error: bool = True) -> Any:
            return self._rb_breaker.call(super().execute, raise_on_error)

        def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
            return self._rb_breaker.call(super().immediate_execute_command, *args, **options)

    return GuardedPipeline


def _sync_pubsub(base: Any) -> type:
    class GuardedPubSub(base):  # type: ignore[misc]
        _rb_guarded = True

        def execute_command(self, *args: Any) -> Any:
            return self._rb_breaker.call(super().execute_command, *args)

    return GuardedPubSub


def _async_redis(base: Any) -> type:
    class GuardedRedis(base):  # type: ignore[misc]
        _rb_guarded = True

        async def execute_command(self, *args: Any, **options: Any) -> Any:
            return await self._rb_breaker.acall(super().execute_command, *args, **options)

        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            return guard_client(super().pipeline(transaction, shard_hint), self._rb_breaker)

        def pubsub(self, **kwargs: Any) -> Any:
            return guard_client(super().pubsub(**kwargs), self._rb_breaker)

        def client(self) -> Any:
            made = base(connection_pool=self.connection_pool, single_connection_client=True)
            return guard_client(made, self._rb_breaker)

        def __del__(self, *args: Any) -> None:
            if not self._rb_view:
                super().__del__(*args)

    return GuardedRedis


def _async_pipeline(base: Any) -> type:
    class GuardedPipeline(base):  # type: ignore[misc]
        _rb_guarded = True

        async def execute(self, raise_on_error: bool = True) -> Any:
            return await self._rb_breaker.acall(super().execute, raise_on_error)

        async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
            return await self._rb_breaker.acall(super().immediate_execute_command, *args,
                                                **options)

    return GuardedPipeline


def _async_pubsub(base: Any) -> type:
    class GuardedPubSub(base):  # type: ignore[misc]
        _rb_guarded = True

        async def execute_command(self, *args: Any) -> Any:
            return await self._rb_breaker.acall(super().execute_command, *args)

    return GuardedPubSub


def _factory_for(cls: type) -> Callable[[Any], type] | None:
    # Pipelines are clients too: test them first.
    if issubclass(cls, Pipeline):
        return _sync_pipeline
    if issubclass(cls, PubSub):
        return _sync_pubsub
    if issubclass(cls, redis.Redis):
        return _sync_redis
    import redis.asyncio as aioredis
    from redis.asyncio.client import Pipeline as AsyncPipeline
    from redis.asyncio.client import PubSub as AsyncPubSub

    if issubclass(cls, AsyncPipeline):
        return _async_pipeline
    if issubclass(cls, AsyncPubSub):
        return _async_pubsub
    if issubclass(cls, aioredis.Redis):
        return _async_redis
    return None


def _guarded_class(cls: type) -> type | None:
    if getattr(cls, "_rb_guarded", False):
        return cls
    found = _classes.get(cls)
    if found is not None:
        return found
    factory = _factory_for(cls)
    if factory is None:
        return None
    return _classes.make(cls, factory)


def is_guarded(obj: object) -> bool:
    """Whether ``obj`` is a client, pipeline or pub/sub object guarded by a breaker."""
    return bool(getattr(type(obj), "_rb_guarded", False))


def guard_client(obj: C, breaker: Breaker) -> C:
    """Guard a client, pipeline or pub/sub object *in place*; anything else is returned as it is.

    For objects nobody else holds (made for this caller). Something that is
    not redis-py's (a test double) passes through untouched.
    """
    if is_guarded(obj):
        return obj
    cls = _guarded_class(type(obj))
    if cls is None:
        return obj
    obj.__class__ = cls
    obj._rb_breaker = breaker  # type: ignore[attr-defined]
    obj._rb_view = False  # type: ignore[attr-defined]
    return obj


def guarded_view(obj: C, breaker: Breaker) -> C:
    """A guarded copy of a client someone else holds; the original stays as it was.

    The view shares the original's pool (and its connection, for a
    single-connection client) and never closes them.
    """
    if is_guarded(obj):
        return obj
    cls = _guarded_class(type(obj))
    if cls is None:
        return obj
    view = copy.copy(obj)
    view.__class__ = cls
    view._rb_breaker = breaker  # type: ignore[attr-defined]
    view._rb_view = True  # type: ignore[attr-defined]
    if hasattr(view, "auto_close_connection_pool"):
        view.auto_close_connection_pool = False
    return view


def client(target: Any = None, /, *, breaker: str | Breaker = "default", asyncio: bool = False,
           **kwargs: Any) -> Any:
    """A redis-py client whose every command goes through ``breaker``.

    ``target`` is a Redis URL (``redis://``, ``rediss://``, ``unix://``), an
    existing ``redis.Redis`` or ``redis.asyncio.Redis`` (guarded through a
    view: the original stays unguarded), or None for the breaker's own
    ``URL``. ``asyncio=True`` builds a ``redis.asyncio.Redis`` from a URL;
    ``kwargs`` go to ``from_url``. A URL given here is adopted by the breaker
    when its settings name none, so its probe PINGs it.

    While the breaker is open every command raises ``BreakerOpenError``
    without touching Redis; a connection error or timeout is counted and
    raised as it is. Give the client socket timeouts
    (``socket_timeout=0.5, socket_connect_timeout=0.5``): the breaker counts
    a failure only once the call returns.
    """
    b = breaker if isinstance(breaker, Breaker) else get_breaker(breaker)
    if target is None:
        target = b.url
        if target is None:
            raise ValueError(f"client(): breaker {b.name!r} has no URL; pass a Redis URL or client")
    if isinstance(target, str):
        if "://" not in target:
            raise ValueError("client(): target must be a Redis URL (redis://, rediss://, unix://)")
        b.adopt_url(target)
        if asyncio:
            import redis.asyncio as aioredis

            return guard_client(aioredis.Redis.from_url(target, **kwargs), b)
        return guard_client(redis.Redis.from_url(target, **kwargs), b)
    if kwargs or asyncio:
        raise TypeError("client(): keyword options apply to a URL, not to an existing client")
    if _guarded_class(type(target)) is None:
        raise TypeError(f"client(): expected a Redis URL or a redis-py client, "
                        f"not {type(target).__name__}")
    return guarded_view(target, b)
