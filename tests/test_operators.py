"""Operator hooks: the Django signal and the Prometheus metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from redis_breaker import Breaker, BreakerConfig, StateChange, get_breaker
from redis_breaker.prometheus import BreakerCollector, register
from redis_breaker.signals import breaker_state_changed


def trip(breaker: Breaker) -> None:
    def refused() -> None:
        raise redis.ConnectionError("Error connecting to redis://:topsecret@h:6379")

    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(redis.ConnectionError):
            breaker.call(refused)


def test_signal_is_sent_with_the_breaker_and_the_change() -> None:
    """breaker_state_changed carries the breaker as sender and the StateChange."""
    received: list[tuple[Any, StateChange]] = []

    def receiver(sender: Any, change: StateChange, **kwargs: Any) -> None:
        received.append((sender, change))

    breaker_state_changed.connect(receiver)
    try:
        breaker = Breaker("sig", BreakerConfig(probe=False))
        trip(breaker)
        breaker.reset()
    finally:
        breaker_state_changed.disconnect(receiver)
    assert [(s.name, c.to_state.value) for s, c in received] == [("sig", "open"), ("sig", "closed")]
    assert received[0][0] is breaker


def test_a_failing_receiver_does_not_break_the_transition() -> None:
    """A receiver that raises is isolated: the breaker still opens."""
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("pager down")

    breaker_state_changed.connect(broken)
    try:
        breaker = Breaker("sig2", BreakerConfig(probe=False))
        trip(breaker)
    finally:
        breaker_state_changed.disconnect(broken)
    assert breaker.is_open


def test_prometheus_metrics_reflect_the_breakers() -> None:
    """State, calls by outcome, fallbacks and transitions are exported, without credentials."""
    breaker = get_breaker("metrics")
    breaker.configure(BreakerConfig(probe=False, url="redis://:topsecret@h:6379/0"))
    breaker.call(lambda: None)
    trip(breaker)
    breaker.call_with_fallback(lambda: None, lambda: None, integration="cache")
    registry = CollectorRegistry()
    registry.register(BreakerCollector(lambda: [breaker]))
    text = generate_latest(registry).decode()
    assert 'redis_breaker_state{breaker="metrics",state="open"} 1.0' in text
    assert 'redis_breaker_state{breaker="metrics",state="closed"} 0.0' in text
    assert 'redis_breaker_calls_total{breaker="metrics",outcome="success"} 1.0' in text
    assert 'redis_breaker_calls_total{breaker="metrics",outcome="failure"} 5.0' in text
    assert 'redis_breaker_calls_total{breaker="metrics",outcome="rejected"} 1.0' in text
    assert 'redis_breaker_fallback_calls_total{breaker="metrics",integration="cache"} 1.0' in text
    assert ('redis_breaker_transitions_total{breaker="metrics",from_state="closed",'
            'to_state="open"} 1.0') in text
    assert "topsecret" not in text


def test_register_is_idempotent() -> None:
    """Registering twice on one registry adds one collector."""
    registry = CollectorRegistry()
    assert register(registry) is not None
    assert register(registry) is None


def test_totals_never_go_down_across_outages() -> None:
    """Counters survive recovery and reset, as Prometheus counters must."""
    breaker = Breaker("mono", BreakerConfig(probe=False))
    trip(breaker)
    breaker.call_with_fallback(lambda: None, lambda: None, integration="guard")
    breaker.reset()
    trip(breaker)
    breaker.call_with_fallback(lambda: None, lambda: None, integration="guard")
    totals = breaker.totals()
    assert totals.failures == 10
    assert totals.fallbacks == {"guard": 2}
    assert totals.transitions[("closed", "open")] == 2


def test_prometheus_shows_the_hosts_state(settings: Any, tmp_path: Path) -> None:
    """A transition another process made is the scraped process's state; host_shared says so."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    url = "redis://127.0.0.1:6399/0"
    settings.REDIS_BREAKERS = {"shared": {"URL": url, "STATE_DIR": str(state_dir)},
                               "own": {"HOST_SHARED": False}}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from redis_breaker import Breaker, BreakerConfig
        b = Breaker("shared", BreakerConfig(url={url!r}, state_dir={str(state_dir)!r}, probe=False))
        b.force_open("maintenance")
    """)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    registry = CollectorRegistry()
    registry.register(BreakerCollector())  # the default: every breaker, as the app registers it
    text = generate_latest(registry).decode()
    assert 'redis_breaker_state{breaker="shared",state="forced_open"} 1.0' in text
    assert 'redis_breaker_host_shared{breaker="shared"} 1.0' in text
    assert 'redis_breaker_state{breaker="own",state="closed"} 1.0' in text
    assert 'redis_breaker_host_shared{breaker="own"} 0.0' in text
