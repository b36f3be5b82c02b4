"""Turn the drill's samples into a verdict, tables, report.json, PNG timelines and an HTML page.

Every time here is measured from timestamps the drill took on both sides of
each fault action (``cut`` and ``restored`` phases: ``start`` before the
action, ``end`` after it returned), and each fault's figures are looked for
in that fault's own phases only.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from _common import percentiles, print_table

CONTESTANTS = ("redis-breaker", "redis-breaker-http", "django-redis", "django-redis-cache", "celery",
               "channels-redis", "pybreaker")
OURS = "redis-breaker"
OPS = ("cache.get", "cache.set", "cache.page", "task.delay", "group_send")
#: A fault's phases in order: the two fault actions have their own windows.
PHASES = ("healthy", "cut", "outage", "restored", "recovery")
#: One line per contestant, shown on the page.
ABOUT = {
    "redis-breaker": "this project: BreakerCache over Django's RedisCache (local fallback), "
                     "BreakerTask (durable outbox in the database), BreakerChannelLayer "
                     "(in-process delivery), one breaker shared by the three",
    "redis-breaker-http": "the same protected stack served by gunicorn worker processes "
                          "(--processes N), called over HTTP: cache.page reads then writes a key; "
                          "its breaker state is the host's, shared with the drill's own process",
    "django-redis": "django-redis with IGNORE_EXCEPTIONS: errors are swallowed (get returns None), "
                    "but each call still waits for Redis",
    "django-redis-cache": "Django's own RedisCache, no protection: errors reach the caller",
    "celery": "a plain Celery task's delay(): kombu's own connection retries, errors reach the caller",
    "channels-redis": "plain channels_redis RedisChannelLayer.group_send: errors reach the caller",
    "pybreaker": "hand-written wrappers (local cache, run the task in-process, skip the message) "
                 "guarded by one pybreaker.CircuitBreaker(fail_max=5, reset_timeout=1)",
}
FAULT_WORDS = {
    "refused": "Redis was shut down (connections refused)",
    "hung": "Redis was frozen with SIGSTOP (connections accepted, no answer)",
    "blackhole": "every packet to Redis was dropped",
}
#: Colour-blind-safe colours (Okabe-Ito) and a marker of its own for each contestant.
STYLE = {"redis-breaker": ("#0072B2", "o"), "redis-breaker-http": ("#56B4E9", "P"), "django-redis": ("#D55E00", "s"),
         "django-redis-cache": ("#CC79A7", "D"), "celery": ("#E69F00", "v"),
         "channels-redis": ("#009E73", "^"), "pybreaker": ("#000000", "x")}
STATE_LEVEL = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 2, "disabled": 0}


def sig(value: float | None, digits: int = 3) -> float | None:
    """``value`` rounded to ``digits`` significant figures (None and NaN stay None)."""
    if value is None or value != value:
        return None
    if value == 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def fmt(value: object) -> str:
    """A figure for people: 3 significant figures, no exponent, '-' for nothing."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        rounded = sig(value)
        assert rounded is not None
        if abs(rounded) >= 100:
            return f"{rounded:,.0f}"
        return format(Decimal(repr(rounded)), "f")  # no exponent: 0.0000386, not 3.86e-05
    return str(value)


def _phase(run: Any, fault: str, name: str) -> dict[str, Any]:
    return next(p for p in run.phases if p["fault"] == fault and p["phase"] == name)


def breaker_timing(run: Any, fault: str,
                   transitions: Sequence[tuple[float, str]] | None = None) -> dict[str, Any]:
    """When a breaker opened after the cut began and closed after the restore began.

    Each fault action is stamped on both sides (``start`` before it, ``end``
    after it returned): an opening while the action was still running (a
    server saving its data on the way down) belongs to this fault. Only this
    fault's own transitions count: an opening is looked for up to the restore,
    a closing up to the end of the recovery phase, never in the next fault.
    ``transitions`` defaults to redis-breaker's (``run.transitions``).
    """
    changes = run.transitions if transitions is None else transitions
    cut = _phase(run, fault, "cut")
    back = _phase(run, fault, "restored")
    recovery_end = _phase(run, fault, "recovery")["end"]
    opened = next((t for t, s in changes
                   if cut["start"] <= t < back["start"] and s == "open"), None)
    closed = next((t for t, s in changes
                   if back["start"] <= t <= recovery_end and s == "closed"), None)
    return {
        "fault": fault,
        "cut_took_s": sig(cut["end"] - cut["start"]),
        "open_after_cut_s": None if opened is None else sig(opened - cut["start"]),
        "restore_took_s": sig(back["end"] - back["start"]),
        "closed_after_restore_s": None if closed is None else sig(closed - back["start"]),
    }


