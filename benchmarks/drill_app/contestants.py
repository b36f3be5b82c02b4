"""What each contestant does for each operation.

- ``redis-breaker``: BreakerCache, BreakerTask (outbox), BreakerChannelLayer, one
  shared breaker ("drill") for the endpoint.
- ``django-redis-cache``: Django's own RedisCache.
- ``django-redis``: django-redis with ``IGNORE_EXCEPTIONS``.
- ``celery``: a plain Celery task's ``delay()``.
- ``channels-redis``: a plain ``RedisChannelLayer.group_send``.
- ``pybreaker``: the same wrappers a team writes by hand (fallback to a local
  cache, run the task in-process, skip the message), guarded by one
  ``pybreaker.CircuitBreaker`` for the endpoint.

Each call that a backend answers without Redis, hiding the error from its
caller, is counted (``hidden.mark()``): see ``hidden.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pybreaker
import redis
from channels.layers import get_channel_layer
from django.core.cache import caches
from kombu.exceptions import OperationalError

from . import hidden
from .celery_app import guarded, plain, protected

SyncOp = Callable[[int], object]
AsyncOp = Callable[[int], Awaitable[object]]

GROUP = "drill"
_REDIS_ERRORS = (redis.RedisError, OSError, OperationalError, pybreaker.CircuitBreakerError)


@dataclass
class Contestant:
    name: str
    sync_ops: dict[str, SyncOp] = field(default_factory=dict)
    async_ops: dict[str, AsyncOp] = field(default_factory=dict)
    #: Channel layer alias whose group this contestant's receiver listens on.
    layer: str | None = None
    #: The sync operations' mix, when not the drill's usual one (``drill.SYNC_MIX``).
    mix: list[str] | None = None
    task_ids: list[str] = field(default_factory=list)
    #: ``time.perf_counter()`` when each task was dispatched, by task id.
    task_times: dict[str, float] = field(default_factory=dict)
    task_lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, task_id: str) -> None:
        with self.task_lock:
            self.task_ids.append(task_id)
            self.task_times[task_id] = time.perf_counter()


def _key(i: int) -> str:
    return f"user:{i % 200}"


class _PybreakerStates(pybreaker.CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, on_change: Callable[[str], None]) -> None:
        self.on_change = on_change

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.on_change(str(new_state.name).replace("-", "_"))


def build(loop_for: Callable[[str], asyncio.AbstractEventLoop],
          pybreaker_changed: Callable[[str], None] = lambda state: None) -> list[Contestant]:
    """The contestants; ``loop_for(name)`` is the event loop that runs that contestant's async ops.

    ``pybreaker_changed(state)`` is called on each state change of pybreaker's breaker.
    """
    contestants: list[Contestant] = []

    # -- redis-breaker
    rb = Contestant("redis-breaker", layer="rb")
    rb_cache = caches["rb"]
    rb_layer = get_channel_layer("rb")
    rb.sync_ops["cache.get"] = lambda i: rb_cache.get(_key(i))
    rb.sync_ops["cache.set"] = lambda i: rb_cache.set(_key(i), i, 300)

    def rb_delay(i: int) -> None:
        rb.remember(protected.delay(i).id)

    rb.sync_ops["task.delay"] = rb_delay
    rb.async_ops["group_send"] = lambda i: rb_layer.group_send(GROUP, {"type": "drill.msg", "n": i})
    contestants.append(rb)

    # -- the unprotected stack
    for name, alias in (("django-redis-cache", "django_redis_cache"), ("django-redis", "django_redis")):
        contestant = Contestant(name)
        cache = caches[alias]
        contestant.sync_ops["cache.get"] = lambda i, cache=cache: cache.get(_key(i))
        contestant.sync_ops["cache.set"] = lambda i, cache=cache: cache.set(_key(i), i, 300)
        contestants.append(contestant)

    celery_plain = Contestant("celery")

    def plain_delay(i: int) -> None:
        celery_plain.remember(plain.delay(i).id)

    celery_plain.sync_ops["task.delay"] = plain_delay
    contestants.append(celery_plain)

    plain_layer = get_channel_layer("plain")
    channels_plain = Contestant("channels-redis", layer="plain")
    channels_plain.async_ops["group_send"] = lambda i: plain_layer.group_send(
        GROUP, {"type": "drill.msg", "n": i})
    contestants.append(channels_plain)

    # -- hand-written wrappers guarded by pybreaker
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=1.0, name="drill",
                                  listeners=[_PybreakerStates(pybreaker_changed)])
    pb_contestant = Contestant("pybreaker", layer="pb")
    primary, local = caches["pb_primary"], caches["pb_local"]

    def pb_get(i: int) -> object:
        try:
            return pb.call(primary.get, _key(i))
        except _REDIS_ERRORS:
            hidden.mark()
            return local.get(_key(i))

    def pb_set(i: int) -> object:
        try:
            return pb.call(primary.set, _key(i), i, 300)
        except _REDIS_ERRORS:
            hidden.mark()
            return local.set(_key(i), i, 300)

    def pb_delay(i: int) -> None:
        try:
            result = pb.call(guarded.delay, i)
        except _REDIS_ERRORS:
            hidden.mark()
            result = guarded.apply(args=(i,))  # run it here, as execute_task_sync does
        pb_contestant.remember(result.id)

    pb_layer = get_channel_layer("pb")

    def pb_send_blocking(i: int) -> object:
        future = asyncio.run_coroutine_threadsafe(
            pb_layer.group_send(GROUP, {"type": "drill.msg", "n": i}), loop_for("pybreaker"))
        return future.result()

    async def pb_group_send(i: int) -> None:
        # pybreaker has no asyncio support: the usual way is to run the guarded call in a thread.
        try:
            await asyncio.get_running_loop().run_in_executor(None, pb.call, pb_send_blocking, i)
        except _REDIS_ERRORS:
            hidden.mark()
            return None

    pb_contestant.sync_ops.update({"cache.get": pb_get, "cache.set": pb_set, "task.delay": pb_delay})
    pb_contestant.async_ops["group_send"] = pb_group_send
    contestants.append(pb_contestant)
    return contestants


def task_names() -> dict[str, Any]:
    return {"redis-breaker": protected, "celery": plain, "pybreaker": guarded}
