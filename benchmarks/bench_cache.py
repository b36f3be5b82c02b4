"""Cache benchmark: BreakerCache against the bare backends, healthy and during outages.

    python benchmarks/bench_cache.py [--quick] [--json PATH]

Starts its own redis-server(s) (the harness's RedisServer), configures
Django in-process, and prints side-by-side tables with ratios, all measured in
this one run:

- healthy: get/set p50/p99 (and the client's own CPU time per call, which
  the wait for Redis does not blur) of BreakerCache over Django's RedisCache vs bare
  RedisCache, and over django-redis vs bare django-redis;
- django-redis's methods beyond BaseCache (TTL, patterns, collections, lock,
  the keywords): p50/p99 through BreakerCache vs bare django-redis, and the
  Redis commands each sends, by name (the server's INFO commandstats), which
  must be the same;
- outage (refused = stopped, hung = SIGSTOP, blackhole = packets dropped in a
  network namespace, root only), socket_timeout=0.5: p50/p99/max of ``get`` for
  Django's RedisCache, django-redis with IGNORE_EXCEPTIONS, and BreakerCache
  once its breaker is open (nothing written yet; then with 100 keys written
  during the outage, a read of another key and of a written one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _harness import RedisServer

TIMEOUT = 0.5


def _entries(url: str) -> dict[str, Any]:
    django_opts = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT}
    dr_opts = {"SOCKET_TIMEOUT": TIMEOUT, "SOCKET_CONNECT_TIMEOUT": TIMEOUT}
    return {
        "dj": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
               "OPTIONS": django_opts},
        "dr": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url, "OPTIONS": dr_opts},
        "dr_ignore": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url,
                      "OPTIONS": {**dr_opts, "IGNORE_EXCEPTIONS": True}},
        "bc_dj": {"BACKEND": "redis_breaker.cache.BreakerCache",
                  "OPTIONS": {"PRIMARY": "dj", "BREAKER": "bench_dj"}},
        "bc_dr": {"BACKEND": "redis_breaker.cache.BreakerCache",
                  "OPTIONS": {"PRIMARY": "dr", "BREAKER": "bench_dr"}},
    }


def _configure(url: str, url_ns: str | None) -> None:
    import django
    from django.conf import settings

    caches = _entries(url)
    if url_ns is not None:
        for alias, entry in _entries(url_ns).items():
            entry = dict(entry)
            if "PRIMARY" in entry["OPTIONS"]:
                entry["OPTIONS"] = {"PRIMARY": entry["OPTIONS"]["PRIMARY"] + "_ns",
                                    "BREAKER": entry["OPTIONS"]["BREAKER"] + "_ns"}
            caches[alias + "_ns"] = entry
    caches["default"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    if settings.configured:  # called by a runner that configured Django already
        from django.test.utils import override_settings

        override_settings(CACHES=caches).enable()  # also resets the cache handler
        return
    settings.configure(
        CACHES=caches, INSTALLED_APPS=["redis_breaker"], USE_TZ=True, LOGGING_CONFIG=None,
        SECRET_KEY="bench",
    )
    django.setup()


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    """p50/p99/max in microseconds."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "n": n,
        "p50_us": ordered[n // 2] / 1000,
        "p99_us": ordered[min(n - 1, int(n * 0.99))] / 1000,
        "max_us": ordered[-1] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
    }


