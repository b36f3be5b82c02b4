"""The drill's project over HTTP: pages that use Redis through redis-breaker.

Every view answers JSON with the serving process's ``pid``, the ``drill``
breaker's state when the view started (``breaker_before``; ``open`` means the
view's Redis calls were rejected at once and served by the fallbacks) and
after, the wall-clock ``started`` and the time spent in the view
(``elapsed``). A Redis exception is not caught here: it would reach the
client as a 500.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from channels.layers import get_channel_layer
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

from redis_breaker import StateChange, get_breaker

from .celery_app import protected
from .contestants import GROUP

BREAKER = "drill"
CACHE = "rb"
LAYER = "rb"
_prepared = False
_prepare_lock = threading.Lock()


def _record_transition(change: StateChange) -> None:
    """Append the transition to ``$DRILL_EVENTS_DIR/<pid>.jsonl`` (pid read now: after fork)."""
    folder = os.environ.get("DRILL_EVENTS_DIR")
    if not folder:
        return
    line = json.dumps({"pid": os.getpid(), "t": time.time(), "from": change.from_state.value,
                       "to": change.to_state.value, "reason": change.reason,
                       "remote": change.remote, "thread": threading.current_thread().name})
    with (Path(folder) / f"{os.getpid()}.jsonl").open("a") as f:
        f.write(line + "\n")


def prepare() -> None:
    """Create the breaker, the cache and the layer and use the cache once, at import.

    Under ``gunicorn --preload`` this runs in the master, before the workers
    are forked: what it creates must keep working in each worker.
    """
    global _prepared
    with _prepare_lock:
        if _prepared:
            return
        _prepared = True
    breaker = get_breaker(BREAKER)
    breaker.add_listener(_record_transition)
    get_channel_layer(LAYER)
    caches[CACHE].get("drill:warm-up")


class _Timer:
    def __init__(self) -> None:
        self.wall = time.time()
        self.started = time.monotonic()
        self.before = get_breaker(BREAKER).state.value

    def respond(self, **extra: Any) -> JsonResponse:
        return JsonResponse({
            "pid": os.getpid(),
            "started": self.wall,
            "elapsed": time.monotonic() - self.started,
            "breaker_before": self.before,
            "breaker_after": get_breaker(BREAKER).state.value,
            **extra,
        })


def _n(request: HttpRequest) -> int:
    return int(request.GET.get("n", "0"))


def cache_view(request: HttpRequest) -> HttpResponse:
    """Read a key, then write it: a page that caches something."""
    timer = _Timer()
    cache = caches[CACHE]
    key = f"user:{_n(request) % 200}"
    value = cache.get(key)
    cache.set(key, _n(request), 300)
    return timer.respond(key=key, value=value)


def task_view(request: HttpRequest) -> HttpResponse:
    """Dispatch a Celery task (to the broker, or to the outbox while Redis is down)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    timer = _Timer()
    result = protected.delay(_n(request))
    return timer.respond(task_id=result.id)


async def group_send_view(request: HttpRequest) -> HttpResponse:
    """``group_send`` to the drill's group (WebSocket clients of ``ws/drill/`` receive it)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    timer = _Timer()
    await get_channel_layer(LAYER).group_send(GROUP, {"type": "drill.msg", "n": _n(request)})
    return timer.respond()


def process_view(request: HttpRequest) -> HttpResponse:
    """This process: pid, breaker state, thread names (no Redis call)."""
    timer = _Timer()
    return timer.respond(threads=sorted(t.name for t in threading.enumerate()))
