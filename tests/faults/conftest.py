"""The fault matrix: the cache, Channels and Celery on one real redis-server, sharing one breaker.

Each module breaks Redis one way and asserts the promise for the three together
(``Stack``): callers see no Redis exception; once the breaker is open no call
goes near Redis (counted: no failure recorded, every call served by a
fallback); no task is lost (every dispatched id reaches the broker's queue,
the outbox drains); no stale cache value is served (a key written during the
outage never comes back from Redis with its pre-outage value); and the breaker
closes within two probe intervals of Redis being healthy again.

The engine reads ``time.monotonic``, so time is frozen (freezegun, with real
time for asyncio) and the recovery is driven by ticking the clock, never by
sleeping. Redis and the background threads (probe, journal replay, outbox
relay) run for real; the test polls them with generous deadlines, which are
liveness bounds, not timing assertions.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import freezegun
import freezegun.config
import pytest
from celery import Celery
from channels.layers import get_channel_layer
from django.core.cache import caches
from freezegun import freeze_time

from redis_breaker import Breaker, State, get_breaker
from redis_breaker.cache import BreakerCache
from redis_breaker.cache import journal as _cache_journal
from redis_breaker.celery import BreakerTask, outbox
from redis_breaker.channels import BreakerChannelLayer
from redis_breaker.models import OutboxMessage
from tests.harness import RedisNotInstalled, RedisServer

T = TypeVar("T")

SOCKET_TIMEOUT = 0.5
GROUP = "room"
QUEUE = "celery"
TASK = "faults.work"
#: A key set before the fault and again during it: Redis's old copy must never be served.
STALE_KEY = "fault:stale"
BEFORE, DURING = "before-the-fault", "during-the-fault"
BREAKER = {"RESET_TIMEOUT": 0.5, "MAX_RESET_TIMEOUT": 2.0, "PROBE_TIMEOUT": 0.25}
#: Liveness bound for background work on a real server (a loaded CI machine is slow).
DEADLINE = 20.0


def wait_for(predicate: Callable[[], bool], what: str | Callable[[], str],
             timeout: float = DEADLINE) -> None:
    """Poll a real-server condition with a deadline (counted in sleeps: the clock is frozen).

    ``what`` may be a callable: the failure message is made when the wait fails.
    """
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        time.sleep(0.02)
    if not predicate():
        pytest.fail(f"timed out after {timeout}s waiting for "
                    f"{what() if callable(what) else what}")


def wait_for_progress(remaining: Callable[[], int], what: Callable[[], str],
                      stall: float = DEADLINE) -> None:
    """Poll until ``remaining()`` is 0; fail when it has not gone down for ``stall`` seconds
    (counted in sleeps, as ``wait_for``): a deadline for a stall, not for the work."""
    best = remaining()
    still = 0
    while best > 0:
        time.sleep(0.02)
        now = remaining()
        if now < best:
            best, still = now, 0
        else:
            still += 1
            if still * 0.02 >= stall:
                pytest.fail(f"no progress for {stall}s waiting for {what()}")


class LoopThread:
    """An event loop in a thread of its own, standing for the ASGI server's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="faults-asgi-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEADLINE) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def queued_ids(server: RedisServer, queue: str = QUEUE) -> list[str]:
    """Task ids waiting in the broker's queue on ``server``, oldest first."""
    client = server.client()
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    return [json.loads(item)["headers"]["id"] for item in reversed(raw)]


def stack_settings(settings: Any, url: str, socket_timeout: float = SOCKET_TIMEOUT,
                   **breaker: Any) -> None:
    """One Django settings override building all three integrations on ``url``, one breaker."""
    settings.REDIS_BREAKERS = {"default": {"URL": url, **BREAKER, **breaker}}
    settings.CACHES = {
        "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
                  "OPTIONS": {"socket_timeout": socket_timeout,
                              "socket_connect_timeout": socket_timeout}},
        "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                    "OPTIONS": {"PRIMARY": "redis", "BREAKER": "default"}},
    }
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "redis_breaker.channels.BreakerChannelLayer",
        "CONFIG": {"hosts": [{"address": url, "socket_timeout": socket_timeout,
                              "socket_connect_timeout": socket_timeout}],
                   "breaker": "default"},
    }}
    settings.CELERY_BROKER_URL = url
    settings.CELERY_TASK_IGNORE_RESULT = True
    settings.CELERY_REDIS_BREAKER_TIMEOUT = socket_timeout


