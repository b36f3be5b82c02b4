"""System checks: every REDIS_BREAKERS setting with a bad value, and the integrations' settings.

Each case asserts the stable id and that the message names the setting's path
and key while the hint gives the fix. Passwords in the URLs used here must not
reach any message.
"""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import CheckMessage
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from redis_breaker import checks
from redis_breaker._config import SETTINGS
from redis_breaker.checks import check_breakers, check_caches, check_celery, check_channel_layers

from .cache.conftest import caches_for, primary_entry

SECRET = "Zq9-secret-pw"
URL = f"redis://:{SECRET}@127.0.0.1:6390/0"
DOCS = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()


def run(check: Any, **overrides: Any) -> list[CheckMessage]:
    with override_settings(**overrides):
        found: list[CheckMessage] = check()
        return found


# ------------------------------------------------------------ REDIS_BREAKERS
# (setting, wrong value, id): a wrong type and a wrong value for each setting.
BREAKER_CASES: list[tuple[str, Any, str]] = [
    ("URL", 42, "redis_breaker.E004"),
    ("URL", f"http://:{SECRET}@host:1", "redis_breaker.E005"),
    ("FAILURE_THRESHOLD", "5", "redis_breaker.E004"),
    ("FAILURE_THRESHOLD", True, "redis_breaker.E004"),
    ("FAILURE_THRESHOLD", 0, "redis_breaker.E005"),
    ("FAILURE_RATE", "half", "redis_breaker.E004"),
    ("FAILURE_RATE", 1.5, "redis_breaker.E005"),
    ("WINDOW", [10], "redis_breaker.E004"),
    ("WINDOW", 0, "redis_breaker.E005"),
    ("MINIMUM_CALLS", 2.5, "redis_breaker.E004"),
    ("MINIMUM_CALLS", 0, "redis_breaker.E005"),
    ("SLOW_CALL_THRESHOLD", "fast", "redis_breaker.E004"),
    ("SLOW_CALL_THRESHOLD", -1, "redis_breaker.E005"),
    ("RESET_TIMEOUT", "1s", "redis_breaker.E004"),
    ("RESET_TIMEOUT", 0, "redis_breaker.E005"),
    ("MAX_RESET_TIMEOUT", None, "redis_breaker.E004"),
    ("MAX_RESET_TIMEOUT", -5, "redis_breaker.E005"),
    ("HALF_OPEN_MAX_CALLS", 1.0, "redis_breaker.E004"),
    ("HALF_OPEN_MAX_CALLS", 0, "redis_breaker.E005"),
    ("SUCCESS_THRESHOLD", "2", "redis_breaker.E004"),
    ("SUCCESS_THRESHOLD", 0, "redis_breaker.E005"),
    ("PROBE", "yes", "redis_breaker.E004"),
    ("PROBE_TIMEOUT", "0.25", "redis_breaker.E004"),
    ("PROBE_TIMEOUT", 0, "redis_breaker.E005"),
    ("PROBE_INTERVAL", "fast", "redis_breaker.E004"),
    ("PROBE_INTERVAL", 0, "redis_breaker.E005"),
    ("HOST_SHARED", 1, "redis_breaker.E004"),
    ("STATE_DIR", 700, "redis_breaker.E004"),
    ("STATE_DIR", Path("relative/dir"), "redis_breaker.E005"),
    ("STATE_DIR", "relative/dir", "redis_breaker.E005"),
    ("COUNT_EXCEPTIONS", "redis.exceptions.ConnectionError", "redis_breaker.E004"),
    ("COUNT_EXCEPTIONS", ["nope.Missing"], "redis_breaker.E007"),
    ("EXCLUDE_EXCEPTIONS", ValueError, "redis_breaker.E004"),
    ("EXCLUDE_EXCEPTIONS", [42], "redis_breaker.E007"),
]


def test_breaker_table_covers_every_setting() -> None:
    """Each REDIS_BREAKERS setting has a wrong-type case (and a wrong-value case when it has a range)."""
    typed = {key for key, _, check_id in BREAKER_CASES if check_id == "redis_breaker.E004"}
    ranged = {key for key, _, check_id in BREAKER_CASES if check_id != "redis_breaker.E004"}
    assert typed == {spec.key for spec in SETTINGS}
    assert ranged >= {spec.key for spec in SETTINGS if spec.check is not None}


