"""Why pybreaker's calls are slow in the drill's healthy phases: its lock is held across the call.

    cd benchmarks && python -m drill_app.pybreaker_lock

pybreaker's ``CircuitBreaker.call`` runs ``with self._lock: return
self.state.call(func, ...)``: the guarded function runs inside the breaker's
lock, so the threads that share one breaker take turns. This script times
one Redis ``GET`` through Django's RedisCache on a real redis-server, bare
and through one ``pybreaker.CircuitBreaker``, from 1 and from 6 threads (the
drill's pybreaker contestant has 2 cache threads, 2 group_send workers whose
calls run in executor threads, and task dispatch, all on one breaker), and
the same with a call that takes 5 ms (a slow command, a Celery publish).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import RedisServer


def run(fn: Callable[[], object], threads: int, seconds: float = 3.0) -> tuple[float, int]:
    """Median milliseconds per call and calls made, ``threads`` threads calling ``fn`` every 2 ms."""
    durations: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def work() -> None:
        mine = []
        while time.perf_counter() < stop:
            start = time.perf_counter()
            fn()
            mine.append(time.perf_counter() - start)
            time.sleep(0.002)
        with lock:
            durations.extend(mine)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return statistics.median(durations) * 1000, len(durations)


def main() -> None:
    import django
    import pybreaker
    from django.conf import settings

    server = RedisServer().start()
    try:
        settings.configure(CACHES={"default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": server.url,
            "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}}})
        django.setup()
        from django.core.cache import cache

        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=1)
        cache.set("k", 1)

        def slow() -> None:
            cache.get("k")
            time.sleep(0.005)

        print("threads  call           bare p50 ms (calls)   through pybreaker p50 ms (calls)")
        for threads in (1, 6):
            for label, fn in (("GET", lambda: cache.get("k")), ("GET + 5 ms", slow)):
                bare = run(fn, threads)
                guarded = run(lambda fn=fn: breaker.call(fn), threads)
                print(f"{threads:>7}  {label:<12}  {bare[0]:8.2f} ({bare[1]:>5})        "
                      f"{guarded[0]:8.2f} ({guarded[1]:>5})", flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    main()
