"""The engine against a real redis-server: frozen, stopped, restarted; the probe recovers alone."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
import redis

from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, State
from redis_breaker.testing import capture_events
from tests.harness import RedisServer, collected_garbage
from tests.harness.server import free_port

SOCKET_TIMEOUT = 0.5


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=SOCKET_TIMEOUT,
                                socket_connect_timeout=SOCKET_TIMEOUT,
                                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))


def hammer(breaker: Breaker, r: redis.Redis, threads: int, calls: int) -> list[tuple[float, str]]:
    """Run `calls` GETs in each of `threads` threads; return (seconds, outcome) per call."""
    results: list[tuple[float, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                breaker.call(r.get, "k")
                outcome = "ok"
            except BreakerOpenError:
                outcome = "rejected"
            except (redis.ConnectionError, redis.TimeoutError):
                outcome = "error"
            with lock:
                results.append((time.perf_counter() - t0, outcome))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    return results


def test_frozen_redis_opens_and_no_call_queues_behind_another(redis_server: RedisServer) -> None:
    """8 threads, Redis frozen: the breaker opens and no call waits for other calls' timeouts."""
    breaker = Breaker("frozen", BreakerConfig(url=redis_server.url))
    r = client(redis_server)
    r.set("k", "v")
    redis_server.freeze()
    results = hammer(breaker, r, threads=8, calls=20)
    assert breaker.state is State.OPEN
    slowest = max(seconds for seconds, _ in results)
    # Concurrent timeouts overlap instead of queueing: the slowest call is about one
    # socket timeout (a breaker holding a lock across calls makes it 5-8 of them).
    assert slowest < 3 * SOCKET_TIMEOUT, f"slowest call {slowest:.2f}s"
    outcomes = [o for _, o in results]
    assert outcomes.count("rejected") >= 8 * 20 - 8 * 2
    redis_server.thaw()


def test_probe_alone_recovers_after_thaw(redis_server: RedisServer) -> None:
    """With no user traffic, the probe finds Redis back, goes half-open, and trial PINGs close it."""
    breaker = Breaker("thaw", BreakerConfig(url=redis_server.url, probe_timeout=0.25))
    r = client(redis_server)
    redis_server.freeze()
    with capture_events() as events:
        hammer(breaker, r, threads=8, calls=2)
        assert breaker.state is State.OPEN
        redis_server.thaw()
        wait_for(lambda: breaker.state is State.CLOSED)
    transitions = [(e["from_state"], e["to_state"], e["reason"]) for e in events
                   if e["event"] == "breaker_state_changed"]
    assert transitions[0][:2] == ("closed", "open")
    assert ("open", "half_open", "probe ok") in transitions
    assert transitions[-1][:2] == ("half_open", "closed")
    probe = breaker._probe
    assert probe is not None
    wait_for(lambda: not probe.is_alive(), timeout=5)  # the probe stops once closed


def test_stopped_redis_refuses_then_recovers_on_restart(redis_server: RedisServer) -> None:
    """Refused connections trip at once; a restart (empty) is found by the probe."""
    breaker = Breaker("stop", BreakerConfig(url=redis_server.url))
    r = client(redis_server)
    redis_server.stop()
    for _ in range(5):
        with pytest.raises(redis.ConnectionError):
            breaker.call(r.get, "k")
    assert breaker.state is State.OPEN
    with pytest.raises(BreakerOpenError):
        breaker.call(r.get, "k")
    redis_server.restart(empty=True)
    wait_for(lambda: breaker.state is State.CLOSED)
    assert breaker.call(r.get, "k") is None


def test_probe_keeps_pinging_while_redis_stays_down(redis_server: RedisServer) -> None:
    """However long the outage, the probe PINGs every PROBE_INTERVAL: detection is not
    backed off, and the failed PINGs do not push trial traffic further out."""
    breaker = Breaker("backoff", BreakerConfig(url=redis_server.url, probe_interval=0.05,
                                               reset_timeout=0.05, max_reset_timeout=10.0))
    redis_server.stop()
    for _ in range(5):
        with pytest.raises(redis.ConnectionError):
            breaker.call(client(redis_server).get, "k")
    first = breaker._next_ping_at
    # Ten more PINGs after the first one, each failing.
    wait_for(lambda: breaker._next_ping_at > first + 10 * 0.05 * 0.8)
    assert breaker.state is State.OPEN
    assert breaker._backoff_step == 0
    assert "Connection refused" in (breaker.stats().last_error or "") or "111" in (
        breaker.stats().last_error or "")


