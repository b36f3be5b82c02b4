"""The engine side by side with pybreaker and with no breaker, in one run.

    python benchmarks/bench_engine.py [--quick] [--json PATH]

1. closed-state overhead on a no-op call (redis-breaker vs pybreaker);
2. open-state rejection and fallback cost;
3. a real Redis GET through the breaker vs bare;
4. outage onset: Redis frozen (SIGSTOP), 8 threads, socket_timeout=0.5 s:
   slowest call and wall time for bare redis-py, pybreaker and redis-breaker.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pybreaker
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_ns_per_call, print_table, progress
from _harness import RedisServer, free_port
from redis_breaker import Breaker, BreakerConfig, BreakerOpenError

SOCKET_TIMEOUT = 0.5


def _noop() -> None:
    return None


def closed_overhead(calls: int, repeats: int) -> dict[str, float]:
    breaker = Breaker("bench-closed", BreakerConfig(probe=False))
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    bare = median_ns_per_call(_noop, calls, repeats)
    ours = median_ns_per_call(lambda: breaker.call(_noop), calls, repeats)
    theirs = median_ns_per_call(lambda: pb.call(_noop), calls, repeats)
    # The lambda costs the same in both; subtract the bare loop to get the overhead.
    lam = median_ns_per_call(lambda: _noop(), calls, repeats)
    return {
        "bare_ns": bare,
        "redis_breaker_ns": ours - lam,
        "pybreaker_ns": theirs - lam,
        "ratio_vs_pybreaker": (ours - lam) / (theirs - lam),
    }


def open_costs(calls: int, repeats: int) -> dict[str, float]:
    # A really open breaker: tripped by refused connections, its probe running
    # (and backing off) against a port where nothing listens.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    breaker = Breaker("bench-open", BreakerConfig(url=dead, reset_timeout=3600,
                                                  max_reset_timeout=3600))
    logging.getLogger("redis_breaker").setLevel(logging.CRITICAL)
    client = redis.Redis.from_url(dead, retry=Retry(NoBackoff(), 0))
    while not breaker.is_open:
        try:
            breaker.call(client.get, "k")
        except redis.ConnectionError:
            pass
    pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    pb.open()

    def reject() -> None:
        try:
            breaker.call(_noop)
        except BreakerOpenError:
            pass

    def reject_pb() -> None:
        try:
            pb.call(_noop)
        except pybreaker.CircuitBreakerError:
            pass

    def fallback() -> None:
        breaker.call_with_fallback(_noop, _noop)

    return {
        "reject_ns": median_ns_per_call(reject, calls, repeats),
        "fallback_ns": median_ns_per_call(fallback, calls, repeats),
        "pybreaker_reject_ns": median_ns_per_call(reject_pb, calls, repeats),
    }


def real_get(server: RedisServer, calls: int, repeats: int) -> dict[str, float]:
    client = redis.Redis.from_url(server.url, socket_timeout=SOCKET_TIMEOUT)
    client.set("bench", "x" * 100)
    breaker = Breaker("bench-get", BreakerConfig(probe=False))
    bare_samples, ours_samples = [], []
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both
        bare_samples.append(median_ns_per_call(lambda: client.get("bench"), calls, 1))
        ours_samples.append(median_ns_per_call(lambda: breaker.call(client.get, "bench"), calls, 1))
    bare_samples.sort()
    ours_samples.sort()
    bare = bare_samples[len(bare_samples) // 2]
    ours = ours_samples[len(ours_samples) // 2]
    return {"bare_us": bare / 1000, "redis_breaker_us": ours / 1000, "ratio": ours / bare}


def _frozen_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=SOCKET_TIMEOUT,
                                socket_connect_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0),
                                max_connections=64)


def onset(server: RedisServer, contestant: str, threads: int, calls: int) -> dict[str, Any]:
    """Freeze Redis, run ``calls`` GETs in each of ``threads`` threads, thaw."""
    client = _frozen_client(server)
    client.ping()
    if contestant == "redis-breaker":
        breaker = Breaker(f"onset-{time.monotonic_ns()}", BreakerConfig(url=server.url))
        def run() -> object:
            return breaker.call(client.get, "bench")
    elif contestant == "pybreaker":
        pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
        def run() -> object:
            return pb.call(client.get, "bench")
    else:
        def run() -> object:
            return client.get("bench")

    durations: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                run()
            except (redis.RedisError, pybreaker.CircuitBreakerError):
                pass
            with lock:
                durations.append(time.perf_counter() - t0)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    server.freeze()
    try:
        barrier.wait()
        start = time.perf_counter()
        for t in pool:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.thaw()
    client.close()
    return {"contestant": contestant, "slowest_s": max(durations), "wall_s": wall,
            "calls": len(durations)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    calls, repeats = (20_000, 5) if args.quick else (200_000, 9)

    progress("closed-state overhead")
    closed = closed_overhead(calls, repeats)
    print_table("Closed-state overhead per call, no-op function (median of runs)",
                ["", "ns/call", "vs pybreaker"],
                [["redis-breaker Breaker.call", closed["redis_breaker_ns"], closed["ratio_vs_pybreaker"]],
                 ["pybreaker CircuitBreaker.call", closed["pybreaker_ns"], 1.0]])

    progress("open-state rejection")
    opened = open_costs(calls, repeats)
    print_table("Open state: cost of a rejected call (median of runs)",
                ["", "ns/call", "µs/call"],
                [["redis-breaker reject (BreakerOpenError)", opened["reject_ns"], opened["reject_ns"] / 1000],
                 ["redis-breaker fallback (no raise)", opened["fallback_ns"], opened["fallback_ns"] / 1000],
                 ["pybreaker reject", opened["pybreaker_reject_ns"], opened["pybreaker_reject_ns"] / 1000]])

    with RedisServer() as server:
        progress("real GET, healthy Redis")
        get = real_get(server, calls // 20, repeats)
        print_table("Healthy Redis GET (median of interleaved runs)",
                    ["", "µs/GET", "ratio"],
                    [["bare redis-py", get["bare_us"], 1.0],
                     ["through redis-breaker", get["redis_breaker_us"], get["ratio"]]])

        results = []
        for contestant in ("redis-py", "pybreaker", "redis-breaker"):
            progress(f"outage onset: Redis frozen, 8 threads, {contestant}")
            results.append(onset(server, contestant, threads=8, calls=10))
        print_table(f"Outage onset: Redis frozen (SIGSTOP), 8 threads x 10 GETs, socket_timeout={SOCKET_TIMEOUT}s",
                    ["", "slowest call s", "wall s", "calls"],
                    [[r["contestant"], r["slowest_s"], r["wall_s"], r["calls"]] for r in results])

    report = {"closed": closed, "open": opened, "get": get, "onset": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
