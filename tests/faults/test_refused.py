"""Refused: nothing listens on the port (redis-server stopped), then it starts again with its data."""

from __future__ import annotations

import pytest

from tests.celery.conftest import (  # noqa: F401 - the outbox on SQLite and on PostgreSQL
    _outbox_database,
    outbox_db,
    postgres_db,
    postgres_server,
)

from .conftest import Stack

# Once with the outbox on SQLite, once on PostgreSQL.
pytestmark = pytest.mark.usefixtures("outbox_db")


def test_refused(stack: Stack) -> None:
    """Cache, Channels and Celery ride through a stopped Redis and hand back after it starts."""
    stack.warm_up()
    stack.fault_begins()
    stack.server.stop(save=True)  # comes back with the pre-fault value of the stale key
    stack.discover()
    stack.assert_open_skips_redis()
    stack.server.start()
    stack.recover()
    stack.assert_kept()
