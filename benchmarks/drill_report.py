"""Turn the drill's samples into tables, report.json, PNG timelines and an HTML page."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from _common import percentiles, print_table

CONTESTANTS = ("redis-breaker", "django-redis", "django-redis-cache", "celery", "channels-redis",
               "pybreaker")
OPS = ("cache.get", "cache.set", "task.delay", "group_send")
PHASES = ("healthy", "outage", "recovery")
COLORS = {"redis-breaker": "#1b9e77", "django-redis": "#d95f02", "django-redis-cache": "#7570b3",
          "celery": "#e7298a", "channels-redis": "#66a61e", "pybreaker": "#e6ab02"}
STATE_LEVEL = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 2, "disabled": 0}


def _phase(run: Any, fault: str, name: str) -> dict[str, Any]:
    return next(p for p in run.phases if p["fault"] == fault and p["phase"] == name)


def breaker_timing(run: Any, fault: str) -> dict[str, Any]:
    """When the breaker opened after the cut began and closed after the restore began.

    Each fault action is stamped on both sides (``start`` before it, ``end``
    after it returned): an opening while the action was still running (a
    server saving its data on the way down) belongs to this fault. Only this
    fault's own transitions count: an opening is looked for up to the restore,
    a closing up to the end of the recovery phase, never in the next fault.
    """
    cut = _phase(run, fault, "cut")
    back = _phase(run, fault, "restored")
    recovery_end = _phase(run, fault, "recovery")["end"]
    opened = next((t for t, s in run.transitions
                   if cut["start"] <= t < back["start"] and s == "open"), None)
    closed = next((t for t, s in run.transitions
                   if back["start"] <= t <= recovery_end and s == "closed"), None)
    return {
        "fault": fault,
        "cut_took_s": round(cut["end"] - cut["start"], 3),
        "open_after_cut_s": None if opened is None else round(opened - cut["start"], 3),
        "restore_took_s": round(back["end"] - back["start"], 3),
        "closed_after_restore_s": None if closed is None else round(closed - back["start"], 3),
    }


def summarize(run: Any, tasks: dict[str, dict[str, int]], faults: list[str],
              skipped: dict[str, str], received: dict[str, int], blocked: list[str],
              params: dict[str, Any]) -> dict[str, Any]:
    scenarios = []
    recoveries = []
    for fault in faults:
        for name in PHASES:
            window = _phase(run, fault, name)
            by_key: dict[tuple[str, str], list[tuple[float, bool]]] = {}
            for contestant, op, start, duration, error in run.samples:
                if window["start"] <= start < window["end"]:
                    by_key.setdefault((contestant, op), []).append((duration, error))
            for contestant in CONTESTANTS:
                for op in OPS:
                    values = by_key.get((contestant, op))
                    if not values:
                        continue
                    stats = percentiles([d for d, _ in values])
                    scenarios.append({
                        "fault": fault, "contestant": contestant, "phase": name, "op": op,
                        "calls": len(values), "errors": sum(1 for _, e in values if e),
                        **{k: round(v, 4) for k, v in stats.items()},
                    })
        recoveries.append(breaker_timing(run, fault))
    return {
        "params": params,
        "skipped_faults": skipped,
        "scenarios": scenarios,
        "breaker": recoveries,
        "tasks": tasks.get("redis-breaker", {}),
        "tasks_by_contestant": tasks,
        "group_messages_received": received,
        "calls_blocked_at_stop": blocked,
    }


def print_tables(report: dict[str, Any]) -> None:
    rows_by: dict[tuple[str, str], list[list[object]]] = {}
    for s in report["scenarios"]:
        rows_by.setdefault((s["fault"], s["phase"]), []).append(
            [s["contestant"], s["op"], s["calls"], s["errors"], s["p50_ms"], s["p99_ms"], s["max_ms"]])
    for (fault, phase), rows in rows_by.items():
        print_table(f"{fault} / {phase}", ["contestant", "op", "calls", "errors", "p50 ms", "p99 ms",
                                           "max ms"], rows)
    print_table("Breaker (redis-breaker's shared breaker 'drill')",
                ["fault", "cut took s", "opened after cut began s", "restore took s",
                 "closed after restore began s"],
                [[r["fault"], r["cut_took_s"], _none(r["open_after_cut_s"]), r["restore_took_s"],
                  _none(r["closed_after_restore_s"])]
                 for r in report["breaker"]])
    print_table("Tasks dispatched through the whole drill", ["contestant", "dispatched", "executed",
                                                            "lost", "duplicates"],
                [[name, t["dispatched"], t["executed"], t["lost"], t["duplicates"]]
                 for name, t in report["tasks_by_contestant"].items()])
    for fault, why in report["skipped_faults"].items():
        print(f"\n{fault}: skipped ({why})")


def _none(value: object) -> object:
    return "-" if value is None else value


def plot(run: Any, fault: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = _phase(run, fault, "healthy")["start"]
    end = _phase(run, fault, "recovery")["end"]
    cut = _phase(run, fault, "cut")["start"]
    back = _phase(run, fault, "restored")["start"]
    fig, (ax, states) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                     gridspec_kw={"height_ratios": [5, 1]})
    for contestant in CONTESTANTS:
        points = [(s - start, d * 1000) for c, _, s, d, _ in run.samples
                  if c == contestant and start <= s < end]
        if not points:
            continue
        step = max(1, math.ceil(len(points) / 4000))  # keep the PNG light
        xs, ys = zip(*points[::step], strict=True)
        ax.scatter(xs, [max(y, 1e-3) for y in ys], s=4, alpha=0.5, color=COLORS[contestant],
                   label=contestant)
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (ms, log)")
    ax.axvspan(cut - start, back - start, color="#d62728", alpha=0.08, label="Redis cut")
    ax.set_title(f"Outage drill: {fault}")
    ax.legend(loc="upper left", fontsize=8, markerscale=3, ncol=2)
    ax.grid(True, which="major", alpha=0.3)
    xs_state, ys_state = [0.0], [0]
    level = 0
    for t, state in run.transitions:
        if t < start or t >= end:
            if t < start:
                level = STATE_LEVEL.get(state, 0)
                ys_state[0] = level
            continue
        xs_state.append(t - start)
        ys_state.append(STATE_LEVEL.get(state, 0))
    xs_state.append(end - start)
    ys_state.append(ys_state[-1])
    states.step(xs_state, ys_state, where="post", color=COLORS["redis-breaker"])
    states.axvspan(cut - start, back - start, color="#d62728", alpha=0.08)
    states.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
    states.set_ylim(-0.3, 2.3)
    states.set_xlabel("seconds")
    states.set_ylabel("breaker")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_html(report: dict[str, Any], images: list[str], path: Path) -> None:
    parts = ["<!doctype html><meta charset='utf-8'><title>redis-breaker outage drill</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
             "td:first-child,td:nth-child(2),td:nth-child(3),td:nth-child(4){text-align:left}"
             "tr.ours{background:#e8f5e9}</style>",
             "<h1>redis-breaker outage drill</h1>",
             f"<p>{html.escape(json.dumps(report['params']))}</p>"]
    for image in images:
        parts.append(f"<h2>{html.escape(image.removesuffix('.png'))}</h2><img src='{image}' "
                     "style='max-width:100%'>")
    parts.append("<h2>Latency by fault, phase, contestant and operation</h2><table><tr>"
                 + "".join(f"<th>{h}</th>" for h in ("fault", "phase", "contestant", "op", "calls",
                                                      "errors", "p50 ms", "p99 ms", "max ms"))
                 + "</tr>")
    for s in report["scenarios"]:
        cls = " class='ours'" if s["contestant"] == "redis-breaker" else ""
        parts.append(f"<tr{cls}>" + "".join(
            f"<td>{html.escape(str(s[k]))}</td>" for k in (
                "fault", "phase", "contestant", "op", "calls", "errors", "p50_ms", "p99_ms",
                "max_ms")) + "</tr>")
    parts.append("</table><h2>Breaker</h2><table><tr><th>fault</th><th>cut took (s)</th>"
                 "<th>opened after the cut began (s)</th><th>restore took (s)</th>"
                 "<th>closed after the restore began (s)</th></tr>")
    for r in report["breaker"]:
        parts.append(f"<tr><td>{r['fault']}</td><td>{r['cut_took_s']}</td>"
                     f"<td>{_none(r['open_after_cut_s'])}</td><td>{r['restore_took_s']}</td>"
                     f"<td>{_none(r['closed_after_restore_s'])}</td></tr>")
    parts.append("</table><h2>Tasks</h2><table><tr><th>contestant</th><th>dispatched</th>"
                 "<th>executed</th><th>lost</th><th>duplicates</th></tr>")
    for name, t in report["tasks_by_contestant"].items():
        parts.append(f"<tr><td>{name}</td><td>{t['dispatched']}</td><td>{t['executed']}</td>"
                     f"<td>{t['lost']}</td><td>{t['duplicates']}</td></tr>")
    parts.append("</table>")
    for fault, why in report["skipped_faults"].items():
        parts.append(f"<p>{html.escape(fault)} skipped: {html.escape(why)}</p>")
    path.write_text("\n".join(parts))


def write_outputs(report: dict[str, Any], run: Any, out: Path) -> None:
    print_tables(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    images = []
    for fault in [r["fault"] for r in report["breaker"]]:
        name = f"timeline-{fault}.png"
        plot(run, fault, out / name)
        images.append(name)
    write_html(report, images, out / "index.html")
    print(f"\nWrote {out / 'report.json'}, {', '.join(images)} and {out / 'index.html'}")
