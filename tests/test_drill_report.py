"""The drill's report measures breaker timing from both sides of each fault action."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from django.test import override_settings

from redis_breaker import get_breaker
from tests.harness import RedisServer

sys.path.append(str(Path(__file__).resolve().parent.parent / "benchmarks"))

from drill_app import hidden
from drill_report import (
    breaker_timing,
    fmt,
    per_process,
    print_tables,
    sig,
    summarize,
    write_html,
)


@dataclass
class Timeline:
    """The parts of a drill run the report reads: phases and the breaker's transitions."""

    phases: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[tuple[float, str]] = field(default_factory=list)
    pybreaker_transitions: list[tuple[float, str]] = field(default_factory=list)
    #: (contestant, op, start, duration, error seen, error hidden)
    samples: list[tuple[str, str, float, float, bool, bool]] = field(default_factory=list)

    def fault(self, name: str, at: float, cut: tuple[float, float],
              restore: tuple[float, float], length: float = 10.0) -> None:
        self.phases += [
            {"fault": name, "phase": "healthy", "start": at, "end": cut[0]},
            {"fault": name, "phase": "cut", "start": cut[0], "end": cut[1]},
            {"fault": name, "phase": "outage", "start": cut[1], "end": restore[0]},
            {"fault": name, "phase": "restored", "start": restore[0], "end": restore[1]},
            {"fault": name, "phase": "recovery", "start": restore[1],
             "end": restore[1] + length},
        ]


def test_an_opening_during_the_fault_action_counts_from_its_start() -> None:
    """A breaker that opened while the server was still shutting down opened 0.4 s after the cut began."""
    run = Timeline()
    run.fault("refused", 0.0, cut=(10.0, 12.5), restore=(22.5, 22.6))
    run.fault("hung", 32.6, cut=(42.6, 42.61), restore=(52.61, 52.62))
    run.transitions = [(10.4, "open"), (10.9, "half_open"), (11.2, "open"), (23.1, "half_open"),
                       (23.3, "closed"), (43.6, "open"), (53.0, "half_open"), (53.2, "closed")]
    timing = breaker_timing(run, "refused")
    assert timing == {"fault": "refused", "cut_took_s": 2.5, "open_after_cut_s": 0.4,
                      "restore_took_s": 0.1, "closed_after_restore_s": 0.8}
    assert breaker_timing(run, "hung")["open_after_cut_s"] == 1.0


def test_a_fault_never_borrows_the_next_faults_transitions() -> None:
    """A breaker that did not open (or close) in a fault's own window reports None, not a later fault's time."""
    run = Timeline()
    run.fault("refused", 0.0, cut=(10.0, 10.1), restore=(20.1, 20.2))
    run.fault("hung", 30.2, cut=(40.2, 40.3), restore=(50.3, 50.4))
    run.transitions = [(41.0, "open"), (51.0, "closed")]
    assert breaker_timing(run, "refused")["open_after_cut_s"] is None
    assert breaker_timing(run, "refused")["closed_after_restore_s"] is None
    assert breaker_timing(run, "hung")["open_after_cut_s"] == 0.8
    assert breaker_timing(run, "hung")["closed_after_restore_s"] == 0.7


def calls(run: Timeline, contestant: str, op: str, start: float, end: float, every: float,
          duration: float, error: bool = False, hidden: bool = False) -> None:
    t = start
    while t < end:
        run.samples.append((contestant, op, t, duration, error, hidden))
        t += every