@dataclass
class Stack:
    """The three integrations of one process on one Redis, and the promise they keep."""

    server: RedisServer
    breaker: Breaker
    cache: BreakerCache
    layer: BreakerChannelLayer
    app: Celery
    loop: LoopThread
    clock: Any  # freezegun's FrozenDateTimeFactory, or None for real time
    member: str = ""
    #: Task ids dispatched since ``fault_begins()``: each must reach the broker.
    dispatched: list[str] = field(default_factory=list)
    #: Messages sent to this process's member while the breaker was open.
    local_messages: list[int] = field(default_factory=list)
    #: STALE_KEY was changed during the fault: from then on BEFORE is a stale value.
    overwritten: bool = False
    _n: int = 0

    # ------------------------------------------------------------ traffic
    def _next(self) -> int:
        self._n += 1
        return self._n

    def _caller(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            pytest.fail(f"{what} raised {type(exc).__name__}: {exc} (state "
                        f"{self.breaker.state.value}); callers must never see a Redis error")

    def cache_round(self, key: str) -> None:
        """A write then a read of one key: the read returns the value written, or a miss.

        A miss is legal for a cache, a stale value never is. A write that timed
        out may or may not have reached Redis: the journal invalidates the key,
        and until Redis has it again the read is a miss. A slow write that
        reached Redis and opened the breaker leaves the read to the fallback,
        which never held the key. (That the fallback serves what was written
        while the breaker is open is asserted in ``assert_open_skips_redis``.)
        """
        n = self._next()
        self._caller(f"cache.set({key!r})", lambda: self.cache.set(key, n))
        got = self._caller(f"cache.get({key!r})", lambda: self.cache.get(key))
        assert got in (n, None), f"cache.get({key!r}) returned {got!r} right after set({n!r})"

    def dispatch(self) -> str:
        task = self.app.tasks[TASK]
        result = self._caller("task.delay()", lambda: task.delay(self._next()))
        self.dispatched.append(result.id)
        return str(result.id)

    def group_send(self) -> bool:
        n = self._next()
        message = {"type": "fault.message", "n": n}
        took = self._caller("group_send()",
                            lambda: self.loop.run(self.layer.send_to_group(GROUP, message)))
        if not took:
            self.local_messages.append(n)
        return took

    def send(self) -> None:
        n = self._next()
        self._caller("send()", lambda: self.loop.run(
            self.layer.send(self.member, {"type": "fault.message", "n": n})))
        if self.breaker.is_open:
            self.local_messages.append(n)

    def operations(self, tag: str) -> list[Callable[[], object]]:
        """One round of what a request does: a cache write and read, a task, two messages."""
        key = f"{tag}:{self._n}"
        return [lambda: self.cache_round(key), self.dispatch, self.group_send, self.send]

    def traffic(self, rounds: int, tag: str) -> None:
        for _ in range(rounds):
            for op in self.operations(tag):
                op()

    # ------------------------------------------------------------- phases
    def warm_up(self) -> None:
        """Closed: everything goes through Redis; the stale key gets its pre-fault value."""
        self.member = self.loop.run(self.layer.new_channel())
        self.loop.run(self.layer.group_add(GROUP, self.member))
        self.traffic(2, "warm")
        self.cache.set(STALE_KEY, BEFORE)
        assert self.breaker.state is State.CLOSED
        assert self.breaker.totals().fallbacks == {}, "a healthy Redis needed a fallback"
        assert self.raw_get(STALE_KEY) is not None

    def fault_begins(self) -> None:
        """From here on every dispatched task id must reach the broker."""
        self.dispatched.clear()
        self.local_messages.clear()

    def discover(self, max_rounds: int = 3) -> int:
        """Traffic until the breaker opens; every call returns. Returns the calls it took."""
        calls = 0
        for _ in range(max_rounds):
            for op in self.operations("discover"):
                op()
                calls += 1
                if self.breaker.is_open:
                    return calls
        pytest.fail(f"the breaker did not open after {calls} calls on a broken Redis "
                    f"({self.breaker.stats()})")

    def assert_open_skips_redis(self, rounds: int = 10) -> None:
        """Open: every call is served by its fallback and none reaches Redis.

        A call that reached a broken Redis would be recorded as a failure (or a
        success on a working one); neither count moves, while each
        integration's fallback count grows by exactly the calls made.
        """
        assert self.breaker.is_open
        # Calls admitted before it opened (a journal replay or a group re-join the
        # discovering calls started, still in redis-py's retries) may end now: let them.
        wait_for(lambda: not self._in_flight(), "calls admitted before the breaker opened")
        before = self.breaker.totals()
        self.cache.set(STALE_KEY, DURING)
        self.overwritten = True
        assert self.cache.get(STALE_KEY) == DURING
        self.traffic(rounds, "open")
        after = self.breaker.totals()
        assert self.breaker.is_open
        assert after.failures == before.failures, "a call went to Redis while open"
        assert after.successes == before.successes, "a call went to Redis while open"
        grew = {k: after.fallbacks.get(k, 0) - before.fallbacks.get(k, 0)
                for k in ("cache", "channels", "celery")}
        assert grew == {"cache": 2 * rounds + 2, "channels": 2 * rounds, "celery": rounds}
        # Cache writes of fresh keys, messages and tasks were rejected at admission.
        assert after.rejected - before.rejected >= 4 * rounds

    def _in_flight(self) -> bool:
        if self.cache._bind().journal.replaying:
            return True
        return any(state.resync is not None and not state.resync.done()
                   for state in list(self.layer._loops.values()))

    def interval(self) -> float:
        """The probe interval now: the open interval of the current backoff step, before jitter."""
        config = self.breaker.config
        return min(config.max_reset_timeout,
                   config.reset_timeout * 2 ** self.breaker._backoff_step)

    def recover(self) -> float:
        """Redis is healthy: tick the frozen clock until the breaker closes.

        Fails unless it closes within two probe intervals of clock time; returns
        the clock time it took. No stale value may be read meanwhile.
        """
        assert self.clock is not None, "recover() drives a frozen clock"
        b = self.breaker
        budget = 2 * self.interval()
        ticked = 0.0
        while True:
            self.assert_not_stale()
            if b.state is State.OPEN:
                step = _micro(b.stats().retry_in_s or 0.0)
                self._advance(step)
                ticked += step
                b._wake_probe()
                # The probe is due: it PINGs (real I/O) and moves to half-open.
                wait_for(lambda: b.state is not State.OPEN,
                         f"the probe to find Redis back ({b.stats()}, {b._probe!r}, "
                         f"{b._probe_running})")
                continue
            if b.state is State.CLOSED:
                return ticked
            # Half-open: trial calls (the probe's PINGs, the journal replay, the
            # relay, the channel resync) run; the probe spaces its own on the clock.
            wait_for(lambda: b.state is not State.HALF_OPEN or self._trial_waits_for_clock(),
                     "half-open trial calls")
            if b.state is State.HALF_OPEN:
                step = self._advance_between_trials()
                if step is None:
                    continue  # a trial call began meanwhile: wait for it
                ticked += step
                b._wake_probe()
            assert ticked <= budget, (
                f"not closed after {ticked:.2f}s of clock time, two probe intervals are "
                f"{budget:.2f}s ({b.stats()})")

    def _advance(self, seconds: float) -> None:
        # Not tick(): on a ticking clock freezegun 1.5 ticks from where it was first
        # frozen, which moves time back by however long the test ran.
        self.clock.move_to(self.clock() + datetime.timedelta(seconds=seconds))

    def _trial_waits_for_clock(self) -> bool:
        b = self.breaker
        with b._lock:
            return b._trials == 0 and b._next_trial_at > b._now()

    def _advance_between_trials(self) -> float | None:
        """Move the clock to the probe's next trial while no trial call runs; the step, or
        None when one runs.

        Under the breaker's lock: a trial is admitted under it and reads its start time
        after, so none can begin before the jump and end after it. A jump inside a call
        would count in its duration: with ``SLOW_CALL_THRESHOLD`` a healthy trial call
        was judged slow (0.27 s) and the breaker reopened.
        """
        b = self.breaker
        with b._lock:
            if b._trials or b._next_trial_at <= b._now():
                return None
            step = _micro(b._next_trial_at - b._now())
            self._advance(step)
        return step

    def settle(self) -> None:
        """Wait for the background recovery work: journal replayed, outbox relayed, groups back."""
        journal = self.cache._bind().journal

        def recovered() -> None:
            # On a busy machine a replayed or relayed call may time out after the recovery
            # and open the breaker again; the frozen clock would keep it open for good.
            if self.clock is not None and self.breaker.state is State.OPEN:
                self.recover()

        def replayed() -> bool:
            recovered()
            return not journal.active

        history: list[int] = []

        def pending() -> int:
            recovered()
            found = OutboxMessage.objects.filter(status=OutboxMessage.PENDING).count()
            history.append(found)
            return found

        wait_for(replayed, "the cache journal to be replayed")
        def stuck() -> str:
            relays = [(r.thread, r.thread is not None and r.thread.is_alive())
                      for r in outbox._relays.values()]
            return (f"the outbox relay to publish every row (pending rows, every 50th look: "
                    f"{history[::50]}; breaker {self.breaker.stats()}; relay threads {relays})")

        # Thousands of rows after a long flapping test: the relay's pace is the machine's,
        # so the wait fails only when it stops making progress.
        wait_for_progress(pending, stuck)
        for relay in list(outbox._relays.values()):
            thread = relay.thread
            if thread is not None:
                thread.join(DEADLINE)

    # ------------------------------------------------------------ promise
    def raw_get(self, key: str) -> bytes | None:
        client = self.server.client()
        try:
            value: bytes | None = client.get(f":1:{key}")
            return value
        finally:
            client.close()

    def assert_not_stale(self) -> None:
        """Once STALE_KEY was changed during the fault, its value from before is never read.

        Until then BEFORE is the last value written, and Redis may serve it
        (a test that only flaps Redis never changes the key).
        """
        if not self.overwritten:
            return
        got = self._caller("cache.get()", lambda: self.cache.get(STALE_KEY))
        assert got != BEFORE, "the cache served the value Redis held from before the fault"

    def assert_kept(self, *, groups: bool = True) -> None:
        """After recovery: the whole promise, for the three integrations.

        ``groups=False`` leaves out the check that this process's group
        memberships are back in Redis.
        """
        assert self.breaker.state is State.CLOSED
        self.settle()
        # Cache: the key changed during the fault is gone from Redis, never its old value.
        self.assert_not_stale()
        assert self.raw_get(STALE_KEY) is None, "the journal replay left the key in Redis"
        assert self.cache.get(STALE_KEY) is None
        self.cache_round("after")
        assert self.raw_get("after") is not None, "the cache is not back on Redis"
        # Celery: every task dispatched since the fault began reached the broker.
        assert OutboxMessage.objects.count() == 0, list(OutboxMessage.objects.values())
        last = self.dispatch()
        ids = queued_ids(self.server)
        missing = [i for i in self.dispatched if i not in ids]
        assert missing == [], f"{len(missing)} of {len(self.dispatched)} tasks never reached Redis"
        assert ids[-1] == last
        # Channels: memberships are back in Redis, messages go through Redis again,
        # and what was delivered in-process during the outage reached its member.
        marker = self._next()
        if groups:
            assert self.group_in_redis(), "the group membership was not re-applied to Redis"
            assert self.loop.run(self.layer.send_to_group(GROUP, {"type": "fault.message",
                                                                  "n": marker}))
        else:
            self.loop.run(self.layer.send(self.member, {"type": "fault.message", "n": marker}))
        received = self.receive_until(marker)
        lost = [n for n in self.local_messages if n not in received]
        assert lost == [], f"messages delivered in-process while open were lost: {lost}"
        assert self.breaker.state is State.CLOSED

    def group_in_redis(self) -> bool:
        client = self.server.client()
        try:
            members = client.zrange(f"asgi:group:{GROUP}", 0, -1)
        finally:
            client.close()
        return self.member.encode() in members

    def receive_until(self, marker: int) -> set[int]:
        seen: set[int] = set()
        while marker not in seen:
            message = self.loop.run(asyncio.wait_for(self.layer.receive(self.member), DEADLINE))
            seen.add(message["n"])
        return seen


def _micro(seconds: float) -> float:
    """``seconds`` rounded up to freezegun's resolution (a microsecond), plus one."""
    return (math.ceil(max(0.0, seconds) * 1e6) + 1) / 1e6


@pytest.fixture
def clock() -> Iterator[Any]:
    """Frozen engine time (see ``frozen_clock``)."""
    yield from frozen_clock()


def frozen_clock(*, tick: bool = False) -> Iterator[Any]:
    """Frozen engine time, in every thread; asyncio keeps real time, so socket timeouts fire.

    ``tick=True``: the clock also runs at real speed from where it was frozen
    (for faults judged by how long calls take, and for load that runs a while).

    freezegun gives real time to code called from the ``threading`` module by
    default, which is every background thread (the probe among them): the
    engine would then mix frozen and real readings. Not ignoring ``threading``
    (its waits take plain timeouts) keeps one clock for the whole engine.
    """
    saved = list(freezegun.config.settings.default_ignore_list)
    freezegun.configure(default_ignore_list=[m for m in saved if m != "threading"])
    try:
        with freeze_time(real_asyncio=True, tick=tick) as frozen:
            yield frozen
    finally:
        freezegun.configure(default_ignore_list=saved)


def build_stack(settings: Any, server: RedisServer, clock: Any, url: str | None = None,
                socket_timeout: float = SOCKET_TIMEOUT, **breaker: Any) -> Iterator[Stack]:
    """Configure and build the three integrations on ``server`` (``url`` overrides its URL,
    ``breaker`` adds to the breaker's settings)."""
    url = url or server.url
    stack_settings(settings, url, socket_timeout, **breaker)
    loop = LoopThread()
    app = Celery("faults", task_cls=BreakerTask, set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")

    @app.task(name=TASK, shared=False)
    def work(n: int) -> int:
        return n

    cache = caches["default"]
    assert isinstance(cache, BreakerCache)
    layer = get_channel_layer()
    assert isinstance(layer, BreakerChannelLayer)
    breaker = get_breaker("default")
    assert cache.breaker is breaker
    assert layer.breaker is breaker
    stack = Stack(server=server, breaker=breaker, cache=cache, layer=layer, app=app, loop=loop,
                  clock=clock)
    try:
        yield stack
    finally:
        if server.frozen:
            server.thaw()
        for journal in _cache_journal._journals.get(breaker, {}).values():
            # Nor a journal replay once the test's CACHES are gone.
            breaker.remove_listener(journal._on_change)
        relay = outbox._relays.pop(breaker, None)
        if relay is not None:
            # The registry's reset after the test must not start a relay without a database.
            breaker.remove_listener(relay)
            if relay.thread is not None:
                relay.thread.join(DEADLINE)
        try:
            loop.run(layer.close())
        finally:
            loop.close()
        cache.close()
        cached = getattr(app, "_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
        app.close()


@pytest.fixture
def stack(settings: Any, redis_server: RedisServer, clock: Any, transactional_db: None
          ) -> Iterator[Stack]:
    """The three integrations on the test's redis-server, one breaker, frozen engine time."""
    yield from build_stack(settings, redis_server, clock)


def new_server(**kwargs: Any) -> RedisServer:
    try:
        return RedisServer(**kwargs)
    except RedisNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)


def running_server(**kwargs: Any) -> Iterator[RedisServer]:
    """For a fixture: ``yield from running_server(...)``, a started server closed afterwards."""
    server = new_server(**kwargs)
    try:
        yield server.start()
    finally:
        server.close()