def test_the_probe_connects_anew_for_every_ping_and_leaves_no_garbage(
        redis_server: RedisServer) -> None:
    """Every PING of the probe is a new connection (Redis's own count says so), closed
    after; neither an answered PING nor a refused one leaves a client, pool or connection
    for the cyclic collector, whose ``__del__`` would run in whatever thread collects
    (a Celery worker's main thread, where a SIGTERM that lands in one is lost)."""
    # A long PROBE_TIMEOUT: an answered PING must not time out on a busy machine.
    breaker = Breaker("pings", BreakerConfig(url=redis_server.url, probe=False,
                                             probe_timeout=5.0, failure_threshold=1,
                                             reset_timeout=600.0, max_reset_timeout=600.0))
    dead = redis.Redis(port=free_port(), socket_connect_timeout=SOCKET_TIMEOUT,
                       retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        breaker.call(dead.get, "k")
    assert breaker.state is State.OPEN
    assert breaker.probe_now()  # the first makes the probe's client
    watcher = client(redis_server)
    before = watcher.info("stats")["total_connections_received"]
    with collected_garbage() as answered:
        for _ in range(20):
            assert breaker.probe_now()  # answered; the open interval has not elapsed
    assert breaker.state is State.OPEN
    assert watcher.info("stats")["total_connections_received"] - before == 20
    assert len(watcher.client_list()) == 1  # the watcher's: every PING's was closed
    redis_server.stop()
    with collected_garbage() as refused:
        for _ in range(20):
            assert not breaker.probe_now()
    kinds = {type(o).__name__ for o in answered + refused}
    assert not kinds & {"Redis", "ConnectionPool", "Connection", "ConnectionError"}, kinds
    assert "Connection refused" in (breaker.stats().last_error or "")


def test_probe_password_never_logged(tmp_path: object) -> None:
    """A probe failing against a password-protected URL logs no password."""
    with RedisServer(password="hunter2") as server:
        url = server.url
        assert "hunter2" in url
        breaker = Breaker("pw", BreakerConfig(url=url, failure_threshold=1))
        server.stop()
        with capture_events() as events:
            with pytest.raises(redis.ConnectionError):
                breaker.call(redis.Redis.from_url(url, socket_connect_timeout=0.2).get, "k")
            first = breaker._next_ping_at
            wait_for(lambda: breaker._next_ping_at > first)  # a probe PING failed
        assert "hunter2" not in repr(events)
        assert "hunter2" not in repr(breaker.stats())


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_breaker_created_before_fork_works_in_the_child(redis_server: RedisServer) -> None:
    """A breaker tripped before fork recovers in the child with its own probe (gunicorn --preload)."""
    breaker = Breaker("fork", BreakerConfig(url=redis_server.url))
    redis_server.stop()
    for _ in range(5):
        with pytest.raises(redis.ConnectionError):
            breaker.call(client(redis_server).get, "k")
    assert breaker.state is State.OPEN
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        code = 1
        try:
            with pytest.raises(BreakerOpenError):  # starts this process's probe
                breaker.call(lambda: None)
            os.write(write, b"r")  # ready: the parent may start Redis
            deadline = time.monotonic() + 20
            while breaker.state is not State.CLOSED and time.monotonic() < deadline:
                time.sleep(0.02)
            code = 0 if breaker.state is State.CLOSED else 2
        finally:
            os._exit(code)
    os.close(write)
    assert os.read(read, 1) == b"r"
    os.close(read)
    redis_server.start()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_wrong_password_opens_the_breaker_and_says_why() -> None:
    """A wrong password makes Redis unusable: counted, and logged once as a configuration error."""
    with RedisServer(password="right") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        breaker = Breaker("auth", BreakerConfig(url=url))
        client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
        with capture_events() as events:
            for _ in range(5):
                with pytest.raises(redis.AuthenticationError):
                    breaker.call(client.get, "k")
        assert breaker.state is State.OPEN
        loud = [e for e in events if e["event"] == "redis_misconfigured"]
        assert len(loud) == 1
        assert loud[0]["log_level"] == "error"
        assert "check the password" in loud[0]["hint"]
        opened = next(e for e in events if e["event"] == "breaker_state_changed")
        assert "authentication failed" in opened["reason"]
        assert "wrong" not in repr(events)


def test_out_of_memory_is_not_an_outage(redis_server: RedisServer) -> None:
    """OOM under maxmemory noeviction is Redis answering: the error propagates, nothing is counted."""
    admin = redis_server.client()
    admin.config_set("maxmemory", "1mb")
    admin.config_set("maxmemory-policy", "noeviction")
    breaker = Breaker("oom", BreakerConfig(url=redis_server.url, failure_threshold=1))
    for _ in range(3):
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            breaker.call(admin.set, "big", "x" * 2_000_000)
    assert breaker.state is State.CLOSED
    assert breaker.stats().consecutive_failures == 0
    admin.close()


def test_readonly_reply_counts(redis_server: RedisServer) -> None:
    """A replica's READONLY reply (after a failover) counts: this node cannot serve writes."""
    with RedisServer() as primary:
        replica = redis_server.client()
        replica.replicaof("127.0.0.1", primary.port)
        breaker = Breaker("ro", BreakerConfig(url=redis_server.url, failure_threshold=2))
        for _ in range(2):
            with pytest.raises(redis.exceptions.ReadOnlyError):
                breaker.call(replica.set, "k", "v")
        assert breaker.state is State.OPEN
        replica.replicaof("no", "one")
        replica.close()
