"""The status surfaces show the host's state, whichever process asks, on a real Redis.

A fresh ``manage.py redis_breaker status`` process never used the cache, the
channel layer or Celery, yet must read the state file of the URL each breaker
adopted from them in the application's processes; its PING must count no more
than a normal caller's; and no state file, however broken, makes a surface raise.

The subprocesses get their ``STATE_DIR`` from a settings module written here:
they do not inherit the per-test state directory of tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import re
import struct
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import caches
from django.core.management import call_command
from django.test import Client

from redis_breaker import State, _shared, get_breaker
from redis_breaker.health import adopt_integration_urls, check_redis_health, get_redis_status
from redis_breaker.management.commands.redis_breaker import COLUMNS
from tests.harness import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "health.md").read_text()
TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def private_dir(path: Path) -> str:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return str(path)


def cache_settings(url: str, breaker: str) -> dict[str, Any]:
    return {
        "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
                  "OPTIONS": dict(TIMEOUTS)},
        "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                    "OPTIONS": {"PRIMARY": "redis", "BREAKER": breaker}},
    }


def layer_settings(url: str, breaker: str) -> dict[str, Any]:
    return {"default": {"BACKEND": "redis_breaker.channels.BreakerChannelLayer",
                        "CONFIG": {"hosts": [{"address": url, **TIMEOUTS}],
                                   "breaker": breaker}}}


def write_project(tmp_path: Path, *, celery: bool = False, **settings: Any) -> Path:
    """A Django project in ``tmp_path``: package ``statusproj``, with a Celery app if asked."""
    package = tmp_path / "project" / "statusproj"
    package.mkdir(parents=True)
    values = {
        "SECRET_KEY": "status-host", "USE_TZ": True, "LOGGING_CONFIG": None,
        "INSTALLED_APPS": ["django.contrib.contenttypes", "django.contrib.auth", "redis_breaker"],
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3",
                                  "NAME": str(tmp_path / "db.sqlite3")}},
        "CACHES": {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        **settings,
    }
    (package / "settings.py").write_text(
        "".join(f"{key} = {value!r}\n" for key, value in values.items()))
    if celery:
        (package / "celery_app.py").write_text(textwrap.dedent("""
            from celery import Celery

            app = Celery("statusproj")
            app.config_from_object("django.conf:settings", namespace="CELERY")
        """))
        # As a Django project does: the package's import makes the app Celery's current one.
        (package / "__init__.py").write_text("from .celery_app import app as celery_app\n")
    else:
        (package / "__init__.py").write_text("")
    return package.parent


def manage(project: Path, *args: str) -> str:
    """``python -m django <args>`` in a fresh process of ``project``; its stdout."""
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="statusproj.settings",
               PYTHONPATH=os.pathsep.join([str(project), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "django", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def status_json(project: Path, *args: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(manage(project, "redis_breaker", "status", "--json", *args))
    return report


def table(text: str) -> list[list[str]]:
    """The status table's lines, split into cells (columns are two or more spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()
            if line.strip() and not line.startswith("outbox:")]


