"""Blackhole: every packet to Redis dropped (host down, partition). Connects hang.

Needs root, ``ip`` and ``iptables``: the server runs in a network namespace of
its own and the DROP rule lives there. Skipped elsewhere, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.celery.conftest import (  # noqa: F401 - the outbox on SQLite and on PostgreSQL
    _outbox_database,
    outbox_db,
    postgres_db,
    postgres_server,
)
from tests.harness import RedisServer

from .conftest import Stack, build_stack, new_server

CAN, WHY = RedisServer.can_blackhole()
# Once with the outbox on SQLite, once on PostgreSQL.
pytestmark = [pytest.mark.skipif(not CAN, reason=WHY), pytest.mark.usefixtures("outbox_db")]


@pytest.fixture
def stack(settings: Any, clock: Any, transactional_db: None) -> Iterator[Stack]:
    server = new_server(netns=True)
    try:
        server.start()
        yield from build_stack(settings, server, clock)
    finally:
        server.close()


def test_blackhole(stack: Stack) -> None:
    """Partitioned: calls that discover it wait one socket timeout; healed: handed back."""
    stack.warm_up()
    stack.fault_begins()
    stack.server.blackhole()
    stack.discover()
    stack.assert_open_skips_redis()
    stack.server.unblackhole()
    stack.recover()
    stack.assert_kept()