def window_stats(samples: Iterable[Sequence[Any]], start: float,
                 end: float) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (contestant, op), the calls that began in [start, end): counts and latency (ms)."""
    by_key: dict[tuple[str, str], list[Sequence[Any]]] = {}
    for sample in samples:
        if start <= sample[2] < end:
            by_key.setdefault((sample[0], sample[1]), []).append(sample)
    stats = {}
    for key, rows in by_key.items():
        figures = percentiles([r[3] for r in rows])
        stats[key] = {
            "calls": len(rows),
            "errors": sum(1 for r in rows if r[4]),
            "hidden": sum(1 for r in rows if len(r) > 5 and r[5]),
            **{k: sig(v) for k, v in figures.items()},
        }
    return stats


def task_counts(dispatches: dict[str, list[tuple[float, int]]], start: float,
                end: float) -> dict[str, dict[str, int]]:
    """Tasks dispatched in [start, end) per contestant: how many, lost (never ran), run twice or more."""
    counts = {}
    for name, rows in dispatches.items():
        mine = [ran for at, ran in rows if start <= at < end]
        counts[name] = {"dispatched": len(mine), "lost": sum(1 for ran in mine if ran == 0),
                        "duplicates": sum(ran - 1 for ran in mine if ran > 1)}
    return counts


def verdict(run: Any, fault: str, dispatches: dict[str, list[tuple[float, int]]]) -> dict[str, Any]:
    """One fault's summary: per operation, ours then each contestant, while Redis was cut."""
    cut = _phase(run, fault, "cut")
    back = _phase(run, fault, "restored")
    first = _phase(run, fault, "healthy")["start"]
    last = _phase(run, fault, "recovery")["end"]
    stats = window_stats(run.samples, cut["start"], back["end"])
    tasks = task_counts(dispatches, first, last)
    rows = []
    for op in OPS:
        for contestant in CONTESTANTS:
            figures = stats.get((contestant, op))
            if figures is None:
                continue
            row = {"op": op, "contestant": contestant, **figures}
            if op == "task.delay" and contestant in tasks:
                row["lost"] = tasks[contestant]["lost"]
                row["duplicates"] = tasks[contestant]["duplicates"]
            rows.append(row)
    summary = {
        "fault": fault,
        "window_s": [round(cut["start"], 3), round(back["end"], 3)],
        "rows": rows,
        "breaker": breaker_timing(run, fault),
        "pybreaker": breaker_timing(run, fault, getattr(run, "pybreaker_transitions", [])),
    }
    summary["sentence"] = sentence(summary)
    return summary