def _time_calls(fn: Callable[[], object], n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        start = clock()
        try:
            fn()
        except Exception:
            pass  # the bare backends raise during outages; the time is what we measure
        out.append(clock() - start)
    return out


def _interleaved(fns: dict[str, Callable[[], object]], n: int, block: int = 20,
                 cpu: dict[str, int] | None = None) -> dict[str, list[int]]:
    """Run the contenders in alternating blocks so drift hits them alike.

    ``cpu``, when given, receives each contender's CPU time of this thread in ns
    (``time.thread_time_ns``): the client's own work, without the wait for Redis.
    """
    samples: dict[str, list[int]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0)
    thread_ns = time.thread_time_ns
    done = 0
    while done < n:
        step = min(block, n - done)
        for name, fn in fns.items():
            started = thread_ns()
            samples[name] += _time_calls(fn, step)
            spent[name] += thread_ns() - started
        done += step
    if cpu is not None:
        cpu.update(spent)
    return samples


def bench_healthy(n: int) -> dict[str, Any]:
    from django.core.cache import caches

    results: dict[str, Any] = {}
    for bare_alias, breaker_alias, label in (("dj", "bc_dj", "Django RedisCache"),
                                             ("dr", "bc_dr", "django-redis")):
        bare, wrapped = caches[bare_alias], caches[breaker_alias]
        bare.set("bench-key", "x" * 100)
        wrapped.set("bench-key", "x" * 100)
        for _ in range(200):  # warm connections and code paths
            bare.get("bench-key")
            wrapped.get("bench-key")
        for op in ("get", "set"):
            if op == "get":
                fns = {"bare": lambda c=bare: c.get("bench-key"),
                       "breaker": lambda c=wrapped: c.get("bench-key")}
            else:
                fns = {"bare": lambda c=bare: c.set("bench-key", "y" * 100),
                       "breaker": lambda c=wrapped: c.set("bench-key", "y" * 100)}
            cpu: dict[str, int] = {}
            samples = _interleaved(fns, n, cpu=cpu)
            base, ours = _percentiles(samples["bare"]), _percentiles(samples["breaker"])
            results[f"{label} {op}"] = {
                "bare": base, "breaker": ours,
                "cpu_us_bare": cpu["bare"] / n / 1000, "cpu_us_breaker": cpu["breaker"] / n / 1000,
                "ratio_p50": ours["p50_us"] / base["p50_us"],
                "ratio_p99": ours["p99_us"] / base["p99_us"],
            }
    return results


# django-redis's methods beyond BaseCache, as an application calls them.
METHODS: dict[str, Callable[[Any], object]] = {
    "ttl": lambda c: c.ttl("bench-key"),
    "expire": lambda c: c.expire("bench-key", 300),
    "persist": lambda c: c.persist("bench-key"),
    "set(nx=True)": lambda c: c.set("bench-key", "z", nx=True),
    "incr(ignore_key_check)": lambda c: c.incr("bench-n", ignore_key_check=True),
    "delete_many (count)": lambda c: c.delete_many(["absent-1", "absent-2"]),
    "keys": lambda c: c.keys("bench-key*"),
    "delete_pattern": lambda c: c.delete_pattern("absent-*"),
    "sadd": lambda c: c.sadd("bench-set", "a"),
    "smembers": lambda c: c.smembers("bench-set"),
    "hset": lambda c: c.hset("bench-hash", "f", "v"),
    "hlen": lambda c: c.hlen("bench-hash"),
    "zadd": lambda c: c.zadd("bench-z", {"m": 1.0}),
    "zrange": lambda c: c.zrange("bench-z", 0, -1),
    "lock acquire+release": lambda c: _lock_cycle(c),
}


def _lock_cycle(cache: Any) -> None:
    lock = cache.lock("bench-lock", timeout=10)
    lock.acquire(blocking=False)
    lock.release()


def _commandstats(client: Any) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in client.info("commandstats").items() if k != "cmdstat_info"}


def _commands_per_call(fn: Callable[[], object], client: Any, calls: int = 200,
                       ) -> dict[str, float]:
    """Redis commands ``fn`` sends per call, by name, as the server counts them (INFO commandstats)."""
    before = _commandstats(client)
    for _ in range(calls):
        fn()
    after = _commandstats(client)
    return {name: (n - before.get(name, 0)) / calls for name, n in sorted(after.items())
            if n != before.get(name, 0)}


def _shown_commands(found: dict[str, float]) -> str:
    return "+".join(name if n == 1 else f"{n:g}x{name}" for name, n in found.items()) or "-"