@pytest.mark.parametrize(("key", "value", "check_id"), BREAKER_CASES,
                         ids=[f"{k}-{i}" for k, _, i in BREAKER_CASES])
def test_breaker_setting_with_a_bad_value(key: str, value: Any, check_id: str) -> None:
    """A bad value of one setting gives exactly one error with its id, its path and a fix."""
    found = run(check_breakers, REDIS_BREAKERS={"jobs": {key: value}})
    assert [m.id for m in found] == [check_id]
    message = found[0]
    assert f'REDIS_BREAKERS["jobs"]["{key}"]' in message.msg
    assert message.hint
    if check_id != "redis_breaker.E007":
        assert f"Set {key} to" in message.hint
    assert SECRET not in f"{message.msg} {message.hint}"


# ------------------------------------------------------------ integrations
def _breaker_cache(**options: Any) -> dict[str, Any]:
    return {"BACKEND": "redis_breaker.cache.BreakerCache", "OPTIONS": options}


LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
REDIS = primary_entry("django", URL)
DJANGO_REDIS = primary_entry("django_redis", URL)
HOST_OK = {"address": URL, "socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def _layers(**config: Any) -> dict[str, Any]:
    return {"default": {"BACKEND": "redis_breaker.channels.BreakerChannelLayer",
                        "CONFIG": config}}


# (case, check, settings, id, text the message names, text the hint gives)
INTEGRATION_CASES: list[tuple[str, Any, dict[str, Any], str, str, str]] = [
    ("primary-missing", check_caches, {"CACHES": {"default": _breaker_cache()}},
     "redis_breaker.E010", 'CACHES["default"]["OPTIONS"]["PRIMARY"] is missing', "Set "),
    ("primary-unknown-alias", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY="reddis")}},
     "redis_breaker.E010", '["PRIMARY"] is str \'reddis\', not an alias', "'redis'"),
    ("primary-not-a-string", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY=["redis"])}},
     "redis_breaker.E010", '["OPTIONS"]["PRIMARY"] is list', "Set "),
    ("primary-locmem", check_caches,
     {"CACHES": {"local": LOCMEM, "default": _breaker_cache(PRIMARY="local")}},
     "redis_breaker.E011", '["PRIMARY"] names \'local\'', "RedisCache"),
    ("primary-is-itself", check_caches,
     {"CACHES": {"default": _breaker_cache(PRIMARY="default")}},
     "redis_breaker.E011", '["PRIMARY"] names \'default\'', "RedisCache"),
    ("fallback-unknown-alias", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY="redis", FALLBACK="lcoal")}},
     "redis_breaker.E012", '["FALLBACK"] is str \'lcoal\'', "local cache"),
    ("fallback-is-primary", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY="redis", FALLBACK="redis")}},
     "redis_breaker.E013", "is the PRIMARY itself", "does not use Redis"),
    ("fallback-is-redis", check_caches,
     {"CACHES": {"redis": REDIS, "other": DJANGO_REDIS,
                 "default": _breaker_cache(PRIMARY="redis", FALLBACK="other")}},
     "redis_breaker.E013", "is a Redis cache", "does not use Redis"),
    ("fallback-is-breaker-cache", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY="redis", FALLBACK="default")}},
     "redis_breaker.E013", "is a BreakerCache", "does not use Redis"),
    ("primary-location-port", check_caches,
     {"CACHES": {"redis": primary_entry("django", URL.replace(":6390/", ":99999/")),
                 "default": _breaker_cache(PRIMARY="redis")}},
     "redis_breaker.E040", 'CACHES["redis"]["LOCATION"] URL', "Set CACHES[\"redis\"][\"LOCATION\"]"),
    ("unknown-option", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY="redis", FALBACK="x")}},
     "redis_breaker.E014", '["OPTIONS"]["FALBACK"]: unknown', "Did you mean 'FALLBACK'"),
    ("options-not-a-dict", check_caches,
     {"CACHES": {"redis": REDIS, "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                                             "OPTIONS": "redis"}}},
     "redis_breaker.E014", 'CACHES["default"]["OPTIONS"] is str', '"PRIMARY"'),
    ("breaker-not-a-string", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY="redis", BREAKER=1)}},
     "redis_breaker.E015", '["OPTIONS"]["BREAKER"] is int 1', "REDIS_BREAKERS"),
    ("journal-zero", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY="redis", JOURNAL_MAX_KEYS=0)}},
     "redis_breaker.E016", '["JOURNAL_MAX_KEYS"] is int 0', "integer of 1 or more"),
    ("journal-string", check_caches,
     {"CACHES": {"redis": REDIS,
                 "default": _breaker_cache(PRIMARY="redis", JOURNAL_MAX_KEYS="100")}},
     "redis_breaker.E016", '["JOURNAL_MAX_KEYS"] is str', "integer of 1 or more"),
    ("journal-bool", check_caches,
     {"CACHES": {"redis": REDIS,
                 "default": _breaker_cache(PRIMARY="redis", JOURNAL_MAX_KEYS=True)}},
     "redis_breaker.E016", '["JOURNAL_MAX_KEYS"] is bool', "integer of 1 or more"),
    ("add-fail-closed-string", check_caches,
     {"CACHES": {"redis": REDIS,
                 "default": _breaker_cache(PRIMARY="redis", ADD_FAIL_CLOSED="yes")}},
     "redis_breaker.E019", '["ADD_FAIL_CLOSED"] is str', "True"),
    ("primary-shares-the-celery-database", check_caches,
     {"CACHES": {"redis": REDIS, "default": _breaker_cache(PRIMARY="redis")},
      "CELERY_BROKER_URL": URL},
     "redis_breaker.W010", "also holds the Celery broker (CELERY_BROKER_URL)",
     "database of its own"),
    ("django-redis-ignores-exceptions", check_caches,
     {"CACHES": {"redis": primary_entry("django_redis", URL, IGNORE_EXCEPTIONS=True),
                 "default": _breaker_cache(PRIMARY="redis")}},
     "redis_breaker.E017", 'CACHES["redis"]["OPTIONS"]["IGNORE_EXCEPTIONS"] is true',
     "to False"),
    ("django-redis-ignores-exceptions-globally", check_caches,
     {"CACHES": {"redis": DJANGO_REDIS, "default": _breaker_cache(PRIMARY="redis")},
      "DJANGO_REDIS_IGNORE_EXCEPTIONS": True},
     "redis_breaker.E017", "DJANGO_REDIS_IGNORE_EXCEPTIONS is true", "to False"),
    ("redis-primary-without-timeouts", check_caches,
     {"CACHES": {"redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                           "LOCATION": URL},
                 "default": _breaker_cache(PRIMARY="redis")}},
     "redis_breaker.W001", "sets no socket_timeout / socket_connect_timeout",
     '"socket_timeout": 0.5'),
    ("redis-primary-without-connect-timeout", check_caches,
     {"CACHES": {"redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                           "LOCATION": URL, "OPTIONS": {"socket_timeout": 1}},
                 "default": _breaker_cache(PRIMARY="redis")}},
     "redis_breaker.W001", 'CACHES["redis"]["OPTIONS"] sets no socket_connect_timeout',
     '"socket_connect_timeout": 0.5'),
    ("django-redis-primary-without-timeouts", check_caches,
     {"CACHES": {"redis": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": URL,
                           "OPTIONS": {"SOCKET_TIMEOUT": None}},
                 "default": _breaker_cache(PRIMARY="redis")}},
     "redis_breaker.W001", "sets no SOCKET_TIMEOUT / SOCKET_CONNECT_TIMEOUT",
     '"SOCKET_CONNECT_TIMEOUT": 0.5'),
    ("django-redis-sentinel-without-sentinels", check_caches,
     {"CACHES": {"redis": {"BACKEND": "django_redis.cache.RedisCache",
                           "LOCATION": f"redis://:{SECRET}@mymaster/0",
                           "OPTIONS": {"CLIENT_CLASS": "django_redis.client.SentinelClient",
                                       "SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5}},
                 "default": _breaker_cache(PRIMARY="redis")}},
     "redis_breaker.E018", 'CACHES["redis"] finds its master through Redis Sentinel',
     'REDIS_BREAKERS["default"]["URL"] = "redis+sentinel://'),
    ("layer-sentinel-host-without-pairs", check_channel_layers,
     {"CHANNEL_LAYERS": _layers(hosts=[{"sentinels": ["127.0.0.1:26379"], "master_name": "m",
                                        "password": SECRET, "socket_timeout": 0.5,
                                        "socket_connect_timeout": 0.5}])},
     "redis_breaker.E022", '["hosts"][0] finds its master through Redis Sentinel',
     'REDIS_BREAKERS["default"]["URL"] = "redis+sentinel://'),
    ("layer-host-port-out-of-range", check_channel_layers,
     {"CHANNEL_LAYERS": _layers(hosts=[{"address": f"redis://:{SECRET}@127.0.0.1:99999/0",
                                        "socket_timeout": 0.5,
                                        "socket_connect_timeout": 0.5}])},
     "redis_breaker.E023", '["hosts"][0]["address"]', "percent-encode"),
    ("layer-breaker-not-a-name", check_channel_layers,
     {"CHANNEL_LAYERS": _layers(hosts=[HOST_OK], breaker=5)},
     "redis_breaker.E020", 'CHANNEL_LAYERS["default"]["CONFIG"]["breaker"] is int 5',
     "REDIS_BREAKERS"),
    ("layer-hosts-missing", check_channel_layers, {"CHANNEL_LAYERS": _layers()},
     "redis_breaker.E021", '["CONFIG"]["hosts"] is missing', '"socket_timeout": 0.5'),
    ("layer-hosts-a-string", check_channel_layers, {"CHANNEL_LAYERS": _layers(hosts=URL)},
     "redis_breaker.E021", '["CONFIG"]["hosts"] is str', '"socket_timeout": 0.5'),
    ("layer-host-not-a-host", check_channel_layers, {"CHANNEL_LAYERS": _layers(hosts=[42])},
     "redis_breaker.E021", '["CONFIG"]["hosts"][0] is int 42', "socket timeouts"),
    ("layer-config-not-a-dict", check_channel_layers,
     {"CHANNEL_LAYERS": {"default": {"BACKEND": "redis_breaker.channels.BreakerChannelLayer",
                                     "CONFIG": [URL]}}},
     "redis_breaker.E021", 'CHANNEL_LAYERS["default"]["CONFIG"] is list', '"hosts"'),
    ("layer-host-plain-url", check_channel_layers, {"CHANNEL_LAYERS": _layers(hosts=[URL])},
     "redis_breaker.W002", '["hosts"][0] sets no socket_timeout / socket_connect_timeout',
     '"socket_connect_timeout": 0.5'),
    ("layer-host-dict-without-timeouts", check_channel_layers,
     {"CHANNEL_LAYERS": _layers(hosts=[HOST_OK, {"host": "127.0.0.1", "port": 6390,
                                                 "password": SECRET, "socket_timeout": 1}])},
     "redis_breaker.W002", '["hosts"][1] sets no socket_connect_timeout', "socket timeouts"),
    ("layer-host-tuple", check_channel_layers,
     {"CHANNEL_LAYERS": _layers(hosts=[("127.0.0.1", 6390)])},
     "redis_breaker.W002", '["hosts"][0] sets no socket_timeout', "socket timeouts"),
    ("celery-unknown-fallback", check_celery, {"CELERY_REDIS_BREAKER_FALLBACK": "queue"},
     "redis_breaker.E030", "CELERY_REDIS_BREAKER_FALLBACK is str 'queue'",
     "'outbox', 'sync', 'raise'"),
    ("celery-breaker-not-a-name", check_celery, {"CELERY_REDIS_BREAKER_NAME": ["default"]},
     "redis_breaker.E031", "CELERY_REDIS_BREAKER_NAME is list", "REDIS_BREAKERS"),
    ("celery-timeout-negative", check_celery, {"CELERY_REDIS_BREAKER_TIMEOUT": -1},
     "redis_breaker.E032", "CELERY_REDIS_BREAKER_TIMEOUT is int -1", "greater than 0"),
    ("celery-timeout-string", check_celery, {"CELERY_REDIS_BREAKER_TIMEOUT": "1s"},
     "redis_breaker.E032", "CELERY_REDIS_BREAKER_TIMEOUT is str", "seconds"),
    ("celery-relay-interval-negative", check_celery, {"CELERY_REDIS_BREAKER_RELAY_INTERVAL": -5},
     "redis_breaker.E033", "CELERY_REDIS_BREAKER_RELAY_INTERVAL is int -5", "0 turns it off"),
    ("celery-relay-interval-bool", check_celery, {"CELERY_REDIS_BREAKER_RELAY_INTERVAL": True},
     "redis_breaker.E033", "CELERY_REDIS_BREAKER_RELAY_INTERVAL is bool", "seconds"),
    ("celery-once-not-bool", check_celery, {"CELERY_REDIS_BREAKER_ONCE": "yes"},
     "redis_breaker.E034", "CELERY_REDIS_BREAKER_ONCE is str 'yes'", "False"),
    ("celery-once-ttl-zero", check_celery, {"CELERY_REDIS_BREAKER_ONCE_TTL": 0},
     "redis_breaker.E035", "CELERY_REDIS_BREAKER_ONCE_TTL is int 0", "seconds"),
    ("celery-broker-url-port", check_celery,
     {"CELERY_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:70000/0"},
     "redis_breaker.E036", "CELERY_BROKER_URL has a port", "Set CELERY_BROKER_URL"),
    ("celery-result-backend-url-space", check_celery,
     {"CELERY_RESULT_BACKEND": f" redis://:{SECRET}@127.0.0.1:6379/1"},
     "redis_breaker.E037", "CELERY_RESULT_BACKEND has whitespace", "Set CELERY_RESULT_BACKEND"),
]


@pytest.mark.parametrize(("check", "overrides", "check_id", "names", "fix"),
                         [c[1:] for c in INTEGRATION_CASES], ids=[c[0] for c in INTEGRATION_CASES])
def test_integration_setting_is_reported(check: Any, overrides: dict[str, Any], check_id: str,
                                         names: str, fix: str) -> None:
    """One broken integration setting gives exactly one message with its id, path, key and fix."""
    found = run(check, **overrides)
    assert [m.id for m in found] == [check_id], [m.msg for m in found]
    assert names in found[0].msg
    assert found[0].hint
    assert fix in found[0].hint
    assert SECRET not in f"{found[0].msg} {found[0].hint}"


@pytest.mark.parametrize("overrides", [
    {"CACHES": caches_for(URL)},
    {"CACHES": caches_for(URL, "django_redis")},
    {"CACHES": {**caches_for(URL, FALLBACK="local", BREAKER="sessions", JOURNAL_MAX_KEYS=50),
                "local": LOCMEM}},
    {"CACHES": {"redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": f"{URL}?socket_timeout=1&socket_connect_timeout=1"},
                "default": _breaker_cache(PRIMARY="redis")}},
    {"CACHES": {"redis": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": URL,
                          "OPTIONS": {"CONNECTION_POOL_KWARGS": {
                              "socket_timeout": 1, "socket_connect_timeout": 1}}},
                "default": _breaker_cache(PRIMARY="redis")}},
    {"CHANNEL_LAYERS": _layers(hosts=[HOST_OK], breaker="chat")},
    {"CHANNEL_LAYERS": _layers(hosts=[f"{URL}?socket_timeout=1&socket_connect_timeout=1"])},
    {"CELERY_REDIS_BREAKER_FALLBACK": "sync", "CELERY_REDIS_BREAKER_NAME": "jobs",
     "CELERY_REDIS_BREAKER_TIMEOUT": 0.5},
], ids=["django", "django-redis", "fallback-alias", "url-timeouts", "pool-kwargs",
        "layer-dict", "layer-url-timeouts", "celery"])
