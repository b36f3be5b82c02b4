"""``manage.py redis_breaker status [--json]`` and ``drain`` (with the Celery outbox)."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from redis_breaker.health import celery_outbox, get_redis_status

#: The table's columns, as docs/health.md shows them (a test compares the two).
COLUMNS = ("breaker", "state", "since", "failures", "latency_ms", "host_shared", "probe_pid",
           "last transition", "last_error")


class Command(BaseCommand):
    help = "Inspect redis-breaker: `status` shows every breaker; `drain` publishes the outbox."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="{status,drain}")
        sub.required = True
        status = sub.add_parser("status", help="state of every breaker (and the outbox)")
        status.add_argument("--json", action="store_true", help="print JSON instead of a table")
        status.add_argument("--timeout", type=float, default=None,
                            help="PING timeout (s); default: each breaker's PROBE_TIMEOUT")
        drain = sub.add_parser("drain", help="publish the Celery outbox now")
        drain.add_argument("--loop", action="store_true", help="keep draining until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "status":
            self._status(options)
        elif action == "drain":
            self._drain(options)

    def _status(self, options: dict[str, Any]) -> None:
        report = get_redis_status(timeout=options["timeout"])
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2, sort_keys=True))
            return
        rows: list[tuple[str, ...]] = [COLUMNS]
        rows += [_row(name, b) for name, b in report["breakers"].items()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
        for row in rows:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[-1]]).rstrip())
        if len(rows) == 1:
            self.stdout.write("(no breakers configured or in use)")
        outbox = report.get("outbox")
        if outbox is not None:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(outbox.items()))
            self.stdout.write(f"outbox: {counts}")

    def _drain(self, options: dict[str, Any]) -> None:
        outbox = celery_outbox()
        if outbox is None:
            raise CommandError(
                "drain needs the Celery outbox (redis_breaker.outbox, Celery installed).")
        result = outbox.drain(loop=options["loop"])
        self.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str))


def _row(name: str, b: dict[str, Any]) -> tuple[str, ...]:
    """One breaker's line of the table (``-`` for what is unknown)."""
    latency = "-" if b.get("latency_ms") is None else f"{b['latency_ms']:.2f}"
    last = b.get("last_transition")
    transition = "-" if last is None else (
        f"{last['from']}->{last['to']} at {last['at'] or '?'} ({last['reason']})")
    shared = "-" if b.get("host_shared") is None else ("yes" if b["host_shared"] else "no")
    pid = "-" if b.get("probe_pid") is None else str(b["probe_pid"])
    error = b.get("last_error") or b.get("status_error") or "-"
    failures = "-" if b.get("failures") is None else str(b["failures"])
    return (name, b.get("state") or "-", b.get("since") or "-", failures, latency, shared, pid, transition,
            error)
