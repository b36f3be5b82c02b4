"""Restart empty: Redis crashes and comes back with no data (no persistence, a new node).

The journal must still keep pre-outage values from being served (here Redis has
none to serve, but the keys written during the outage must not come back from a
stale fallback either), the relay must publish every outboxed task to the new,
empty broker (its queue bindings gone), and channel groups must be re-created.
"""

from __future__ import annotations

from redis_breaker import State

from .conftest import Stack, queued_ids


def test_crash_then_empty_restart(stack: Stack) -> None:
    """Killed (connections reset), found down, restarted empty: everything handed back."""
    stack.warm_up()
    stack.fault_begins()
    stack.server.kill()
    stack.discover()
    stack.assert_open_skips_redis()
    stack.server.restart(empty=True)
    stack.recover()
    stack.assert_kept()


def test_empty_restart_between_calls(stack: Stack) -> None:
    """Restarted empty while the breaker is closed and nobody calls: the next calls still work.

    Every pooled connection is dead; no caller sees an error and no task is lost.
    """
    stack.warm_up()
    stack.fault_begins()
    stack.server.restart(empty=True)
    stack.traffic(3, "after-restart")
    if stack.breaker.is_open:
        stack.recover()
    stack.settle()
    assert stack.cache.get("warm:0") is None  # lost with Redis: a miss, nothing older
    ids = queued_ids(stack.server)
    assert [i for i in stack.dispatched if i not in ids] == []
    stack.assert_kept(groups=False)


def test_group_membership_after_unnoticed_empty_restart(stack: Stack) -> None:
    """The memberships of this process are back in Redis after an unnoticed empty restart.

    No call fails (every dead connection is retried once on a new one) and no
    transition fires; the reconnection itself tells the layer to re-write them.
    """
    stack.warm_up()
    stack.server.restart(empty=True)
    stack.traffic(2, "after-restart")
    assert stack.breaker.state is State.CLOSED
    assert stack.group_in_redis()
