"""``ENGINE = "redis_breaker.backends.sqlite3"``: Django's SQLite backend, with Django 5.1's
``transaction_mode`` and ``init_command`` options on Django 4.2 and 5.0 too."""

from __future__ import annotations

from typing import Any

import django
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.sqlite3 import base

__all__ = ["DatabaseWrapper"]

TRANSACTION_MODES = frozenset(["DEFERRED", "EXCLUSIVE", "IMMEDIATE"])


class DatabaseWrapper(base.DatabaseWrapper):
    """Django's own on 5.1+; before, the two options as Django 5.1 reads them."""

    if django.VERSION < (5, 1):  # pragma: no branch (one side per Django version)
        transaction_mode: str | None = None
        init_commands: list[str] = []

        def get_connection_params(self) -> dict[str, Any]:
            kwargs: dict[str, Any] = super().get_connection_params()
            mode = kwargs.pop("transaction_mode", None)
            if mode is not None and str(mode).upper() not in TRANSACTION_MODES:
                allowed = ", ".join(repr(m) for m in sorted(TRANSACTION_MODES))
                raise ImproperlyConfigured(
                    f"settings.DATABASES[{self.alias!r}]['OPTIONS']['transaction_mode'] is "
                    f"improperly configured to '{mode}'. Use one of {allowed}, or None.")
            self.transaction_mode = str(mode).upper() if mode else None
            self.init_commands = str(kwargs.pop("init_command", "")).split(";")
            return kwargs

        def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
            conn = super().get_new_connection(conn_params)
            for command in self.init_commands:
                if command := command.strip():
                    conn.execute(command)
            return conn

        def _start_transaction_under_autocommit(self) -> None:
            if self.transaction_mode is None:
                self.cursor().execute("BEGIN")
            else:
                self.cursor().execute(f"BEGIN {self.transaction_mode}")