def bench_methods(server: RedisServer, n: int) -> dict[str, Any]:
    from django.core.cache import caches

    bare, wrapped = caches["dr"], caches["bc_dr"]
    client = server.client()
    results: dict[str, Any] = {}
    for name, op in METHODS.items():
        fns = {"bare": lambda c=bare, op=op: op(c), "breaker": lambda c=wrapped, op=op: op(c)}
        for fn in fns.values():  # warm: connections, scripts loaded
            for _ in range(50):
                fn()
        cpu: dict[str, int] = {}
        samples = _interleaved(fns, n, cpu=cpu)
        base, ours = _percentiles(samples["bare"]), _percentiles(samples["breaker"])
        results[name] = {
            "bare": base, "breaker": ours,
            "cpu_us_bare": cpu["bare"] / n / 1000, "cpu_us_breaker": cpu["breaker"] / n / 1000,
            "ratio_p50": ours["p50_us"] / base["p50_us"],
            "ratio_p99": ours["p99_us"] / base["p99_us"],
            "commands_bare": _commands_per_call(fns["bare"], client),
            "commands_breaker": _commands_per_call(fns["breaker"], client),
        }
    return results


@contextmanager
def _fault(server: RedisServer, kind: str) -> Iterator[None]:
    if kind == "refused":
        server.stop()
    elif kind == "hung":
        server.freeze()
    else:
        server.blackhole()
    try:
        yield
    finally:
        if kind == "refused":
            server.start()
        elif kind == "hung":
            server.thaw()
        else:
            server.unblackhole()


def bench_outage(server: RedisServer, kind: str, suffix: str, slow_n: int,
                 fast_n: int) -> dict[str, Any]:
    from django.core.cache import caches

    from redis_breaker import get_breaker
    from redis_breaker.testing import reset_breakers
    django_cache, ignoring, wrapped = (caches["dj" + suffix], caches["dr_ignore" + suffix],
                                       caches["bc_dj" + suffix])
    for c in (django_cache, ignoring, wrapped):
        c.set("bench-key", "x")  # open pooled connections before the fault
    results: dict[str, Any] = {}
    with _fault(server, kind):
        results["Django RedisCache"] = _percentiles(
            _time_calls(lambda: django_cache.get("bench-key"), slow_n))
        results["django-redis IGNORE_EXCEPTIONS"] = _percentiles(
            _time_calls(lambda: ignoring.get("bench-key"), slow_n))
        breaker = get_breaker("bench_dj" + suffix)
        discovery = _time_calls(lambda: wrapped.get("bench-key"), 1)
        trips = 1
        while not breaker.is_open and trips < 50:
            wrapped.get(f"trip-{trips}")
            trips += 1
        results["BreakerCache (open)"] = _percentiles(
            _time_calls(lambda: wrapped.get("bench-key"), fast_n))
        results["BreakerCache (open)"]["calls_to_open"] = trips
        results["BreakerCache (open)"]["first_call_us"] = discovery[0] / 1000
        # Writes during the outage: the journal is in use, the fallback holds them.
        for i in range(100):
            wrapped.set(f"written-{i}", i)
        results["BreakerCache (open, 100 keys written): get of another key"] = _percentiles(
            _time_calls(lambda: wrapped.get("bench-key"), fast_n))
        results["BreakerCache (open, 100 keys written): get of a written key"] = _percentiles(
            _time_calls(lambda: wrapped.get("written-7"), fast_n))
    reset_breakers()
    return results


def _fmt_us(us: float) -> str:
    if us >= 100_000:
        return f"{us / 1e6:.3f} s"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.2f} µs"


def _cpu(row: dict[str, Any]) -> str:
    return (f"{row['cpu_us_bare']:.1f} / {row['cpu_us_breaker']:.1f} µs "
            f"(+{row['cpu_us_breaker'] - row['cpu_us_bare']:.1f})")


