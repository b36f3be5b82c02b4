"""Cache benchmark: BreakerCache against the bare backends, healthy and during outages.

    python benchmarks/bench_cache.py [--quick] [--json PATH] [--compare BACKEND]

Starts its own redis-server(s) (the harness's RedisServer), configures
Django in-process, and prints side-by-side tables with ratios, all measured in
this one run:

- healthy: get/set of BreakerCache over Django's RedisCache vs bare
  RedisCache, and over django-redis vs bare django-redis; next to them the
  bare backend's own method wrapped in ``redis_breaker.guard`` (the breaker's
  cost alone, without the cache's). The contenders run in rounds, one block
  of calls each, in an order that rotates from round to round; the ratio is
  the median over the rounds of BreakerCache's block time to the bare
  backend's in the same round (p50/p99 of single calls beside it), and the
  client's own CPU time per call (``time.thread_time_ns``), which the wait
  for Redis does not blur;
- django-redis's methods beyond BaseCache (TTL, patterns, collections, lock,
  the keywords), the same way, and the Redis commands each sends, by name (the
  server's INFO commandstats), which must be the same;
- outage (refused = stopped, hung = SIGSTOP, blackhole = packets dropped in a
  network namespace, root only), socket_timeout=0.5: p50/p99/max of ``get`` for
  Django's RedisCache, django-redis with IGNORE_EXCEPTIONS, and BreakerCache
  once its breaker is open (nothing written yet; then with 100 keys written
  during the outage, a read of another key and of a written one), and the
  floors of the last: Django's ``LocMemCache.get`` and the default fallback's
  own ``get`` of the same value.

``--compare BACKEND`` adds another BreakerCache class (a dotted path, e.g. an
older copy of ``redis_breaker.cache`` on PYTHONPATH) to every table, so a
change is measured before and after in one run::

    mkdir -p /tmp/before/cache_before
    git archive REV src/redis_breaker/cache | tar -x --strip-components=3 -C /tmp/before/cache_before
    PYTHONPATH=/tmp/before python benchmarks/bench_cache.py --compare cache_before.BreakerCache
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _harness import RedisServer

TIMEOUT = 0.5
#: ``--compare``'s BreakerCache class (a dotted path), or None.
COMPARE: str | None = None


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
        **({
            "cmp_dj": {"BACKEND": COMPARE, "OPTIONS": {"PRIMARY": "dj", "BREAKER": "bench_cmp_dj"}},
            "cmp_dr": {"BACKEND": COMPARE, "OPTIONS": {"PRIMARY": "dr", "BREAKER": "bench_cmp_dr"}},
        } if COMPARE else {}),
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


def _percentiles(samples_ns: array[int] | list[int]) -> dict[str, float]:
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


def _time_calls(fn: Callable[[], object], n: int) -> array[int]:
    """ns per call of ``fn``, ``n`` calls.

    Kept in a preallocated ``array``, not a list of int objects: a list that
    grows by one object per call makes the timed calls allocate from fresh
    memory, which alone moved an open-state ``get``'s p99 from 2-3 µs to
    4-8 µs here.
    """
    clock = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    for i in range(n):
        start = clock()
        try:
            fn()
        except Exception:
            pass  # the bare backends raise during outages; the time is what we measure
        out[i] = clock() - start
    return out


def _rounds(fns: dict[str, Callable[[], object]], n: int, block: int = 20,
            ) -> dict[str, dict[str, Any]]:
    """Run the contenders in rounds, a block of ``block`` calls each, so drift hits them alike.

    The order rotates from round to round (and runs backwards every other
    cycle), so no contender always follows the same one. For each contender:
    ``samples`` (ns per call), ``blocks`` (ns per block, by round: ratios are
    taken between the blocks of one round) and ``cpu_ns`` (the CPU time of
    this thread over its calls, ``time.thread_time_ns``: the client's own
    work, without the wait for Redis).
    """
    names = list(fns)
    out: dict[str, dict[str, Any]] = {name: {"samples": array("q"), "blocks": [], "cpu_ns": 0}
                                      for name in names}
    thread_ns = time.thread_time_ns
    done = 0
    turn = 0
    while done < n:
        step = min(block, n - done)
        shift = turn % len(names)
        order = names[shift:] + names[:shift]
        if (turn // len(names)) % 2:
            order.reverse()
        for name in order:
            row = out[name]
            started = thread_ns()
            calls = _time_calls(fns[name], step)
            row["cpu_ns"] += thread_ns() - started
            row["samples"] += calls
            row["blocks"].append(sum(calls))
        done += step
        turn += 1
    return out


def _block_ratio(ours: list[int], base: list[int]) -> float:
    """Median over the rounds of ``ours``'s block time to ``base``'s in the same round."""
    return statistics.median(a / b for a, b in zip(ours, base, strict=True))


def _compare_rows(fns: dict[str, Callable[[], object]], n: int) -> dict[str, Any]:
    """``_rounds`` of the contenders (``bare`` first), as the tables show them."""
    timed = _rounds(fns, n)
    base = timed["bare"]
    row: dict[str, Any] = {"bare": _percentiles(base["samples"]),
                           "cpu_us_bare": base["cpu_ns"] / n / 1000}
    for name, found in timed.items():
        if name == "bare":
            continue
        row[name] = _percentiles(found["samples"])
        row[f"cpu_us_{name}"] = found["cpu_ns"] / n / 1000
        row[f"ratio_{name}"] = _block_ratio(found["blocks"], base["blocks"])
    ours = row["breaker"]
    row["ratio_p50"] = ours["p50_us"] / row["bare"]["p50_us"]
    row["ratio_p99"] = ours["p99_us"] / row["bare"]["p99_us"]
    return row


def _guarded(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    """The bare backend's method through a breaker of its own (``guard``): the breaker's cost alone."""
    from redis_breaker import get_breaker, guard

    return guard(get_breaker(name), fallback=lambda *a, **kw: None)(method)


def bench_healthy(n: int) -> dict[str, Any]:
    from django.core.cache import caches

    results: dict[str, Any] = {}
    for bare_alias, breaker_alias, label in (("dj", "bc_dj", "Django RedisCache"),
                                             ("dr", "bc_dr", "django-redis")):
        bare, wrapped = caches[bare_alias], caches[breaker_alias]
        compared = caches["cmp_" + bare_alias] if COMPARE else None
        guarded_get = _guarded(bare.get, "bench_guard_" + bare_alias)
        guarded_set = _guarded(bare.set, "bench_guard_" + bare_alias)
        for c in (bare, wrapped, compared):
            if c is not None:
                c.set("bench-key", "x" * 100)
        for op in ("get", "set"):
            if op == "get":
                fns = {"bare": lambda c=bare: c.get("bench-key"),
                       "guard": lambda g=guarded_get: g("bench-key"),
                       "breaker": lambda c=wrapped: c.get("bench-key")}
                if compared is not None:
                    fns["compare"] = lambda c=compared: c.get("bench-key")
            else:
                fns = {"bare": lambda c=bare: c.set("bench-key", "y" * 100),
                       "guard": lambda g=guarded_set: g("bench-key", "y" * 100),
                       "breaker": lambda c=wrapped: c.set("bench-key", "y" * 100)}
                if compared is not None:
                    fns["compare"] = lambda c=compared: c.set("bench-key", "y" * 100)
            for fn in fns.values():  # warm connections and code paths
                for _ in range(200):
                    fn()
            results[f"{label} {op}"] = _compare_rows(fns, n)
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


class _GuardedMethods:
    """The bare cache, each method wrapped in ``guard`` (a lock's commands are not: see ``lock``)."""

    def __init__(self, bare: Any, name: str) -> None:
        self._bare = bare
        self._name = name

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        # Made on first use and kept on the instance: later lookups do not come here.
        made = _guarded(getattr(self._bare, attr), self._name)
        setattr(self, attr, made)
        return made


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
    compared = caches["cmp_dr"] if COMPARE else None
    guarded = _GuardedMethods(bare, "bench_guard_methods")
    client = server.client()
    results: dict[str, Any] = {}
    for name, op in METHODS.items():
        fns = {"bare": lambda c=bare, op=op: op(c), "breaker": lambda c=wrapped, op=op: op(c)}
        if name != "lock acquire+release":  # a lock's own commands are what BreakerCache guards
            fns["guard"] = lambda c=guarded, op=op: op(c)
        if compared is not None:
            fns["compare"] = lambda c=compared, op=op: op(c)
        for fn in fns.values():  # warm: connections, scripts loaded
            for _ in range(50):
                fn()
        row = _compare_rows(fns, n)
        row["commands_bare"] = _commands_per_call(fns["bare"], client)
        row["commands_breaker"] = _commands_per_call(fns["breaker"], client)
        results[name] = row
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


def _alternating(fns: dict[str, Callable[[], object]], n: int, chunk: int = 1000,
                 ) -> dict[str, dict[str, float]]:
    """Percentiles of each contender's calls, run in alternating chunks (drift hits them alike)."""
    samples: dict[str, array[int]] = {name: array("q") for name in fns}
    done = 0
    while done < n:
        step = min(chunk, n - done)
        for name, fn in fns.items():
            samples[name] += _time_calls(fn, step)
        done += step
    return {name: _percentiles(found) for name, found in samples.items()}


def bench_outage(server: RedisServer, kind: str, suffix: str, slow_n: int,
                 fast_n: int) -> dict[str, Any]:
    from django.core.cache import caches
    from django.core.cache.backends.locmem import LocMemCache

    from redis_breaker import get_breaker
    from redis_breaker.cache.store import FallbackStore
    from redis_breaker.testing import reset_breakers
    django_cache, ignoring = caches["dj" + suffix], caches["dr_ignore" + suffix]
    ours = {"BreakerCache": (caches["bc_dj" + suffix], "bench_dj" + suffix)}
    if COMPARE:
        ours[f"{COMPARE}"] = (caches["cmp_dj" + suffix], "bench_cmp_dj" + suffix)
    for c in (django_cache, ignoring, *(c for c, _ in ours.values())):
        c.set("bench-key", "x")  # open pooled connections before the fault
    results: dict[str, Any] = {}
    with _fault(server, kind):
        results["Django RedisCache"] = _percentiles(
            _time_calls(lambda: django_cache.get("bench-key"), slow_n))
        results["django-redis IGNORE_EXCEPTIONS"] = _percentiles(
            _time_calls(lambda: ignoring.get("bench-key"), slow_n))
        opened: dict[str, tuple[int, float]] = {}
        for label, (cache, name) in ours.items():
            breaker = get_breaker(name)
            discovery = _time_calls(lambda c=cache: c.get("bench-key"), 1)
            trips = 1
            while not breaker.is_open and trips < 50:
                cache.get(f"trip-{trips}")
                trips += 1
            opened[label] = (trips, discovery[0] / 1000)
        found = _alternating({f"{label} (open)": lambda c=cache: c.get("bench-key")
                              for label, (cache, _) in ours.items()}, fast_n)
        for label in ours:
            found[f"{label} (open)"]["calls_to_open"] = opened[label][0]
            found[f"{label} (open)"]["first_call_us"] = opened[label][1]
        results.update(found)
        # Writes during the outage: the journal is in use, the fallback holds them.
        for cache, _ in ours.values():
            for i in range(100):
                cache.set(f"written-{i}", i)
        results.update(_alternating({
            f"{label} (open, 100 keys written): get of another key":
                lambda c=cache: c.get("bench-key") for label, (cache, _) in ours.items()},
            fast_n))
        # The floor of a written key's read: the fallback's own get of the same value,
        # Django's LocMemCache (a FALLBACK alias) and the default fallback.
        floors: dict[str, Callable[[], object]] = {
            f"{label} (open, 100 keys written): get of a written key":
                (lambda c=cache: c.get("written-7")) for label, (cache, _) in ours.items()}
        for label, store in (("floor: Django LocMemCache.get of that value", LocMemCache),
                             ("floor: the default fallback's get (FallbackStore)",
                              FallbackStore)):
            local = store(f"bench-floor-{label}", {"TIMEOUT": 300})
            local.set("written-7", 7)
            floors[label] = lambda c=local: c.get("written-7")
        results.update(_alternating(floors, fast_n))
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


def _others(row: dict[str, Any]) -> str:
    """The paired-block ratios of the other contenders: guard alone, and --compare's class."""
    shown = f"{row['ratio_guard']:.3f}x" if "ratio_guard" in row else "-"
    if "ratio_compare" in row:
        shown += f"  {row['ratio_compare']:.3f}x"
    return shown


def _print_compared(title: str, rows: dict[str, Any], commands: bool = False) -> None:
    print(f"\n{title}")
    others = "guard" + ("  compare" if COMPARE else "")
    print(f"{'operation':<26}{'bare p50':>11}{'ours p50':>11}{'bare p99':>11}{'ours p99':>11}"
          f"{'ratio':>9}  {others:<16}{'client CPU/call bare / ours':>30}"
          + ("  commands per call bare / ours" if commands else ""))
    for name, row in rows.items():
        line = (f"{name:<26}{_fmt_us(row['bare']['p50_us']):>11}"
                f"{_fmt_us(row['breaker']['p50_us']):>11}{_fmt_us(row['bare']['p99_us']):>11}"
                f"{_fmt_us(row['breaker']['p99_us']):>11}{row['ratio_breaker']:>8.3f}x"
                f"  {_others(row):<16}{_cpu(row):>30}")
        if commands:
            same = "=" if row["commands_bare"] == row["commands_breaker"] else "DIFFERENT"
            line += (f"  {_shown_commands(row['commands_bare'])} / "
                     f"{_shown_commands(row['commands_breaker'])} {same}")
        print(line)


def _print(report: dict[str, Any]) -> None:
    legend = ("ratio: median over the rounds of BreakerCache's block time to the bare backend's "
              "in the same round; guard: the same for the bare method wrapped in "
              "redis_breaker.guard (the breaker alone)"
              + (f"; compare: {COMPARE}" if COMPARE else ""))
    _print_compared(f"Healthy Redis (same server, rounds of 20-call blocks), n = "
                    f"{report['healthy_n']}\n{legend}", report["healthy"])
    _print_compared(f"django-redis's other methods, n = {report['methods_n']}",
                    report["methods"], commands=True)
    for kind, rows in report["outage"].items():
        if not isinstance(rows, dict) or "skipped" in rows:
            print(f"\nOutage: {kind}: skipped ({rows.get('skipped') if isinstance(rows, dict) else rows})")
            continue
        print(f"\nOutage: {kind} (socket_timeout={TIMEOUT}s), get()")
        ours = rows["BreakerCache (open)"]["p99_us"]
        print(f"{'backend':<72}{'n':>7}{'p50':>12}{'p99':>12}{'max':>12}{'p99 vs ours':>14}")
        for name, row in rows.items():
            print(f"{name:<72}{row['n']:>7}{_fmt_us(row['p50_us']):>12}"
                  f"{_fmt_us(row['p99_us']):>12}{_fmt_us(row['max_us']):>12}"
                  f"{row['p99_us'] / ours:>13,.1f}x")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--compare", metavar="BACKEND",
                        help="another BreakerCache class (dotted path) to time in the same run")
    args = parser.parse_args(argv)
    global COMPARE
    COMPARE = args.compare
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
        report: dict[str, Any] = {"healthy_n": healthy_n, "python": sys.version.split()[0],
                                  "compare": COMPARE}
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
