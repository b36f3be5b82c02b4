"""Hung: redis-server SIGSTOPped. Connects queue in the backlog and reads time out."""

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


def test_hung(stack: Stack) -> None:
    """Each call that discovers the hang waits one socket timeout at most; then none waits."""
    stack.warm_up()
    stack.fault_begins()
    stack.server.freeze()
    stack.discover()
    stack.assert_open_skips_redis()
    # Commands that timed out run now, before the replay: the journal deletes what they wrote.
    stack.server.thaw()
    stack.recover()
    stack.assert_kept()
