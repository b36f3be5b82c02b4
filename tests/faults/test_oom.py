"""OOM: Redis under ``maxmemory`` with ``noeviction`` refuses writes. Not an outage.

Decided in the engine (docs/engine.md, "What counts as a failure"): Redis is up
and answering, a full Redis is not an outage and skipping it would not make
room, so nothing is counted, the breaker stays closed, and the refusal reaches
the caller as Redis's own error: ``OutOfMemoryError`` from the cache and the
channel layer, kombu's ``OperationalError`` (wrapping it) from ``delay()``,
which is not outboxed. Reads keep coming from Redis.
"""

from __future__ import annotations

import pytest
import redis
from kombu.exceptions import OperationalError

from redis_breaker import State
from redis_breaker._classify import is_failure
from redis_breaker.models import OutboxMessage
from redis_breaker.testing import capture_events

from .conftest import BEFORE, GROUP, STALE_KEY, TASK, Stack, queued_ids


def fill(stack: Stack) -> None:
    client = stack.server.client()
    try:
        client.set("filler", "x" * 1_500_000)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1mb")
    finally:
        client.close()


def test_out_of_memory_is_not_an_outage(stack: Stack) -> None:
    """Ten rounds of refused writes from all three: not one counted, the breaker stays closed."""
    stack.warm_up()
    fill(stack)
    before = stack.breaker.totals()
    task = stack.app.tasks[TASK]
    with capture_events() as events:
        for _ in range(10):
            assert stack.cache.get(STALE_KEY) == BEFORE  # reads still come from Redis
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                stack.cache.set(STALE_KEY, "refused")
            with pytest.raises(OperationalError) as refused:
                task.delay(1)
            assert isinstance(refused.value.__cause__, redis.exceptions.OutOfMemoryError)
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                stack.loop.run(stack.layer.send(stack.member, {"type": "fault.message"}))
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                stack.loop.run(stack.layer.group_add("other", stack.member))
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                stack.loop.run(stack.layer.group_send(GROUP, {"type": "fault.message"}))
    after = stack.breaker.totals()
    assert stack.breaker.state is State.CLOSED
    assert after.failures == before.failures
    assert after.fallbacks == before.fallbacks == {}
    assert after.rejected == before.rejected
    assert [e["event"] for e in events if e["log_level"] in ("warning", "error")] == []
    # Nothing was outboxed behind the caller's back, nothing journaled.
    assert OutboxMessage.objects.count() == 0
    assert not stack.cache._bind().journal.active
    assert stack.raw_get(STALE_KEY) is not None
    assert stack.cache.get(STALE_KEY) == BEFORE  # Redis's value: the write was refused, and said so

    # Room again: every integration writes to Redis at once, nothing to hand back.
    client = stack.server.client()
    client.delete("filler")
    client.config_set("maxmemory", "0")
    client.close()
    stack.fault_begins()
    stack.traffic(2, "room")
    assert stack.breaker.totals().fallbacks == {}
    assert set(stack.dispatched) <= set(queued_ids(stack.server))
    assert stack.loop.run(stack.layer.send_to_group(GROUP, {"type": "fault.message", "n": 0}))


def test_kombu_wrapping_is_judged_by_the_redis_error() -> None:
    """kombu re-raises every Redis error as OperationalError: an OOM inside is not a failure,
    a READONLY or a connection error inside is (regression: OOM used to trip the breaker)."""

    def wrapped(cause: BaseException) -> OperationalError:
        try:
            raise OperationalError(str(cause)) from cause
        except OperationalError as exc:
            return exc

    assert not is_failure(wrapped(redis.exceptions.OutOfMemoryError("OOM")))
    assert not is_failure(wrapped(redis.exceptions.ResponseError("WRONGTYPE")))
    assert is_failure(wrapped(redis.exceptions.ReadOnlyError("READONLY")))
    assert is_failure(wrapped(redis.exceptions.ConnectionError("refused")))
    assert is_failure(OperationalError("no cause: kombu's own connection error"))
