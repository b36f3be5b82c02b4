"""A ``group`` dispatched while the broker's Redis (and the result backend on it) is down.

Its members go to the outbox, every one a row with the group's id; the group's
subscriptions to their results are deferred (``redis_breaker.celery.results``)
instead of refusing it; ``get()``/``state`` still refuse while the breaker is
open. After recovery the relay publishes the members with their ids, each runs
once in a real worker, and ``GroupResult.get()`` returns their results (a chord:
test_chord_outage.py). The outbox on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import group

from redis_breaker import State, get_breaker
from redis_breaker.celery import ResultBackendUnavailable
from redis_breaker.models import OutboxMessage
from tests.harness import RedisServer

from .conftest import wait_for

# The real worker and broker of test_calling.py (its fixtures, imported to be used here).
from .test_calling import LATE_RESULTS, _recorded, broker, calling  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbox_db"),
              LATE_RESULTS]



@pytest.mark.parametrize("outage", ["open", "discovered", "hung"])
def test_group_dispatched_during_an_outage_is_relayed_intact(
        calling: Any, broker: RedisServer, recorder: RedisServer,  # noqa: F811
        outage: str) -> None:
    """open: the breaker already open (refused); discovered: the group's own dispatches
    find the outage (refused, the breaker closed); hung: the broker SIGSTOPped, the
    breaker already open. Either way the group is in the outbox whole, its results
    refused while the breaker is open, then every member runs once and the group's
    result comes back."""
    add = calling.add
    breaker = get_breaker("default")
    down, up = (broker.freeze, broker.thaw) if outage == "hung" else (broker.stop, broker.start)
    down()
    opened = 0
    if outage != "discovered":
        opened = 5
        for i in range(opened):
            add.delay(3000 + i, 1)
        assert breaker.state is State.OPEN
    else:
        assert breaker.state is State.CLOSED

    grouped = group(add.s(500, i) for i in range(4)).apply_async()

    assert breaker.state is State.OPEN
    rows = list(OutboxMessage.objects.order_by("id"))
    members = [r.id for r in grouped.results]
    assert [r.task_id for r in rows[opened:]] == members
    assert len(rows) == opened + 4
    # Every member carries the group's id to the worker.
    assert [r.options.get("group_id") for r in rows[opened:]] == [grouped.id] * 4
    # While the breaker is open the results are refused at once, as before.
    with pytest.raises(ResultBackendUnavailable):
        grouped.results[0].state  # noqa: B018
    with pytest.raises(ResultBackendUnavailable):
        grouped.get(timeout=5)
    with pytest.raises(ResultBackendUnavailable):
        grouped.results[1].get(timeout=5)

    up()
    wait_for(lambda: OutboxMessage.objects.count() == 0, timeout=60,
             what="the relay to empty the outbox")
    assert grouped.get(timeout=60) == [500, 501, 502, 503]
    # A member's own result too (its subscription was deferred with the others').
    assert grouped.results[3].get(timeout=60) == 503
    runs, seen = _recorded(recorder)
    assert {k: n for k, n in runs.items() if n != 1} == {}
    ran = sorted((s["args"], s["group"]) for s in seen if s.get("group"))
    assert ran == [([500, i], grouped.id) for i in range(4)]
