"""Fork while each integration is busy: every child finishes its own work.

A child gets a copy of every lock the parent had, held or not, and none of the
parent's threads: a lock held by one of those threads at the moment of the
fork stays held in the child forever. Each test keeps an integration busy in
threads of the parent (cache writes during an outage, through the journal; an
outbox relay draining; a channel layer forwarding messages; a probe PINGing a
dead Redis), forks children at random moments while it is, and has each child
do its own work with the same objects. A child that is not done within a
generous deadline dumps its threads' stacks (faulthandler) and is killed; the
test reports which children hung, and where.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import random
import select
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.core.cache import caches
from django.db import connections

from redis_breaker import Breaker, BreakerConfig, State, get_breaker
from redis_breaker.celery import BreakerTask
from redis_breaker.channels import BreakerChannelLayer
from redis_breaker.health import get_redis_status
from redis_breaker.models import OutboxMessage
from tests.harness import RedisServer

from .cache.conftest import caches_for, wait_for

CHILDREN = 12
#: How long a child may take for its own work: far beyond what it needs on a busy machine.
CHILD_DEADLINE_S = 60.0

pytestmark = [
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    pytest.mark.timeout(600),
]


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        return os.fork()


def fork_children(work: Callable[[int], None], children: int = CHILDREN,
                  forked: Callable[[], None] | None = None) -> list[str]:
    """Fork ``children`` children at random moments; each runs ``work(i)`` and exits.
    ``forked()``, when given, runs in the parent once every child is forked.

    Returns one line per child that failed or hung (empty: every child finished its
    work), with the stacks of a hung child's threads.
    """
    rng = random.Random(15)
    running: dict[int, tuple[int, int]] = {}
    for i in range(children):
        time.sleep(rng.uniform(0.0, 0.03))  # somewhere inside the parent's busy work
        read, write = os.pipe()
        pid = _fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(read)
                report = os.fdopen(write, "w")
                # Stuck: every thread's stack to the parent, then exit.
                faulthandler.dump_traceback_later(CHILD_DEADLINE_S, exit=True, file=report)
                try:
                    work(i)
                    code = 0
                except BaseException:
                    report.write(traceback.format_exc())
                report.flush()
            finally:
                os._exit(code)
        os.close(write)
        running[pid] = (i, read)
    if forked is not None:
        forked()
    return _collect(running)


def _collect(running: dict[int, tuple[int, int]]) -> list[str]:
    failures: list[str] = []
    outputs: dict[int, bytes] = dict.fromkeys(running, b"")
    deadline = time.monotonic() + CHILD_DEADLINE_S + 30
    while running and time.monotonic() < deadline:
        # poll, not select: a long suite's descriptors may be numbered past FD_SETSIZE.
        poller = select.poll()
        for _, fd in running.values():
            poller.register(fd, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(200)}
        for pid, (i, fd) in list(running.items()):
            if fd in readable:
                chunk = os.read(fd, 65536)
                if chunk:
                    outputs[pid] += chunk
                    continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                os.close(fd)
                del running[pid]
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    # The head: a hung child's faulthandler dump puts the innermost frames first.
                    failures.append(f"child {i} exited {code}:\n{outputs[pid].decode()[:6000]}")
    for pid, (i, fd) in running.items():  # past every deadline: no faulthandler either
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
        failures.append(f"child {i} hung and was killed:\n{outputs[pid].decode()[:6000]}")
    return failures


@contextlib.contextmanager
def busy(*loops: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run each loop in a thread of its own until the block ends."""
    stop = threading.Event()
    threads = [threading.Thread(target=loop, args=(stop,), daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


# ------------------------------------------------------------------ the cache
def test_cache_writes_during_an_outage(settings: Any, redis_server: RedisServer) -> None:
    """Threads write through the journal (its lock, the fallback's lock) while children fork;
    every child writes and reads its own keys, served by the fallback."""
    settings.CACHES = caches_for(redis_server.url)
    settings.REDIS_BREAKERS = {"default": {"FAILURE_THRESHOLD": 2, "RESET_TIMEOUT": 0.05}}
    redis_server.stop()
    wait_for(lambda: (caches["default"].set("trip", 1), get_breaker().is_open)[1],
             what="the breaker to open")

    def writer(stop: threading.Event) -> None:
        cache = caches["default"]  # this thread's BreakerCache, the process's journal
        n = 0
        while not stop.is_set():
            cache.set(f"w{n % 500}", n)
            cache.delete(f"w{(n + 7) % 500}")
            cache.add("counter", 0)
            cache.incr("counter")
            n += 1

    def child(i: int) -> None:
        cache = caches["default"]
        for j in range(50):
            cache.set(f"child-{i}-{j}", j)
            assert cache.get(f"child-{i}-{j}") == j
        assert get_breaker().is_open

    with busy(writer, writer, writer, writer):
        failures = fork_children(child)
    assert failures == [], "\n\n".join(failures)


def test_a_child_replays_the_journal_it_inherited(settings: Any,
                                                 redis_server: RedisServer) -> None:
    """A child forked during an outage has the parent's journal but not its replay thread:
    its own reads of a covered key see the breaker let calls through once Redis is back,
    start the replay, and then come from Redis (a miss: the replay deleted the key)."""
    settings.CACHES = caches_for(redis_server.url)
    settings.REDIS_BREAKERS = {"default": {"FAILURE_THRESHOLD": 2, "RESET_TIMEOUT": 0.05}}
    cache = caches["default"]
    redis_server.stop()
    wait_for(lambda: (cache.set("trip", 1), get_breaker().is_open)[1],
             what="the breaker to open")
    cache.set("inherited", "written during the outage")

    def child(i: int) -> None:
        cache = caches["default"]
        journal = cache._bind().journal
        assert journal.active
        assert journal._job.thread is None  # the parent's replay thread is not here
        deadline = time.monotonic() + CHILD_DEADLINE_S / 2
        while journal.active:
            assert cache.get("inherited") == "written during the outage"
            assert time.monotonic() < deadline, "the child's journal was never replayed"
            time.sleep(0.01)
        assert cache.get("inherited") is None
        assert redis.Redis.from_url(redis_server.url).exists(":1:inherited") == 0

    failures = fork_children(child, children=3, forked=redis_server.start)
    assert failures == [], "\n\n".join(failures)


# ------------------------------------------------------------------ the probe
def test_a_probe_running(redis_server: RedisServer, tmp_path: Path) -> None:
    """The parent's probe PINGs a hung Redis (its thread inside a PING, its breaker's locks in
    use) while children fork; each child's breaker runs a probe of its own and closes once
    Redis is back."""
    config = BreakerConfig(url=redis_server.url, host_shared=False, probe_timeout=0.2,
                           probe_interval=0.05, reset_timeout=0.05, max_reset_timeout=0.2)
    breaker = Breaker("fork-probe", config)
    redis_server.freeze()
    dead = redis.Redis.from_url(redis_server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    for _ in range(config.failure_threshold):
        with contextlib.suppress(Exception):
            breaker.call(dead.get, "k")
    assert breaker.is_open
    ready = tmp_path / "redis-is-back"

    def caller(stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                breaker.call(lambda: None)  # rejections, and the transitions' locks
            breaker.stats()

    def child(i: int) -> None:
        assert breaker.is_open
        assert breaker.call_with_fallback(lambda: "redis", lambda: "fallback") == "fallback"
        deadline = time.monotonic() + CHILD_DEADLINE_S - 10
        while not ready.exists():  # the parent thaws Redis once every child forked
            assert time.monotonic() < deadline, "Redis never came back"
            time.sleep(0.05)
        while breaker.state is not State.CLOSED:  # this child's own probe closes it
            assert time.monotonic() < deadline, f"still {breaker.state.value}"
            time.sleep(0.05)
        assert breaker.call(lambda: "ok") == "ok"

    def thaw_later() -> None:
        time.sleep(0.5)  # the children's probes PING a frozen Redis for a while first
        redis_server.thaw()
        ready.touch()

    # Thawed only once every child is forked (forking can take long on a busy machine):
    # each child starts with the breaker open.
    thaw = threading.Thread(target=thaw_later, daemon=True)
    try:
        with busy(caller, caller):
            failures = fork_children(child, forked=thaw.start)
    finally:
        if thaw.is_alive():
            thaw.join()
        dead.close()
        breaker.reset()
    assert failures == [], "\n\n".join(failures)


# ------------------------------------------------------------------ the outbox
@pytest.fixture
def celery_app(redis_server: RedisServer) -> Iterator[Celery]:
    app = Celery("rb-fork", broker=redis_server.url, task_cls=BreakerTask, set_as_current=False)
    app.conf.task_ignore_result = True

    @app.task(name="f.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    try:
        yield app
    finally:
        from redis_breaker.celery import outbox

        for relay in list(outbox._relays.values()):
            relay.join(30)
        cached = getattr(app, "_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
        app.close()


@pytest.mark.django_db(transaction=True)
def test_a_thread_inside_a_kombu_property_when_the_process_forks(
        celery_app: Celery, redis_server: RedisServer) -> None:
    """kombu's ``cached_property`` takes its descriptor's lock on every read, and every
    dispatch reads one (``app.amqp``). A thread of the parent inside that read when the
    process forks leaves the lock held in the child: its dispatches dispatch all the same."""
    add = celery_app.tasks["f.add"]
    add.delay(0, 0)
    amqp = next(vars(klass)["amqp"] for klass in type(celery_app).__mro__
                if "amqp" in vars(klass))
    held, release = threading.Event(), threading.Event()

    def reading() -> None:
        with amqp.lock:  # what a read of app.amqp holds, for as long as the fork takes
            held.set()
            release.wait(CHILD_DEADLINE_S)

    def child(i: int) -> None:
        connections.close_all()
        add.delay(i, 0)
        connections.close_all()

    thread = threading.Thread(target=reading)
    thread.start()
    try:
        assert held.wait(10)
        failures = fork_children(child, children=2)
    finally:
        release.set()
        thread.join()
    assert failures == [], "\n\n".join(failures)


@pytest.mark.django_db(transaction=True)
def test_an_outbox_relay_draining(settings: Any, celery_app: Celery,
                                  redis_server: RedisServer) -> None:
    """The relay publishes hundreds of outboxed dispatches (its job's lock, the producer pool's
    lock, the breaker's) while children fork; each child publishes tasks of its own."""
    settings.REDIS_BREAKERS = {"default": {"FAILURE_THRESHOLD": 2, "RESET_TIMEOUT": 0.05,
                                           "MAX_RESET_TIMEOUT": 0.2}}
    add = celery_app.tasks["f.add"]
    add.delay(0, 0)  # the pool made and used by the parent before the outage
    redis_server.stop(save=True)
    for i in range(400):
        add.delay(i, 1)
    assert OutboxMessage.objects.filter(status="pending").count() >= 398
    redis_server.start()  # the probe finds it, the relay starts draining

    def dispatcher(stop: threading.Event) -> None:
        while not stop.is_set():
            add.delay(1, 1)
            time.sleep(0.005)
        connections.close_all()

    def child(i: int) -> None:
        connections.close_all()  # the parent's database connections are the parent's
        for j in range(20):
            add.delay(i, j)  # published on a pool of this process (or outboxed, never stuck)
        breaker = get_breaker("default")
        assert breaker.state in (State.CLOSED, State.HALF_OPEN, State.OPEN)
        get_redis_status(timeout=0.5)
        connections.close_all()

    wait_for(lambda: OutboxMessage.objects.filter(status="pending").count() < 390,
             timeout=30, what="the relay to start draining")
    with busy(dispatcher):
        failures = fork_children(child)
    wait_for(lambda: not OutboxMessage.objects.filter(status="pending").exists(), timeout=60,
             what="the parent's relay to drain the outbox")
    assert failures == [], "\n\n".join(failures)


# ------------------------------------------------------------------ the channel layer
def test_a_channel_layer_forwarding(redis_server: RedisServer) -> None:
    """A thread's event loop forwards messages through the layer (group sends, receives, the
    layer's per-loop locks) while children fork; each child runs a loop of its own and gets
    its own message through Redis."""
    breaker = Breaker("fork-chat", BreakerConfig(url=redis_server.url, failure_rate=None))
    hosts = [{"address": redis_server.url, "socket_timeout": 1, "socket_connect_timeout": 1}]
    layer = BreakerChannelLayer(hosts, breaker=breaker)

    def forwarder(stop: threading.Event) -> None:
        async def forward() -> None:
            inbox = await layer.new_channel()
            await layer.group_add("room", inbox)
            while not stop.is_set():
                await layer.group_send("room", {"type": "tick"})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(layer.receive(inbox), 1)
            await layer.group_discard("room", inbox)
            await layer.close()

        asyncio.run(forward())

    def child(i: int) -> None:
        async def own() -> str:
            inbox = await layer.new_channel()
            await layer.group_add(f"child-{i}", inbox)
            await layer.group_send(f"child-{i}", {"type": "mine", "n": i})
            message = await asyncio.wait_for(layer.receive(inbox), CHILD_DEADLINE_S / 2)
            await layer.close()
            return str(message["type"])

        assert asyncio.run(own()) == "mine"
        assert breaker.state is State.CLOSED

    try:
        with busy(forwarder):
            time.sleep(0.3)  # the forwarder's loop and pools exist
            failures = fork_children(child)
    finally:
        breaker.reset()
    assert failures == [], "\n\n".join(failures)