def test_good_integration_settings_pass(overrides: dict[str, Any]) -> None:
    """Configurations as the docs and the test suites write them raise nothing."""
    for check in (check_caches, check_channel_layers, check_celery):
        assert run(check, **overrides) == []


def test_other_backends_are_not_inspected() -> None:
    """A plain Redis cache or channels_redis layer without timeouts is not ours to warn about."""
    assert run(check_caches, CACHES={"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": URL}}) == []
    assert run(check_channel_layers, CHANNEL_LAYERS={"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [URL]}}}) == []


def test_check_options_follow_the_backends() -> None:
    """The checks know the BreakerCache options of the backend's own table."""
    from redis_breaker.cache.options import OPTIONS

    [unknown] = run(check_caches, CACHES={"redis": REDIS,
                                          "default": _breaker_cache(PRIMARY="redis", TYPO=1)})
    assert f"BreakerCache takes {', '.join(spec.key for spec in OPTIONS)} (" in str(unknown.hint)


def test_every_check_id_including_warnings_is_documented() -> None:
    """Each error and warning id of the package's checks has a row in docs/configuration.md."""
    package = Path(checks.__file__).parent
    found = {check_id for path in package.rglob("*.py")
             for check_id in re.findall(r"redis_breaker\.[EW]\d{3}", path.read_text())}
    assert {"redis_breaker.W001", "redis_breaker.W002", "redis_breaker.E030"} <= found
    for check_id in found:
        assert f"| `{check_id}` |" in DOCS, f"{check_id} is not documented"
    tested = {c[3] for c in INTEGRATION_CASES} | {c[2] for c in BREAKER_CASES}
    own_tests = {"redis_breaker.E001", "redis_breaker.E002", "redis_breaker.E003",
                 "redis_breaker.E006", "redis_breaker.W003",  # in test_checks.py
                 "redis_breaker.W030",  # in tests/celery/test_outbox_checks.py (needs a database)
                 "redis_breaker.W031"}  # in tests/celery/test_kombu_check.py (per kombu version)
    assert found - own_tests <= tested


def test_manage_py_check_reports_integration_errors_and_warnings() -> None:
    """`manage.py check` fails on a broken BreakerCache and prints timeout warnings without failing."""
    # Aliases that exist, so that Django's own cache checks can build every cache.
    broken = {"redis": REDIS, "local": LOCMEM,
              "default": _breaker_cache(PRIMARY="local", FALLBACK="redis")}
    with override_settings(CACHES=broken, CELERY_REDIS_BREAKER_FALLBACK="later"), pytest.raises(
            SystemCheckError, match=r"redis_breaker\.E011") as raised:
        call_command("check")
    report = str(raised.value)
    assert 'CACHES["default"]["OPTIONS"]["PRIMARY"]' in report
    assert 'CACHES["default"]["OPTIONS"]["FALLBACK"]' in report
    assert "redis_breaker.E013" in report
    assert "redis_breaker.E030" in report
    assert SECRET not in report
    bare = {"redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": URL},
            "default": _breaker_cache(PRIMARY="redis")}
    err = StringIO()
    with override_settings(CACHES=bare, CHANNEL_LAYERS=_layers(hosts=[URL])):
        call_command("check", stderr=err)
    output = err.getvalue()
    assert "redis_breaker.W001" in output
    assert "redis_breaker.W002" in output
    assert SECRET not in output


@pytest.mark.parametrize(
    ("options", "check_id"),
    [
        ({"PRIMARY": "missing"}, "redis_breaker.E010"),
        ({"PRIMARY": "redis", "FALLBACK": "missing"}, "redis_breaker.E012"),
        ({"PRIMARY": "redis", "JOURNAL": 5}, "redis_breaker.E014"),
        ({"PRIMARY": "redis", "JOURNAL_MAX_KEYS": 0}, "redis_breaker.E016"),
    ],
)
def test_manage_py_check_reports_instead_of_crashing(options: dict[str, Any], check_id: str) -> None:
    """Options that make the backend unusable are reported by `check`, not raised while Django builds caches."""
    broken = {"redis": primary_entry("django", "redis://127.0.0.1:6390/0"),
              "default": {"BACKEND": "redis_breaker.cache.BreakerCache", "OPTIONS": options}}
    with override_settings(CACHES=broken), pytest.raises(SystemCheckError, match=check_id):
        call_command("check")


def test_test_settings_pass_every_check() -> None:
    """The suite's own settings, and the fixtures' cache and layer settings, pass every check."""
    from django.core.checks import run_checks

    assert [m.id for m in run_checks() if m.id and m.id.startswith("redis_breaker")] == []
    from .channels.conftest import hosts as layer_hosts

    class _Server:
        url = URL

    for kind in ("django", "django_redis"):
        assert run(check_caches, CACHES=caches_for(URL, kind)) == []
    assert run(check_channel_layers,
               CHANNEL_LAYERS=_layers(hosts=layer_hosts(_Server()))) == []  # type: ignore[arg-type]
