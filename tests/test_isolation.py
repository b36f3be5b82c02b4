"""The core stays pure and its threads never hold a process open."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.harness import RedisServer, free_port


def run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def test_core_imports_no_host_framework() -> None:
    """Importing redis_breaker and using @guard pulls in neither Django, Celery nor Channels."""
    done = run_python("""
        import sys
        import redis_breaker
        from redis_breaker import guard, get_breaker
        @guard("x", fallback=lambda: 1)
        def f():
            return 2
        assert f() == 2
        get_breaker("x").stats()
        loaded = sorted(m for m in ("django", "celery", "kombu", "channels", "channels_redis")
                        if m in sys.modules)
        print(loaded)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_probe_thread_never_keeps_the_process_alive() -> None:
    """A process whose breaker is open (probe running, Redis down) exits when its main thread ends."""
    done = run_python(f"""
        import threading, redis
        from redis_breaker import Breaker, BreakerConfig
        url = "redis://127.0.0.1:{free_port()}/0"
        b = Breaker("exit", BreakerConfig(url=url, failure_threshold=1, reset_timeout=0.05))
        try:
            b.call(redis.Redis.from_url(url).get, "k")
        except redis.ConnectionError:
            pass
        assert b.is_open
        assert any(t.name == "redis-breaker-probe-exit" for t in threading.enumerate())
        print("main thread done")
    """, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "main thread done"


def test_probe_thread_holds_no_reference_to_its_breaker(redis_server: RedisServer) -> None:
    """A dropped breaker is collected and its probe thread ends."""
    done = run_python(f"""
        import gc, threading, time, weakref, redis
        from redis_breaker import Breaker, BreakerConfig
        b = Breaker("gc", BreakerConfig(url="{redis_server.url}", failure_threshold=1,
                                        reset_timeout=3600, max_reset_timeout=3600))
        b.force_open()
        b.reset()
        def refused():
            raise redis.ConnectionError("refused")
        try:
            b.call(refused)
        except redis.ConnectionError:
            pass
        probe = b._probe
        ref = weakref.ref(b)
        del b
        # The probe holds its breaker only while it acts (a PING): not while it waits.
        for _ in range(100):
            gc.collect()
            if ref() is None:
                break
            time.sleep(0.05)
        assert ref() is None, "breaker kept alive"
        probe.wake()
        probe.join(5)
        print("alive" if probe.is_alive() else "ended")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ended")
