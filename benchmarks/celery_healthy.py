"""Healthy Celery dispatch: plain Celery ``delay()`` vs ``BreakerTask`` ``delay()``, side by side.

    python benchmarks/celery_healthy.py [--quick] [--json PATH]

One local redis-server, Redis healthy. Rounds alternate plain and BreakerTask
blocks of ``delay()`` calls (the order flips each round, the queue is emptied
between blocks); the figure is the median over rounds of the BreakerTask /
plain time per call. Two setups: no result backend, and a Redis result backend
on the broker's server (plain Celery SUBSCRIBEs before each publish there;
BreakerTask leaves that to ``AsyncResult.get()``). Also the worker-side claim
of ``CELERY_REDIS_BREAKER_ONCE``: one ``SET NX EX`` per task run, its time
and the memory of one claim key.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

__all__ = ["run"]


def _apps(url: str, backend: str | None) -> tuple[Any, Any, Any, Any]:
    from celery import Celery

    from redis_breaker.celery import BreakerTask

    plain_app = Celery("bench-plain", broker=url, backend=backend, set_as_current=False)
    guarded_app = Celery("bench-guarded", broker=url, backend=backend, task_cls=BreakerTask,
                         set_as_current=False)
    for app in (plain_app, guarded_app):
        app.conf.task_ignore_result = backend is None

    @plain_app.task(name="bench.plain", shared=False)
    def plain(n: int, label: str) -> int:
        return n

    @guarded_app.task(name="bench.guarded", shared=False)
    def guarded(n: int, label: str) -> int:
        return n

    return plain_app, plain, guarded_app, guarded


def _block(task: Any, calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        task.delay(i, "x")
    return (time.perf_counter() - started) / calls


def _setup(server: Any, backend: str | None, calls: int, rounds: int) -> dict[str, Any]:
    plain_app, plain, guarded_app, guarded = _apps(server.url, backend)
    client = server.client()
    try:
        for task in (plain, guarded):  # warm both: pools, connections, imports
            _block(task, calls)
        client.flushdb()
        ratios: list[float] = []
        plain_us: list[float] = []
        guarded_us: list[float] = []
        for n in range(rounds):
            order = [(plain, plain_us), (guarded, guarded_us)]
            if n % 2:
                order.reverse()
            for task, sink in order:
                sink.append(_block(task, calls) * 1e6)
                client.delete("celery")
            ratios.append(guarded_us[-1] / plain_us[-1])
    finally:
        client.close()
        for app in (plain_app, guarded_app):
            cached = app.__dict__.pop("_redis_breaker_producers", None)
            if cached is not None:
                cached[1].connections.force_close_all()
            app.close()
    return {"plain_us": statistics.median(plain_us), "guarded_us": statistics.median(guarded_us),
            "ratio": statistics.median(ratios), "rounds": rounds, "calls": calls}


def _claim(server: Any, calls: int) -> dict[str, Any]:
    """One worker-side claim: ``SET key owner NX EX 86400`` on a fresh key, and its memory."""
    import uuid

    from redis_breaker.celery import claim_key

    client = server.client()
    try:
        keys = [claim_key(str(uuid.uuid4()), 0) for _ in range(calls)]
        client.set("warm", 1)
        started = time.perf_counter()
        for key in keys:
            client.set(key, "worker-host:12345", nx=True, ex=86400)
        per_call = (time.perf_counter() - started) / calls
        memory = client.memory_usage(keys[0])
        client.flushdb()
    finally:
        client.close()
    return {"claim_us": per_call * 1e6, "claim_key_bytes": memory}


def run(server: Any, quick: bool) -> dict[str, Any]:
    """The healthy-dispatch figures (Django must be configured: the outbox is importable)."""
    calls, rounds = (200, 31) if quick else (200, 101)
    figures = {
        "no result backend": _setup(server, None, calls, rounds),
        "Redis result backend": _setup(server, server.url.replace("/0", "/1"), calls, rounds),
    }
    claim = _claim(server, calls)
    print(f"\nhealthy delay(), side by side ({rounds} rounds of {calls} calls each, "
          "median; ratio = BreakerTask / plain Celery)")
    for name, f in figures.items():
        print(f"  {name:22} plain {f['plain_us']:7.1f} us   BreakerTask {f['guarded_us']:7.1f} us"
              f"   ratio {f['ratio']:.3f}x")
    print(f"  worker claim (CELERY_REDIS_BREAKER_ONCE): {claim['claim_us']:.1f} us per task run, "
          f"{claim['claim_key_bytes']} bytes per key for its TTL")
    return {"healthy": figures, "claim": claim}


def main() -> None:
    import argparse
    import json
    import sys
    import tempfile
    from pathlib import Path

    here = Path(__file__).parent
    sys.path[:0] = [str(here), str(here.parent / "src")]
    import django
    from django.conf import settings

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rb-bench-celery-healthy-"))
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "redis_breaker"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(folder / "outbox.sqlite3")}},
        USE_TZ=True, REDIS_BREAKERS={"default": {"STATE_DIR": str(folder / "state")}},
        LOGGING_CONFIG=None, DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
    django.setup()
    from _harness import RedisServer

    server = RedisServer().start()
    try:
        report = run(server, args.quick)
    finally:
        server.close()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
