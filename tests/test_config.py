"""BreakerConfig: defaults from the design, and a clear ValueError for every bad value."""

from __future__ import annotations

import pytest
import redis

from redis_breaker import BreakerConfig
from redis_breaker._config import SETTINGS


def test_defaults_match_the_design() -> None:
    """Every default is the one DESIGN.md's settings block gives."""
    config = BreakerConfig()
    assert config.url is None
    assert config.failure_threshold == 5
    assert config.failure_rate == 0.5
    assert config.window == 10.0
    assert config.minimum_calls == 20
    assert config.slow_call_threshold is None
    assert config.reset_timeout == 0.5
    assert config.max_reset_timeout == 30.0
    assert config.half_open_max_calls == 1
    assert config.success_threshold == 2
    assert config.probe is True
    assert config.probe_timeout == 0.25


def test_fields_are_the_settings_in_lower_case() -> None:
    """The dataclass fields and the settings table name the same things."""
    fields = {f for f in BreakerConfig.__dataclass_fields__ if f not in ("counted", "excluded")}
    assert fields == {spec.field for spec in SETTINGS}


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("failure_threshold", 0, "from 1 to 65535"),
        ("failure_threshold", 65536, "from 1 to 65535"),
        ("failure_threshold", 2.5, "an integer"),
        ("failure_threshold", True, "an integer"),
        ("failure_rate", 1.5, "at most 1"),
        ("failure_rate", 0, "greater than 0"),
        ("failure_rate", float("nan"), "greater than 0"),
        ("window", -1, "from 0.001 to 86400"),
        ("window", 1e-310, "from 0.001 to 86400"),
        ("window", 5e-324, "from 0.001 to 86400"),
        ("minimum_calls", 0, "from 1 to 1000000"),
        ("slow_call_threshold", 0, "from 0.001 to 86400"),
        ("reset_timeout", "1s", "a number of seconds"),
        ("max_reset_timeout", 0, "from 0.001 to 86400"),
        ("max_reset_timeout", float("inf"), "from 0.001 to 86400"),
        ("half_open_max_calls", 0, "from 1 to 1000000"),
        ("success_threshold", 0, "from 1 to 1000000"),
        ("probe", "yes", "True or False"),
        ("probe_timeout", 0, "from 0.001 to 86400"),
        ("probe_timeout", float("inf"), "from 0.001 to 86400"),
        ("probe_interval", float("nan"), "from 0.001 to 86400"),
        ("url", "http://example.invalid", "redis://"),
        ("url", "redis://127.0.0.1:notaport/0", "port"),
        ("url", "redis://127.0.0.1:99999/0", "port"),
        ("url", " redis://127.0.0.1/0", "whitespace"),
        ("url", 6379, "a Redis URL string"),
        ("count_exceptions", ("no.such.Module",), "dotted paths"),
    ],
)
def test_invalid_value_names_the_field(field: str, value: object, words: str) -> None:
    """A bad value raises ValueError whose message names the field and the fix."""
    with pytest.raises(ValueError, match=field) as info:
        BreakerConfig(**{field: value})
    assert words in str(info.value)


def test_ceiling_below_first_interval_is_rejected() -> None:
    """MAX_RESET_TIMEOUT below RESET_TIMEOUT is a contradiction, not a silent cap."""
    with pytest.raises(ValueError, match="max_reset_timeout"):
        BreakerConfig(reset_timeout=5, max_reset_timeout=1)


def test_from_settings_reads_upper_case_keys() -> None:
    """A REDIS_BREAKERS entry becomes a config, lists of exceptions resolved to classes."""
    config = BreakerConfig.from_settings({
        "URL": "redis://127.0.0.1:6379/0",
        "FAILURE_THRESHOLD": 3,
        "COUNT_EXCEPTIONS": ["redis.exceptions.ResponseError"],
    })
    assert config.failure_threshold == 3
    assert config.counted == (redis.exceptions.ResponseError,)


def test_from_settings_rejects_unknown_keys_with_a_suggestion() -> None:
    """A misspelt key is not ignored: the error suggests the right one."""
    with pytest.raises(ValueError, match="Did you mean 'FAILURE_THRESHOLD'"):
        BreakerConfig.from_settings({"FAILURE_TRESHOLD": 3})


def test_url_password_is_not_in_the_error() -> None:
    """An invalid URL carrying a password is reported without the password."""
    with pytest.raises(ValueError, match=r"BreakerConfig\.url") as info:
        BreakerConfig(url="http://user:hunter2@example.invalid")
    assert "hunter2" not in str(info.value)
