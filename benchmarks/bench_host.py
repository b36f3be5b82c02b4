"""The host-wide breaker: outage onset across processes, and recovery after long outages.

    python benchmarks/bench_host.py [--quick] [--json PATH]

1. Onset: 8 processes (one breaker each, same name and URL) call GET in a
   loop, 1 ms apart, through a client with 0.5 s socket timeouts, on one real
   redis-server; the server is frozen (SIGSTOP). Counted: the calls that
   waited a full timeout, summed over the host; the time from the freeze to
   the first trip, and from the first trip until every process rejects; the
   probes running on the host. With ``host_shared=True`` the processes share
   one state file (one state directory); with ``host_shared=False`` each has
   its own state (and its own state directory).
2. Recovery: a breaker tripped by the outage, then no traffic; Redis stopped
   (or frozen) for 5 s, 30 s and 120 s, then started again. Measured: the time
   from Redis answering (this benchmark's own PING loop) until the breaker
   reports closed (``breaker.state``, polled every millisecond), for a
   host-shared and a per-process breaker watching the same outage.

(`python benchmarks/bench_host.py --worker SPEC` is one onset process.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, progress

SOCKET_TIMEOUT = 0.5
PROCESSES = 8
#: Pause between two calls of one onset process (its "request" work).
PAUSE_S = 0.001
#: How long each onset process calls after the freeze: long enough for 8 processes
#: with their own state to reach the threshold (5 x 0.5 s) and reject.
ONSET_S = 4.0
MODES = (("host-shared", True), ("per-process", False))


def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


# ---------------------------------------------------------------- worker
def worker(spec: dict[str, Any]) -> None:
    """One onset process: say ready, wait for ``go`` on stdin, call for ``seconds``."""
    logging.getLogger("redis_breaker").setLevel(logging.CRITICAL)
    from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, State

    breaker = Breaker(spec["name"], BreakerConfig(url=spec["url"], host_shared=spec["shared"],
                                                  state_dir=spec["state_dir"]))
    opened: list[float] = []
    breaker.add_listener(lambda change: opened.append(change.at)
                         if change.to_state is State.OPEN else None)
    client = _client(spec["url"], SOCKET_TIMEOUT)
    for _ in range(3):
        breaker.call(client.get, "bench")
    print(json.dumps({"ready": os.getpid(), "host_shared": breaker.host_shared}), flush=True)
    sys.stdin.readline()
    full = ok = errors = rejected = 0
    first_reject: float | None = None
    slowest = 0.0
    monotonic = time.monotonic
    end = monotonic() + spec["seconds"]
    while True:
        started = monotonic()
        if started >= end:
            break
        try:
            breaker.call(client.get, "bench")
            ok += 1
        except BreakerOpenError:
            rejected += 1
            if first_reject is None:
                first_reject = started
            time.sleep(PAUSE_S)
            continue
        except redis.RedisError:
            errors += 1
        took = monotonic() - started
        slowest = max(slowest, took)
        if took >= 0.9 * SOCKET_TIMEOUT:
            full += 1
        time.sleep(PAUSE_S)
    stats = breaker.stats()
    print(json.dumps({
        "pid": os.getpid(), "host_shared": stats.host_shared, "full_timeouts": full,
        "ok": ok, "errors": errors, "rejected": rejected, "first_reject": first_reject,
        "first_open": min(opened) if opened else None, "slowest_s": slowest,
        "probe_pid": stats.probe_pid, "state": stats.state.value,
    }), flush=True)


# ----------------------------------------------------------------- onset
def onset(server: Any, shared: bool, rep: int) -> dict[str, Any]:
    """Freeze Redis under 8 calling processes; return the host's figures."""
    dirs: list[str] = []
    shared_dir = tempfile.mkdtemp(prefix="rb-bench-host-") if shared else None
    if shared_dir:
        dirs.append(shared_dir)
    name = f"host-onset-{'shared' if shared else 'local'}-{rep}"
    procs = []
    try:
        for _ in range(PROCESSES):
            state_dir = shared_dir or tempfile.mkdtemp(prefix="rb-bench-host-")
            if not shared:
                dirs.append(state_dir)
            spec = {"name": name, "url": server.url, "shared": shared, "state_dir": state_dir,
                    "seconds": ONSET_S}
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for proc in procs:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            if ready["host_shared"] != shared:
                raise RuntimeError(f"worker {ready['ready']}: host_shared is "
                                   f"{ready['host_shared']}, expected {shared}")
        frozen_at = time.monotonic()
        server.freeze()
        try:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            results = []
            for proc in procs:
                out, _ = proc.communicate(timeout=ONSET_S + 60)
                if proc.returncode != 0:
                    raise RuntimeError(f"onset worker exited with {proc.returncode}")
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            server.thaw()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)
    opens = [r["first_open"] for r in results if r["first_open"] is not None]
    rejects = [r["first_reject"] for r in results]
    every = max(rejects) if None not in rejects else None
    first_trip = min(opens) if opens else None
    return {
        "full_timeouts": sum(r["full_timeouts"] for r in results),
        "calls_not_rejected": sum(r["ok"] + r["errors"] for r in results),
        "processes_rejecting": sum(r is not None for r in rejects),
        "freeze_to_first_trip_s": None if first_trip is None else first_trip - frozen_at,
        "trip_to_all_rejecting_s": None if every is None or first_trip is None
        else every - first_trip,
        "freeze_to_all_rejecting_s": None if every is None else every - frozen_at,
        "probes": len({r["probe_pid"] for r in results if r["probe_pid"] is not None}),
        "slowest_s": max(r["slowest_s"] for r in results),
        "workers": results,
    }


