"""``AsyncResult`` while the result backend's Redis is down: how long each read takes, what it raises.

    python benchmarks/celery_results.py [--cap SECONDS]

A Redis result backend on the broker's server (the most common setup). For
each fault (refused: redis-server stopped; hung: SIGSTOPped) and each setup
(plain Celery; ``protect(app)`` with the breaker still closed; ``protect(app)``
once the breaker is open), one ``AsyncResult`` reads ``state``, ``ready()``,
``successful()``, ``failed()``, ``get(timeout=10)`` and ``forget()`` in turn,
each in a thread of its own, capped at ``--cap`` seconds (a read still blocked
then is reported as such). The breaker of the "closed" setup opens during its
own reads (five failures in a row): those after it answer as in the "open" one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["run"]

READS = ("state", "ready()", "successful()", "failed()", "get(timeout=10)", "forget()")


def _timed(fn: Any, cap: float) -> str:
    out: dict[str, Any] = {}

    def call() -> None:
        started = time.perf_counter()
        try:
            out["r"] = f"returns {fn()!r}"
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            out["r"] = f"{type(exc).__module__}.{type(exc).__name__}: {first[:70]}"
        out["t"] = time.perf_counter() - started

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(cap)
    if thread.is_alive():
        return f"still blocked after {cap:.0f} s"
    return f"{out['t']:.2f} s, {out['r']}"


def _one(setup: str, fault: str, cap: float) -> list[tuple[str, str]]:
    from celery import Celery

    from _harness import RedisServer
    from redis_breaker import _registry, get_breaker
    from redis_breaker.celery import BreakerTask, protect

    _registry._breakers.clear()
    server = RedisServer().start()
    app = Celery("bench-results", broker=server.url, backend=server.url.replace("/0", "/1"),
                 task_cls=BreakerTask, set_as_current=False)
    if setup != "plain":
        protect(app)
    result = app.AsyncResult("a-task-id")
    assert result.state == "PENDING"
    (server.stop if fault == "refused" else server.freeze)()
    rows: list[tuple[str, str]] = []
    try:
        if setup == "protect, open":
            breaker = get_breaker("default")
            for _ in range(10):
                if breaker.is_open:
                    break
                _timed(lambda: result.state, cap)
        reads = [lambda: result.state, result.ready, result.successful, result.failed,
                 lambda: result.get(timeout=10), result.forget]
        for label, read in zip(READS, reads, strict=True):
            rows.append((label, _timed(read, cap)))
    finally:
        if server.frozen:
            server.thaw()
        server.close()
    return rows


def run(cap: float) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for setup in ("plain", "protect, closed", "protect, open"):
        for fault in ("refused", "hung"):
            rows = _one(setup, fault, cap)
            report[f"{setup} / {fault}"] = dict(rows)
            for label, line in rows:
                print(f"{setup:16} {fault:8} {label:16} {line}", flush=True)
    return report


def main() -> None:
    import argparse
    import os
    import sys
    import tempfile
    from pathlib import Path

    here = Path(__file__).parent
    sys.path[:0] = [str(here), str(here.parent / "src")]
    import django
    from django.conf import settings

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=float, default=25.0, help="seconds before a read is "
                        "reported as blocked (default 25)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rb-bench-celery-results-"))
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "redis_breaker"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(folder / "outbox.sqlite3")}},
        USE_TZ=True, REDIS_BREAKERS={"default": {"STATE_DIR": str(folder / "state")}},
        LOGGING_CONFIG=None, DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
    django.setup()
    run(args.cap)
    # Reads still blocked in their threads (plain Celery on a hung server) end with the process.
    os._exit(0)


if __name__ == "__main__":
    main()
