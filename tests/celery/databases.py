"""Which database the outbox writes to in a test: SQLite (``default``) or PostgreSQL.

``tests/settings.py`` installs ``OutboxRouter``. It has no opinion (Django's
``default``) until the ``outbox_db`` fixture (``tests/celery/conftest.py``)
points the outbox's model at the PostgreSQL alias for a test, as a project
that keeps the outbox in another database would with a router of its own.
Every thread of the test process follows it, relays included.
"""

from __future__ import annotations

from typing import Any

__all__ = ["POSTGRES", "OutboxRouter", "outbox_alias", "route_outbox"]

#: The alias of the test PostgreSQL database, registered by the ``postgres_db`` fixture.
POSTGRES = "postgres"

_alias: str | None = None


def route_outbox(alias: str | None) -> None:
    """Send the outbox's reads and writes to ``alias`` (``None``: Django's default)."""
    global _alias
    _alias = alias


def outbox_alias() -> str:
    return _alias or "default"


class OutboxRouter:
    def _route(self, model: type[Any]) -> str | None:
        if _alias is not None and model._meta.app_label == "redis_breaker":
            return _alias
        return None

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return self._route(model)

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return self._route(model)