def _print(report: dict[str, Any]) -> None:
    print("\nHealthy Redis (same server, interleaved blocks), n =", report["healthy_n"])
    print(f"{'operation':<26}{'bare p50':>12}{'breaker p50':>14}{'ratio':>8}"
          f"{'bare p99':>12}{'breaker p99':>14}{'ratio':>8}{'client CPU/call bare / breaker':>34}")
    for name, row in report["healthy"].items():
        print(f"{name:<26}{_fmt_us(row['bare']['p50_us']):>12}"
              f"{_fmt_us(row['breaker']['p50_us']):>14}{row['ratio_p50']:>7.3f}x"
              f"{_fmt_us(row['bare']['p99_us']):>12}{_fmt_us(row['breaker']['p99_us']):>14}"
              f"{row['ratio_p99']:>7.3f}x{_cpu(row):>34}")
    print("\ndjango-redis's other methods (interleaved blocks of 20 calls), n =", report["methods_n"])
    print(f"{'operation':<26}{'bare p50':>12}{'breaker p50':>14}{'ratio':>8}"
          f"{'bare p99':>12}{'breaker p99':>14}{'ratio':>8}{'client CPU/call':>24}"
          "  commands per call bare / breaker")
    for name, row in report["methods"].items():
        same = "=" if row["commands_bare"] == row["commands_breaker"] else "DIFFERENT"
        commands = (f"{_shown_commands(row['commands_bare'])} / "
                    f"{_shown_commands(row['commands_breaker'])} {same}")
        print(f"{name:<26}{_fmt_us(row['bare']['p50_us']):>12}"
              f"{_fmt_us(row['breaker']['p50_us']):>14}{row['ratio_p50']:>7.3f}x"
              f"{_fmt_us(row['bare']['p99_us']):>12}{_fmt_us(row['breaker']['p99_us']):>14}"
              f"{row['ratio_p99']:>7.3f}x{_cpu(row):>24}  {commands}")
    for kind, rows in report["outage"].items():
        if not isinstance(rows, dict) or "skipped" in rows:
            print(f"\nOutage: {kind}: skipped ({rows.get('skipped') if isinstance(rows, dict) else rows})")
            continue
        print(f"\nOutage: {kind} (socket_timeout={TIMEOUT}s), get()")
        ours = rows["BreakerCache (open)"]["p99_us"]
        print(f"{'backend':<62}{'n':>7}{'p50':>12}{'p99':>12}{'max':>12}{'p99 vs ours':>14}")
        for name, row in rows.items():
            print(f"{name:<62}{row['n']:>7}{_fmt_us(row['p50_us']):>12}"
                  f"{_fmt_us(row['p99_us']):>12}{_fmt_us(row['max_us']):>12}"
                  f"{row['p99_us'] / ours:>13,.0f}x")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    healthy_n = 2000 if args.quick else 20000
    methods_n = 500 if args.quick else 5000
    slow_n = 3 if args.quick else 10
    fast_n = 10000 if args.quick else 100000

    server = RedisServer().start()
    ns_server: RedisServer | None = None
    blackhole_skip: str | None = None
    if not hasattr(RedisServer, "blackhole"):
        blackhole_skip = "the harness has no blackhole helper"
    else:
        ok, why = RedisServer.can_blackhole()
        if ok:
            try:
                ns_server = RedisServer(netns=True).start()
            except Exception as exc:
                blackhole_skip = f"could not start redis-server in a network namespace: {exc}"
        else:
            blackhole_skip = why
    try:
        _configure(server.url, ns_server.url if ns_server else None)
        report: dict[str, Any] = {"healthy_n": healthy_n, "python": sys.version.split()[0]}
        report["healthy"] = bench_healthy(healthy_n)
        report["methods_n"] = methods_n
        report["methods"] = bench_methods(server, methods_n)
        report["outage"] = {
            "refused": bench_outage(server, "refused", "", slow_n, fast_n),
            "hung": bench_outage(server, "hung", "", slow_n, fast_n),
        }
        if ns_server is not None:
            report["outage"]["blackhole"] = bench_outage(ns_server, "blackhole", "_ns",
                                                         slow_n, fast_n)
        else:
            report["outage"]["blackhole"] = {"skipped": blackhole_skip}
            print(f"blackhole skipped: {blackhole_skip}")
    finally:
        server.close()
        if ns_server is not None:
            ns_server.close()
    _print(report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
