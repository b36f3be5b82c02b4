"""Soak: redis-breaker under load while Redis flaps, for minutes; resources must stay flat.

    python benchmarks/soak.py [--minutes 10] [--concurrency 2] [--out DIR]

(`nox -s soak`; not part of CI.) The drill's Django project and a real Celery
worker; only the redis-breaker stack. Redis goes down and comes back every 1-2
seconds, alternating refused (stopped, data kept) and hung (SIGSTOP). Every 5 s
it samples resident memory, threads, the cache journal, the outbox and the
errors callers saw. It fails (exit 1) when, between the first and the last
minute, resident memory or threads grew by 10 % or more, when the cache journal
held more keys than the traffic writes or was not emptied once Redis stayed up,
when the outbox did not drain, or when any caller saw an error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import RedisServer, wait_until  # noqa: E402
from drill import LoopThread, Run, async_worker, start_worker, sync_worker  # noqa: E402

SAMPLE_EVERY = 5.0
DISTINCT_KEYS = 200  # drill_app.contestants writes user:0 .. user:199


class CountingRun(Run):
    """Keeps counts, not every sample: the soak watches the library's memory, not its own."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.errors = 0
        self._count_lock = threading.Lock()

    def record(self, contestant: str, op: str, start: float, duration: float, error: bool,
               hidden: bool = False) -> None:
        with self._count_lock:
            self.calls += 1
            self.errors += error


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pace", type=float, default=0.02)
    parser.add_argument("--out", type=Path, default=Path("soak-out"))
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    ledger = RedisServer().start()
    server = RedisServer().start()
    worker: subprocess.Popen[bytes] | None = None
    loop: LoopThread | None = None
    run = CountingRun()
    flapping = threading.Event()
    try:
        env = dict(os.environ, DRILL_REDIS_URL=server.url, DRILL_LEDGER_URL=ledger.url,
                   PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        os.environ.update(DRILL_REDIS_URL=server.url, DRILL_LEDGER_URL=ledger.url)
        database = str(out / "soak.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            Path(database + suffix).unlink(missing_ok=True)
        import django
        from django.conf import settings

        from drill_app.settings import build

        settings.configure(**build(server.url, database))
        django.setup()
        from django.core.cache import caches
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from drill_app import contestants as contestant_module
        from redis_breaker import get_breaker
        from redis_breaker.outbox import outbox_status

        worker = start_worker(env, out)
        loop = LoopThread("redis-breaker")
        ours = next(c for c in contestant_module.build(lambda name: loop.loop)  # type: ignore[union-attr]
                    if c.name == "redis-breaker")
        threads = [threading.Thread(target=sync_worker, args=(run, ours, i, args.pace), daemon=True)
                   for i in range(args.concurrency)]
        for t in threads:
            t.start()
        for i in range(args.concurrency):
            loop.submit(async_worker(run, ours, i, args.pace))

        breaker = get_breaker("drill")
        rb_cache = caches["rb"]

        def journal_keys() -> int:
            bound = rb_cache._bind()  # type: ignore[attr-defined]
            return len(bound.journal._keys)

        faults: list[tuple[float, str]] = []
        flapper = threading.Thread(
            target=server.flap, args=(flapping, lambda e: faults.append((time.monotonic(), e))),
            daemon=True)
        flapper.start()
        samples: list[dict[str, Any]] = []
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(SAMPLE_EVERY)
            sample = {
                "t_s": round(run.now(), 1),
                "rss_kib": rss_kib(),
                "threads": threading.active_count(),
                "journal_keys": journal_keys(),
                "outbox_pending": outbox_status().get("pending"),
                "calls": run.calls,
                "errors": run.errors,
                "breaker": breaker.state.value,
            }
            samples.append(sample)
            print("  " + "  ".join(f"{k}={v}" for k, v in sample.items()), flush=True)
        flapping.set()
        flapper.join(10)
        if not server.running:
            server.start()
        if server.frozen:
            server.thaw()
        run.stop.set()
        for t in threads:
            t.join(60)
        wait_until(lambda: (outbox_status().get("pending") or 0) == 0, 120, 0.2)
        # Redis is steady now: the journal must be replayed and emptied.
        wait_until(lambda: breaker.state.value == "closed" and journal_keys() == 0, 120, 0.2)

        per_minute = max(1, int(60 / SAMPLE_EVERY))
        first, last = samples[per_minute:2 * per_minute] or samples[:1], samples[-per_minute:]

        def mean(rows: list[dict[str, Any]], key: str) -> float:
            values = [r[key] for r in rows if r[key] is not None]
            return sum(values) / len(values) if values else 0.0

        growth = {key: (mean(last, key) - mean(first, key)) / max(1.0, mean(first, key))
                  for key in ("rss_kib", "threads")}
        verdict = {
            "rss_growth": round(growth["rss_kib"], 4),
            "threads_growth": round(growth["threads"], 4),
            "journal_max": max(s["journal_keys"] for s in samples),
            "outbox_max": max((s["outbox_pending"] or 0) for s in samples),
            "outbox_left": outbox_status().get("pending"),
            "errors": samples[-1]["errors"],
            "calls": samples[-1]["calls"],
            "flaps": sum(1 for _, f in faults if f != "up"),
        }
        failures = []
        if verdict["rss_growth"] >= 0.10:
            failures.append("resident memory grew 10% or more")
        if verdict["threads_growth"] >= 0.10:
            failures.append("thread count grew 10% or more")
        verdict["journal_left"] = journal_keys()
        if verdict["journal_max"] > DISTINCT_KEYS:
            failures.append("the cache journal outgrew the keys the traffic writes")
        if verdict["journal_left"]:
            failures.append("the cache journal was not emptied after Redis came back")
        if verdict["outbox_left"]:
            failures.append("the outbox did not drain")
        if verdict["errors"]:
            failures.append("callers saw errors")
        verdict["failures"] = failures
        (out / "soak.json").write_text(json.dumps({"params": vars(args) | {"out": str(out)},
                                                   "samples": samples, "verdict": verdict},
                                                  indent=2))
        print("\n" + json.dumps(verdict, indent=2))
        print(f"\nsoak {'FAILED: ' + '; '.join(failures) if failures else 'passed'}")
        return 1 if failures else 0
    finally:
        flapping.set()
        run.stop.set()
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
        if loop is not None:
            loop.close()
        if server.frozen:
            server.thaw()
        server.close()
        ledger.close()


if __name__ == "__main__":
    sys.exit(main())