def test_the_verdict_counts_every_call_of_the_fault_window_and_the_hidden_errors(tmp_path: Path) -> None:
    """Calls made during the slow cut action count; django-redis's swallowed errors are counted as hidden.

    Before the cut began every call took 1 ms; from the start of the cut to the
    end of the restore, redis-breaker's calls were served by its fallback in
    0.1 ms except one that waited 0.5 s during the cut action, django-redis
    waited 0.5 s on every call and returned None, Django's RedisCache raised.
    """
    run = Timeline()
    run.fault("refused", 0.0, cut=(10.0, 12.5), restore=(22.5, 22.6))
    run.transitions = [(10.4, "open"), (23.1, "half_open"), (23.3, "closed")]
    run.pybreaker_transitions = [(10.6, "open"), (11.6, "half_open"), (11.7, "open"),
                                 (23.0, "half_open"), (23.05, "closed")]
    for name in ("redis-breaker", "django-redis", "django-redis-cache"):
        calls(run, name, "cache.get", 0.0, 10.0, 0.1, 0.001)
        calls(run, name, "cache.get", 22.6, 32.6, 0.1, 0.001)
    run.samples.append(("redis-breaker", "cache.get", 10.05, 0.5, False, True))  # during the cut
    calls(run, "redis-breaker", "cache.get", 10.6, 22.6, 0.1, 0.0001, hidden=True)
    calls(run, "django-redis", "cache.get", 10.0, 22.6, 0.5, 0.5, hidden=True)
    calls(run, "django-redis-cache", "cache.get", 10.0, 22.6, 0.5, 0.002, error=True)
    dispatches = {"redis-breaker": [(5.0, 1), (11.0, 1), (15.0, 2)],
                  "celery": [(5.0, 1), (11.0, 0), (40.0, 0)]}
    for at, _ in dispatches["redis-breaker"]:
        run.samples.append(("redis-breaker", "task.delay", at, 0.003, False, at > 10))
    for at, _ in dispatches["celery"][:2]:
        run.samples.append(("celery", "task.delay", at, 0.6, at > 10, False))

    report = summarize(run, {}, ["refused"], {}, {}, [], {"duration": 10.0}, dispatches)
    (verdict,) = report["verdict"]
    rows = {(r["op"], r["contestant"]): r for r in verdict["rows"]}
    ours = rows["cache.get", "redis-breaker"]
    assert ours["calls"] == 1 + 120
    assert (ours["errors"], ours["hidden"], ours["max_ms"]) == (0, 121, 500.0)
    assert rows["cache.get", "django-redis"]["calls"] == 26
    assert rows["cache.get", "django-redis"]["errors"] == 0
    assert rows["cache.get", "django-redis"]["hidden"] == 26
    assert rows["cache.get", "django-redis"]["p99_ms"] == 500.0
    assert rows["cache.get", "django-redis-cache"]["errors"] == 26
    assert rows["cache.get", "django-redis-cache"]["hidden"] == 0
    # tasks: dispatched from the healthy phase to the end of recovery; the one at 40 s is not this fault's
    assert (rows["task.delay", "redis-breaker"]["lost"],
            rows["task.delay", "redis-breaker"]["duplicates"]) == (0, 1)
    assert (rows["task.delay", "celery"]["lost"], rows["task.delay", "celery"]["duplicates"]) == (1, 0)
    assert next(r["contestant"] for r in verdict["rows"] if r["op"] == "cache.get") == "redis-breaker"
    assert verdict["breaker"]["open_after_cut_s"] == 0.4
    assert verdict["pybreaker"]["open_after_cut_s"] == 0.6
    assert verdict["pybreaker"]["closed_after_restore_s"] == 0.55
    assert "opened 0.4 s after the cut began" in verdict["sentence"]
    assert "django-redis 0 errors seen, 26 hidden" in verdict["sentence"]
    # the phases of the full table include the two fault actions
    phases = {(s["phase"], s["contestant"]) for s in report["scenarios"]}
    assert ("cut", "redis-breaker") in phases
    assert {"healthy", "cut", "outage", "recovery"} <= {p for p, _ in phases}

    page = tmp_path / "index.html"
    write_html(report, ["timeline-refused.png"], page)
    text = page.read_text()
    assert text.index("Verdict") < text.index("timeline-refused.png") < text.index("<details>")
    for name in ("django-redis", "pybreaker", "channels-redis", "celery", "django-redis-cache"):
        assert f"<b>{name}</b>:" in text


def test_a_worker_that_died_is_reported_in_the_text_and_the_page(
        tmp_path: Path, capsys: Any) -> None:
    """The drill starts a Celery worker that ended again; the report says when, how and why, since
    the tasks it held count as lost for every contestant."""
    run = Timeline()
    run.fault("refused", 0.0, cut=(10.0, 10.5), restore=(20.5, 20.6))
    line = ("[2026-11-27 17:06:57,616: CRITICAL/MainProcess] Unrecoverable error: "
            "AttributeError(\"'NoneType' object has no attribute 'hostname'\")")
    params = {"duration": 10.0, "worker_deaths": [{"at": 10.7, "exit_code": 1,
                                                   "last_critical": line}]}
    report = summarize(run, {"celery": {"dispatched": 3, "executed": 1, "lost": 2,
                                        "duplicates": 0}}, ["refused"], {}, {}, [], params, {})
    print_tables(report)
    out = capsys.readouterr().out
    assert "ended while the drill ran 1 time and was started again" in out
    assert "at 10.7 s, exit code 1: " + line in out
    page = tmp_path / "index.html"
    write_html(report, [], page)
    text = page.read_text()
    assert "ended while the drill ran 1 time" in text
    assert "Unrecoverable error" in text
    # No death, no line.
    params["worker_deaths"] = []
    print_tables(summarize(run, {}, ["refused"], {}, {}, [], params, {}))
    assert "ended while the drill ran" not in capsys.readouterr().out


