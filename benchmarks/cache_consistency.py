"""What another process reads after an outage: host-wide breaker state against per-process.

    python benchmarks/cache_consistency.py [--runs N] [--json PATH]

Two processes of one host use one BreakerCache configuration (Django's
RedisCache, 0.25 s socket timeouts, the default breaker settings) over a real
redis-server holding ``k = v1``. A *reader* calls ``cache.get("k")`` every
2 ms the whole time. Redis is stopped (refused, its data saved); the *writer*
sets ``k = v2``, served by its fallback and journaled; Redis comes back with
``v1``. Any ``v1`` the reader gets after that is a stale read: Redis's copy
of a key another process changed, read before that process's replay deleted
it. Measured with ``HOST_SHARED`` on (the default: one state for the host's
processes) and off (each process on its own, as processes of two hosts are):
the stale reads, the time from Redis's return to the last one, and to the
writer's replay.

The same run, the writer cut off alone (a partial partition: its breaker
forced open while Redis stays up for the reader), counts what the reader gets
meanwhile.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import RedisServer, wait_until

HERE = Path(__file__).resolve()
READ_EVERY_S = 0.002


# ------------------------------------------------------------- the processes
def _configure(url: str, host_shared: bool, state_dir: str) -> Any:
    import django
    from django.conf import settings

    settings.configure(
        CACHES={"redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": url,
                          "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}},
                "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                            "OPTIONS": {"PRIMARY": "redis"}}},
        REDIS_BREAKERS={"default": {"HOST_SHARED": host_shared, "STATE_DIR": state_dir}},
        INSTALLED_APPS=["redis_breaker"], LOGGING_CONFIG=None, SECRET_KEY="bench")
    django.setup()
    from django.core.cache import caches

    cache = caches["default"]
    cache.get("warm-up")  # binds the cache: breaker, journal, connection
    return cache


def _child(args: argparse.Namespace) -> int:
    control = Path(args.control)
    cache = _configure(args.url, args.host_shared == "1", args.state_dir)
    (control / f"{args.role}-ready").touch()
    if args.role == "reader":
        seen: list[tuple[float, Any]] = []
        while not (control / "stop").exists():
            seen.append((time.monotonic(), cache.get("k")))
            time.sleep(READ_EVERY_S)
        Path(args.out).write_text(json.dumps(seen))
        return 0
    # writer
    while not (control / "write").exists():
        time.sleep(0.005)
    if (control / "partition").exists():
        cache.breaker.force_open("partition")
    cache.set("k", "v2")
    (control / "written").touch()
    while not (control / "heal").exists():
        time.sleep(0.005)
    if (control / "partition").exists():
        cache.breaker.reset("healed")
    while not (control / "stop").exists():
        time.sleep(0.01)
    return 0


# ----------------------------------------------------------------- the parent
def _spawn(role: str, url: str, host_shared: bool, state_dir: str, control: Path,
           out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HERE), "--role", role, "--url", url,
                             "--host-shared", "1" if host_shared else "0",
                             "--state-dir", state_dir, "--control", str(control),
                             "--out", str(out)], cwd=HERE.parent)


def one_run(host_shared: bool, partition: bool) -> dict[str, Any]:
    server = RedisServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="consistency-"))
    control = work / "control"
    control.mkdir()
    state_dir = tempfile.mkdtemp(prefix="state-")
    raw = server.client()
    raw.set(":1:k", pickle.dumps("v1", pickle.HIGHEST_PROTOCOL))  # as Django's RedisCache does
    out = work / "reads.json"
    procs = [_spawn(role, server.url, host_shared, state_dir, control, out)
             for role in ("writer", "reader")]
    try:
        wait_until(lambda: all((control / f"{r}-ready").exists() for r in ("writer", "reader")),
                   30)
        time.sleep(0.2)
        if partition:
            (control / "partition").touch()
        else:
            server.stop(save=True)
        (control / "write").touch()
        wait_until(lambda: (control / "written").exists(), 30)
        time.sleep(1.0)  # the outage
        up = time.monotonic()
        if partition:
            (control / "heal").touch()
        else:
            server.start()
            (control / "heal").touch()
        replayed = None
        deadline = up + 15
        while time.monotonic() < deadline:
            if replayed is None and not raw.exists(":1:k"):
                replayed = time.monotonic()
            if replayed is not None and time.monotonic() > replayed + 1.0:
                break
            time.sleep(0.002)
        (control / "stop").touch()
        for proc in procs:
            proc.wait(30)
        reads = json.loads(out.read_text())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.close()
    during = [v for t, v in reads if t < up]
    after = [(t, v) for t, v in reads if t >= up]
    stale_after = [t for t, v in after if v == "v1"]
    return {
        "stale_during": sum(v == "v1" for v in during[len(during) // 3:]),
        "reads_during": len(during),
        "stale_after": len(stale_after),
        "reads_after": len(after),
        "stale_window_ms": (stale_after[-1] - up) * 1000 if stale_after else 0.0,
        "replay_ms": (replayed - up) * 1000 if replayed is not None else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--role", choices=["reader", "writer"], help=argparse.SUPPRESS)
    for hidden in ("--url", "--host-shared", "--state-dir", "--control", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        sys.exit(_child(args))
    report: dict[str, Any] = {}
    for scenario, partition in (("outage", False), ("partial partition", True)):
        for host_shared in (True, False):
            runs = [one_run(host_shared, partition) for _ in range(args.runs)]
            name = f"{scenario}, {'host-wide' if host_shared else 'per-process'}"
            report[name] = runs
            windows = [r["stale_window_ms"] for r in runs]
            replays = [r["replay_ms"] for r in runs if r["replay_ms"] is not None]
            print(f"{name}: stale reads after recovery {[r['stale_after'] for r in runs]} "
                  f"(of ~{statistics.median(r['reads_after'] for r in runs):.0f}), "
                  f"stale window median {statistics.median(windows):.0f} ms "
                  f"max {max(windows):.0f} ms; replay at median "
                  f"{statistics.median(replays) if replays else float('nan'):.0f} ms; "
                  f"stale reads while away {[r['stale_during'] for r in runs]} "
                  f"(of ~{statistics.median(r['reads_during'] for r in runs):.0f})",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
