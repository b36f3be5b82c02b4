"""The engine side by side with pybreaker and with no breaker, in one run.

    python benchmarks/bench_engine.py [--quick] [--json PATH]

1. closed-state overhead of every entry point (``Breaker.call``, a ``guard``-ed
   function, ``call_with_fallback``, ``await acall``, ``acall_with_fallback``,
   ``with breaker:``, ``async with breaker:``), host-shared state and state in
   the process, in ns above a bare call and as a ratio of pybreaker's
   ``CircuitBreaker.call`` overhead;
2. thread scaling of the sync entry points, 1/2/4/8 threads: throughput
   relative to one thread;
3. open state: the cost of a rejected call with a probe thread running and
   without one (``probe=False``), and of a counted failure while closed;
4. a real Redis GET through the breaker vs bare;
5. outage onset in one process: Redis frozen (SIGSTOP), 8 threads,
   socket_timeout=0.5 s: slowest call and wall time for bare redis-py,
   pybreaker and redis-breaker.

(Onset and recovery across processes: ``bench_host.py``.) Every breaker here
has its own state directory (a ``tempfile.mkdtemp``, mode 0700), so nothing is
shared with another run or process. Absolute times on a shared machine are
noise; compare the ratios, which come from interleaved runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pybreaker
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_ns_per_call, print_table, progress
from _harness import RedisServer, free_port, wait_until
from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, guard

SOCKET_TIMEOUT = 0.5
#: The issue's targets (reported, not asserted): a closed entry point's overhead
#: as a fraction of pybreaker's ``CircuitBreaker.call`` overhead.
TARGET_CLOSED = 0.35
TARGET_WITH = 0.5
#: Throughput at 8 threads relative to one thread.
TARGET_SCALING = 0.6
THREADS = (1, 2, 4, 8)
MODES = (("host-shared", True), ("per-process", False))
#: The highest FAILURE_THRESHOLD the host-wide record can count.
THRESHOLD_MAX = 65535

perf_ns = time.perf_counter_ns


def _noop() -> None:
    return None


async def _anoop() -> None:
    return None


# The least any ``with breaker:`` can cost: what the protocol itself costs plus
# the bookkeeping a breaker shared by threads and tasks cannot skip (remember the
# block's ticket and start time where its exit finds it: a per-thread list, or a
# per-task ContextVar stack since coroutines of one thread interleave), with no
# breaker logic at all. Shown beside the entry points so the distance to the
# floor is measured, not guessed.
_FLOOR_BLOCKS: contextvars.ContextVar[Any] = contextvars.ContextVar("floor", default=None)
_FLOOR_THREAD = threading.local()


class _FloorWith:
    def __enter__(self) -> None:
        try:
            _FLOOR_THREAD.blocks.append((self, 0, time.monotonic()))
        except AttributeError:
            _FLOOR_THREAD.blocks = [(self, 0, time.monotonic())]

    def __exit__(self, *exc: object) -> None:
        _FLOOR_THREAD.blocks.pop()


class _FloorAsyncWith:
    async def __aenter__(self) -> None:
        _FLOOR_BLOCKS.set((self, 0, time.monotonic(), _FLOOR_BLOCKS.get()))

    async def __aexit__(self, *exc: object) -> None:
        _FLOOR_BLOCKS.set(_FLOOR_BLOCKS.get()[3])


def _fail() -> None:
    raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


# --------------------------------------------------------------------- loops
# One loop per shape of call, each returning ns per call; the function called
# and the bound method are looked up once, outside the loop, as for the bare call.
def _loop_bare(n: int, fn: Callable[[], object]) -> float:
    start = perf_ns()
    for _ in range(n):
        fn()
    return (perf_ns() - start) / n


def _loop_call(n: int, call: Callable[..., object], fn: Callable[[], object]) -> float:
    start = perf_ns()
    for _ in range(n):
        call(fn)
    return (perf_ns() - start) / n


def _loop_fallback(n: int, call: Callable[..., object], fn: Callable[[], object]) -> float:
    start = perf_ns()
    for _ in range(n):
        call(fn, fn)
    return (perf_ns() - start) / n


def _loop_with(n: int, cm: Any, fn: Callable[[], object]) -> float:
    start = perf_ns()
    for _ in range(n):
        with cm:
            fn()
    return (perf_ns() - start) / n


def _loop_ctx(n: int, make: Callable[[], Any], fn: Callable[[], object]) -> float:
    start = perf_ns()
    for _ in range(n):
        with make():
            fn()
    return (perf_ns() - start) / n


async def _aloop_bare(n: int, fn: Callable[[], Awaitable[object]]) -> float:
    start = perf_ns()
    for _ in range(n):
        await fn()
    return (perf_ns() - start) / n


async def _aloop_call(n: int, call: Callable[..., Awaitable[object]],
                      fn: Callable[[], Awaitable[object]]) -> float:
    start = perf_ns()
    for _ in range(n):
        await call(fn)
    return (perf_ns() - start) / n


async def _aloop_fallback(n: int, call: Callable[..., Awaitable[object]],
                          fn: Callable[[], Awaitable[object]]) -> float:
    start = perf_ns()
    for _ in range(n):
        await call(fn, fn)
    return (perf_ns() - start) / n


async def _aloop_with(n: int, cm: Any, fn: Callable[[], Awaitable[object]]) -> float:
    start = perf_ns()
    for _ in range(n):
        async with cm:
            await fn()
    return (perf_ns() - start) / n


def _loop_reject(n: int, call: Callable[..., object], fn: Callable[[], object],
                 exc: type[BaseException]) -> float:
    start = perf_ns()
    for _ in range(n):
        try:
            call(fn)
        except exc:
            pass
    return (perf_ns() - start) / n


def _loop_reject_with(n: int, cm: Any, fn: Callable[[], object]) -> float:
    start = perf_ns()
    for _ in range(n):
        try:
            with cm:
                fn()
        except BreakerOpenError:
            pass
    return (perf_ns() - start) / n


def _loop_raise(n: int, fn: Callable[[], object], exc: type[BaseException]) -> float:
    start = perf_ns()
    for _ in range(n):
        try:
            fn()
        except exc:
            pass
    return (perf_ns() - start) / n


Sampler = Callable[[int], float]


def _sync_entries(breaker: Breaker) -> dict[str, Sampler]:
    """The sync entry points of ``breaker``: name -> ``sample(n)`` (ns per call)."""
    guarded = guard(breaker)(_noop)
    call, fallback = breaker.call, breaker.call_with_fallback
    return {
        "Breaker.call": lambda n: _loop_call(n, call, _noop),
        "@guard function": lambda n: _loop_bare(n, guarded),
        "call_with_fallback": lambda n: _loop_fallback(n, fallback, _noop),
        "with breaker:": lambda n: _loop_with(n, breaker, _noop),
    }


def _async_entries(breaker: Breaker, loop: asyncio.AbstractEventLoop) -> dict[str, Sampler]:
    acall, afallback = breaker.acall, breaker.acall_with_fallback
    run = loop.run_until_complete
    return {
        "await acall": lambda n: run(_aloop_call(n, acall, _anoop)),
        "await acall_with_fallback": lambda n: run(_aloop_fallback(n, afallback, _anoop)),
        "async with breaker:": lambda n: run(_aloop_with(n, breaker, _anoop)),
    }


ENTRY_POINTS = ("Breaker.call", "@guard function", "call_with_fallback", "await acall",
                "await acall_with_fallback", "with breaker:", "async with breaker:")
SYNC_ENTRY_POINTS = (*ENTRY_POINTS[:3], "with breaker:")


def _rounds(samplers: dict[str, Sampler], calls: int, repeats: int) -> dict[str, list[float]]:
    """ns per call of each sampler in each of ``repeats`` rounds, every round running all
    of them in turn: drift on a shared machine hits the contestants of a round alike, and
    differences and ratios are taken within a round, then their median over the rounds."""
    samples: dict[str, list[float]] = {key: [] for key in samplers}
    for sample in samplers.values():  # warm-up
        sample(max(1, calls // 10))
    for _ in range(repeats):
        for key, sample in samplers.items():
            samples[key].append(sample(calls))
    return samples


def _above(samples: dict[str, list[float]], key: str, base: str) -> list[float]:
    """Per round: ns per call of ``key`` above ``base``."""
    return [x - b for x, b in zip(samples[key], samples[base], strict=True)]


def _ratio(num: list[float], den: list[float]) -> float:
    """Median over the rounds of the per-round ratio."""
    return statistics.median(n / d for n, d in zip(num, den, strict=True))


class _StateDirs:
    """Private state directories (``mkdtemp``: mode 0700), removed at the end."""

    def __init__(self) -> None:
        self._dirs: list[str] = []

    def new(self) -> str:
        path = tempfile.mkdtemp(prefix="rb-bench-state-")
        self._dirs.append(path)
        return path

    def cleanup(self) -> None:
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


def _breaker(dirs: _StateDirs, name: str, shared: bool, **config: Any) -> Breaker:
    breaker = Breaker(f"{name}-{time.monotonic_ns()}",
                      BreakerConfig(host_shared=shared, state_dir=dirs.new(), **config))
    if breaker.host_shared != shared:
        raise RuntimeError(f"{name}: host_shared is {breaker.host_shared}, expected {shared}")
    return breaker


# ---------------------------------------------------------------- 1. closed
def closed_overhead(dirs: _StateDirs, calls: int, repeats: int) -> dict[str, Any]:
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    loop = asyncio.new_event_loop()
    try:
        samplers: dict[str, Sampler] = {
            "bare": lambda n: _loop_bare(n, _noop),
            "bare async": lambda n: loop.run_until_complete(_aloop_bare(n, _anoop)),
            "pybreaker.call": lambda n: _loop_call(n, pb.call, _noop),
            "pybreaker calling()": lambda n: _loop_ctx(n, pb.calling, _noop),
            "floor with": lambda n: _loop_with(n, _FloorWith(), _noop),
            "floor async with": lambda n: loop.run_until_complete(
                _aloop_with(n, _FloorAsyncWith(), _anoop)),
        }
        for label, shared in MODES:
            breaker = _breaker(dirs, "bench-closed", shared, probe=False)
            entries = {**_sync_entries(breaker), **_async_entries(breaker, loop)}
            for entry in ENTRY_POINTS:
                samplers[f"{label}|{entry}"] = entries[entry]
        samples = _rounds(samplers, calls, repeats)
    finally:
        loop.close()
    med = statistics.median
    pb_over = _above(samples, "pybreaker.call", "bare")
    calling = _above(samples, "pybreaker calling()", "bare")
    result: dict[str, Any] = {
        "bare_ns": med(samples["bare"]),
        "bare_async_ns": med(samples["bare async"]),
        "pybreaker_ns": med(pb_over),
        "pybreaker_calling_ns": med(calling),
        "pybreaker_calling_ratio": _ratio(calling, pb_over),
        "floors": {
            key: {"ns": med(over := _above(samples, f"floor {key}", base)),
                  "ratio": _ratio(over, pb_over)}
            for key, base in (("with", "bare"), ("async with", "bare async"))},
        "entries": {},
    }
    for entry in ENTRY_POINTS:
        base = "bare async" if entry.startswith(("await", "async")) else "bare"
        row: dict[str, float] = {}
        for label, _ in MODES:
            over = _above(samples, f"{label}|{entry}", base)
            row[f"{label}_ns"] = med(over)
            row[f"{label}_ratio"] = _ratio(over, pb_over)
        row["target"] = TARGET_WITH if "with" in entry.split()[:2] else TARGET_CLOSED
        result["entries"][entry] = row
    return result


def _print_closed(closed: dict[str, Any]) -> None:
    rows: list[list[object]] = []
    for entry in ENTRY_POINTS:
        row = closed["entries"][entry]
        worst = max(row["host-shared_ratio"], row["per-process_ratio"])
        rows.append([entry, row["host-shared_ns"], row["host-shared_ratio"],
                     row["per-process_ns"], row["per-process_ratio"],
                     f"<= {row['target']}x", "yes" if worst <= row["target"] else "NO"])
    rows.append(["pybreaker CircuitBreaker.call", closed["pybreaker_ns"], 1.0,
                 closed["pybreaker_ns"], 1.0, "", ""])
    rows.append(["pybreaker calling() (with)", closed["pybreaker_calling_ns"],
                 closed["pybreaker_calling_ratio"], closed["pybreaker_calling_ns"],
                 closed["pybreaker_calling_ratio"], "", ""])
    for key, floor in closed["floors"].items():
        rows.append([f"floor of `{key}` (protocol + per-block bookkeeping)", floor["ns"],
                     floor["ratio"], floor["ns"], floor["ratio"], "", ""])
    print_table("Closed state: ns per call above a bare call of a no-op function "
                f"(bare {closed['bare_ns']:.0f} ns, bare await {closed['bare_async_ns']:.0f} ns; "
                "medians of interleaved runs), and the ratio of pybreaker's overhead",
                ["entry point", "shared ns", "vs pybreaker", "per-process ns", "vs pybreaker",
                 "target", "met"], rows)


# ------------------------------------------------------------ 2. threads
def _throughput(sample: Sampler, threads: int, seconds: float, chunk: int = 1000) -> float:
    """Calls per second of ``threads`` threads each calling in a loop for ``seconds``."""
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()
    counts = [0] * threads

    def work(i: int) -> None:
        barrier.wait()
        done = 0
        while not stop.is_set():
            sample(chunk)
            done += chunk
        counts[i] = done

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def thread_scaling(dirs: _StateDirs, seconds: float, repeats: int) -> dict[str, Any]:
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    samplers: dict[str, Sampler] = {
        "bare no-op": lambda n: _loop_bare(n, _noop),
        "pybreaker.call": lambda n: _loop_call(n, pb.call, _noop),
    }
    for label, shared in MODES:
        entries = _sync_entries(_breaker(dirs, "bench-threads", shared, probe=False))
        for entry in SYNC_ENTRY_POINTS:
            samplers[f"{entry} ({label})"] = entries[entry]
    figures: dict[str, dict[int, list[float]]] = {key: {k: [] for k in THREADS} for key in samplers}
    for _ in range(repeats):  # interleaved: each round measures every row and thread count
        for key, sample in samplers.items():
            for k in THREADS:
                figures[key][k].append(_throughput(sample, k, seconds))
    result: dict[str, Any] = {}
    for key, by_threads in figures.items():
        result[key] = {"calls_per_s_1": statistics.median(by_threads[1]),
                       **{f"relative_{k}": _ratio(by_threads[k], by_threads[1]) for k in THREADS}}
    return result


def _print_threads(scaling: dict[str, Any]) -> None:
    rows = []
    for key, row in scaling.items():
        at8 = row["relative_8"]
        rows.append([key, row["calls_per_s_1"] / 1e6, *(row[f"relative_{k}"] for k in THREADS[1:]),
                     "" if key in ("bare no-op", "pybreaker.call")
                     else ("yes" if at8 >= TARGET_SCALING else "NO")])
    print_table("Thread scaling, closed state, no-op function: total throughput with N threads "
                f"relative to one thread (target >= {TARGET_SCALING}x at 8)",
                ["", "1 thread Mcalls/s", "2 threads", "4 threads", "8 threads", "met"], rows)


# --------------------------------------------------------------- 3. open
def _trip(breaker: Breaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        try:
            breaker.call(_fail)
        except redis.ConnectionError:
            pass
    if not breaker.is_open:
        raise RuntimeError(f"{breaker.name} did not open: {breaker.stats()}")


def open_costs(dirs: _StateDirs, calls: int, repeats: int) -> dict[str, Any]:
    # Tripped by counted failures; the probe (when there is one) PINGs a port where
    # nothing listens, so the breaker stays open.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    logging.getLogger("redis_breaker").setLevel(logging.CRITICAL)
    pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    pb.open()
    samplers: dict[str, Sampler] = {
        "pybreaker": lambda n: _loop_reject(n, pb.call, _noop, pybreaker.CircuitBreakerError),
    }
    probes: dict[str, int | None] = {}
    keep = []
    for label, shared in MODES:
        for probe in (True, False):
            mode = f"{label}, {'probe running' if probe else 'no probe'}"
            breaker = _breaker(dirs, "bench-open", shared, url=dead, probe=probe,
                               reset_timeout=3600, max_reset_timeout=3600)
            _trip(breaker)
            if probe and not wait_until(lambda b=breaker: b.stats().probe_pid is not None, 5, 0.01):
                raise RuntimeError(f"{breaker.name}: no probe is running")
            probes[mode] = breaker.stats().probe_pid
            keep.append(breaker)
            samplers[f"{mode}|call"] = (
                lambda n, b=breaker: _loop_reject(n, b.call, _noop, BreakerOpenError))
            samplers[f"{mode}|fallback"] = (
                lambda n, b=breaker: _loop_fallback(n, b.call_with_fallback, _noop))
            samplers[f"{mode}|with"] = lambda n, b=breaker: _loop_reject_with(n, b, _noop)
    samples = _rounds(samplers, calls, repeats)
    med = statistics.median
    result: dict[str, Any] = {"pybreaker_reject_ns": med(samples["pybreaker"]), "modes": {}}
    for mode in probes:
        result["modes"][mode] = {
            "reject_ns": med(samples[f"{mode}|call"]),
            "fallback_ns": med(samples[f"{mode}|fallback"]),
            "with_reject_ns": med(samples[f"{mode}|with"]),
            "reject_vs_pybreaker": _ratio(samples[f"{mode}|call"], samples["pybreaker"]),
            "probe_pid": probes[mode],
            "still_open": None,
        }
    for breaker, mode in zip(keep, probes, strict=True):
        result["modes"][mode]["still_open"] = breaker.is_open
        breaker.force_open("benchmark done")  # stops the probe
    return result


def failure_costs(dirs: _StateDirs, calls: int, repeats: int) -> dict[str, Any]:
    """A call that raises ``redis.ConnectionError`` while closed, below the threshold."""
    # The highest threshold (the record counts 16 bits of consecutive failures), no rate,
    # and a success before each run (it resets the count): every failure is counted,
    # none trips.
    calls = min(calls, THRESHOLD_MAX - 1)
    pb = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=30)
    samplers: dict[str, Sampler] = {
        "bare": lambda n: _loop_raise(n, _fail, redis.ConnectionError),
        "pybreaker": lambda n: _loop_reject(n, pb.call, _fail, redis.ConnectionError),
    }
    breakers = {}
    for label, shared in MODES:
        breaker = _breaker(dirs, "bench-failure", shared, probe=False,
                           failure_threshold=THRESHOLD_MAX, failure_rate=None)
        breakers[label] = breaker
        samplers[label] = lambda n, b=breaker: _loop_failures(n, b)
    samples = _rounds(samplers, calls, repeats)
    pb_over = _above(samples, "pybreaker", "bare")
    result: dict[str, Any] = {"bare_ns": statistics.median(samples["bare"]),
                              "pybreaker_ns": statistics.median(pb_over), "modes": {}}
    for label, breaker in breakers.items():
        over = _above(samples, label, "bare")
        result["modes"][label] = {"ns": statistics.median(over), "vs_pybreaker": _ratio(over, pb_over),
                                  "closed": not breaker.is_open}
    return result


def _loop_failures(n: int, breaker: Breaker) -> float:
    breaker.call(_noop)
    return _loop_reject(n, breaker.call, _fail, redis.ConnectionError)


def _print_open(opened: dict[str, Any], failed: dict[str, Any]) -> None:
    rows: list[list[object]] = []
    for mode, row in opened["modes"].items():
        rows.append([mode, row["reject_ns"], row["reject_vs_pybreaker"], row["fallback_ns"],
                     row["with_reject_ns"]])
    nan = float("nan")
    rows.append(["pybreaker (CircuitBreakerError)", opened["pybreaker_reject_ns"], 1.0, nan, nan])
    print_table("Open state: ns per rejected call, the function not called (medians of interleaved runs)",
                ["", "call raises", "vs pybreaker", "call_with_fallback", "with raises"], rows)
    rows = [[label, row["ns"], row["vs_pybreaker"]] for label, row in failed["modes"].items()]
    rows.append(["pybreaker", failed["pybreaker_ns"], 1.0])
    print_table("Closed, below the threshold: ns per counted failure (redis.ConnectionError) above "
                f"a bare raising call ({failed['bare_ns']:.0f} ns)",
                ["", "ns above bare", "vs pybreaker"], rows)


# ------------------------------------------------------------ 4./5. Redis
def real_get(dirs: _StateDirs, server: RedisServer, calls: int, repeats: int) -> dict[str, float]:
    client = redis.Redis.from_url(server.url, socket_timeout=SOCKET_TIMEOUT)
    client.set("bench", "x" * 100)
    breaker = _breaker(dirs, "bench-get", True, probe=False)
    bare_samples, ours_samples = [], []
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both
        bare_samples.append(median_ns_per_call(lambda: client.get("bench"), calls, 1))
        ours_samples.append(median_ns_per_call(lambda: breaker.call(client.get, "bench"), calls, 1))
    client.close()
    bare = statistics.median(bare_samples)
    ours = statistics.median(ours_samples)
    return {"bare_us": bare / 1000, "redis_breaker_us": ours / 1000, "ratio": ours / bare}


def _frozen_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=SOCKET_TIMEOUT,
                                socket_connect_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0),
                                max_connections=64)


def onset(dirs: _StateDirs, server: RedisServer, contestant: str, threads: int,
          calls: int) -> dict[str, Any]:
    """Freeze Redis, run ``calls`` GETs in each of ``threads`` threads, thaw."""
    client = _frozen_client(server)
    client.ping()
    if contestant == "redis-breaker":
        breaker = _breaker(dirs, "onset", True, url=server.url)
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
    if contestant == "redis-breaker":
        breaker.force_open("benchmark done")
    return {"contestant": contestant, "slowest_s": max(durations), "wall_s": wall,
            "calls": len(durations)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    calls, repeats = (20_000, 5) if args.quick else (100_000, 9)
    dirs = _StateDirs()
    try:
        progress("closed-state overhead of every entry point")
        closed = closed_overhead(dirs, calls, repeats)
        _print_closed(closed)

        progress("thread scaling")
        scaling = thread_scaling(dirs, 0.1 if args.quick else 0.2, 3 if args.quick else 5)
        _print_threads(scaling)

        progress("open-state rejection, counted failures")
        opened = open_costs(dirs, calls // 4, repeats)
        failed = failure_costs(dirs, calls // 20, repeats)
        _print_open(opened, failed)

        with RedisServer() as server:
            progress("real GET, healthy Redis")
            get = real_get(dirs, server, calls // 20, repeats)
            print_table("Healthy Redis GET (median of interleaved runs)",
                        ["", "µs/GET", "ratio"],
                        [["bare redis-py", get["bare_us"], 1.0],
                         ["through redis-breaker", get["redis_breaker_us"], get["ratio"]]])

            results = []
            for contestant in ("redis-py", "pybreaker", "redis-breaker"):
                progress(f"outage onset: Redis frozen, 8 threads, {contestant}")
                results.append(onset(dirs, server, contestant, threads=8, calls=10))
            print_table(f"Outage onset in one process: Redis frozen (SIGSTOP), 8 threads x 10 GETs, "
                        f"socket_timeout={SOCKET_TIMEOUT}s",
                        ["", "slowest call s", "wall s", "calls"],
                        [[r["contestant"], r["slowest_s"], r["wall_s"], r["calls"]] for r in results])
    finally:
        dirs.cleanup()

    report = {"closed": closed, "threads": scaling, "open": opened, "failure": failed,
              "get": get, "onset": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
