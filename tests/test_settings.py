"""The registry reads REDIS_BREAKERS lazily and follows override_settings."""

from __future__ import annotations

from django.test import override_settings

from redis_breaker import get_breaker
from redis_breaker._registry import all_breakers


def test_get_breaker_returns_one_shared_instance() -> None:
    """The same name gives the same breaker, so every integration shares its state."""
    assert get_breaker("x") is get_breaker("x")
    assert get_breaker("x") is not get_breaker("y")


def test_get_breaker_reads_django_settings() -> None:
    """A breaker named in REDIS_BREAKERS takes its settings from there."""
    with override_settings(REDIS_BREAKERS={"cache": {"FAILURE_THRESHOLD": 2, "URL": "redis://h:1/0"}}):
        breaker = get_breaker("cache")
        assert breaker.config.failure_threshold == 2
        assert breaker.url == "redis://h:1/0"


def test_registry_follows_setting_changes() -> None:
    """An existing breaker picks up new settings when REDIS_BREAKERS changes."""
    breaker = get_breaker("default")
    assert breaker.config.failure_threshold == 5
    with override_settings(REDIS_BREAKERS={"default": {"FAILURE_THRESHOLD": 9}}):
        assert breaker.config.failure_threshold == 9
    assert breaker.config.failure_threshold == 5


def test_all_breakers_includes_configured_names() -> None:
    """Breakers named in settings are listed even before first use."""
    with override_settings(REDIS_BREAKERS={"one": {}, "two": {}}):
        assert {"one", "two"} <= set(all_breakers())
