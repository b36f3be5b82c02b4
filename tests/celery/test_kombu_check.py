"""redis_breaker.W031: a Redis broker on kombu before 5.4 (its worker can stop consuming
after the broker restarts; docs/celery.md)."""

from __future__ import annotations

import importlib.metadata
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

from redis_breaker.celery.checks import check_kombu


@pytest.mark.parametrize(("broker", "version", "warned"), [
    ("redis://127.0.0.1:6379/0", "5.3.7", True),
    ("rediss://user:pw@cache.example:6380/1", "5.3.4", True),
    ("sentinel://127.0.0.1:26379", "5.3.0b2", True),
    ("redis://127.0.0.1:6379/0", "5.4.0", False),
    ("redis://127.0.0.1:6379/0", "5.10.1", False),  # numbers, not text
    ("redis://127.0.0.1:6379/0", "6.0.0", False),
    ("amqp://guest@127.0.0.1//", "5.3.7", False),  # not kombu's Redis transport
    (None, "5.3.7", False),
    (" redis://127.0.0.1:6379/0", "5.3.7", False),  # E036 first: the URL itself is refused
    ("redis://127.0.0.1:99999/0", "5.3.7", False),
])
def test_w031_names_the_kombu_and_the_fix(broker: str | None, version: str, warned: bool) -> None:
    with override_settings(CELERY_BROKER_URL=broker):
        found = check_kombu(version)
    assert [m.id for m in found] == (["redis_breaker.W031"] if warned else [])
    if warned:
        assert f"kombu {version}" in found[0].msg
        assert "5.4" in (found[0].hint or "")
        assert "pw" not in found[0].msg + (found[0].hint or "")


def test_manage_py_check_shows_it_for_the_installed_kombu() -> None:
    """``manage.py check`` runs it with the kombu installed here (5.3 in ``nox -s oldest``)."""
    installed = importlib.metadata.version("kombu")
    old = tuple(int(n) for n in installed.split(".")[:2]) < (5, 4)
    out = StringIO()
    with override_settings(CELERY_BROKER_URL="redis://127.0.0.1:6379/0"):
        call_command("check", stdout=out, stderr=out)
    assert ("redis_breaker.W031" in out.getvalue()) is old, out.getvalue()
