"""Celery ``delay()`` latency during a broker outage: plain Celery vs BreakerTask.

    python benchmarks/bench_celery.py [--quick] [--outbox-only] [--json PATH]

Starts its own redis-server, configures Django in-process (outbox on a file
SQLite database) and measures, side by side in one run, one ``delay()`` per
call while the broker is refused (stopped), hung (SIGSTOP) and blackholed
(packets dropped; needs root, skipped otherwise with the reason):

* plain Celery, default settings (a bounded number of calls, each capped:
  on a hung broker one call can block for minutes);
* ``BreakerTask`` with the ``outbox`` fallback (rows in SQLite);
* ``BreakerTask`` with the ``sync`` fallback (the task runs in-process).

"once open" is every call after the breaker opened; the first five calls
discover the outage and each pays at most one transport timeout (1 s).

Then the outbox part (``_outbox_bench.py``): outbox ``delay()`` with the breaker
open, per database side by side (SQLite with Django's defaults, SQLite with the
documented settings, PostgreSQL), in autocommit and inside ``atomic()``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import _outbox_bench  # noqa: E402
from _common import percentiles, print_table, progress  # noqa: E402


def _setup_django(folder: Path, outbox_databases: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "redis_breaker"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                   "NAME": str(folder / "outbox.sqlite3")},
                       **outbox_databases},
            DATABASE_ROUTERS=[_outbox_bench.ROUTER],
            USE_TZ=True, REDIS_BREAKERS={}, LOGGING_CONFIG=None,
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        )
        django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _start_postgres() -> tuple[Any, str | None]:
    """The outbox part's PostgreSQL (the test harness's, durable), or why there is none."""
    from tests.harness import PostgresServer

    try:
        return PostgresServer(durable=True).start(), None
    except Exception as exc:
        return None, str(exc)


def _plain_calls(url: str, calls: int, cap: float) -> dict[str, Any]:
    """Time ``calls`` plain ``delay()`` calls, each abandoned after ``cap`` seconds."""
    from celery import Celery

    app = Celery("bench-plain", broker=url, set_as_current=False)

    @app.task(name="bench.plain", shared=False)
    def plain(n: int) -> int:
        return n

    times: list[float] = []
    capped = 0
    outcome = ""
    for _ in range(calls):
        box: dict[str, Any] = {}

        def one(box: dict[str, Any] = box) -> None:
            started = time.perf_counter()
            try:
                plain.delay(1)
                box["outcome"] = "returned"
            except Exception as exc:
                box["outcome"] = f"raised {type(exc).__name__}"
            box["s"] = time.perf_counter() - started

        started = time.perf_counter()
        thread = threading.Thread(target=one, daemon=True)
        thread.start()
        thread.join(cap)
        if thread.is_alive():
            capped += 1
            times.append(time.perf_counter() - started)
            outcome = f"still blocked after {cap:g}s"
        else:
            times.append(box["s"])
            outcome = box["outcome"]
    return {"calls": calls, "capped": capped, "outcome": outcome, **percentiles(times),
            "p99_open_ms": float("nan")}


def _breaker_calls(url: str, calls: int, fallback: str) -> dict[str, Any]:
    from celery import Celery

    from redis_breaker import _registry, get_breaker
    from redis_breaker.celery import BreakerTask
    from redis_breaker.models import OutboxMessage

    _registry._breakers.clear()
    app = Celery("bench-breaker", broker=url, task_cls=BreakerTask, set_as_current=False)

    @app.task(name="bench.guarded", shared=False, breaker_fallback=fallback)
    def guarded(n: int) -> int:
        return n

    breaker = get_breaker()
    times: list[float] = []
    once_open: list[float] = []
    for i in range(calls):
        was_open = breaker.is_open
        started = time.perf_counter()
        guarded.delay(i)
        elapsed = time.perf_counter() - started
        times.append(elapsed)
        if was_open:
            once_open.append(elapsed)
    rows = OutboxMessage.objects.count()
    OutboxMessage.objects.all().delete()
    breaker.force_open("benchmark done")  # no relay into the next scenario
    cached = app.__dict__.pop("_redis_breaker_producers", None)
    if cached is not None:
        cached[1].connections.force_close_all()
    return {"calls": calls, "capped": 0, "outcome": f"{rows} outbox rows" if fallback == "outbox"
            else "ran in-process", **percentiles(times),
            "p99_open_ms": percentiles(once_open)["p99_ms"]}


def _in_a_fresh_process(args: argparse.Namespace) -> dict[str, Any]:
    """Run this benchmark in a new Python process; return its figures."""
    out: Path = args.json or Path(tempfile.mkdtemp(prefix="rb-bench-celery-")) / "celery.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--json", str(out)]
    if args.quick:
        command.append("--quick")
    if args.outbox_only:
        command.append("--outbox-only")
    sys.stdout.flush()
    subprocess.run(command, check=True)
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls, shorter caps")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--outbox-only", action="store_true",
                        help="only the outbox part (delay() into the outbox, per database)")
    args = parser.parse_args(argv)
    from django.conf import settings

    if settings.configured:
        # A benchmark that ran before in this process (benchmarks/run.py) configured
        # Django, without the outbox's database, and Django is configured once per process.
        return _in_a_fresh_process(args)

    from _harness import RedisServer
    calls = 200 if args.quick else 2000
    plain_calls = 3
    cap = 15.0 if args.quick else 150.0
    folder = Path(tempfile.mkdtemp(prefix="rb-bench-celery-"))
    postgres, postgres_skipped = _start_postgres()
    _setup_django(folder, _outbox_bench.databases(folder, postgres))

    faults: list[tuple[str, RedisServer, Any, Any]] = []
    local = RedisServer().start()
    faults.append(("refused", local, local.stop, local.start))
    faults.append(("hung", local, local.freeze, local.thaw))
    ok, why = (RedisServer.can_blackhole() if hasattr(RedisServer, "blackhole")
               else (False, "the harness has no blackhole helper"))
    remote = None
    if ok:
        remote = RedisServer(netns=True).start()
        faults.append(("blackhole", remote, remote.blackhole, remote.unblackhole))
    else:
        print(f"blackhole skipped: {why}")

    results: dict[str, dict[str, Any]] = {}
    rows = []
    try:
        for fault, server, break_it, heal in ([] if args.outbox_only else faults):
            break_it()
            try:
                for mode in ("plain", "outbox", "sync"):
                    progress(f"{fault}: {mode}")
                    if mode == "plain":
                        figures = _plain_calls(server.url, plain_calls, cap)
                    else:
                        figures = _breaker_calls(server.url, calls, mode)
                    results[f"{fault}/{mode}"] = figures
                    label = {"plain": "plain Celery", "outbox": "BreakerTask outbox",
                             "sync": "BreakerTask sync"}[mode]
                    rows.append([fault, label, figures["calls"], figures["p50_ms"],
                                 figures["p99_open_ms"], figures["p99_ms"], figures["max_ms"],
                                 figures["outcome"]])
            finally:
                heal()
        # The outbox part: the same delay() per database, side by side.
        from celery import Celery

        from redis_breaker.celery import BreakerTask

        app = Celery("bench-outbox", broker=local.url, task_cls=BreakerTask,
                     set_as_current=False)
        outbox_results = _outbox_bench.measure(
            app, list(_outbox_bench.databases(folder, postgres)), 400 if args.quick else 4000)
        if postgres_skipped:
            print(f"PostgreSQL skipped: {postgres_skipped}")
        app.close()
    finally:
        local.close()
        if remote is not None:
            remote.close()
        if postgres is not None:
            postgres.close()

    if rows:
        print_table(
            f"delay() during a broker outage (ms; plain Celery: {plain_calls} calls, "
            f"each capped at {cap:g}s)",
            ["fault", "dispatch", "calls", "p50", "p99 once open", "p99", "max", "outcome"],
            rows)
    for fault in ("refused", "hung", "blackhole"):
        plain = results.get(f"{fault}/plain")
        outbox = results.get(f"{fault}/outbox")
        if plain and outbox:
            print(f"  {fault}: plain Celery p50 / BreakerTask outbox p99 once open = "
                  f"{plain['p50_ms'] / max(outbox['p99_open_ms'], 1e-6):,.0f}x")
    report = {"benchmark": "celery", "quick": args.quick, "blackhole": ok,
              "blackhole_skipped_because": None if ok else why, "results": results,
              "outbox": outbox_results, "postgresql_skipped_because": postgres_skipped}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