def _by_contestant(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = totals.setdefault(row["contestant"], {"calls": 0, "errors": 0, "hidden": 0,
                                                      "max_ms": 0.0, "lost": 0})
        total["calls"] += row["calls"]
        total["errors"] += row["errors"]
        total["hidden"] += row["hidden"]
        total["max_ms"] = max(total["max_ms"], row["max_ms"] or 0.0)
        total["lost"] += row.get("lost", 0)
    return totals


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def sentence(summary: dict[str, Any]) -> str:
    """The fault's verdict in plain words, from its figures."""
    totals = _by_contestant(summary["rows"])
    timing = summary["breaker"]
    parts = [f"{summary['fault']}: {FAULT_WORDS.get(summary['fault'], summary['fault'])}."]
    ours = totals.get(OURS)
    if ours:
        parts.append(
            f"Through redis-breaker, callers saw {ours['errors']} errors in {ours['calls']:,} calls"
            f" and the slowest took {fmt(ours['max_ms'])} ms; {ours['hidden']:,} calls were served"
            f" by its fallbacks" + (f", {_count(ours['lost'], 'task')} lost" if ours["lost"]
                                       else ", no task lost")
            + ". Its breaker opened "
            + ("never" if timing["open_after_cut_s"] is None
               else f"{fmt(timing['open_after_cut_s'])} s after the cut began")
            + " (the cut took " + f"{fmt(timing['cut_took_s'])} s) and closed "
            + ("never" if timing["closed_after_restore_s"] is None
               else f"{fmt(timing['closed_after_restore_s'])} s after the restore began") + ".")
    served = totals.get("redis-breaker-http")
    if served:
        parts.append(f"Through the same stack served by worker processes over HTTP, callers saw "
                     f"{served['errors']} errors in {served['calls']:,} calls and the slowest "
                     f"took {fmt(served['max_ms'])} ms.")
    others = []
    for name in CONTESTANTS:
        if name in (OURS, "redis-breaker-http") or name not in totals:
            continue
        total = totals[name]
        words = f"{name} {_count(total['errors'], 'error')} seen"
        if total["hidden"]:
            words += f", {total['hidden']:,} hidden"
        words += f", slowest {fmt(total['max_ms'])} ms, {total['calls']:,} calls"
        if total["lost"]:
            words += f", {_count(total['lost'], 'task')} lost"
        others.append(words)
    if others:
        parts.append("The others: " + "; ".join(others) + ".")
    return " ".join(parts)


def healthy_phase_errors(run: Any, faults: list[str], limit: int = 50) -> list[dict[str, Any]]:
    """The errors callers saw while Redis was healthy, each with its time from the phase's start."""
    found = []
    for fault in faults:
        window = _phase(run, fault, "healthy")
        for contestant, op, start, text in getattr(run, "error_texts", []):
            if window["start"] <= start < window["end"]:
                found.append({"fault": fault, "contestant": contestant, "op": op,
                              "after_phase_start_s": sig(start - window["start"]), "error": text})
    return found[:limit]


def per_process(run: Any, fault: str, processes: dict[str, Any]) -> dict[str, Any]:
    """The served workers during one fault: what each paid for the outage's onset, when it recovered.

    A call *paid* for the onset when it began after the cut began while its
    process still saw the breaker closed, before that process's breaker opened
    (it went to Redis and met the outage). With one breaker state per host the
    host pays about FAILURE_THRESHOLD such calls in all; with a breaker per
    process each process would pay its own.
    """
    cut = _phase(run, fault, "cut")
    back = _phase(run, fault, "restored")
    recovery_end = _phase(run, fault, "recovery")["end"]
    responses = processes.get("responses", [])
    events = processes.get("transitions", [])
    pids = sorted({r[2] for r in responses} | {e["pid"] for e in events})
    rows = []
    for pid in pids:
        opened = next((e for e in events if e["pid"] == pid and e["to"] == "open"
                       and cut["start"] <= e["at"] < back["start"]), None)
        closed = next((e for e in events if e["pid"] == pid and e["to"] == "closed"
                       and back["start"] <= e["at"] <= recovery_end), None)
        during = [r for r in responses if r[2] == pid and cut["start"] <= r[0] < back["start"]]
        paid = [r for r in during
                if r[4] == "closed" and (opened is None or r[0] < opened["at"])]
        through = next((r[0] for r in responses if r[2] == pid and r[4] == "closed"
                        and back["start"] <= r[0] <= recovery_end), None)
        rows.append({
            "pid": pid,
            "calls_while_cut": len(during),
            "onset_calls": len(paid),
            "onset_max_ms": sig(max((r[3] for r in paid), default=0.0) * 1000),
            "open_after_cut_s": None if opened is None else sig(opened["at"] - cut["start"]),
            "opened_here": None if opened is None else not opened.get("remote", False),
            "closed_after_restore_s": None if closed is None else sig(closed["at"] - back["start"]),
            "closed_here": None if closed is None else not closed.get("remote", False),
            "first_call_through_redis_s": None if through is None else sig(through - back["start"]),
        })
    return {"fault": fault, "processes": rows,
            "host_onset_calls": sum(r["onset_calls"] for r in rows)}


def summarize(run: Any, tasks: dict[str, dict[str, int]], faults: list[str],
              skipped: dict[str, str], received: dict[str, int], blocked: list[str],
              params: dict[str, Any],
              dispatches: dict[str, list[tuple[float, int]]] | None = None,
              processes: dict[str, Any] | None = None) -> dict[str, Any]:
    scenarios = []
    verdicts = []
    for fault in faults:
        for name in PHASES:
            window = _phase(run, fault, name)
            stats = window_stats(run.samples, window["start"], window["end"])
            for contestant in CONTESTANTS:
                for op in OPS:
                    figures = stats.get((contestant, op))
                    if figures is not None:
                        scenarios.append({"fault": fault, "contestant": contestant, "phase": name,
                                          "op": op, **figures})
        verdicts.append(verdict(run, fault, dispatches or {}))
    return {
        "params": params,
        "skipped_faults": skipped,
        "verdict": verdicts,
        "scenarios": scenarios,
        "breaker": [v["breaker"] for v in verdicts],
        "pybreaker": [v["pybreaker"] for v in verdicts],
        "tasks": tasks.get(OURS, {}),
        "tasks_by_contestant": tasks,
        "healthy_phase_errors": healthy_phase_errors(run, faults),
        "served_processes": [per_process(run, fault, processes) for fault in faults]
        if processes else [],
        "group_messages_received": received,
        "calls_blocked_at_stop": blocked,
    }


VERDICT_HEADER = ("op", "contestant", "calls", "p99 ms", "max ms", "errors seen", "errors hidden",
                  "tasks lost", "tasks duplicated")


def _verdict_cells(row: dict[str, Any]) -> list[object]:
    return [row["op"], row["contestant"], row["calls"], row["p99_ms"], row["max_ms"],
            row["errors"], row["hidden"], row.get("lost"), row.get("duplicates")]


PROCESS_HEADER = ("pid", "calls while cut", "calls that paid for the onset", "their max ms",
                  "saw it open after the cut began s", "opened by",
                  "saw it closed after the restore began s", "closed by",
                  "first call through Redis after the restore began s")


def _process_cells(row: dict[str, Any]) -> list[object]:
    def who(here: bool | None) -> str:
        return "-" if here is None else ("this process" if here else "another process")
    return [str(row["pid"]), row["calls_while_cut"], row["onset_calls"], row["onset_max_ms"],
            row["open_after_cut_s"], who(row["opened_here"]), row["closed_after_restore_s"],
            who(row["closed_here"]), row["first_call_through_redis_s"]]


def worker_deaths(report: dict[str, Any]) -> list[str]:
    """Lines on each time the drill's Celery worker ended while the drill ran (none: no lines)."""
    deaths = report["params"].get("worker_deaths") or []
    if not deaths:
        return []
    return [f"The Celery worker (shared by every contestant) ended while the drill ran "
            f"{_count(len(deaths), 'time')} and was started again, as a process supervisor "
            "would; tasks it held unacknowledged wait for the broker's visibility timeout, and "
            "count as lost here:"] + [
        f"at {d['at']:.1f} s, exit code {d['exit_code']}: "
        f"{d['last_critical'] or '(no CRITICAL line in its log)'}" for d in deaths]


def print_tables(report: dict[str, Any]) -> None:
    for summary in report["verdict"]:
        print_table(f"Verdict, {summary['fault']}: calls made while Redis was cut "
                    "(from the start of the cut to the end of the restore)",
                    VERDICT_HEADER, [[fmt(c) for c in _verdict_cells(r)] for r in summary["rows"]])
        print(f"  {summary['sentence']}")
    print_table("Breakers", ["fault", "breaker", "cut took s", "opened after cut began s",
                             "restore took s", "closed after restore began s"],
                [[r["fault"], name, fmt(r["cut_took_s"]), fmt(r["open_after_cut_s"]),
                  fmt(r["restore_took_s"]), fmt(r["closed_after_restore_s"])]
                 for v in report["verdict"] for name, r in (("redis-breaker", v["breaker"]),
                                                           ("pybreaker", v["pybreaker"]))])
    for served in report.get("served_processes", []):
        print_table(f"Served processes, {served['fault']}: the workers paid "
                    f"{_count(served['host_onset_calls'], 'call')} for the onset", PROCESS_HEADER,
                    [[fmt(c) for c in _process_cells(r)] for r in served["processes"]])
    print_table("Tasks dispatched through the whole drill", ["contestant", "dispatched", "executed",
                                                            "lost", "duplicates"],
                [[name, t["dispatched"], t["executed"], t["lost"], t["duplicates"]]
                 for name, t in report["tasks_by_contestant"].items()])
    deaths = worker_deaths(report)
    if deaths:
        print("\n" + deaths[0])
        for line in deaths[1:]:
            print("  " + line)
    for fault, why in report["skipped_faults"].items():
        print(f"\n{fault}: skipped ({why})")


def plot(run: Any, fault: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = _phase(run, fault, "healthy")["start"]
    end = _phase(run, fault, "recovery")["end"]
    cut = _phase(run, fault, "cut")
    back = _phase(run, fault, "restored")
    fig, (ax, states) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                     gridspec_kw={"height_ratios": [5, 1.3]})
    series = {}
    for contestant in CONTESTANTS:
        points = [(s[2] - start, s[3] * 1000) for s in run.samples
                  if s[0] == contestant and start <= s[2] < end]
        if points:
            series[contestant] = points
    # The busiest first, so that the stacks that make few (slow) calls are drawn on top.
    for order, (contestant, points) in enumerate(sorted(series.items(), key=lambda kv: -len(kv[1]))):
        step = max(1, math.ceil(len(points) / 4000))  # keep the PNG light
        xs, ys = zip(*points[::step], strict=True)
        color, marker = STYLE[contestant]
        ax.scatter(xs, [max(y, 1e-3) for y in ys], s=9 if len(points) > 2000 else 22,
                   alpha=0.55, color=color, marker=marker, zorder=2 + order, linewidths=0.8,
                   label=f"{contestant} ({len(points):,} calls)")
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (ms, log)")
    for axis in (ax, states):
        axis.axvspan(cut["start"] - start, back["end"] - start, color="#d62728", alpha=0.07)
        axis.axvspan(cut["start"] - start, cut["end"] - start, color="#d62728", alpha=0.15)
        axis.axvspan(back["start"] - start, back["end"] - start, color="#2ca02c", alpha=0.15)
    ax.plot([], [], color="#d62728", alpha=0.3, linewidth=8, label="Redis cut (darker: the cut action)")
    ax.set_title(f"Outage drill: {fault} ({FAULT_WORDS.get(fault, fault)})")
    ax.legend(loc="upper left", fontsize=8, markerscale=1.5, ncol=2, framealpha=0.9)
    ax.grid(True, which="major", alpha=0.3)
    for name, changes, style in (("redis-breaker", run.transitions, "-"),
                                 ("pybreaker", getattr(run, "pybreaker_transitions", []), "--")):
        xs_state, ys_state = _steps(changes, start, end)
        states.step(xs_state, ys_state, where="post", color=STYLE[name][0], linestyle=style,
                    label=name)
    states.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
    states.set_ylim(-0.3, 2.3)
    states.set_xlabel("seconds")
    states.set_ylabel("breaker")
    states.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _steps(changes: Sequence[tuple[float, str]], start: float,
           end: float) -> tuple[list[float], list[int]]:
    level = 0
    xs, ys = [0.0], [0]
    for t, state in changes:
        if t < start:
            ys[0] = level = STATE_LEVEL.get(state, 0)
        elif t < end:
            level = STATE_LEVEL.get(state, 0)
            xs.append(t - start)
            ys.append(level)
    xs.append(end - start)
    ys.append(ys[-1])
    return xs, ys


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], ours_column: int = 1) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cls = " class='ours'" if len(row) > ours_column and row[ours_column] == OURS else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def write_html(report: dict[str, Any], images: list[str], path: Path) -> None:
    params = report["params"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>redis-breaker outage drill</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;"
        "margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}tr.ours{background:#e3eef8;"
        "font-weight:bold}p.verdict{max-width:70em}</style>",
        "<h1>redis-breaker outage drill</h1>",
        "<p>" + html.escape(
            f"{params.get('duration')} s per phase, {params.get('concurrency')} traffic workers per "
            f"contestant and kind of call, one call every {params.get('pace')} s per worker, "
            f"socket timeouts {params.get('socket_timeout')} s for every contestant"
            + (f", the protected stack in {params['processes']} processes"
               if params.get("processes") else "") + ".") + "</p>",
        "<h2>Verdict</h2>",
        "<p>Per fault, the calls that began while Redis was cut (from the start of the cut action "
        "to the end of the restore action). <em>Errors seen</em>: the call raised. <em>Errors "
        "hidden</em>: the backend caught a Redis error, or did not try Redis, and answered "
        "something else (a fallback, None). Tasks: those dispatched during the fault's phases that "
        "never ran (lost) or ran more than once (duplicated), as counted by the worker.</p>",
    ]
    for summary in report["verdict"]:
        parts.append(f"<h3>{html.escape(summary['fault'])}</h3>")
        parts.append(f"<p class='verdict'>{html.escape(summary['sentence'])}</p>")
        parts.append(_table(VERDICT_HEADER, [_verdict_cells(r) for r in summary["rows"]]))
        parts.append(_table(("breaker", "", "cut took s", "opened after the cut began s",
                             "restore took s", "closed after the restore began s"),
                            [[name, "", r["cut_took_s"], r["open_after_cut_s"], r["restore_took_s"],
                              r["closed_after_restore_s"]]
                             for name, r in ((OURS, summary["breaker"]),
                                             ("pybreaker", summary["pybreaker"]))], 0))
    for fault, why in report["skipped_faults"].items():
        parts.append(f"<p>{html.escape(fault)} skipped: {html.escape(why)}</p>")
    if report.get("served_processes"):
        parts.append("<h2>The served processes: one breaker state per host</h2><p>Each gunicorn "
                     "worker of redis-breaker-http. A call paid for the outage's onset when its "
                     "process still saw the breaker closed after the cut began and it met the "
                     "outage; the host's breaker state means the host pays about "
                     "FAILURE_THRESHOLD such calls, not each process (the drill's own process, "
                     "on the same host state, pays its own too). <em>Opened by</em> and "
                     "<em>closed by</em>: whether this process made the transition or learned it "
                     "from the host's state, which a process does at its next look at the state "
                     "(a call, or its probe thread).</p>")
        for served in report["served_processes"]:
            parts.append(f"<h3>{html.escape(served['fault'])}: the workers paid "
                         f"{_count(served['host_onset_calls'], 'call')} for the onset</h3>")
            parts.append(_table(PROCESS_HEADER, [_process_cells(r) for r in served["processes"]],
                                -1))
    parts.append("<h2>Contestants</h2><ul>" + "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(ABOUT[name])}</li>" for name in CONTESTANTS)
        + "</ul>")
    parts.append("<h2>Timelines</h2>")
    for image in images:
        parts.append(f"<h3>{html.escape(image.removesuffix('.png'))}</h3><img src='{image}' "
                     "style='max-width:100%'>")
    parts.append("<h2>Tasks through the whole drill</h2>")
    parts.append(_table(("contestant", "dispatched", "executed", "lost", "duplicates"),
                        [[name, t["dispatched"], t["executed"], t["lost"], t["duplicates"]]
                         for name, t in report["tasks_by_contestant"].items()], 0))
    deaths = worker_deaths(report)
    if deaths:
        parts.append(f"<p>{html.escape(deaths[0])}</p><ul>" + "".join(
            f"<li>{html.escape(line)}</li>" for line in deaths[1:]) + "</ul>")
    parts.append("<details><summary>Every fault, phase, contestant and operation</summary>")
    parts.append(_table(("fault", "phase", "contestant", "op", "calls", "errors seen",
                         "errors hidden", "p50 ms", "p99 ms", "max ms"),
                        [[s["fault"], s["phase"], s["contestant"], s["op"], s["calls"], s["errors"],
                          s["hidden"], s["p50_ms"], s["p99_ms"], s["max_ms"]]
                         for s in report["scenarios"]], 2))
    parts.append("</details>")
    path.write_text("\n".join(parts))


def write_outputs(report: dict[str, Any], run: Any, out: Path) -> None:
    print_tables(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    images = []
    for fault in [v["fault"] for v in report["verdict"]]:
        name = f"timeline-{fault}.png"
        plot(run, fault, out / name)
        images.append(name)
    write_html(report, images, out / "index.html")
    print(f"\nWrote {out / 'report.json'}, {', '.join(images)} and {out / 'index.html'}")
