"""No stale reads across outages: the journal, its replay, and flapping with threads."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from django.core.cache import caches
from freezegun import freeze_time

from redis_breaker import Breaker, State
from redis_breaker.cache import BreakerCache
from redis_breaker.testing import capture_events, forced_open
from tests.harness import RedisServer

from .conftest import caches_for, recovered, wait_for


def _in_redis(server: RedisServer, key: str, version: int = 1) -> bool:
    return bool(server.client().exists(f":{version}:{key}"))


def test_value_from_one_outage_never_served_in_a_later_one(
        breaker_cache: BreakerCache, breaker: Breaker, redis_server: RedisServer) -> None:
    """A value written during an outage is gone after recovery, so a later outage cannot serve it."""
    cache = breaker_cache
    cache.set("k", "v1")
    with forced_open(breaker):
        cache.set("k", "v2")
        assert cache.get("k") == "v2"
    assert cache.get("k") in ("v2", None)  # covered until replayed: never v1
    wait_for(lambda: recovered(cache), what="journal replay")
    assert not _in_redis(redis_server, "k")  # the outage-era key was deleted from Redis
    assert cache.get("k") is None
    cache.set("k", "v3")  # Redis changes it in between
    with forced_open(breaker):
        assert cache.get("k") is None  # never v2 from the first outage
    assert cache.get("k") == "v3"


def test_deletes_and_increments_during_outage_are_replayed(
        breaker_cache: BreakerCache, breaker: Breaker, redis_server: RedisServer) -> None:
    """Deleting or incrementing a key during an outage removes its old Redis value on recovery."""
    cache = breaker_cache
    cache.set_many({"d": "old", "n": 1, "keep": "same"})
    with forced_open(breaker):
        cache.delete("d")
        cache.add("n", 100)
        cache.incr("n")
        cache.delete_many(["missing"])
        assert cache.get_many(["d", "n", "keep"]) == {"n": 101}
    wait_for(lambda: recovered(cache), what="journal replay")
    assert not _in_redis(redis_server, "d")
    assert not _in_redis(redis_server, "n")
    assert cache.get_many(["d", "n", "keep"]) == {"keep": "same"}


def test_timed_out_write_counts_as_journaled(breaker_cache: BreakerCache, breaker: Breaker,
                                             redis_server: RedisServer) -> None:
    """A write that timed out on a hung Redis, and lands when it resumes, is deleted on recovery."""
    cache = breaker_cache
    cache.set("k", "v1")
    redis_server.freeze()
    cache.set("k", "v2")  # times out after 0.5 s: served by the fallback, journaled
    assert breaker.state is State.CLOSED  # one failure: not open, still covered
    assert cache.get("k") == "v2"
    redis_server.thaw()  # the timed-out SET may land now
    wait_for(lambda: recovered(cache), what="journal replay")
    assert not _in_redis(redis_server, "k")
    assert cache.get("k") is None


def test_half_open_reads_wait_for_the_replay(settings: Any, redis_server: RedisServer) -> None:
    """In half-open, while the replay cannot run yet, journaled keys are never read from Redis."""
    settings.CACHES = caches_for(redis_server.url)
    settings.REDIS_BREAKERS = {"default": {"PROBE": False, "FAILURE_THRESHOLD": 1,
                                           "RESET_TIMEOUT": 1.0}}
    cache = caches["default"]
    b = cache.breaker
    with freeze_time("2026-01-01") as clock:
        cache.set("k", "v1")
        redis_server.freeze()
        assert cache.get("trip") is None  # one timeout opens the breaker
        redis_server.thaw()
        assert b.state is State.OPEN
        cache.set("k", "v2")  # rejected: fallback, journaled
        clock.tick(5)
        with b:  # the only half-open trial slot, held: the replay is rejected meanwhile
            assert b.state is State.HALF_OPEN
            for _ in range(20):
                assert cache.get("k") == "v2"
            assert _in_redis(redis_server, "k")  # Redis still holds v1, unreplayed
    wait_for(lambda: recovered(cache), what="replay as the second trial call")
    assert not _in_redis(redis_server, "k")
    assert cache.get("k") is None


def test_flapping_redis_never_serves_a_stale_value(
        breaker_cache: BreakerCache, breaker: Breaker, redis_server: RedisServer) -> None:
    """Redis hung, stopped and back every second or so; threads never read a stale value."""
    cache = breaker_cache
    stop = threading.Event()
    violations: list[str] = []
    hits = [0]
    lock = threading.Lock()

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        last: dict[str, Any] = {}
        n = 0
        while not stop.is_set():
            key = f"t{tid}-{rng.randrange(5)}"
            op = rng.random()
            if op < 0.4:
                n += 1
                value = f"{tid}:{n}"
                cache.set(key, value)
                last[key] = value
            elif op < 0.5:
                cache.delete(key)
                last[key] = None
            elif op < 0.6:
                n += 1
                data = {key: f"{tid}:{n}"}
                cache.set_many(data)
                last.update(data)
            else:
                got = cache.get(key)
                if got is not None:
                    with lock:
                        hits[0] += 1
                if got is not None and got != last.get(key):
                    violations.append(f"{key}: read {got!r}, last written {last.get(key)!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    with capture_events() as events:
        for t in threads:
            t.start()
        try:
            for cycle in range(4):
                time.sleep(1.0)
                if cycle % 2:
                    redis_server.stop()  # refused; comes back empty
                    time.sleep(1.2)
                    redis_server.start()
                else:
                    redis_server.freeze()  # hung; comes back with its old values
                    time.sleep(1.2)
                    redis_server.thaw()
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    assert violations == []
    opened = [e for e in events if e["event"] == "breaker_state_changed" and e["to_state"] == "open"]
    replays = [e for e in events if e["event"] == "cache_journal_replayed"]
    assert len(opened) >= 2
    assert len(replays) >= 2
    assert hits[0] > 100  # and reads did return values, not only misses


def test_reads_never_reach_redis_before_the_replay_succeeds(
        breaker_cache: BreakerCache, breaker: Breaker, redis_server: RedisServer) -> None:
    """Redis demoted to a read-only replica: reads work, the replay's DEL fails, and
    journaled keys keep coming from the fallback, never from Redis's stale copy."""
    from tests.harness import free_port
    cache = breaker_cache
    cache.set_many({"k": "v1", "same": "s"})
    client = redis_server.client()
    client.replicaof("127.0.0.1", free_port())  # no master there: stale reads, writes refused
    try:
        cache.set("k", "v2")  # ReadOnlyError counts: fallback, journaled
        assert cache.get("other") is None  # reads of other keys still reach Redis
        # Bulk reads split: the journaled key from the fallback, the rest from Redis.
        assert cache.get_many(["k", "same"]) == {"k": "v2", "same": "s"}
        for _ in range(50):
            assert cache.get("k") == "v2"  # the replay keeps failing; Redis still says v1
            time.sleep(0.01)
        assert client.get(":1:k") is not None
    finally:
        client.replicaof("no", "one")
    wait_for(lambda: recovered(cache), what="journal replay")
    assert not _in_redis(redis_server, "k")
    assert cache.get("k") is None