def in_another_process(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def refused_twice(call: Any) -> None:
    for _ in range(2):
        call()


# ------------------------------------------------------- a fresh status process
def test_a_fresh_status_process_reads_the_cache_breakers_host_state(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """The cache opened its URL-less breaker here; a new ``status`` process shows it open."""
    state_dir = private_dir(tmp_path / "state")
    breakers = {"cache": {"STATE_DIR": state_dir, "FAILURE_THRESHOLD": 2}}
    settings.CACHES = cache_settings(redis_server.url, "cache")
    settings.REDIS_BREAKERS = breakers
    project = write_project(tmp_path, CACHES=cache_settings(redis_server.url, "cache"),
                            REDIS_BREAKERS=breakers)
    cache = caches["default"]
    cache.set("k", "v")
    breaker = get_breaker("cache")
    assert breaker.url == redis_server.url
    assert breaker.host_shared
    redis_server.stop()
    for _ in range(2):
        assert cache.get("k") is None  # served by the fallback; the failures open the breaker
    assert breaker.state is State.OPEN

    report = status_json(project)
    entry = report["breakers"]["cache"]
    assert report["healthy"] is False
    assert entry["state"] == "open"
    assert entry["reason"] == "2 consecutive failures"
    assert entry["host_shared"] is True
    assert entry["state_file"] == breaker.state_file
    assert entry["probe_pid"] == os.getpid()  # this process's probe watches Redis for the host
    assert entry["latency_ms"] is None  # open: no PING from the status process
    assert "Connection refused" in entry["last_error"]
    assert entry["last_transition"]["remote"] is True  # made here, not by the status process
    assert (entry["last_transition"]["from"], entry["last_transition"]["to"]) == ("closed", "open")

    rows = table(manage(project, "redis_breaker", "status"))
    assert tuple(rows[0]) == COLUMNS
    row = dict(zip(COLUMNS, rows[1], strict=True))
    assert (row["breaker"], row["state"], row["host_shared"], row["probe_pid"]) == (
        "cache", "open", "yes", str(os.getpid()))
    assert row["last transition"].startswith("closed->open at ")
    assert row["last transition"].endswith("(2 consecutive failures)")


def test_a_fresh_status_process_reads_the_channel_layers_breaker(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """The channel layer's breaker (URL from its hosts) is read from its state file too."""
    state_dir = private_dir(tmp_path / "state")
    breakers = {"chan": {"STATE_DIR": state_dir, "FAILURE_THRESHOLD": 2}}
    settings.REDIS_BREAKERS = breakers
    settings.CHANNEL_LAYERS = layer_settings(redis_server.url, "chan")
    project = write_project(tmp_path, REDIS_BREAKERS=breakers,
                            CHANNEL_LAYERS=layer_settings(redis_server.url, "chan"))
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    breaker = get_breaker("chan")
    assert breaker.url == redis_server.url
    redis_server.stop()
    refused_twice(lambda: async_to_sync(layer.group_send)("room", {"type": "chat.message"}))
    assert breaker.state is State.OPEN

    entry = status_json(project)["breakers"]["chan"]
    assert entry["state"] == "open"
    assert entry["state_file"] == breaker.state_file
    assert entry["host_shared"] is True


def test_a_fresh_status_process_reads_the_celery_brokers_breaker(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """The breaker dispatch uses takes the broker URL of the project's Celery app."""
    from celery import Celery

    from redis_breaker.celery import execute_task_sync

    state_dir = private_dir(tmp_path / "state")
    breakers = {"default": {"STATE_DIR": state_dir, "FAILURE_THRESHOLD": 2}}
    settings.REDIS_BREAKERS = breakers
    project = write_project(tmp_path, celery=True, REDIS_BREAKERS=breakers,
                            CELERY_BROKER_URL=redis_server.url)
    app = Celery("status-host", broker=redis_server.url, set_as_current=False,
                 task_cls="redis_breaker.celery:BreakerTask")

    @app.task(name="status.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    try:
        redis_server.stop()
        refused_twice(lambda: execute_task_sync(add, 1, 2))  # run here: the broker is down
        breaker = get_breaker("default")
        assert breaker.url == redis_server.url
        assert breaker.state is State.OPEN
        entry = status_json(project)["breakers"]["default"]
        assert entry["state"] == "open"
        assert entry["state_file"] == breaker.state_file
    finally:
        cached = getattr(app, "_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
        app.close()


def test_maintenance_from_a_shell_reaches_the_applications_breaker(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """The runbook's force_open() from `manage.py shell` holds for the application's processes."""
    state_dir = private_dir(tmp_path / "state")
    breakers = {"cache": {"STATE_DIR": state_dir}}
    settings.CACHES = cache_settings(redis_server.url, "cache")
    settings.REDIS_BREAKERS = breakers
    project = write_project(tmp_path, CACHES=cache_settings(redis_server.url, "cache"),
                            REDIS_BREAKERS=breakers)
    cache = caches["default"]
    cache.set("k", "v")
    manage(project, "shell", "-c", "; ".join([
        "from redis_breaker import get_breaker",
        "from redis_breaker.health import adopt_integration_urls",
        "adopt_integration_urls()",
        "get_breaker('cache').force_open('maintenance')",
    ]))
    breaker = get_breaker("cache")
    assert breaker.state is State.FORCED_OPEN
    assert cache.get("k") is None  # the fallback serves, Redis is not asked
    manage(project, "shell", "-c", "; ".join([
        "from redis_breaker import get_breaker",
        "from redis_breaker.health import adopt_integration_urls",
        "adopt_integration_urls()",
        "get_breaker('cache').reset()",
    ]))
    assert breaker.state is State.CLOSED
    assert cache.get("k") == "v"


def test_adopting_the_integrations_urls_does_not_connect(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """The status finds each breaker's URL from the settings alone: no connection to Redis."""
    settings.REDIS_BREAKERS = {"cache": {}, "chan": {}}
    settings.CACHES = cache_settings(redis_server.url, "cache")
    settings.CHANNEL_LAYERS = layer_settings(redis_server.url, "chan")
    client = redis_server.client()
    try:
        before = client.info("stats")["total_connections_received"]
        adopt_integration_urls()
        after = client.info("stats")["total_connections_received"]
    finally:
        client.close()
    assert after == before
    assert get_breaker("cache").url == redis_server.url
    assert get_breaker("chan").url == redis_server.url


# --------------------------------------------------------------- the PING
@pytest.mark.django_db  # the status includes the Celery outbox's table
def test_a_status_timeout_shorter_than_the_probes_is_not_counted(
        redis_server: RedisServer, settings: Any) -> None:
    """A hung Redis: the status's own short timeout is reported, not counted against the host."""
    settings.REDIS_BREAKERS = {"default": {"URL": redis_server.url, "FAILURE_THRESHOLD": 2,
                                           "PROBE_TIMEOUT": 0.25}}
    breaker = get_breaker()
    assert check_redis_health() is True
    redis_server.freeze()
    try:
        for _ in range(3):
            assert check_redis_health(timeout=0.05) is False
        assert get_redis_status(timeout=0.05)["breakers"]["default"]["latency_ms"] is None
        assert breaker.stats().consecutive_failures == 0
        assert breaker.state is State.CLOSED
        # Waiting as long as the probe would, the status counts one failure, as a caller would.
        assert check_redis_health() is False
        assert breaker.stats().consecutive_failures == 1
    finally:
        redis_server.thaw()
    assert check_redis_health() is True
    assert breaker.stats().consecutive_failures == 0


def test_fresh_status_processes_count_no_more_than_a_caller(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """Hung Redis, closed breaker: impatient status runs count nothing, a default run counts one."""
    state_dir = private_dir(tmp_path / "state")
    breakers = {"default": {"URL": redis_server.url, "STATE_DIR": state_dir,
                            "FAILURE_THRESHOLD": 3, "PROBE_TIMEOUT": 0.25}}
    settings.REDIS_BREAKERS = breakers
    project = write_project(tmp_path, REDIS_BREAKERS=breakers)
    breaker = get_breaker()
    redis_server.freeze()
    try:
        for _ in range(2):
            entry = status_json(project, "--timeout", "0.05")["breakers"]["default"]
            assert (entry["state"], entry["latency_ms"]) == ("closed", None)
        assert breaker.stats().consecutive_failures == 0
        status_json(project)  # waits PROBE_TIMEOUT: one failure, like one caller's timeout
        assert breaker.stats().consecutive_failures == 1
        assert breaker.state is State.CLOSED
    finally:
        redis_server.thaw()


@pytest.mark.django_db
def test_a_refused_ping_counts_once_per_status(redis_server: RedisServer, settings: Any) -> None:
    """A refused connection is evidence: each status counts exactly one failure per breaker."""
    settings.REDIS_BREAKERS = {"default": {"URL": redis_server.url, "FAILURE_THRESHOLD": 3}}
    breaker = get_breaker()
    redis_server.stop()
    out = StringIO()
    call_command("redis_breaker", "status", "--json", stdout=out)
    assert breaker.stats().consecutive_failures == 1
    get_redis_status()
    assert breaker.stats().consecutive_failures == 2


@pytest.mark.django_db
def test_through_sentinel_an_impatient_ping_counts_nothing(settings: Any) -> None:
    """No sentinel answers: counted with the probe's patience, not with a shorter timeout."""
    url = f"redis+sentinel://127.0.0.1:{free_port()}/mymaster/0"
    settings.REDIS_BREAKERS = {"default": {"URL": url, "FAILURE_THRESHOLD": 3}}
    breaker = get_breaker()
    assert check_redis_health(timeout=0.1) is False
    assert breaker.stats().consecutive_failures == 0
    assert check_redis_health() is False
    assert breaker.stats().consecutive_failures == 1


# ------------------------------------------------- another process's transition
def force_open_elsewhere(name: str, url: str, state_dir: str) -> None:
    in_another_process(f"""
        from redis_breaker import Breaker, BreakerConfig
        b = Breaker({name!r}, BreakerConfig(url={url!r}, state_dir={state_dir!r}, probe=False))
        b.force_open("maintenance")
    """)


@pytest.mark.django_db
def test_the_status_view_shows_a_transition_made_by_another_process(
        settings: Any, tmp_path: Path) -> None:
    """Anonymous and staff views both answer with the host's state."""
    from django.contrib.auth.models import User

    url = "redis://127.0.0.1:6399/0"
    state_dir = private_dir(tmp_path / "state")
    settings.REDIS_BREAKERS = {"default": {"URL": url, "STATE_DIR": state_dir}}
    settings.ROOT_URLCONF = "tests.cache.urls"
    anonymous = Client()
    assert anonymous.get("/status/").status_code == 200
    force_open_elsewhere("default", url, state_dir)
    response = anonymous.get("/status/")
    assert response.status_code == 503
    assert response.json()["breakers"]["default"] == {"state": "forced_open"}
    staff = Client()
    staff.force_login(User.objects.create_user("ops", password="pw", is_staff=True))
    details = staff.get("/status/").json()["breakers"]["default"]
    assert details["state"] == "forced_open"
    assert details["reason"] == "maintenance"
    assert details["host_shared"] is True
    assert details["last_transition"]["remote"] is True


# ------------------------------------------------------- broken state files
def status_everywhere() -> dict[str, Any]:
    """Every surface once (none may raise); the JSON report."""
    from prometheus_client import CollectorRegistry, generate_latest

    from redis_breaker.contrib.health_check import RedisBreakerCheck
    from redis_breaker.prometheus import BreakerCollector

    out, as_json = StringIO(), StringIO()
    call_command("redis_breaker", "status", stdout=out)
    call_command("redis_breaker", "status", "--json", stdout=as_json)
    registry = CollectorRegistry()
    registry.register(BreakerCollector())
    generate_latest(registry)
    from health_check.exceptions import HealthCheckException

    # The plugin reports by raising its own exceptions, never another one.
    with contextlib.suppress(HealthCheckException):
        RedisBreakerCheck().run()
    check_redis_health()
    assert Client().get("/status/").status_code in (200, 503)
    report: dict[str, Any] = json.loads(as_json.getvalue())
    return report


def corrupt_state_file(state_dir: str, name: str, url: str) -> None:
    Path(_shared.state_path(state_dir, name, url)).write_bytes(b"\xff" * _shared.RECORD_SIZE)


@pytest.mark.django_db
def test_a_corrupt_state_file_never_makes_a_surface_raise(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """A state file of garbage: every surface answers (whatever the engine makes of the file)."""
    state_dir = private_dir(tmp_path / "state")
    corrupt_state_file(state_dir, "default", redis_server.url)
    settings.REDIS_BREAKERS = {"default": {"URL": redis_server.url, "STATE_DIR": state_dir}}
    settings.ROOT_URLCONF = "tests.cache.urls"
    report = status_everywhere()
    entry = report["breakers"]["default"]
    if entry["state"] is None:  # the engine could not create the breaker: it says why
        assert entry["status_error"]
        assert report["healthy"] is False
    else:
        assert (entry["state"], entry["host_shared"]) == ("closed", False)


@pytest.mark.django_db
def test_a_corrupt_state_file_degrades_to_process_state(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """What the engine promises for a corrupt file: state in the process, host_shared false."""
    state_dir = private_dir(tmp_path / "state")
    corrupt_state_file(state_dir, "default", redis_server.url)
    settings.REDIS_BREAKERS = {"default": {"URL": redis_server.url, "STATE_DIR": state_dir}}
    entry = get_redis_status()["breakers"]["default"]
    assert (entry["state"], entry["host_shared"], entry["state_file"]) == ("closed", False, None)
    assert isinstance(entry["latency_ms"], float)


@pytest.mark.django_db
def test_a_state_directory_others_can_reach_degrades_without_raising(
        redis_server: RedisServer, settings: Any, tmp_path: Path) -> None:
    """A state directory of mode 0755: every surface answers; host_shared is false."""
    state_dir = private_dir(tmp_path / "state")
    os.chmod(state_dir, 0o755)
    settings.REDIS_BREAKERS = {"default": {"URL": redis_server.url, "STATE_DIR": state_dir}}
    settings.ROOT_URLCONF = "tests.cache.urls"
    entry = status_everywhere()["breakers"]["default"]
    assert (entry["state"], entry["host_shared"]) == ("closed", False)


@pytest.mark.django_db
def test_impossible_times_in_the_state_file_do_not_raise(
        settings: Any, tmp_path: Path) -> None:
    """Infinite times in a valid record: the status shows what it can, and raises nothing."""
    url = "redis://127.0.0.1:6399/0"
    state_dir = private_dir(tmp_path / "state")
    settings.REDIS_BREAKERS = {"default": {"URL": url, "STATE_DIR": state_dir, "PROBE": False}}
    settings.ROOT_URLCONF = "tests.cache.urls"
    breaker = get_breaker()
    breaker.force_open("maintenance")
    assert breaker.state_file is not None
    with open(breaker.state_file, "r+b") as f, mmap.mmap(f.fileno(), _shared.RECORD_SIZE) as m:
        for slot in (_shared.SINCE, _shared.LAST_AT):
            m[slot * 8:slot * 8 + 8] = struct.pack("d", -math.inf)
    report = status_everywhere()
    entry = report["breakers"]["default"]
    assert entry["state"] == "forced_open"
    assert entry["since"] is None
    assert entry["last_transition"]["at"] is None
    out = StringIO()
    call_command("redis_breaker", "status", stdout=out)
    row = dict(zip(COLUMNS, table(out.getvalue())[1], strict=True))
    assert row["since"] == "-"
    assert row["last transition"] == "closed->forced_open at ? (maintenance)"


# ------------------------------------------------------------------ the docs
def test_the_docs_show_the_commands_columns() -> None:
    """docs/health.md shows the table with exactly the columns the command prints."""
    block = re.search(r"\$ python manage.py redis_breaker status\n(?P<header>[^\n]+)\n", DOC)
    assert block, "docs/health.md has no example of `redis_breaker status`"
    assert tuple(re.split(r"\s{2,}", block["header"].strip())) == COLUMNS
    for key in ("host_shared", "probe_pid", "state_file", "last_transition", "remote"):
        assert f'"{key}"' in DOC, f"{key} is not in the JSON example of docs/health.md"
