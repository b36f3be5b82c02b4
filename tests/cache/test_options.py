"""BreakerCache's OPTIONS: one table gives both the backend's error and the system check."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured

from redis_breaker.cache import BreakerCache
from redis_breaker.cache.options import OPTIONS
from redis_breaker.checks import check_caches
from tests.harness import RedisServer

from .conftest import primary_entry

DOC = (Path(__file__).parents[2] / "docs" / "cache.md").read_text()
LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
WHERE = 'CACHES["default"]["OPTIONS"]'

# (case, OPTIONS of the BreakerCache, id): options the backend refuses at first use.
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("primary-missing", {}, "redis_breaker.E010"),
    ("primary-unknown-alias", {"PRIMARY": "reddis"}, "redis_breaker.E010"),
    ("primary-not-a-string", {"PRIMARY": ["redis"]}, "redis_breaker.E010"),
    ("fallback-unknown-alias", {"PRIMARY": "redis", "FALLBACK": "lcoal"}, "redis_breaker.E012"),
    ("fallback-not-a-string", {"PRIMARY": "redis", "FALLBACK": 5}, "redis_breaker.E012"),
    ("unknown-option", {"PRIMARY": "redis", "FALBACK": "local"}, "redis_breaker.E014"),
    ("journal-zero", {"PRIMARY": "redis", "JOURNAL_MAX_KEYS": 0}, "redis_breaker.E016"),
    ("journal-none", {"PRIMARY": "redis", "JOURNAL_MAX_KEYS": None}, "redis_breaker.E016"),
    ("journal-bool", {"PRIMARY": "redis", "JOURNAL_MAX_KEYS": True}, "redis_breaker.E016"),
    ("add-fail-closed-not-bool", {"PRIMARY": "redis", "ADD_FAIL_CLOSED": "yes"},
     "redis_breaker.E019"),
]

# Options the checks report but the backend runs with, as it always has.
REPORTED_ONLY: list[tuple[str, dict[str, Any], str]] = [
    ("primary-locmem", {"PRIMARY": "local"}, "redis_breaker.E011"),
    ("fallback-is-primary", {"PRIMARY": "redis", "FALLBACK": "redis"}, "redis_breaker.E013"),
    ("breaker-not-a-string", {"PRIMARY": "redis", "BREAKER": 1}, "redis_breaker.E015"),
]


def _caches(url: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"redis": primary_entry("django", url), "local": LOCMEM,
            "default": {"BACKEND": "redis_breaker.cache.BreakerCache", "OPTIONS": options}}


@pytest.mark.parametrize(("options", "check_id"), [c[1:] for c in REFUSED],
                         ids=[c[0] for c in REFUSED])
def test_refused_options_raise_what_the_check_reports(settings: Any, redis_server: RedisServer,
                                                      options: dict[str, Any],
                                                      check_id: str) -> None:
    """The backend's error at first use is the check's message and fix, with its own path."""
    settings.CACHES = _caches(redis_server.url, options)
    [reported] = check_caches()
    assert reported.id == check_id
    with pytest.raises(ImproperlyConfigured) as raised:
        caches["default"].get("k")
    expected = f"{reported.msg} {reported.hint}".replace(WHERE, "OPTIONS")
    assert str(raised.value) == f"BreakerCache: {expected}"
    assert WHERE not in str(raised.value)


@pytest.mark.parametrize(("options", "check_id"), [c[1:] for c in REPORTED_ONLY],
                         ids=[c[0] for c in REPORTED_ONLY])
def test_reported_options_leave_the_backend_working(settings: Any, redis_server: RedisServer,
                                                    options: dict[str, Any],
                                                    check_id: str) -> None:
    """A problem the check reports but the backend can run with does not stop the backend."""
    settings.CACHES = _caches(redis_server.url, options)
    assert [m.id for m in check_caches()] == [check_id]
    cache = caches["default"]
    assert isinstance(cache, BreakerCache)
    cache.set("k", "v")
    assert cache.get("k") == "v"


def test_every_option_is_documented_with_its_default() -> None:
    """Each row of the options table has a row in docs/cache.md giving its default."""
    for spec in OPTIONS:
        row = re.search(rf"^\| `{spec.key}` \| ([^|]+) \|", DOC, re.MULTILINE)
        assert row, f"{spec.key} is missing from docs/cache.md"
        if spec.default is not None:
            assert f"`{json.dumps(spec.default)}`" in row.group(1), spec.key