def test_replay_needs_no_user_traffic(settings: Any, redis_server: RedisServer) -> None:
    """After a real outage the probe's success starts the replay; no cache call is needed."""
    settings.CACHES = caches_for(redis_server.url)
    settings.REDIS_BREAKERS = {"default": {"FAILURE_THRESHOLD": 1}}
    cache = caches["default"]
    cache.set("k", "v1")
    redis_server.freeze()
    assert cache.get("trip") is None  # one timeout opens the breaker
    assert cache.breaker.state is State.OPEN
    cache.set("k", "v2")  # rejected: fallback, journaled
    with capture_events() as events:
        redis_server.thaw()
        wait_for(lambda: not _in_redis(redis_server, "k"), what="replay started by the probe")
        wait_for(lambda: cache.breaker.state is State.CLOSED, what="breaker closed")
    replayed = [e for e in events if e["event"] == "cache_journal_replayed"]
    assert replayed[0]["keys"] == 1
    assert next(e["reason"] for e in events if e["event"] == "breaker_state_changed") == "probe ok"


def test_an_idle_process_replays_after_a_blip(settings: Any, redis_server: RedisServer) -> None:
    """A write that failed while the breaker stayed closed is replayed without another call."""
    settings.CACHES = caches_for(redis_server.url)
    cache = caches["default"]
    cache.set("k", "v1")
    redis_server.stop(save=True)
    cache.set("k", "v2")  # refused: one failure, the breaker stays closed; journaled
    assert cache.breaker.state is State.CLOSED
    redis_server.start()
    wait_for(lambda: not _in_redis(redis_server, "k"), what="replay with no call after the write")


WRITER = """
import sys, time, django
from django.conf import settings
url, state_dir, control = sys.argv[1:4]
settings.configure(
    CACHES={"redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
                      "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}},
            "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                        "OPTIONS": {"PRIMARY": "redis"}}},
    REDIS_BREAKERS={"default": {"STATE_DIR": state_dir}}, LOGGING_CONFIG=None)
django.setup()
from pathlib import Path
from django.core.cache import caches
cache = caches["default"]
cache.get("warm-up")
Path(control, "ready").touch()
while not Path(control, "write").exists():
    time.sleep(0.01)
assert cache.breaker.is_open  # opened by the other process, for the host
cache.set("k", "v2")  # rejected: the fallback, journaled; then no cache call at all
Path(control, "written").touch()
while not Path(control, "stop").exists():
    time.sleep(0.01)
"""


def test_another_process_journal_is_replayed_while_it_idles(
        settings: Any, tmp_path: Any, redis_server: RedisServer) -> None:
    """Host-wide state: the breaker closed by another process, an idle writer still replays."""
    import subprocess
    import sys

    from redis_breaker import _shared

    settings.CACHES = caches_for(redis_server.url)
    here = caches["default"].breaker  # this process: same name, URL and state file
    control = tmp_path / "control"
    control.mkdir()
    redis_server.client().set(":1:k", "old")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, redis_server.url,
                               _shared.default_state_dir(), str(control)])
    try:
        wait_for(lambda: (control / "ready").exists(), what="writer ready")
        here.force_open("the outage, seen here")
        (control / "write").touch()
        wait_for(lambda: (control / "written").exists(), what="writer wrote")
        time.sleep(0.3)
        assert _in_redis(redis_server, "k")  # no replay while open
        here.reset("recovered, seen here")
        wait_for(lambda: not _in_redis(redis_server, "k"), what="the idle writer's replay")
    finally:
        (control / "stop").touch()
        writer.wait(30)
