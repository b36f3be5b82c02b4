"""No user name or password shows on any surface, whatever characters it holds.

Hypothesis generates user names and passwords from an alphabet of the
characters that broke redaction before (``@ : / % ? # & = +``, spaces, both
quotes, backslashes) and letters of scripts the rest of the output never uses
(the *markers*). Every generated credential holds at least one marker, so a
leak of any part of it, in any spelling (plain, percent-encoded, JSON or
``repr`` escapes, UTF-8 bytes), is found by looking for the markers.

The URLs are written in every form redis-py reads: percent-encoded and raw
userinfo, query-string credentials under encoded names (``pass%77ord``),
Sentinel and unix-socket URLs, and settings given as bytes, lists and dicts.
The surfaces: ``redact``, ``repr``/``str`` of the configuration, its
``ValueError``, the system checks, and, through a real connection failure on
a port nothing listens on, the caller's exception, ``stats()``, the log events
and records, the status (function, command, view), the health check, the
metrics and the state file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from io import StringIO
from urllib.parse import quote, quote_plus

import pytest
import redis
from django.core.management import call_command
from django.test import RequestFactory, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from redis_breaker import BreakerConfig, _redact, get_breaker
from redis_breaker import _registry as registry
from redis_breaker._probe import ping_url
from redis_breaker._redact import describe_error, redact, redact_url, redact_value, shown
from redis_breaker.checks import check_breakers, check_caches, check_celery, check_channel_layers
from redis_breaker.health import check_redis_health, get_redis_status
from redis_breaker.prometheus import BreakerCollector
from redis_breaker.testing import capture_events
from redis_breaker.views import status
from tests.conftest import UNCLOSED_UNIX_SOCKETS
from tests.harness import free_port

# These tests make failed unix-socket connects on purpose (see tests/conftest.py).
pytestmark = [UNCLOSED_UNIX_SOCKETS, pytest.mark.usefixtures("collect_leaked_sockets")]

MARKERS = "αβγδεζηθλμπσφψωЖЯ密码"
HOSTILE = "@:/%?#&=+;,. \"'\\~!$*()[]<>-_" + "abcXYZ019"
#: Line breaks and tabs: a URL holding one is refused by the checks, and its message
#: must not show the credential either (free text cuts a URL at the end of its line).
CONTROL = "\n\t\r"
credential = st.text(alphabet=MARKERS + HOSTILE, min_size=1, max_size=14).filter(
    lambda s: any(c in MARKERS for c in s))
any_credential = st.text(alphabet=MARKERS + HOSTILE + CONTROL, min_size=1, max_size=14).filter(
    lambda s: any(c in MARKERS for c in s))
#: A stopped port: every connection to it is refused, so redis-py raises at once.
STOPPED = free_port()


@pytest.fixture(autouse=True)
def _forget_remembered() -> Iterator[None]:
    """The passwords these tests make the process remember are forgotten after each test:
    the rest of the session pays for no generated password in its redactions."""
    remembered = _redact._REMEMBERED
    with remembered.lock:
        saved = (dict(remembered.secrets), remembered.spellings)
    yield
    with remembered.lock:
        remembered.secrets, remembered.spellings = saved


def spellings(secret: str) -> set[str]:
    """Every way a marker of ``secret`` may be written in an output."""
    found: set[str] = set()
    for c in secret:
        if c not in MARKERS:
            continue
        encoded = quote(c, safe="")
        found |= {c, encoded, encoded.lower(), json.dumps(c)[1:-1],
                  repr(c.encode())[2:-1], c.encode("unicode_escape").decode()}
    return found


def leaks(secrets: tuple[str, ...], *outputs: str | bytes) -> list[str]:
    """The spellings of ``secrets`` found in ``outputs`` (empty when clean)."""
    forms = set().union(*(spellings(s) for s in secrets))
    found = []
    for output in outputs:
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
        raw = output if isinstance(output, bytes) else output.encode("utf-8", "replace")
        found += [f for f in forms if f in text or f.encode() in raw]
    return found


def _state_texts(data: bytes) -> str:
    """The part of a state file that holds text: everything after the record's number slots.

    The first ``ERROR_TEXT[0]`` bytes are 8-byte integers and floats (``_shared``'s slots),
    whose bytes spell characters by chance: 'π', 'ω' and a sigma were read there, next to
    one-character credentials. Every text field (the last error, the reason, the
    identity) lies after them, and is read whole here, stale bytes of a longer earlier
    text included."""
    from redis_breaker._shared import ERROR_TEXT

    return data[ERROR_TEXT[0]:].decode("utf-8", "replace")


def where_leaked(secrets: tuple[str, ...],
                 surfaces: dict[str, str | bytes | list[str]]) -> list[tuple[str, str, str]]:
    """Each leak as (surface, spelling, the text around it): a failure says where it was."""
    found = []
    for name, outputs in surfaces.items():
        for output in outputs if isinstance(outputs, list) else [outputs]:
            text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
            for spelling in leaks(secrets, output):
                at = max(text.find(spelling), 0)
                found.append((name, spelling, text[max(at - 120, 0):at + 120]))
    return found


def url_forms(user: str, password: str, port: int) -> dict[str, str]:
    """The URL forms redis-py reads, each carrying ``user`` and ``password``."""
    u, p = quote(user, safe=""), quote(password, safe="")
    return {
        "encoded": f"redis://{u}:{p}@127.0.0.1:{port}/0",
        "password-only": f"redis://:{p}@127.0.0.1:{port}/0",
        "raw": f"redis://{user}:{password}@127.0.0.1:{port}/0",
        "raw-password": f"redis://:{password}@127.0.0.1:{port}/0",
        "query": f"redis://127.0.0.1:{port}/0?pass%77ord={p}&user%6Eame={u}",
        "query-plus": f"redis://127.0.0.1:{port}/0?db=0&password={quote_plus(password)}",
        "sentinel": f"redis+sentinel://{u}:{p}@127.0.0.1:{port}/mymaster/0"
                    f"?sentinel_password={p}",
        "unix": f"unix://{u}:{p}@/tmp/rb-stopped-{port}.sock?db=0",
        "unix-query": f"unix:///tmp/rb-stopped-{port}.sock?password={p}",
        "celery-list": f"sentinel://:{p}@127.0.0.1:{port};sentinel://{u}:{p}@127.0.0.1:{port}",
    }


@pytest.mark.timeout(900)
@settings(max_examples=200, deadline=None)
@given(user=any_credential, password=any_credential)
def test_redact_masks_every_url_form(user: str, password: str) -> None:
    """Every URL form, alone, inside a sentence, a repr, JSON or a dict, is masked."""
    secrets = (user, password)
    for form, url in url_forms(user, password, 6379).items():
        # A setting's value: the whole string is the URL, line breaks and all.
        outputs = [redact_url(url), shown(url), shown(url.encode()), shown([url, url]),
                   shown({"URL": url}), repr(redact_value((url, url.encode(), [url])))]
        if not any(c in CONTROL for c in user + password):
            # Free text, where a URL ends at the end of its line at the latest.
            outputs += [
                redact(url), redact(f"connecting to {url} failed: refused"),
                redact(f"{url}\nnext line"), redact(repr(url)), redact(json.dumps({"url": url})),
                redact(repr({"LOCATION": url, "password": password})),
            ]
        assert leaks(secrets, *outputs) == [], (form, url, outputs)


@pytest.mark.timeout(900)
@settings(max_examples=150, deadline=None)
@given(user=any_credential, password=any_credential)
def test_config_and_checks_show_no_credential(user: str, password: str) -> None:
    """BreakerConfig (its repr, or its ValueError) and the system checks, for every form and
    for the URL given as bytes, a list or a dict."""
    secrets = (user, password)
    for form, url in url_forms(user, password, 6379).items():
        try:
            config = BreakerConfig(url=url)
        except ValueError as exc:
            outputs = [str(exc), repr(exc), describe_error(exc)]
        else:
            outputs = [repr(config), str(config)]
        for value in (url, url.encode(), [url], {"url": url}):
            with override_settings(REDIS_BREAKERS={"leak": {"URL": value}}):
                found = check_breakers()
            outputs += [f"{m.msg} {m.hint}" for m in found]
            try:
                BreakerConfig(url=value)
            except ValueError as exc:
                outputs.append(str(exc))
        assert leaks(secrets, *outputs) == [], (form, url, outputs)


@pytest.mark.timeout(900)
@settings(max_examples=40, deadline=None)
@given(user=any_credential, password=any_credential)
def test_integration_checks_show_no_credential(user: str, password: str) -> None:
    """The integrations' checks of their own URLs (a cache's LOCATION, a channel layer's
    hosts, Celery's broker and result backend): a usable port and an impossible one, which
    makes each check quote the URL in its error."""
    secrets = (user, password)
    timeouts = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
    for port in (6379, 99999):
        for form, url in url_forms(user, password, port).items():
            overrides = {
                "CACHES": {
                    "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                              "LOCATION": url, "OPTIONS": dict(timeouts)},
                    "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                                "OPTIONS": {"PRIMARY": "redis"}}},
                "CHANNEL_LAYERS": {"default": {
                    "BACKEND": "redis_breaker.channels.BreakerChannelLayer",
                    "CONFIG": {"hosts": [{"address": url, **timeouts}]}}},
                "CELERY_BROKER_URL": url,
                "CELERY_RESULT_BACKEND": url,
            }
            outputs: list[str] = []
            with override_settings(**overrides):
                for check in (check_caches, check_channel_layers, check_celery):
                    outputs += [f"{m.id} {m.msg} {m.hint}" for m in check()]
            assert leaks(secrets, *outputs) == [], (form, url, outputs)


def _status_texts() -> list[str]:
    """The status function, the command (table and JSON), the view with the token, metrics."""
    table, as_json = StringIO(), StringIO()
    call_command("redis_breaker", "status", stdout=table)
    call_command("redis_breaker", "status", "--json", stdout=as_json)
    request = RequestFactory().get("/status/", HTTP_X_REDIS_BREAKER_TOKEN="tok-leak")
    page = status(request).content.decode()
    assert "last_error" in page
    metrics_registry = CollectorRegistry()
    metrics_registry.register(BreakerCollector())
    return [json.dumps(get_redis_status(ping=True), default=repr), table.getvalue(),
            as_json.getvalue(), page, generate_latest(metrics_registry).decode()]


def _failing_call(url: str, form: str) -> Callable[[], object]:
    """A call of redis-py on ``url`` that the stopped port (or socket, or sentinel) refuses."""
    if form in ("sentinel", "unix", "unix-query"):
        return lambda: ping_url(url, 0.2)  # the library's own client of such URLs

    def ping() -> object:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)
        try:
            return client.ping()
        finally:
            client.close()

    return ping


def _forget_breakers() -> None:
    for breaker in list(registry._breakers.values()):
        breaker.reset()
    registry._breakers.clear()


#: The forms a breaker can be given and a client can fail on (a real refused connection).
_LIVE_FORMS = ("encoded", "password-only", "query", "query-plus", "unix", "unix-query",
               "sentinel")


@pytest.mark.django_db
@pytest.mark.timeout(900)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(user=credential, password=credential, form=st.sampled_from(_LIVE_FORMS))
def test_a_real_failure_shows_no_credential_anywhere(
        user: str, password: str, form: str, caplog: pytest.LogCaptureFixture) -> None:
    """A breaker on a URL whose Redis refuses: the caller's error, stats, events, logs, status
    (function, command, view), health check, metrics and the state file are all clean."""
    secrets = (user, password)
    url = url_forms(user, password, STOPPED)[form]
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    settings_ = {"leak": {"URL": url, "FAILURE_THRESHOLD": 1, "PROBE_TIMEOUT": 0.2,
                          "PROBE_INTERVAL": 0.2}}
    with override_settings(REDIS_BREAKERS=settings_, REDIS_BREAKER_STATUS_TOKEN="tok-leak"), \
            capture_events() as events:
        try:
            breaker = get_breaker("leak")
            breaker.reset()  # the host-wide state of an earlier example with the same URL
            with pytest.raises(redis.ConnectionError) as raised:
                breaker.call(_failing_call(url, form))
            caller_errors = [str(raised.value), repr(raised.value), describe_error(raised.value)]
            assert breaker.is_open
            breaker.probe_now()  # a probe PING of the refused URL records its error
            stats = breaker.stats()
            assert stats.last_error
            healthy = check_redis_health("leak")
            surfaces = {"caller error": caller_errors, "stats": repr(stats),
                        "config": repr(breaker.config), "status": _status_texts()}
            state_file = breaker.state_file
            assert state_file is not None
            with open(state_file, "rb") as f:
                state_bytes = f.read()
            assert "***" in _state_texts(state_bytes)  # the identity: the URL, masked
        finally:
            _forget_breakers()  # before the settings go: the breakers keep their URL's record
    assert healthy is False
    surfaces.update({"events": json.dumps(events, default=repr),
                     "state file": _state_texts(state_bytes),
                     "log": [f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records]})
    assert where_leaked(secrets, surfaces) == [], (form, url)
