"""Every setting of every breaker, swept with wrong types, negatives, NaN, infinities, huge and
tiny numbers and malformed URLs.

Each bad value gives exactly one ``redis_breaker.E0xx`` naming the breaker, the
key and the fix; ``BreakerConfig`` refuses the same value with the same
message; a valid one gives nothing. Nothing raises on the way: not the checks,
not the ``setting_changed`` handler under ``override_settings`` (the breaker
keeps its previous settings and one WARNING says so), not the status or the
health check, not an import of any module with such settings (in a fresh
process, where ``manage.py check`` then lists them all).

The expected verdicts are written here from the documented rules
(docs/configuration.md), not computed by the code under test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from redis_breaker import BreakerConfig, get_breaker
from redis_breaker._config import SETTINGS
from redis_breaker.checks import check_breakers, check_celery
from redis_breaker.health import check_redis_health, get_redis_status
from redis_breaker.testing import capture_events
from tests.conftest import UNCLOSED_UNIX_SOCKETS

# These tests make failed unix-socket connects on purpose (see tests/conftest.py).
pytestmark = [UNCLOSED_UNIX_SOCKETS, pytest.mark.usefixtures("collect_leaked_sockets")]



ROOT = Path(__file__).parent.parent

#: (label, value): a wrong type or an impossible number for some key.
VALUES: list[tuple[str, Any]] = [
    ("str", "5"), ("bytes", b"5"), ("list", [1]), ("dict", {"a": 1}), ("object", object()),
    ("true", True), ("none", None), ("int", 5), ("float", 2.5),
    ("negative", -1), ("negative-float", -0.5), ("zero", 0), ("zero-float", 0.0),
    ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf),
    ("huge-float", 1e308), ("huge-int", 10**400), ("above-a-day", 86401),
    ("tiny", 5e-324), ("subnormal", 1e-310), ("nanosecond", 1e-9), ("half", 0.5),
]
# Local addresses only: the health check PINGs a valid URL (nothing listens there).
GOOD_URLS = ["redis://127.0.0.1:1/0", "rediss://user:p%40ss@127.0.0.1:2/2",
             "unix:///nonexistent/redis.sock?db=1",
             "redis+sentinel://127.0.0.1:3,127.0.0.1/mymaster/0",
             "redis://[::1]:1/0?socket_timeout=0.5"]
BAD_URLS = [
    "redis://127.0.0.1:notaport/0", "redis://127.0.0.1:99999/0", "redis://127.0.0.1:-1/0",
    "redis://127.0.0.1:0/0", " redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0 ",
    "redis://127.0.0.1:6379/0\n", "redis://cache host/0", "http://127.0.0.1/0",
    "valkey://127.0.0.1/0", "REDIS://127.0.0.1/0", "127.0.0.1:6379", "", "redis://",
    "redis:///0", "redis://127.0.0.1/abc", "redis://127.0.0.1/0?socket_timeout=inf",
    "redis://127.0.0.1/0?socket_timeout=nan", "redis://127.0.0.1/0?socket_connect_timeout=0",
    "redis://127.0.0.1/0?db=x", "redis://127.0.0.1/0?db=-1", "redis://127.0.0.1/0?foo=1",
    "redis://[::1/0", "unix://", "redis+sentinel://127.0.0.1:x/m",
    "redis+sentinel://127.0.0.1:26379", "redis+sentinel://", "redis+sentinel://h/m?x=1",
    "redis://u:pa/ss@127.0.0.1:6379/0",
]
EXCEPTIONS_KEYS = ("COUNT_EXCEPTIONS", "EXCLUDE_EXCEPTIONS")
INT_RANGES = {"FAILURE_THRESHOLD": (1, 65535), "MINIMUM_CALLS": (1, 1_000_000),
              "HALF_OPEN_MAX_CALLS": (1, 1_000_000), "SUCCESS_THRESHOLD": (1, 1_000_000)}
SECONDS = ("WINDOW", "SLOW_CALL_THRESHOLD", "RESET_TIMEOUT", "MAX_RESET_TIMEOUT",
           "PROBE_TIMEOUT", "PROBE_INTERVAL")
NULLABLE = ("URL", "FAILURE_RATE", "SLOW_CALL_THRESHOLD", "STATE_DIR")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expected(key: str, value: Any) -> str | None:
    """The documented verdict: None (valid) or the check id."""
    if value is None:
        return None if key in NULLABLE else "redis_breaker.E004"
    if key in ("PROBE", "HOST_SHARED"):
        return None if isinstance(value, bool) else "redis_breaker.E004"
    if key in INT_RANGES:
        if not isinstance(value, int) or isinstance(value, bool):
            return "redis_breaker.E004"
        low, high = INT_RANGES[key]
        return None if low <= value <= high else "redis_breaker.E005"
    if key in SECONDS:
        if not _number(value):
            return "redis_breaker.E004"
        return None if 0.001 <= value <= 86400 else "redis_breaker.E005"
    if key == "FAILURE_RATE":
        if not _number(value):
            return "redis_breaker.E004"
        return None if 0.001 <= value <= 1 else "redis_breaker.E005"
    if key == "URL":
        if not isinstance(value, str):
            return "redis_breaker.E004"
        return None if value in GOOD_URLS else "redis_breaker.E005"
    if key == "STATE_DIR":
        if not isinstance(value, (str, os.PathLike)):
            return "redis_breaker.E004"
        return None if os.path.isabs(value) and "\x00" not in str(value) else "redis_breaker.E005"
    if key in EXCEPTIONS_KEYS:
        if not isinstance(value, (list, tuple)):
            return "redis_breaker.E004"
        classes = all(isinstance(i, type) and issubclass(i, BaseException) for i in value)
        return None if classes else "redis_breaker.E007"
    raise AssertionError(f"no rule for {key}")


def cases() -> list[Any]:
    found = []
    for spec in SETTINGS:
        values = list(VALUES)
        if spec.key == "URL":
            values += [(f"url-{i}", u) for i, u in enumerate(BAD_URLS + GOOD_URLS)]
            values += [("url-bytes", GOOD_URLS[0].encode()), ("url-list", GOOD_URLS[:1])]
        if spec.key == "STATE_DIR":
            # Absolute but impossible to create: a valid setting whose directory the engine
            # refuses (a WARNING, per-process state), and nothing made on disk.
            nowhere = "/nonexistent-redis-breaker-sweep/state"
            values += [("relative", "state"), ("nul", "/tmp/a\x00b"), ("absolute", nowhere),
                       ("path", Path(nowhere)), ("relative-path", Path("state")),
                       ("bytes-path", nowhere.encode())]
        if spec.key in EXCEPTIONS_KEYS:
            values += [("unimportable", ["no.such.Error"]), ("not-a-class", ["os.path"]),
                       ("class", [ValueError]), ("empty", [])]
        found += [pytest.param(spec.key, value, id=f"{spec.key}-{label}")
                  for label, value in values]
    return found


@pytest.fixture
def existing() -> Any:
    """A breaker in use with valid settings, whose settings are then changed under it."""
    with override_settings(REDIS_BREAKERS={"sweep": {"FAILURE_THRESHOLD": 3}}):
        breaker = get_breaker("sweep")
        yield breaker


@pytest.mark.django_db
@pytest.mark.parametrize(("key", "value"), cases())
def test_every_bad_value_is_one_check_error_and_the_same_value_error(
        existing: Any, key: str, value: Any) -> None:
    """One E0xx naming the breaker, the key and the fix (none for a valid value), the same
    refusal from BreakerConfig, and nothing raised by the handler, the status or the health."""
    verdict = expected(key, value)
    before = existing.config
    with capture_events() as events, \
            override_settings(REDIS_BREAKERS={"sweep": {key: value}, "fresh": {key: value}}):
        found = [m for m in check_breakers() if '["sweep"]' in m.msg]
        run_checks()  # every registered check (state directories, caches, ...) copes too
        status = get_redis_status(timeout=0.05, ping=False)
        assert isinstance(check_redis_health("sweep", timeout=0.05), bool)
        assert isinstance(check_redis_health("fresh", timeout=0.05), bool)
        after = existing.config
    field = key.lower()
    try:
        BreakerConfig(**{field: value})
    except ValueError as exc:
        refused: str | None = str(exc)
    else:
        refused = None
    invalid = [e for e in events if e["event"] == "breaker_settings_invalid"]
    if verdict is None:
        assert found == []
        assert refused is None
        assert invalid == []
        assert "fresh" not in {n for n, b in status["breakers"].items() if b.get("status_error")}
        return
    assert [m.id for m in found] == [verdict], [m.msg for m in found]
    message = found[0]
    assert message.msg.startswith(f'REDIS_BREAKERS["sweep"]["{key}"]: ')
    assert key in message.msg
    if verdict == "redis_breaker.E007":
        assert "List exception classes" in (message.hint or "")
    else:
        assert f"Set {key} to" in (message.hint or "")
    # The same refusal, the same words (the key as BreakerConfig's field).
    assert refused is not None
    body = message.msg.split(": ", 1)[1].rstrip(".")
    # The key names itself once, first, in the message and in the fix.
    assert body.replace(key, field, 1) in refused
    assert (message.hint or "").replace(key, field, 1) in refused
    # The breaker in use kept its settings, and one WARNING said why; the status reports
    # the breaker that cannot be made instead of raising.
    assert after == before
    assert [e["breakers"] for e in invalid] == [["sweep"]]
    assert status["breakers"]["fresh"]["status_error"]
    assert status["healthy"] is False


@pytest.mark.parametrize("setting", [
    "CELERY_REDIS_BREAKER_TIMEOUT", "CELERY_REDIS_BREAKER_RELAY_INTERVAL"])
@pytest.mark.parametrize("value", [pytest.param(value, id=label) for label, value in [
    ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("negative", -1),
    ("subnormal", 5e-324), ("huge", 1e308), ("huge-int", 10**400), ("str", "1"),
    ("true", True)]])
def test_celery_numbers_are_finite(setting: str, value: Any) -> None:
    """The Celery timeouts: every non-finite, negative, subnormal or huge value is refused."""
    with override_settings(**{setting: value}):
        found = check_celery()
    assert len(found) == 1
    assert found[0].id in ("redis_breaker.E032", "redis_breaker.E033")
    assert setting in found[0].msg
    assert setting in (found[0].hint or "")


SETTINGS_MODULE = '''
import math
from tests.settings import *  # noqa: F403

REDIS_BREAKERS = {
    "nan": {"WINDOW": math.nan},
    "inf": {"PROBE_TIMEOUT": math.inf},
    "subnormal": {"WINDOW": 1e-310},
    "huge": {"HALF_OPEN_MAX_CALLS": 10**400},
    "port": {"URL": "redis://127.0.0.1:notaport/0"},
    "range": {"URL": "redis://127.0.0.1:99999/0"},
    "space": {"URL": " redis://127.0.0.1:6379/0"},
    "bytes": {"URL": b"redis://u:pw-in-bytes@127.0.0.1/0"},
    "state": {"STATE_DIR": "relative"},
    "cache": {"URL": "redis://127.0.0.1:6379/0"},
}
CACHES = {
    "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                "OPTIONS": {"PRIMARY": "redis", "BREAKER": "cache"}},
    "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
              "LOCATION": "redis://127.0.0.1:1/0",
              "OPTIONS": {"socket_timeout": 0.2, "socket_connect_timeout": 0.2}},
}
CELERY_REDIS_BREAKER_TIMEOUT = math.inf
CELERY_REDIS_BREAKER_RELAY_INTERVAL = 5e-324
'''

SCRIPT = '''
import importlib, pkgutil, sys
import django
django.setup()
import redis_breaker
for module in pkgutil.walk_packages(redis_breaker.__path__, "redis_breaker."):
    importlib.import_module(module.name)
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.core.cache import caches
from redis_breaker.health import get_redis_status, check_redis_health

status = get_redis_status(timeout=0.1)
assert check_redis_health("nan") is False
caches["default"].get("k")  # the cache's breaker has a valid config: it works
try:
    call_command("check")
except SystemCheckError as exc:
    print(exc)
else:
    print("NO CHECK ERROR")
print("STATUS", sorted(n for n, b in status["breakers"].items() if b.get("status_error")))
'''


def test_imports_and_status_never_raise_with_bad_settings(tmp_path: Path) -> None:
    """A fresh process with bad values everywhere imports every module, reports its status
    and lists every problem in ``manage.py check``, naming each breaker, without a secret."""
    (tmp_path / "sweep_settings.py").write_text(textwrap.dedent(SETTINGS_MODULE))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "sweep_settings",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for name, check_id in [("nan", "E005"), ("inf", "E005"), ("subnormal", "E005"),
                           ("huge", "E005"), ("port", "E005"), ("range", "E005"),
                           ("space", "E005"), ("bytes", "E004"), ("state", "E005")]:
        assert f'REDIS_BREAKERS["{name}"]' in out, name
        assert f"redis_breaker.{check_id}" in out
    assert "redis_breaker.E032" in out
    assert "redis_breaker.E033" in out
    assert "pw-in-bytes" not in out + done.stderr
    assert ("STATUS ['bytes', 'huge', 'inf', 'nan', 'port', 'range', 'space', 'state', "
            "'subnormal']") in out