def _spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    text = f"{statistics.median(known):.3f}"
    if len(known) > 1:
        text += f" ({min(known):.3f}-{max(known):.3f})"
    if len(known) < len(values):
        text += f", {len(values) - len(known)} never"
    return text


def _print_onset(figures: dict[str, list[dict[str, Any]]]) -> None:
    rows = []
    for label, runs in figures.items():
        rows.append([label, len(runs), ", ".join(str(r["full_timeouts"]) for r in runs),
                     ", ".join(str(r["probes"]) for r in runs),
                     _spread([r["freeze_to_first_trip_s"] for r in runs]),
                     _spread([r["trip_to_all_rejecting_s"] for r in runs]),
                     _spread([r["freeze_to_all_rejecting_s"] for r in runs])])
    print_table(f"Onset, {PROCESSES} processes calling GET in a loop on one redis-server frozen with "
                f"SIGSTOP, socket_timeout={SOCKET_TIMEOUT}s (per run; seconds: median (min-max))",
                ["", "runs", "calls that waited a full timeout", "probes", "freeze -> first trip s",
                 "first trip -> all reject s", "freeze -> all reject s"], rows)


# -------------------------------------------------------------- recovery
def recovery(server: Any, fault: str, outage_s: float, rep: int) -> dict[str, Any]:
    """Trip a host-shared and a per-process breaker on a real outage, wait, end it."""
    from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, State

    dirs = [tempfile.mkdtemp(prefix="rb-bench-host-") for _ in MODES]
    breakers = {label: Breaker(f"host-recovery-{fault}-{outage_s:g}-{rep}-{label}",
                               BreakerConfig(url=server.url, host_shared=shared, state_dir=path))
                for (label, shared), path in zip(MODES, dirs, strict=True)}
    client = _client(server.url, 0.1)
    try:
        client.ping()
        began = time.monotonic()
        if fault == "stopped":
            server.stop()
        else:
            server.freeze()
        for breaker in breakers.values():  # the outage's first calls open them; then no traffic
            while not breaker.is_open:
                try:
                    breaker.call(client.ping)
                except (redis.RedisError, BreakerOpenError):
                    pass
        time.sleep(max(0.0, began + outage_s - time.monotonic()))
        before = {label: (b.state.value, b.stats().probe_pid) for label, b in breakers.items()}

        answered: list[float] = []
        closed: dict[str, float] = {}
        done = threading.Event()

        def ping_loop() -> None:
            while not done.is_set():
                if server.ping(timeout=0.05):
                    answered.append(time.monotonic())
                    return
                time.sleep(0.001)

        def poll_loop() -> None:
            deadline = time.monotonic() + 60
            while len(closed) < len(breakers) and time.monotonic() < deadline:
                for label, breaker in breakers.items():
                    if label not in closed and breaker.state is State.CLOSED:
                        closed[label] = time.monotonic()
                time.sleep(0.001)

        pinger = threading.Thread(target=ping_loop)
        poller = threading.Thread(target=poll_loop)
        pinger.start()
        poller.start()
        if fault == "stopped":
            server.start()
        else:
            server.thaw()
        pinger.join(30)
        poller.join()
        done.set()
        pinger.join()
    finally:
        client.close()
        if not server.running:
            server.start()
        elif server.frozen:
            server.thaw()
        for breaker in breakers.values():
            breaker.force_open("benchmark done")  # stops its probe
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)
    answer = answered[0] if answered else None
    return {
        "fault": fault, "outage_s": outage_s,
        "before": before,
        "recovery_s": {label: (closed[label] - answer if answer is not None and label in closed
                               else None) for label in breakers},
    }


def _print_recovery(runs: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["fault"], run["outage_s"]), []).append(run)
    rows = []
    for (fault, outage), group in groups.items():
        rows.append([f"{fault} {outage:g} s", len(group),
                     *(_spread([r["recovery_s"][label] for r in group]) for label, _ in MODES)])
    print_table("Recovery with no traffic: seconds from Redis answering (own PING loop) until "
                "breaker.state is closed; median (min-max)",
                ["outage", "runs", "host-shared", "per-process"], rows)


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer runs, no 120 s outage (about a minute)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return {}
    from _harness import RedisServer

    logging.getLogger("redis_breaker").setLevel(logging.CRITICAL)
    onset_runs = 1 if args.quick else 3
    plan = ([("stopped", 5.0, 2), ("frozen", 5.0, 1), ("stopped", 30.0, 1)] if args.quick else
            [("stopped", 5.0, 5), ("frozen", 5.0, 3), ("stopped", 30.0, 2), ("frozen", 30.0, 1),
             ("stopped", 120.0, 1)])
    with RedisServer() as server:
        onsets: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in MODES}
        for rep in range(onset_runs):
            for label, shared in MODES:
                progress(f"onset across {PROCESSES} processes, {label}, run {rep + 1}/{onset_runs}")
                onsets[label].append(onset(server, shared, rep))
        _print_onset(onsets)

        recoveries = []
        for fault, outage, reps in plan:
            for rep in range(reps):
                progress(f"recovery after Redis {fault} for {outage:g} s, run {rep + 1}/{reps}")
                recoveries.append(recovery(server, fault, outage, rep))
        _print_recovery(recoveries)

    report = {"onset": onsets, "recovery": recoveries}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
