"""System checks on REDIS_BREAKERS: one test per id, and one through `manage.py check`."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from redis_breaker.checks import check_breakers


def ids(setting: Any) -> list[str]:
    with override_settings(REDIS_BREAKERS=setting):
        return [e.id for e in check_breakers()]


def messages(setting: Any) -> list[str]:
    with override_settings(REDIS_BREAKERS=setting):
        return [f"{e.msg} {e.hint}" for e in check_breakers()]


def test_valid_settings_pass() -> None:
    """A complete, sensible configuration raises nothing."""
    assert ids({"default": {"URL": "redis://127.0.0.1:6379/0", "FAILURE_THRESHOLD": 3,
                            "FAILURE_RATE": None, "SLOW_CALL_THRESHOLD": 0.2}}) == []


def test_e001_not_a_dict() -> None:
    """REDIS_BREAKERS that is not a dict is E001."""
    assert ids([("default", {})]) == ["redis_breaker.E001"]


def test_e002_entry_not_a_dict() -> None:
    """A breaker entry that is not a dict is E002, naming the breaker."""
    assert ids({"default": "redis://localhost"}) == ["redis_breaker.E002"]
    assert "REDIS_BREAKERS['default']" in messages({"default": "redis://localhost"})[0]


def test_e003_unknown_key() -> None:
    """A misspelt key is E003, naming breaker and key, and suggesting the right one."""
    assert ids({"cache": {"FAILURE_TRESHOLD": 3}}) == ["redis_breaker.E003"]
    text = messages({"cache": {"FAILURE_TRESHOLD": 3}})[0]
    assert 'REDIS_BREAKERS["cache"]["FAILURE_TRESHOLD"]' in text
    assert "Did you mean 'FAILURE_THRESHOLD'" in text


def test_e004_wrong_type() -> None:
    """A value of the wrong type is E004 and the hint says what type to use."""
    assert ids({"default": {"RESET_TIMEOUT": "1s"}}) == ["redis_breaker.E004"]
    text = messages({"default": {"RESET_TIMEOUT": "1s"}})[0]
    assert 'REDIS_BREAKERS["default"]["RESET_TIMEOUT"]' in text
    assert "Set RESET_TIMEOUT to a number of seconds" in text


def test_e005_impossible_value() -> None:
    """A value out of range, or a URL of the wrong scheme, is E005."""
    assert ids({"default": {"FAILURE_RATE": 1.5}}) == ["redis_breaker.E005"]
    assert ids({"default": {"URL": "http://user:pw@host"}}) == ["redis_breaker.E005"]
    text = messages({"default": {"URL": "http://user:pw@host"}})[0]
    assert ":pw@" not in text


def test_e006_contradiction() -> None:
    """A ceiling below the first open interval is E006."""
    assert ids({"default": {"RESET_TIMEOUT": 10, "MAX_RESET_TIMEOUT": 1}}) == ["redis_breaker.E006"]


def test_e007_unimportable_exception() -> None:
    """An exception path that cannot be imported is E007."""
    assert ids({"default": {"COUNT_EXCEPTIONS": ["nope.Missing"]}}) == ["redis_breaker.E007"]


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes in several breakers are all listed, not just the first."""
    found = ids({"a": {"FAILURE_THRESHOLD": 0, "BOGUS": 1}, "b": {"PROBE": "yes"}})
    assert sorted(found) == ["redis_breaker.E003", "redis_breaker.E004", "redis_breaker.E005"]


def test_manage_py_check_fails_on_bad_settings() -> None:
    """`manage.py check` stops with the message when a setting is wrong."""
    with override_settings(REDIS_BREAKERS={"default": {"FAILURE_THRESHOLD": -1}}), pytest.raises(
        SystemCheckError, match=r"redis_breaker\.E005"
    ):
        call_command("check")


def test_manage_py_check_passes_on_good_settings() -> None:
    """`manage.py check` is silent about a good REDIS_BREAKERS."""
    with override_settings(REDIS_BREAKERS={"default": {"URL": "redis://127.0.0.1:6379/0"}}):
        call_command("check")