def test_figures_have_three_significant_figures() -> None:
    assert sig(0.123456) == 0.123
    assert sig(501.234) == 501.0
    assert sig(None) is None
    assert [fmt(v) for v in (0.000123456, 3.86e-05, 1.23456, 0.5, 501.234, 3112.7, None, 12)] == [
        "0.000123", "0.0000386", "1.23", "0.5", "501", "3,110", "-", "12"]


def test_served_processes_each_pay_only_until_the_host_state_says_open() -> None:
    """Per worker: the calls that met the outage before it saw the breaker open, and its recovery.

    Worker 1 opened the breaker 0.5 s after the cut began (an opening during the
    cut action counts); worker 2 learned it from the host's state at 0.6 s. Only
    calls begun after the cut while the worker still saw the breaker closed paid.
    """
    run = Timeline()
    run.fault("hung", 0.0, cut=(10.0, 10.8), restore=(20.8, 20.9))
    events = [
        {"pid": 1, "at": 10.5, "to": "open", "remote": False},
        {"pid": 2, "at": 10.6, "to": "open", "remote": True},
        {"pid": 2, "at": 21.0, "to": "half_open", "remote": False},
        {"pid": 2, "at": 21.2, "to": "closed", "remote": False},
        {"pid": 1, "at": 21.4, "to": "closed", "remote": True},
    ]
    responses = [
        (9.9, "cache.page", 1, 0.6, "closed"),    # began before the cut: not this window's
        (10.0, "cache.page", 1, 0.5, "closed"),   # paid
        (10.1, "cache.page", 2, 0.5, "closed"),   # paid
        (10.2, "cache.page", 2, 0.5, "closed"),   # paid
        (10.7, "cache.page", 2, 0.0001, "open"),  # served by the fallback
        (10.55, "cache.page", 2, 0.5, "closed"),  # began before worker 2 saw it open: paid
        (12.0, "cache.page", 1, 0.0001, "open"),
        (21.1, "cache.page", 1, 0.001, "open"),
        (21.5, "cache.page", 1, 0.001, "closed"),  # worker 1's first call through Redis again
        (21.3, "cache.page", 2, 0.001, "closed"),
    ]
    served = per_process(run, "hung", {"responses": responses, "transitions": events})
    one, two = served["processes"]
    assert (one["pid"], one["onset_calls"], one["onset_max_ms"]) == (1, 1, 500.0)
    assert (two["pid"], two["onset_calls"]) == (2, 3)
    assert served["host_onset_calls"] == 4
    assert (one["open_after_cut_s"], one["opened_here"]) == (0.5, True)
    assert (two["open_after_cut_s"], two["opened_here"]) == (0.6, False)
    assert (two["closed_after_restore_s"], two["closed_here"]) == (0.4, True)
    assert (one["closed_after_restore_s"], one["closed_here"]) == (0.6, False)
    assert one["first_call_through_redis_s"] == 0.7
    assert two["first_call_through_redis_s"] == 0.5


def test_hidden_errors_are_counted_in_the_callers_own_context(redis_server: RedisServer) -> None:
    """django-redis's swallowed exceptions and redis-breaker's fallbacks count, each for its own caller.

    Redis is stopped: django-redis with IGNORE_EXCEPTIONS returns None and logs
    the exception it swallowed (counted), a breaker call served by its fallback
    is counted through ``note_fallback``; another thread's count stays apart.
    """
    from django_redis.cache import RedisCache

    url = redis_server.url
    redis_server.stop()
    hidden.install()
    with override_settings(DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS=True,
                           DJANGO_REDIS_LOGGER=hidden.IGNORED_LOGGER):
        cache = RedisCache(url, {"OPTIONS": {"SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5,
                                             "IGNORE_EXCEPTIONS": True}})
        box = hidden.start()
        assert cache.get("k") is None
        assert box[0] == 1
        breaker = get_breaker("drill-hidden")
        hidden.wrap_breaker(breaker)
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        assert breaker.call_with_fallback(client.get, lambda key: "local", ("k",)) == "local"
        assert box[0] == 2

        elsewhere: list[int] = []

        def other_caller() -> None:
            mine = hidden.start()
            cache.get("k")
            elsewhere.append(mine[0])

        thread = threading.Thread(target=other_caller)
        thread.start()
        thread.join(60)
        assert elsewhere == [1]
        assert box[0] == 2
